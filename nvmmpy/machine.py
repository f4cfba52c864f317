"""Machine: libnvmm's nvmm_machine over any driver (kvm, nvmm, unicorn)."""
import errno

from . import constants as nvmm
from nvmmpy.emulator.pagewalk import PageFault, gva_to_gpa

from .capability import Capability
from .drivers import choose
from .errors import NvmmError
from .extensions import MachineExtensions
from .memory import AreaMap, host_buffer

_drivers = {}


def _driver(name: str, guest_mode: str | None = None):
    cls, why = choose(name, guest_mode)
    if cls not in _drivers:
        _drivers[cls] = cls()
    return _drivers[cls], why


def capability(driver: str = "auto") -> Capability:
    """nvmm_capability: what the driver (and the hardware under it) offers."""
    return _driver(driver)[0].capability()


class Machine(MachineExtensions):
    """A virtual machine: guest-physical memory map and vCPUs (and, on some drivers, the calls of
    nvmmpy.extensions).

    with Machine(driver="kvm") as mach:
        mem = HostMemory(1 << 20); mach.hva_map(mem.address, mem.size)
        mach.gpa_map(mem.address, 0, mem.size, PROT_READ | PROT_WRITE | PROT_EXEC)
        vcpu = mach.vcpu_create(0)
    """

    def __init__(self, driver: str = "auto", *, guest_mode: str | None = None, check_mmio: bool = False,
                 soft_exits: str = "scan"):
        """driver: "auto", "kvm" or "unicorn". guest_mode ("real", "cpl0", "cpl3") lets "auto" skip a
        /dev/kvm slower than software for that code. check_mmio (kvm): decode every MMIO exit's
        instruction with the emulator too and record disagreements in vcpu.mmio_disagreements.
        soft_exits (unicorn): "scan" finds port I/O, MSR and HLT instructions by scanning each code
        page on its first execution and exits before them, as a hardware vCPU does; "hooks" performs
        port I/O in unicorn's instruction hooks and reports it as a completed IO exit, with no page
        scanning (for large guests such as Linux: thousands of code pages, self-modifying code)."""
        if soft_exits not in ("scan", "hooks"):
            raise ValueError(f"soft_exits must be 'scan' or 'hooks', not {soft_exits!r}")
        self.check_mmio = check_mmio
        self.soft_exits = soft_exits
        drv, why = _driver(driver, guest_mode)
        self.driver = drv
        self.driver_name = drv.name
        self.driver_reason = why
        self.capability = drv.capability()
        self.areas = AreaMap(self.capability.max_ram)
        self._impl = drv.machine_create(self)
        self.vcpus = {}
        self._destroyed = False

    # --- memory --------------------------------------------------------------------------------
    def hva_map(self, hva: int, size: int) -> None:
        self._alive()
        self.areas.hva_map(hva, size)
        try:
            self._impl.hva_map(hva, size)
        except BaseException:
            del self.areas.hva[hva]
            raise

    def hva_unmap(self, hva: int, size: int) -> None:
        self._alive()
        self.areas.hva_unmap(hva, size)
        self._impl.hva_unmap(hva, size)

    def gpa_map(self, hva: int, gpa: int, size: int, prot: int) -> None:
        self._alive()
        self.areas.check_gpa_map(hva, gpa, size, prot)
        area = self.areas.add(hva, gpa, size, prot)
        try:
            self._impl.gpa_map(area)
        except BaseException:
            self.areas.remove(area)
            raise

    def gpa_unmap(self, hva: int, gpa: int, size: int) -> None:
        self._alive()
        area = self.areas.find_exact(hva, gpa, size)
        self._impl.gpa_unmap(area)
        self.areas.remove(area)

    def gpa_to_hva(self, gpa: int):
        """(hva, prot) of a guest-physical address; ENOENT if unmapped (MMIO)."""
        return self.areas.gpa_to_hva(gpa)

    def read_guest(self, gpa: int, size: int) -> bytes:
        """Copy guest RAM (must lie in one mapped area)."""
        return bytes(self._ram_buffer(gpa, size))

    def write_guest(self, gpa: int, data) -> None:
        self._ram_buffer(gpa, len(data))[:] = data

    def _ram_buffer(self, gpa: int, size: int):
        a = self.areas.lookup(gpa)
        if a is None or gpa + size > a.gpa + a.size:
            raise NvmmError(errno.EFAULT, f"guest range {gpa:#x}+{size:#x} is not inside mapped RAM")
        return host_buffer(a.hva + gpa - a.gpa, size)

    # --- vCPUs ---------------------------------------------------------------------------------
    def vcpu_create(self, cpuid: int):
        self._alive()
        if not isinstance(cpuid, int) or not 0 <= cpuid < self.capability.max_vcpus:
            raise NvmmError(errno.EINVAL, f"vCPU id {cpuid!r} out of range 0..{self.capability.max_vcpus - 1}")
        if cpuid in self.vcpus:
            raise NvmmError(errno.EEXIST, f"vCPU {cpuid} already exists")
        vcpu = self._impl.vcpu_create(cpuid)
        self.vcpus[cpuid] = vcpu
        return vcpu

    def vcpu_destroy(self, vcpu) -> None:
        if self.vcpus.get(getattr(vcpu, "cpuid", None)) is not vcpu:
            raise NvmmError(errno.ENOENT, "no such vCPU in this machine")
        vcpu._destroy()   # first: a vCPU that refuses (busy on this very thread) stays registered
        del self.vcpus[vcpu.cpuid]

    # --- libnvmm-style helpers ------------------------------------------------------------------
    def assist_io(self, vcpu) -> None:
        vcpu.assist_io()

    def assist_mem(self, vcpu) -> None:
        vcpu.assist_mem()

    def gva_to_gpa(self, vcpu, gva: int):
        """(gpa, prot) for a guest-virtual address, walking the vCPU's page tables (EFAULT if unmapped)."""
        vcpu.getstate(nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS)
        st = vcpu.state
        try:
            return gva_to_gpa(self.read_guest, st.crs[nvmm.X64_CR_CR0], st.crs[nvmm.X64_CR_CR3],
                              st.crs[nvmm.X64_CR_CR4], st.msrs[nvmm.X64_MSR_EFER], gva)
        except PageFault as e:
            raise NvmmError(errno.EFAULT, f"gva {gva:#x} does not translate: {e.reason}") from None

    # --- lifetime -------------------------------------------------------------------------------
    def destroy(self) -> None:
        if self._destroyed:
            return
        for vcpu in list(self.vcpus.values()):
            self.vcpu_destroy(vcpu)
        self._impl.destroy()
        self._destroyed = True

    def _alive(self) -> None:
        if self._destroyed:
            raise NvmmError(errno.ENOENT, "machine was destroyed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def __del__(self):
        try:
            self.destroy()
        except Exception:
            pass
