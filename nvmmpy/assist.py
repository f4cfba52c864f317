"""Assist callback objects and vCPU configuration structures (libnvmm's nvmm_io, nvmm_mem, confs).

An assist calls `callbacks.io(io)` / `callbacks.mem(mem)` once per element accessed. The same
IoAccess / MemAccess object is reused for every call: keep no reference to it or to `.data`.
For IN and MMIO reads the callback fills `data` (a writable buffer of `size` bytes); for OUT
and MMIO writes it reads it.
"""
import errno

from .errors import NvmmError


class IoAccess:
    __slots__ = ("mach", "vcpu", "port", "in_", "size", "data")

    def __init__(self, mach, vcpu):
        self.mach, self.vcpu = mach, vcpu
        self.port = 0
        self.in_ = False
        self.size = 0
        self.data = None


class MemAccess:
    __slots__ = ("mach", "vcpu", "gpa", "write", "size", "data")

    def __init__(self, mach, vcpu):
        self.mach, self.vcpu = mach, vcpu
        self.gpa = 0
        self.write = False
        self.size = 0
        self.data = None


def _unset_io(io):
    raise NvmmError(errno.EINVAL, f"IO exit on port {io.port:#x} but no io callback is configured (VCPU_CONF_CALLBACKS)")


def _unset_mem(mem):
    raise NvmmError(errno.EINVAL, f"MEMORY exit at gpa {mem.gpa:#x} but no mem callback is configured (VCPU_CONF_CALLBACKS)")


class AssistCallbacks:
    """struct nvmm_assist_callbacks: `io(IoAccess)` and `mem(MemAccess)`; either may be None."""
    __slots__ = ("io", "mem")

    def __init__(self, io=None, mem=None):
        self.io = io if io is not None else _unset_io
        self.mem = mem if mem is not None else _unset_mem


class CpuidConf:
    """struct nvmm_vcpu_conf_cpuid for one leaf.

    mask=True: after the driver's own CPUID values, clear `del_` bits then set `set` bits
    (each a 4-tuple eax, ebx, ecx, edx). exit=True: return a CPUID exit for that leaf.
    Neither: remove any configuration of the leaf.
    """
    __slots__ = ("leaf", "mask", "exit", "set", "del_")

    def __init__(self, leaf: int, *, mask: bool = False, exit: bool = False,
                 set=(0, 0, 0, 0), del_=(0, 0, 0, 0)):
        self.leaf, self.mask, self.exit = leaf, mask, exit
        self.set, self.del_ = tuple(set), tuple(del_)

    def validate(self) -> None:
        if self.mask and self.exit:
            raise NvmmError(errno.EINVAL, f"CPUID leaf {self.leaf:#x}: mask and exit are exclusive")
        if len(self.set) != 4 or len(self.del_) != 4:
            raise NvmmError(errno.EINVAL, "CPUID set/del masks are 4-tuples (eax, ebx, ecx, edx)")
        for s, d in zip(self.set, self.del_):
            if s & d:
                raise NvmmError(errno.EINVAL, f"CPUID leaf {self.leaf:#x}: a bit is both set and deleted")
            if not (0 <= s < 1 << 32 and 0 <= d < 1 << 32):
                raise NvmmError(errno.EINVAL, "CPUID mask values are 32-bit")
        if not 0 <= self.leaf < 1 << 32:
            raise NvmmError(errno.EINVAL, f"CPUID leaf {self.leaf} is not a 32-bit value")


class TprConf:
    """struct nvmm_vcpu_conf_tpr: exit_changed=True asks for TPR_CHANGED exits on CR8 writes."""
    __slots__ = ("exit_changed",)

    def __init__(self, exit_changed: bool = False):
        self.exit_changed = exit_changed
