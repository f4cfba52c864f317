"""The kvm driver: NVMM's machine model on Linux /dev/kvm (VMX, SVM or kvm_pvm underneath)."""
import errno
import os

from ... import constants as nvmm
from ...capability import Capability
from ...errors import DriverUnavailable, NvmmError
from ...nvmm_abi import ffi as nvmm_ffi
from . import abi
from .abi import ffi
from .detect import SPEED_NOTES, kvm_backend
from .extensions import KvmExtensions
from .system import int_arg, ioctl, system
from .vcpu import KvmVCpu

# KVM needs three pages for the real-mode TSS and one for the identity map on VMX; put them where
# QEMU and Firecracker do, just under 4 GiB.
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000


def probe():
    try:
        system()
    except DriverUnavailable as e:
        return False, e.strerror
    backend, detail = kvm_backend()
    return True, f"/dev/kvm: {detail}"


def slower_than_software(guest_mode):
    """Why /dev/kvm would run a guest in `guest_mode` slower than the unicorn driver, or None."""
    backend, _ = kvm_backend()
    if backend == "pvm" and guest_mode != "cpl3":
        what = {"real": "real-mode", "cpl0": "CPL0"}.get(guest_mode, "real-mode and CPL0")
        return (f"/dev/kvm is kvm_pvm, which emulates {what} guest code in the host kernel "
                "(one instruction at a time, slower than unicorn); only CPL3 long-mode code runs natively")
    return None


class KvmMachine(KvmExtensions):
    def __init__(self, machine, sysm):
        self.machine = machine
        self.sys = sysm
        self.check_mmio = machine.check_mmio
        try:
            self.vmfd = ioctl(sysm.fd, abi.KVM_CREATE_VM)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_CREATE_VM failed: {e.strerror}") from None
        os.set_inheritable(self.vmfd, False)
        for request, arg in ((abi.KVM_SET_TSS_ADDR, int_arg(TSS_ADDR)),
                             (abi.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", IDENTITY_MAP_ADDR))):
            try:
                ioctl(self.vmfd, request, arg)
            except OSError:
                pass  # only VMX without unrestricted guest needs these
        if sysm.user_space_msr:
            cap = ffi.new("struct kvm_enable_cap *")
            cap.cap = abi.KVM_CAP_X86_USER_SPACE_MSR
            cap.args[0] = abi.KVM_MSR_EXIT_REASON_UNKNOWN | abi.KVM_MSR_EXIT_REASON_FILTER
            try:
                ioctl(self.vmfd, abi.KVM_ENABLE_CAP, cap)
            except OSError:
                sysm.user_space_msr = False
        self._slots = {}  # id(area) -> slot
        self._free = []
        self._next_slot = 0
        self._region = ffi.new("struct kvm_userspace_memory_region *")
        self._init_extensions()

    def hva_map(self, hva, size):
        """KVM maps ordinary process memory: nothing to tell the kernel."""

    def hva_unmap(self, hva, size):
        pass

    def gpa_map(self, area):
        if not area.prot & nvmm.PROT_WRITE and not self.sys.readonly_mem:
            raise NvmmError(errno.EOPNOTSUPP, "this KVM cannot map read-only guest memory (no KVM_CAP_READONLY_MEM)")
        slot = self._free.pop() if self._free else self._next_slot
        if slot == self._next_slot:
            if slot >= self.sys.nr_memslots:
                raise NvmmError(errno.ENOBUFS, f"KVM allows at most {self.sys.nr_memslots} memory slots")
            self._next_slot += 1
        self._set_region(slot, area.gpa, area.size, area.hva,
                         0 if area.prot & nvmm.PROT_WRITE else abi.KVM_MEM_READONLY)
        self._slots[id(area)] = slot

    def gpa_unmap(self, area):
        slot = self._slots.pop(id(area))
        self._set_region(slot, area.gpa, 0, area.hva, 0)
        self._free.append(slot)

    def _set_region(self, slot, gpa, size, hva, flags):
        r = self._region
        r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr = slot, flags, gpa, size, hva
        try:
            ioctl(self.vmfd, abi.KVM_SET_USER_MEMORY_REGION, r)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_SET_USER_MEMORY_REGION gpa {gpa:#x}+{size:#x} failed: {e.strerror}") from None

    def vcpu_create(self, cpuid):
        return KvmVCpu(self.machine, self, cpuid)

    def destroy(self):
        if self.vmfd >= 0:
            os.close(self.vmfd)
            self.vmfd = -1


class Driver:
    name = "kvm"

    def __init__(self):
        self.sys = system()
        self.backend, self.backend_detail = kvm_backend()
        self._cap = None

    def capability(self) -> Capability:
        if self._cap is None:
            s = self.sys
            xsave = s.cpuid_leaf(0xD, 0)
            xcr0_mask = (xsave["eax"] | (xsave["edx"] << 32)) if xsave else 0x3
            self._cap = Capability(
                driver=self.name,
                version=nvmm.USER_VERSION,
                state_size=nvmm_ffi.sizeof("struct nvmm_x64_state"),
                max_machines=0,
                max_vcpus=s.max_vcpus,
                max_ram=1 << s.phys_bits(),
                vcpu_conf_support=nvmm.CAP_ARCH_VCPU_CONF_CPUID,
                xcr0_mask=xcr0_mask,
                mxcsr_mask=0xFFFF,
                conf_cpuid_maxops=0,
                cpuid_exits=False,
                backend=self.backend,
                backend_detail=self.backend_detail,
                speed_note=SPEED_NOTES.get(self.backend, SPEED_NOTES["unknown"]),
                extra={
                    "kvm_api_version": abi.KVM_API_VERSION,
                    "memory_slots": s.nr_memslots,
                    "user_space_msr": s.user_space_msr,
                    "readonly_memory": s.readonly_mem,
                    "xsave_size": s.xsave_size,
                    "cpuid_exits": "not possible: KVM answers CPUID in the kernel",
                    "extensions": sorted(n for n, cap in (("ioeventfd", abi.KVM_CAP_IOEVENTFD),
                                                          ("irqchip", abi.KVM_CAP_IRQCHIP),
                                                          ("irqfd", abi.KVM_CAP_IRQFD)) if s.check(cap)),
                },
            )
            if self.backend == "pvm":
                self._cap.extra["cpuid_masks"] = ("hypervisor leaves (0x40000000+) only: kvm_pvm replaces the "
                                                  "standard leaves with the host's values, and CPUID at CPL3 "
                                                  "runs on the host CPU unfiltered")
                self._cap.extra["tsc"] = "not writable under kvm_pvm: guests read the host TSC"
                self._cap.extra["iopl"] = "ignored at CPL3 by kvm_pvm: give CPL3 port access with the TSS I/O bitmap"
        return self._cap

    def machine_create(self, machine) -> KvmMachine:
        return KvmMachine(machine, self.sys)
