"""The process-wide /dev/kvm handle: open with clear errors, extensions, supported CPUID."""
import errno
import os

from ...errors import DriverUnavailable, NvmmError
from . import abi
from .abi import ffi, libc

DEV_KVM = "/dev/kvm"


def ioctl(fd: int, request: int, arg=abi.NULL_ARG) -> int:
    """ioctl(2) with a cffi pointer or integer cdata argument; OSError on failure."""
    r = libc.ioctl(fd, request, arg)
    if r < 0:
        e = ffi.errno
        raise OSError(e, os.strerror(e))
    return r


def int_arg(value: int):
    return ffi.cast("unsigned long", value)


def open_kvm(path: str = DEV_KVM) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DriverUnavailable(f"{path} does not exist: KVM is not available on this machine (load kvm_intel or "
                                "kvm_amd, or enable virtualization in the firmware or VM settings); "
                                "use --accel unicorn for software emulation") from None
    except PermissionError:
        raise DriverUnavailable(f"no permission to open {path}: add your user to the 'kvm' group "
                                "(sudo usermod -aG kvm $USER, then log in again) or run as root",
                                errno.EACCES) from None
    except OSError as e:
        raise DriverUnavailable(f"cannot open {path}: {e.strerror}", e.errno) from None
    try:
        version = ioctl(fd, abi.KVM_GET_API_VERSION)
    except OSError as e:
        os.close(fd)
        raise DriverUnavailable(f"{path} does not answer KVM_GET_API_VERSION: {e.strerror}") from None
    if version != abi.KVM_API_VERSION:
        os.close(fd)
        raise DriverUnavailable(f"{path} speaks KVM API {version}, nvmmpy needs {abi.KVM_API_VERSION}")
    return fd


class KvmSystem:
    """One per process: the /dev/kvm fd and what it supports."""

    REQUIRED = {
        abi.KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY",
        abi.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
        abi.KVM_CAP_SYNC_REGS: "KVM_CAP_SYNC_REGS (Linux 4.17+)",
        abi.KVM_CAP_VCPU_EVENTS: "KVM_CAP_VCPU_EVENTS",
        abi.KVM_CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
    }

    def __init__(self, path: str = DEV_KVM):
        self.fd = open_kvm(path)
        missing = [name for cap, name in self.REQUIRED.items() if not self.check(cap)]
        if missing:
            raise DriverUnavailable(f"{path} lacks {', '.join(missing)}; a newer kernel is needed")
        self.mmap_size = ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)
        self.sync_regs = self.check(abi.KVM_CAP_SYNC_REGS)
        self.user_space_msr = bool(self.check(abi.KVM_CAP_X86_USER_SPACE_MSR))
        self.readonly_mem = bool(self.check(abi.KVM_CAP_READONLY_MEM))
        self.xsave_size = max(4096, self.check(abi.KVM_CAP_XSAVE2)) if self.check(abi.KVM_CAP_XSAVE) else 0
        self.xcrs = bool(self.check(abi.KVM_CAP_XCRS))
        self.debugregs = bool(self.check(abi.KVM_CAP_DEBUGREGS))
        self.max_vcpus = self.check(abi.KVM_CAP_MAX_VCPUS) or self.check(abi.KVM_CAP_NR_VCPUS) or 4
        self.nr_memslots = self.check(abi.KVM_CAP_NR_MEMSLOTS) or 32
        self.supported_cpuid = self._supported_cpuid()

    def check(self, cap: int) -> int:
        try:
            return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, int_arg(cap))
        except OSError:
            return 0

    def _supported_cpuid(self) -> list:
        """KVM_GET_SUPPORTED_CPUID as a list of dicts (function, index, flags, eax..edx)."""
        n = 128
        while True:
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
            # cffi allocates the flexible array through the initializer's length
            buf.nent = n
            try:
                ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf)
                break
            except OSError as e:
                if e.errno != errno.E2BIG or n >= 4096:
                    raise NvmmError(e.errno, f"KVM_GET_SUPPORTED_CPUID failed: {e.strerror}") from None
                n *= 2
        out = []
        for i in range(buf.nent):
            e = buf.entries[i]
            out.append(dict(function=e.function, index=e.index, flags=e.flags,
                            eax=e.eax, ebx=e.ebx, ecx=e.ecx, edx=e.edx))
        return out

    def cpuid_leaf(self, function: int, index: int = 0):
        for e in self.supported_cpuid:
            if e["function"] == function and e["index"] == index:
                return e
        return None

    def phys_bits(self) -> int:
        e = self.cpuid_leaf(0x80000008)
        return (e["eax"] & 0xFF) if e and e["eax"] & 0xFF else 36


_system = None


def system() -> KvmSystem:
    global _system
    if _system is None:
        _system = KvmSystem()
    return _system
