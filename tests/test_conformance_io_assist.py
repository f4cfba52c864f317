"""libnvmm conformance: h_io_assist rebuilt (cases 1-12, port 123).

IN data is served by the io callback, byte by byte from the case's string; the guest stores what it
reads (plain IN) or REP INS writes it into the RAM data page at 0x1000, which is compared with the
string. OUT cases compare what the io callback received. Every callback must see port 123 and the
instruction's width; REP cases also check the final RCX (saved in R8) and RSI/RDI. Guest code is
written here from the description of each case.
"""
from dataclasses import dataclass, field

import pytest

from conformance import DRIVERS, IO_DATA, IO_PORT, open_vm

RSI, RDI, R8, R9 = 6, 7, 8, 9
SENTINEL = 0xEE  # fills the data page around what the guest writes

S28 = b"123456789abcdefghijklmnopqrs"


@dataclass
class IoCase:
    name: str
    source: str
    direction: str              # "in" or "out"
    data: bytes                 # served to IN / expected from OUT
    width: int                  # bytes per callback
    regs: dict = field(default_factory=dict)


CASES = [
    IoCase("01_inb", f"""
        mov ${IO_DATA}, %edi
        in ${IO_PORT}, %al              # imm8 port
        mov %al, (%rdi)
        mov ${IO_PORT}, %dx
        in (%dx), %al                   # DX port
        mov %al, 1(%rdi)
    """, "in", b"12", 1),

    IoCase("02_inw", f"""
        mov ${IO_DATA}, %edi
        in ${IO_PORT}, %ax
        mov %ax, (%rdi)
        mov ${IO_PORT}, %dx
        in (%dx), %ax
        mov %ax, 2(%rdi)
    """, "in", b"1234", 2),

    IoCase("03_inl", f"""
        mov ${IO_DATA}, %edi
        mov $-1, %rax
        in ${IO_PORT}, %eax             # 32-bit IN zero-extends RAX
        mov %rax, %r9
        shr $32, %r9                    # must be 0
        mov %eax, (%rdi)
        mov ${IO_PORT}, %dx
        in (%dx), %eax
        mov %eax, 4(%rdi)
    """, "in", b"12345678", 4, regs={R9: 0}),

    IoCase("04_rep_insb", f"""
        cld
        mov ${IO_DATA}, %edi
        mov ${IO_PORT}, %dx
        mov $5, %ecx
        rep insb
        mov %rcx, %r8
    """, "in", b"12345", 1, regs={RDI: IO_DATA + 5, R8: 0}),

    IoCase("05_rep_insw", f"""
        cld
        mov ${IO_DATA}, %edi
        mov ${IO_PORT}, %dx
        mov $14, %ecx
        rep insw
        mov %rcx, %r8
    """, "in", b"Comment est votre blanquette", 2, regs={RDI: IO_DATA + 28, R8: 0}),

    IoCase("06_rep_insl", f"""
        cld
        mov ${IO_DATA}, %edi
        mov ${IO_PORT}, %dx
        mov $7, %ecx
        rep insl
        mov %rcx, %r8
    """, "in", S28, 4, regs={RDI: IO_DATA + 28, R8: 0}),

    IoCase("07_outb", f"""
        mov $0x31, %al
        out %al, ${IO_PORT}             # imm8 port
        mov ${IO_PORT}, %dx
        mov $0x32, %al
        out %al, (%dx)                  # DX port
    """, "out", b"12", 1),

    IoCase("08_outw", f"""
        mov $0x3231, %ax
        out %ax, ${IO_PORT}
        mov ${IO_PORT}, %dx
        mov $0x3433, %ax
        out %ax, (%dx)
    """, "out", b"1234", 2),

    IoCase("09_outl", f"""
        mov $0x34333231, %eax
        out %eax, ${IO_PORT}
        mov ${IO_PORT}, %dx
        mov $0x38373635, %eax
        out %eax, (%dx)
    """, "out", b"12345678", 4),

    IoCase("10_rep_outsb", f"""
        cld
        mov ${IO_DATA}, %esi
        mov ${IO_PORT}, %dx
        mov $5, %ecx
        rep outsb
        mov %rcx, %r8
    """, "out", b"12345", 1, regs={RSI: IO_DATA + 5, R8: 0}),

    IoCase("11_rep_outsw", f"""
        cld
        mov ${IO_DATA}, %esi
        mov ${IO_PORT}, %dx
        mov $8, %ecx
        rep outsw
        mov %rcx, %r8
    """, "out", b"Ah, Herr Bramard", 2, regs={RSI: IO_DATA + 16, R8: 0}),

    IoCase("12_rep_outsl", f"""
        cld
        mov ${IO_DATA}, %esi
        mov ${IO_PORT}, %dx
        mov $7, %ecx
        rep outsl
        mov %rcx, %r8
    """, "out", S28, 4, regs={RSI: IO_DATA + 28, R8: 0}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("driver", DRIVERS)
def test_io_assist(driver, case):
    n = len(case.data)
    with open_vm(driver, mmio_page=False) as vm:
        vm.start_long_mode(case.source)  # first: set_long_mode's TSS image spans 0x600-0x2668
        vm.ram[IO_DATA:IO_DATA + 0x1000] = bytes([SENTINEL]) * 0x1000
        if case.direction == "in":
            vm.in_queue[:] = case.data
        else:
            vm.ram[IO_DATA:IO_DATA + n] = case.data
        vm.run()

        want_log = [(case.direction == "in", case.width)] * (n // case.width)
        assert vm.io_log == want_log, f"{case.name}: io callbacks {vm.io_log}, expected {want_log}"
        page = bytes(vm.ram[IO_DATA:IO_DATA + 0x1000])
        if case.direction == "in":
            assert not vm.in_queue, f"{case.name}: {bytes(vm.in_queue)!r} never read"
            assert page[:n] == case.data, f"{case.name}: data page holds {page[:n]!r}, expected {case.data!r}"
            assert page[n:] == bytes([SENTINEL]) * (0x1000 - n), f"{case.name}: bytes written past the string"
        else:
            assert bytes(vm.out) == case.data, f"{case.name}: port {IO_PORT} got {bytes(vm.out)!r}, expected {case.data!r}"
            assert page[:n] == case.data and page[n:] == bytes([SENTINEL]) * (0x1000 - n), \
                f"{case.name}: OUT changed the data page"
        if case.regs:
            gprs = vm.gprs()
            for idx, want in case.regs.items():
                assert gprs[idx] == want, f"{case.name}: GPR {idx} = {gprs[idx]:#x}, expected {want:#x}"
