"""Find where instructions that must exit to the VMM could start in a page of guest code.

The software driver registers these addresses as unicorn exits: translation stops before any of
them, so when the guest reaches one the instruction has not run and RIP points at it, exactly as
on NVMM. A byte pattern inside another instruction costs nothing: an exit only fires when
execution reaches that address as the start of an instruction, and then it is that instruction.
"""
import re

# IN/OUT (E4-E7, EC-EF), INS/OUTS (6C-6F), HLT (F4); WRMSR/RDMSR (0F 30 / 0F 32), CPUID (0F A2)
_OPCODES = re.compile(rb"[\xe4-\xe7\xec-\xef\x6c-\x6f\xf4]|\x0f[\x30\x32\xa2]")
# legacy prefixes and REX bytes that may precede them (REX only means anything in 64-bit code)
_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3" + bytes(range(0x40, 0x50)))
MAX_PREFIXES = 4


def exit_candidates(code: bytes, base: int, before: bytes = b"") -> list:
    """Linear addresses in [base, base+len(code)) where such an instruction may start.

    `before`: up to MAX_PREFIXES bytes preceding `code` (prefixes may start on the previous page).
    """
    data = before + code
    skew = len(before)
    out = set()
    for m in _OPCODES.finditer(data, skew):
        p = m.start()
        out.add(base + p - skew)
        k = p - 1
        while k >= 0 and p - k <= MAX_PREFIXES and data[k] in _PREFIXES:
            out.add(base + k - skew)
            k -= 1
    return sorted(out)
