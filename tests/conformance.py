"""Shared harness for the libnvmm conformance suites (NetBSD/DragonFly h_mem_assist, h_io_assist).

Rebuilt from the description of those tests (reference notes, section 4), not from their sources:
one machine, one vCPU, guest RAM for code and page tables, and a run loop that completes IO and
MEMORY exits with assist_io / assist_mem until the guest executes RDMSR of MSR 0xFFFFFFFF (an MSR
no driver knows), which ends the test. Anything else (another exit, a callback outside its window,
a guest that never finishes) fails the test.

Guest-physical layout (2 MiB of RAM, one host mapping):
    0x0000-0x0FFF  RAM: GDT at 0x500 (vmm.cpu_modes.set_long_mode)
    0x1000-0x1FFF  mem tests: NOT mapped -- the MMIO page, backed by a 4 KiB bytearray in the mem
                   callback; io tests: mapped RAM, the data page REP INS/OUTS use (as in h_io_assist)
    0x2000-0x2FFF  RAM: 16-bit real-mode code (CS base 0, IP 0x2000, as in h_mem_assist)
    0x3000         RAM: the 64-bit TSS the vCPU really uses (TR is moved here; see _relocate_tss)
    0x4000-0x6FFF  RAM: identity page tables (PML4 0x4000, PDPT 0x5000, PD 0x6000; 2 MiB pages)
    0x10000        RAM: 64-bit code
    0x80000        RAM: 64-bit stack top
"""
import threading

import pytest

import nvmmpy
import nvmmpy.drivers
from nvmmpy import constants as nvmm
from asm import assemble
from harness import kvm_usable
from nvmmpy.vmm import cpu_modes
from nvmmpy.vmm.cpu_modes import set_long_mode, set_real_mode

RAM_SIZE = 2 << 20
MMIO_GPA = 0x1000
MMIO_SIZE = 0x1000
IO_DATA = 0x1000          # io tests: RAM data page at the same address
CODE16 = 0x2000
TSS_GPA = 0x3000
TSS_SIZE = 104
CODE64 = 0x10000
STACK64 = 0x80000
STACK16 = 0xFFF0
IO_PORT = 123
EXIT_MSR = 0xFFFFFFFF     # RDMSR of this MSR ends every guest

MAX_EXITS = 10000
TIMEOUT = 60.0            # seconds of guest run time before the watchdog stops the vCPU

# Appended to every guest: ends the run loop with an RDMSR exit; a HALTED exit after it means the
# driver ran past the RDMSR, which fails the test.
EPILOGUE = """
    mov $0xFFFFFFFF, %ecx
    rdmsr
    hlt
"""

RWX = nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC

DRIVERS = [
    pytest.param("kvm", id="kvm", marks=pytest.mark.kvm),
    pytest.param("unicorn", id="unicorn"),
]


def require_driver(name: str) -> None:
    """Skip, with the reason, when `name` cannot run here (checked at run time, not collection)."""
    if name not in nvmmpy.drivers.DRIVER_MODULES:
        pytest.skip(f"{name} driver not registered")
    if name == "kvm":
        ok, reason = kvm_usable()
        if not ok:
            pytest.skip(f"needs /dev/kvm: {reason}")


class ConformanceVM:
    """One machine, one vCPU, 2 MiB of RAM; the page at 0x1000 is MMIO unless `mmio_page` is False."""

    def __init__(self, driver: str, mmio_page: bool = True):
        self.driver = driver
        self.mmio_page = mmio_page
        self.mmio = bytearray(MMIO_SIZE)
        self.mmio_log = []        # (write, offset, size, bytes) per mem callback
        self.io_log = []          # (in_, size) per io callback
        self.in_queue = bytearray()
        self.out = bytearray()
        self.errors = []          # callback failures, kept even if a driver swallows the exception
        self.exits = {}
        self.mem = None
        self.mach = nvmmpy.Machine(driver)
        try:
            self.mem = nvmmpy.HostMemory(RAM_SIZE)
            self.ram = self.mem.view
            hva = self.mem.address
            self.mach.hva_map(hva, RAM_SIZE)
            if mmio_page:
                end = MMIO_GPA + MMIO_SIZE
                self.mach.gpa_map(hva, 0, MMIO_GPA, RWX)
                self.mach.gpa_map(hva + end, end, RAM_SIZE - end, RWX)
            else:
                self.mach.gpa_map(hva, 0, RAM_SIZE, RWX)
            self.vcpu = self.mach.vcpu_create(0)
            self.vcpu.configure_callbacks(io=self._io, mem=self._mem)
        except BaseException:
            self.close()
            raise

    # --- callbacks ---------------------------------------------------------------------------
    def _fail(self, msg: str):
        self.errors.append(msg)
        raise AssertionError(msg)

    def _mem(self, mem):
        gpa, size, write = mem.gpa, mem.size, mem.write
        off = gpa - MMIO_GPA
        what = f"MMIO {'write' if write else 'read'} of {size} bytes at gpa {gpa:#x}"
        if not self.mmio_page:
            self._fail(f"{what}: this test has no MMIO page")
        if size <= 0 or off < 0 or off + size > MMIO_SIZE:
            self._fail(f"{what}: outside the MMIO page [{MMIO_GPA:#x}, {MMIO_GPA + MMIO_SIZE:#x})")
        if write:
            data = bytes(mem.data[:size])
            if len(data) != size:
                self._fail(f"{what}: the callback got {len(data)} data bytes")
            self.mmio[off:off + size] = data
        else:
            mem.data[:size] = self.mmio[off:off + size]
            data = bytes(self.mmio[off:off + size])
        self.mmio_log.append((write, off, size, data))

    def _io(self, io):
        port, size = io.port, io.size
        what = f"{'IN' if io.in_ else 'OUT'} of {size} bytes on port {port}"
        if port != IO_PORT:
            self._fail(f"{what}: the tests only use port {IO_PORT}")
        if size not in (1, 2, 4):
            self._fail(f"{what}: not an I/O width")
        self.io_log.append((bool(io.in_), size))
        if io.in_:
            if len(self.in_queue) < size:
                self._fail(f"{what}: only {len(self.in_queue)} bytes left to serve")
            io.data[:size] = bytes(self.in_queue[:size])
            del self.in_queue[:size]
        else:
            self.out += bytes(io.data[:size])

    # --- guests ------------------------------------------------------------------------------
    def start_long_mode(self, source: str) -> None:
        """64-bit long mode, CPL0, flat segments, identity paging over RAM, RIP = CODE64.

        set_long_mode writes its TSS image over host bytes 0x600-0x2668, the data page included:
        load data-page contents after this call."""
        code = assemble(source + EPILOGUE, bits=64, org=CODE64)
        self.ram[CODE64:CODE64 + len(code)] = code
        set_long_mode(self.vcpu, self.ram, CODE64, STACK64, map_size=RAM_SIZE)
        self._relocate_tss()

    def _relocate_tss(self) -> None:
        """set_long_mode's TSS (0x600 + an 8 KiB I/O bitmap) runs across 0x1000-0x1FFF, the MMIO or
        data page. These guests run at CPL0 and take no interrupts, so they need neither the bitmap
        nor the TSS; still, point TR at a bare 104-byte TSS in RAM so no part of it aliases that page."""
        tss = bytes(self.ram[cpu_modes.TSS_ADDR:cpu_modes.TSS_ADDR + TSS_SIZE])
        self.ram[TSS_GPA:TSS_GPA + TSS_SIZE] = tss
        st = self.vcpu.getstate(nvmm.X64_STATE_SEGS)
        tr = st.segs[nvmm.X64_SEG_TR]
        tr.base, tr.limit = TSS_GPA, TSS_SIZE - 1
        self.vcpu.setstate(nvmm.X64_STATE_SEGS)

    def start_real_mode(self, source: str) -> None:
        """16-bit real mode, CS = DS = ES = SS = 0 (base 0), IP = CODE16, SP = 0xFFF0."""
        code = assemble(source + EPILOGUE, bits=16, org=CODE16)
        assert CODE16 + len(code) <= 0x3000, "16-bit guest does not fit its page"
        self.ram[CODE16:CODE16 + len(code)] = code
        set_real_mode(self.vcpu, 0, CODE16, sp=STACK16)

    # --- run loop ----------------------------------------------------------------------------
    def _check_errors(self) -> None:
        if self.errors:
            raise AssertionError("; ".join(self.errors))

    def run(self, timeout: float = TIMEOUT, max_exits: int = MAX_EXITS):
        """Run to the final RDMSR, completing IO and MEMORY exits; returns the exit count by reason."""
        vcpu, mach = self.vcpu, self.mach
        stop = getattr(vcpu, "stop", None)
        timer = threading.Timer(timeout, stop) if stop else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for _ in range(max_exits):
                ex = vcpu.run()
                self._check_errors()
                reason = ex.reason
                self.exits[reason] = self.exits.get(reason, 0) + 1
                if reason == nvmm.VCPU_EXIT_RDMSR:
                    if ex.rdmsr.msr != EXIT_MSR:
                        raise AssertionError(f"guest read MSR {ex.rdmsr.msr:#x} at rip={self._rip():#x}, "
                                             f"expected only the final RDMSR of {EXIT_MSR:#x}")
                    return dict(self.exits)
                if reason == nvmm.VCPU_EXIT_IO:
                    mach.assist_io(vcpu)
                elif reason == nvmm.VCPU_EXIT_MEMORY:
                    mach.assist_mem(vcpu)
                elif reason == nvmm.VCPU_EXIT_NONE:
                    pass
                elif reason == nvmm.VCPU_EXIT_STOPPED:
                    raise AssertionError(f"guest did not reach its final RDMSR within {timeout:.0f} s "
                                         f"(rip={self._rip():#x})")
                else:
                    name = nvmm.EXIT_NAMES.get(reason, hex(reason))
                    detail = f": {ex.inv.detail}" if reason == nvmm.VCPU_EXIT_INVALID else ""
                    raise AssertionError(f"unexpected {name} exit at rip={self._rip():#x}{detail}")
                self._check_errors()
            raise AssertionError(f"guest did not reach its final RDMSR after {max_exits} exits (rip={self._rip():#x})")
        finally:
            if timer:
                timer.cancel()

    def _rip(self) -> int:
        return self.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs[nvmm.X64_GPR_RIP]

    # --- results -----------------------------------------------------------------------------
    def mmio_u64(self, offset: int) -> int:
        return int.from_bytes(self.mmio[offset:offset + 8], "little")

    def mmio_writes_at(self, offset: int) -> int:
        """How many MMIO write callbacks touched byte `offset` of the MMIO page."""
        return sum(1 for w, off, size, _ in self.mmio_log if w and off <= offset < off + size)

    def gprs(self):
        return self.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs

    def close(self) -> None:
        try:
            self.mach.destroy()
        finally:
            if self.mem is not None:
                self.mem.close()
                self.mem = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_vm(driver: str, mmio_page: bool = True) -> ConformanceVM:
    require_driver(driver)
    return ConformanceVM(driver, mmio_page=mmio_page)
