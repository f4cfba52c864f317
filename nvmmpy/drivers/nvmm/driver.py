"""The nvmm driver: NetBSD / DragonFly /dev/nvmm, the kernel libnvmm's API was made for.

The ABI flavour is chosen at run time from the OS and the version the kernel reports
(system.negotiate). The kernel is reached only through a kernel object (system.DevNvmm, or one
given to install_kernel), which is how the tests run this driver on Linux against a fake NVMM.
"""
import errno

from ... import constants as nvmm
from ...capability import Capability
from ...errors import DriverUnavailable, NvmmError
from .abi import ffi
from .system import DevNvmm, NvmmSystem, host_os, not_here_reason

_kernel_override = None
_system = None


def install_kernel(kernel):
    """Use `kernel` (an object with ioctl/mmap/munmap/close and os_name) instead of /dev/nvmm,
    for every machine made from now on; None goes back to /dev/nvmm. Returns the previous one."""
    global _kernel_override, _system
    prev = _kernel_override
    _kernel_override = kernel
    _system = None
    return prev


def system() -> NvmmSystem:
    """The process-wide NVMM handle (opened on first use, as nvmm_init)."""
    global _system
    if _system is None:
        kernel = _kernel_override if _kernel_override is not None else DevNvmm()
        try:
            _system = NvmmSystem(kernel)
        except BaseException:
            if _kernel_override is None:
                kernel.close()
            raise
    return _system


def probe():
    """(usable, one-line reason). On any OS but NetBSD and DragonFly this touches nothing."""
    if _kernel_override is None and host_os() is None:
        return False, not_here_reason()
    try:
        s = system()
    except DriverUnavailable as e:
        return False, e.strerror
    fl = s.flavour
    return True, f"/dev/nvmm: {fl.name} NVMM version {fl.version}, {s.backend().upper()} backend"


class NvmmMachine:
    def __init__(self, machine, sysm: NvmmSystem):
        self.machine = machine
        self.sys = sysm
        args = ffi.new("struct nvmm_ioc_machine_create *")
        sysm.ioctl("MACHINE_CREATE", args)
        self.machid = args.machid
        self._destroyed = False

    # --- memory: NVMM's own hva/gpa model (the rules are checked first by memory.AreaMap) --------
    def hva_map(self, hva, size):
        a = ffi.new("struct nvmm_ioc_hva_map *")
        a.machid, a.hva, a.size, a.flags = self.machid, hva, size, 0
        self.sys.ioctl("HVA_MAP", a)

    def hva_unmap(self, hva, size):
        a = ffi.new("struct nvmm_ioc_hva_unmap *")
        a.machid, a.hva, a.size, a.flags = self.machid, hva, size, 0
        self.sys.ioctl("HVA_UNMAP", a)

    def gpa_map(self, area):
        """libnvmm aborts when this ioctl fails after its own checks; here it is an NvmmError and
        Machine.gpa_map forgets the area again."""
        a = ffi.new("struct nvmm_ioc_gpa_map *")
        a.machid, a.hva, a.gpa, a.size = self.machid, area.hva, area.gpa, area.size
        a.prot = area.prot & (nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)  # host PROT_* values: 1/2/4
        self.sys.ioctl("GPA_MAP", a)

    def gpa_unmap(self, area):
        a = ffi.new("struct nvmm_ioc_gpa_unmap *")
        a.machid, a.gpa, a.size = self.machid, area.gpa, area.size
        self.sys.ioctl("GPA_UNMAP", a)

    def vcpu_create(self, cpuid):
        from .vcpu import NvmmVCpu
        return NvmmVCpu(self.machine, self, cpuid)

    def destroy(self):
        if not self._destroyed:
            self._destroyed = True
            a = ffi.new("struct nvmm_ioc_machine_destroy *")
            a.machid = self.machid
            self.sys.ioctl("MACHINE_DESTROY", a)


SPEED = ("hardware virtualization: guest code runs at native speed; each exit costs a VCPU_RUN "
         "ioctl plus the Python handling; setstate/inject cost no system call (comm page)")


class Driver:
    name = "nvmm"

    def __init__(self):
        self.sys = system()
        self._cap = None

    def capability(self) -> Capability:
        if self._cap is None:
            s = self.sys
            c = s.raw_cap.cap
            fl = s.flavour
            backend = s.backend()
            self._cap = Capability(
                driver=self.name, version=c.version, state_size=c.state_size,
                max_machines=c.max_machines, max_vcpus=c.max_vcpus, max_ram=c.max_ram,
                mach_conf_support=c.arch.mach_conf_support, vcpu_conf_support=c.arch.vcpu_conf_support,
                xcr0_mask=c.arch.xcr0_mask, mxcsr_mask=c.arch.mxcsr_mask,
                conf_cpuid_maxops=c.arch.conf_cpuid_maxops, cpuid_exits=True,
                backend=backend,
                backend_detail=f"{fl.name} NVMM version {fl.version}, "
                               + ("Intel VMX" if backend == "vmx" else "AMD SVM"),
                speed_note=SPEED,
                extra={"flavour": fl.name,
                       "comm_page": "mmap of /dev/nvmm" if fl.comm_mmap else "returned by VCPU_CREATE",
                       "stop": "comm page stop flag" if fl.comm_stop else
                               "userland flag plus a signal (no comm page stop in this NVMM version)",
                       "mmio_instruction_bytes": "fetched by guest page walk" if backend == "vmx" else
                                                 "from SVM decode assists when the CPU has them"},
            )
        return self._cap

    def machine_create(self, machine) -> NvmmMachine:
        if not isinstance(machine.capability.max_ram, int) or machine.capability.max_ram <= 0:
            raise NvmmError(errno.EINVAL, "NVMM reported no guest RAM space")
        return NvmmMachine(machine, self.sys)
