"""Find where instructions that must exit to the VMM could start in a page of guest code.

The software driver registers these addresses as unicorn exits: translation stops before any of
them, so when the guest reaches one the instruction has not run and RIP points at it, exactly as
on NVMM. A byte pattern inside another instruction costs nothing: an exit only fires when
execution reaches that address as the start of an instruction, and then it is that instruction.
"""
import errno
import re

from unicorn import UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE
from unicorn import x86_const as x86

from nvmmpy.emulator import pagewalk
from nvmmpy.emulator.arch import PAGE_SIZE

from ... import constants as nvmm
from ...errors import NvmmError

# IN/OUT (E4-E7, EC-EF), INS/OUTS (6C-6F), HLT (F4); WRMSR/RDMSR (0F 30 / 0F 32), CPUID (0F A2)
_OPCODES = re.compile(rb"[\xe4-\xe7\xec-\xef\x6c-\x6f\xf4]|\x0f[\x30\x32\xa2]")
# legacy prefixes and REX bytes that may precede them (REX only means anything in 64-bit code)
_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3" + bytes(range(0x40, 0x50)))
MAX_PREFIXES = 4
PAGE_MASK = ~(PAGE_SIZE - 1)
# After this many write/execute flips a page stays writable and executable (code and data share
# it); I/O on such a page is still correct, through unicorn's IN/OUT hooks, just not a precise exit.
MAX_FLIPS = 32


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


def classify_exit(code: bytes, mode: int):
    """(kind, length, ...) of an exit instruction at the start of `code`, or None (a candidate
    that turned out to be prefix bytes of something else)."""
    i = 0
    opsize = 4 if mode != 16 else 2
    asize = {16: 2, 32: 4, 64: 8}[mode]
    rep = False
    while i < len(code) and i < 14:
        b = code[i]
        if b == 0x66:
            opsize = 2 if mode != 16 else 4
        elif b == 0x67:
            asize = {16: 4, 32: 2, 64: 4}[mode]
        elif b in (0xF2, 0xF3):
            rep = True
        elif b in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0):
            pass
        elif mode == 64 and 0x40 <= b <= 0x4F:
            pass
        else:
            break
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if op in (0xE4, 0xE5, 0xE6, 0xE7):
        if i + 1 >= len(code):
            return None
        return ("io", i + 2, op in (0xE4, 0xE5), code[i + 1], 1 if op in (0xE4, 0xE6) else opsize, False, False, asize)
    if op in (0xEC, 0xED, 0xEE, 0xEF):
        return ("io", i + 1, op in (0xEC, 0xED), None, 1 if op in (0xEC, 0xEE) else opsize, False, False, asize)
    if op in (0x6C, 0x6D, 0x6E, 0x6F):
        return ("io", i + 1, op in (0x6C, 0x6D), None, 1 if op in (0x6C, 0x6E) else opsize, rep, True, asize)
    if op == 0xF4:
        return ("hlt", i + 1)
    if op == 0x0F and i + 1 < len(code):
        nxt = code[i + 1]
        if nxt == 0x32:
            return ("rdmsr", i + 2)
        if nxt == 0x30:
            return ("wrmsr", i + 2)
        if nxt == 0xA2:
            return ("cpuid", i + 2)
    return None


class CodeScanner:
    """A vCPU's scanned code pages and their exit addresses, kept in step with unicorn's exit list.

    A page is scanned on its first instruction fetch (RAM is mapped without execute permission)
    and left read+execute; a write to it makes it writable and unscanned again, until the next
    fetch. After MAX_FLIPS such flips a page stays writable and executable (see the vCPU's
    fallback I/O hooks). The vCPU reads `exits`, `exit_info` and `insn_cache` directly on its
    hot paths."""

    def __init__(self, vcpu):
        self._vcpu = vcpu
        self.exits = set()          # linear addresses registered as unicorn exits
        self.page_exits = {}        # linear page -> its exit addresses
        self.scanned = {}           # guest-physical page -> linear page it was scanned at
        self.flips = {}             # guest-physical page -> times it went from code to data
        self.exit_info = {}         # linear address -> decoded exit instruction
        self.insn_cache = {}        # (cr3, linear RIP) -> instruction bytes, for MMIO assists

    def _publish(self) -> None:
        if self._vcpu._scan:   # hooks mode has no exit list (unicorn refuses one it did not enable)
            self._vcpu.uc.ctl_set_exits(sorted(self.exits))

    def _translate(self, linear: int) -> int:
        v = self._vcpu
        fast = v._fast
        cr0 = fast.read(x86.UC_X86_REG_CR0)
        if not cr0 & nvmm.CR0_PG:
            return linear
        try:
            gpa, _ = pagewalk.gva_to_gpa(v.machine.read_guest, cr0, fast.read(x86.UC_X86_REG_CR3),
                                         fast.read(x86.UC_X86_REG_CR4), fast.read_msr(0xC0000080), linear)
        except pagewalk.PageFault as e:
            raise NvmmError(errno.EFAULT, f"unicorn faulted at {linear:#x}, which does not translate: {e.reason}") from None
        return gpa

    def fetch_page(self, gpage: int) -> int:
        """The linear page of a fetch that faulted on guest-physical page `gpage`: the page of
        CS:RIP, or the next one for an instruction (or a translation block) that runs into it."""
        v = self._vcpu
        linear = (v._cs_base() + v._fast.read(x86.UC_X86_REG_RIP)) & PAGE_MASK
        for page in (linear, linear + PAGE_SIZE):
            try:
                if self._translate(page) == gpage:
                    return page
            except NvmmError:
                pass
        raise NvmmError(errno.EFAULT, f"a fetch faulted on guest-physical page {gpage:#x}, which is mapped at "
                                      f"neither {linear:#x} nor the page after it")

    def _forget_insns(self, page: int) -> None:
        for k in [k for k in self.insn_cache if k[1] & PAGE_MASK == page]:
            del self.insn_cache[k]

    def scan_page(self, page: int, gpage: int) -> None:
        """Find the exit instructions of the code page at linear `page` (guest-physical `gpage`)."""
        v = self._vcpu
        area = v.machine.areas.lookup(gpage)
        if area is None or not area.prot & nvmm.PROT_EXEC:
            raise NvmmError(errno.EFAULT, f"guest executed non-executable memory at {page:#x} (guest-physical {gpage:#x})")
        code = v.machine.read_guest(gpage, PAGE_SIZE)
        before = b""
        if page >= MAX_PREFIXES:
            before = v._read_linear(page - MAX_PREFIXES, MAX_PREFIXES, partial=True)
        addrs = exit_candidates(code, page, before)
        old = self.page_exits.get(page)
        if old:
            self.exits.difference_update(old)
        for a in [a for a in self.exit_info if a & PAGE_MASK == page]:
            del self.exit_info[a]
        self._forget_insns(page)
        self.page_exits[page] = addrs
        self.exits.update(addrs)
        self._publish()
        v._remove_cache(page, page + PAGE_SIZE)
        flips = self.flips.get(gpage, 0)
        self.scanned[gpage] = page
        v._um.protect(gpage, UC_PROT_ALL if flips >= MAX_FLIPS else (UC_PROT_READ | UC_PROT_EXEC))

    def unscan_page(self, gpage: int) -> None:
        """The guest writes a scanned page: make it writable data until its next fetch."""
        page = self.scanned.pop(gpage, None)
        if page is not None:
            self._forget_insns(page)
        if page is not None and page in self.page_exits:
            self.exits.difference_update(self.page_exits.pop(page))
            self._publish()
        self.flips[gpage] = self.flips.get(gpage, 0) + 1
        self._vcpu._um.protect(gpage, UC_PROT_READ | UC_PROT_WRITE)

    def forget_range(self, gpa: int, size: int) -> None:
        """RAM was unmapped: its pages are no longer scanned code."""
        for gpage in [g for g in self.scanned if gpa <= g < gpa + size]:
            page = self.scanned.pop(gpage)
            self.exits.difference_update(self.page_exits.pop(page, []))
        self._publish()

    def drop_exit(self, linear: int) -> None:
        """A candidate that is not an exit instruction: stop exiting there."""
        self.exits.discard(linear)
        for addrs in self.page_exits.values():
            if linear in addrs:
                addrs.remove(linear)
        self._publish()
        self._vcpu._remove_cache(linear, linear + 1)
