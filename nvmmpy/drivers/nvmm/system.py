"""The host side of NVMM: which OS this is, /dev/nvmm opened as libnvmm opens it, the kernel's
version negotiated into an ABI flavour, and the one seam the driver talks through.

The driver never calls ioctl(2) or mmap(2) itself: it calls a *kernel object* with
    ioctl(request: int, arg: cdata pointer) -> int      (OSError with errno on failure)
    mmap(size: int, offset: int) -> int                 (NetBSD comm pages: mmap of /dev/nvmm)
    munmap(address: int, size: int) -> None
    close() -> None
    os_name: "netbsd" | "dragonfly"
`DevNvmm` is the real one. Tests hand the driver a fake that answers as NVMM would (the comm page
is then an anonymous mapping the fake also writes), so the whole driver runs without the device.
"""
import errno
import os
import platform
import sys

from ...errors import DriverUnavailable, NvmmError
from ...nvmm_abi import ffi as nvmm_ffi
from . import abi
from .abi import ffi, libc

DEV_NVMM = "/dev/nvmm"
EPROGMISMATCH = getattr(errno, "EPROGMISMATCH", errno.EPROTO)

_PROT_READ, _PROT_WRITE = 0x1, 0x2
_MAP_SHARED = 0x1           # same value on NetBSD and DragonFly
_MAP_FAILED = (1 << 64) - 1


def host_os(system: str | None = None) -> str | None:
    """"netbsd", "dragonfly", or None for any other OS (NVMM exists only on those two)."""
    s = (system if system is not None else platform.system() or sys.platform).lower()
    if s.startswith("netbsd"):
        return "netbsd"
    if s.startswith("dragonfly"):
        return "dragonfly"
    return None


def not_here_reason(system: str | None = None) -> str:
    name = system if system is not None else (platform.system() or sys.platform)
    return f"NVMM exists only on NetBSD and DragonFly BSD (this is {name})"


class DevNvmm:
    """/dev/nvmm, opened O_RDONLY|O_CLOEXEC as nvmm_init() opens it (the kernel refuses an open
    without O_CLOEXEC, and a machine must not leak across fork)."""

    def __init__(self, path: str = DEV_NVMM, os_name: str | None = None):
        self.os_name = os_name or host_os()
        if self.os_name is None:
            raise DriverUnavailable(not_here_reason())
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            load = "modload nvmm" if self.os_name == "netbsd" else "kldload nvmm"
            raise DriverUnavailable(f"{path} does not exist: load NVMM ({load}, as root) on a CPU with VMX "
                                    "(EPT + unrestricted guest) or SVM; or use the unicorn driver") from None
        except PermissionError:
            raise DriverUnavailable(f"no permission to open {path}: add your user to the 'nvmm' group "
                                    "(then log in again) or run as root", errno.EACCES) from None
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise DriverUnavailable(f"{path}: NVMM found no usable backend on this CPU (needs VMX with EPT "
                                        "and unrestricted guest, or SVM)", e.errno) from None
            raise DriverUnavailable(f"cannot open {path}: {e.strerror}", e.errno) from None

    def ioctl(self, request: int, arg) -> int:
        r = libc.ioctl(self.fd, ffi.cast("unsigned long", request), arg)
        if r < 0:
            e = ffi.errno
            raise OSError(e, os.strerror(e))
        return r

    def mmap(self, size: int, offset: int) -> int:
        p = libc.mmap(ffi.NULL, size, _PROT_READ | _PROT_WRITE, _MAP_SHARED, self.fd, offset)
        addr = int(ffi.cast("uintptr_t", p))
        if addr == _MAP_FAILED:
            e = ffi.errno
            raise OSError(e, os.strerror(e))
        return addr

    def munmap(self, address: int, size: int) -> None:
        libc.munmap(ffi.cast("void *", address), size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def negotiate(kernel):
    """(Flavour, raw capability) for a kernel object: CAPABILITY, then the version and state size
    checks nvmm_init() and QEMU make, with a message that says what is supported."""
    cap = ffi.new("struct nvmm_ioc_capability *")
    request = abi.COMMON_IOCTLS["CAPABILITY"][0]
    try:
        kernel.ioctl(request, cap)
    except OSError as e:
        raise DriverUnavailable(f"{DEV_NVMM} does not answer NVMM_IOC_CAPABILITY ({e.strerror}): "
                                "not an NVMM device, or an NVMM this library does not know") from None
    osn = kernel.os_name
    version = cap.cap.version
    if osn not in abi.SUPPORTED_VERSIONS:
        raise DriverUnavailable(not_here_reason(osn))
    if version not in abi.SUPPORTED_VERSIONS[osn]:
        raise DriverUnavailable(f"{DEV_NVMM} speaks NVMM kernel version {version} on {osn}; nvmmpy supports "
                                f"{abi.supported_text()}", EPROGMISMATCH)
    state_size = nvmm_ffi.sizeof("struct nvmm_x64_state")
    if cap.cap.state_size != state_size:
        raise DriverUnavailable(f"{DEV_NVMM} has a {cap.cap.state_size}-byte vCPU state, nvmmpy knows the "
                                f"{state_size}-byte one: a different NVMM ABI", EPROGMISMATCH)
    return abi.Flavour(osn, version), cap


class NvmmSystem:
    """One per kernel object: the negotiated flavour, the capability, and named ioctls."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.flavour, self.raw_cap = negotiate(kernel)

    def ioctl(self, name: str, arg) -> int:
        try:
            return self.kernel.ioctl(self.flavour.request(name), arg)
        except OSError as e:
            raise NvmmError(e.errno, f"NVMM_IOC_{name} failed: {e.strerror}") from None

    def backend(self) -> str:
        """VMX offers CPUID and TPR configuration, SVM only CPUID (reference/nvmm.md sec. 1)."""
        from ... import constants as nvmm
        return "vmx" if self.raw_cap.cap.arch.vcpu_conf_support & nvmm.CAP_ARCH_VCPU_CONF_TPR else "svm"
