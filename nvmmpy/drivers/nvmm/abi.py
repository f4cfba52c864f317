"""NVMM's /dev/nvmm user ABI (nvmm.h, nvmm_ioctl.h) as cffi declarations and ioctl numbers, for
both flavours: NetBSD (comm page mmap'ed from /dev/nvmm at NVMM_COMM_OFF; version 2 adds the comm
page's `stop`) and DragonFly (VCPU_CREATE returns the comm page's address; INJECT is gone).

The x86 structs (state, exit, event, capability, CPUID conf) come from nvmmpy.nvmm_abi, which every
driver shares; this FFI `include`s it and adds what only the nvmm driver needs. ioctl numbers are
computed from the BSD _IOC encoding and the sizes cffi derives, so a wrong declaration shows up as a
wrong number in the layout tests rather than as a kernel writing past a buffer.
"""
from nvmmpy.emulator.arch import PAGE_SIZE  # noqa: F401 - the comm page is one page: abi.PAGE_SIZE

from ...ffi_build import load

# struct nvmm_comm_page: both versions' fields. In C the FXSAVE area inside nvmm_x64_state is
# __aligned(16), which puts `state` at offset 32; cffi cannot express alignment attributes, so the
# padding is explicit.
_COMM_PAGE_FIELDS = """
    uint64_t state_wanted;
    uint64_t state_cached;
    uint64_t state_commit;
    uint64_t _align_pad;
    struct nvmm_x64_state state;
    bool event_commit;
    struct nvmm_vcpu_event event;"""

CDEF = """
struct nvmm_comm_page_v2 {""" + _COMM_PAGE_FIELDS + """
    volatile int stop;                 /* NetBSD NVMM_KERN_VERSION 2 */
};
struct nvmm_comm_page_v1 {""" + _COMM_PAGE_FIELDS + """   /* NetBSD version 1 and DragonFly: no stop */
};

struct nvmm_ioc_capability { struct nvmm_capability cap; };
struct nvmm_ioc_machine_create { uint32_t machid; };
struct nvmm_ioc_machine_destroy { uint32_t machid; };
struct nvmm_ioc_machine_configure { uint32_t machid; uint64_t op; void *conf; };
struct nvmm_ioc_vcpu_create_netbsd { uint32_t machid; uint32_t cpuid; };
struct nvmm_ioc_vcpu_create_dragonfly { uint32_t machid; uint32_t cpuid; void *comm; };
struct nvmm_ioc_vcpu_destroy { uint32_t machid; uint32_t cpuid; };
struct nvmm_ioc_vcpu_configure { uint32_t machid; uint32_t cpuid; uint64_t op; void *conf; };
struct nvmm_ioc_vcpu_setstate { uint32_t machid; uint32_t cpuid; };
struct nvmm_ioc_vcpu_getstate { uint32_t machid; uint32_t cpuid; };
struct nvmm_ioc_vcpu_inject { uint32_t machid; uint32_t cpuid; };
struct nvmm_ioc_vcpu_run { uint32_t machid; uint32_t cpuid; struct nvmm_vcpu_exit exit; };
struct nvmm_ioc_gpa_map { uint32_t machid; uintptr_t hva; uint64_t gpa; size_t size; int prot; };
struct nvmm_ioc_gpa_unmap { uint32_t machid; uint64_t gpa; size_t size; };
struct nvmm_ioc_hva_map { uint32_t machid; uintptr_t hva; size_t size; int flags; };
struct nvmm_ioc_hva_unmap { uint32_t machid; uintptr_t hva; size_t size; int flags; };
struct nvmm_ctl_mach_info { uint32_t machid; uint32_t nvcpus; uint64_t nram; int32_t pid; int64_t time; };
struct nvmm_ioc_ctl { int op; void *data; size_t size; };

int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t offset);
int munmap(void *addr, size_t len);
"""

ffi = load("nvmmpy.drivers.nvmm._ffi", CDEF)  # pre-parsed (ffi_build); includes nvmm_abi's types

# BSD <sys/ioccom.h>: direction in bits 30-31, parameter length in bits 16-28, group, number
IOCPARM_MASK = 0x1FFF
IOC_VOID = 0x20000000
IOC_OUT = 0x40000000     # copy out to user space (_IOR)
IOC_IN = 0x80000000      # copy in from user space (_IOW)
IOC_INOUT = IOC_IN | IOC_OUT
NVMM_GROUP = ord("N")


def ioc(direction: int, nr: int, ctype: str, group: int = NVMM_GROUP) -> int:
    return direction | ((ffi.sizeof(ctype) & IOCPARM_MASK) << 16) | (group << 8) | nr


def iocparm_len(request: int) -> int:
    return (request >> 16) & IOCPARM_MASK


def _ior(nr, ctype):
    return ioc(IOC_OUT, nr, ctype)


def _iow(nr, ctype):
    return ioc(IOC_IN, nr, ctype)


def _iowr(nr, ctype):
    return ioc(IOC_INOUT, nr, ctype)


# The ioctls both flavours share (same numbers, same argument structs).
COMMON_IOCTLS = {
    "CAPABILITY": (_ior(0, "struct nvmm_ioc_capability"), "struct nvmm_ioc_capability"),
    "MACHINE_CREATE": (_iowr(1, "struct nvmm_ioc_machine_create"), "struct nvmm_ioc_machine_create"),
    "MACHINE_DESTROY": (_iow(2, "struct nvmm_ioc_machine_destroy"), "struct nvmm_ioc_machine_destroy"),
    "MACHINE_CONFIGURE": (_iow(3, "struct nvmm_ioc_machine_configure"), "struct nvmm_ioc_machine_configure"),
    "VCPU_DESTROY": (_iow(5, "struct nvmm_ioc_vcpu_destroy"), "struct nvmm_ioc_vcpu_destroy"),
    "VCPU_CONFIGURE": (_iow(6, "struct nvmm_ioc_vcpu_configure"), "struct nvmm_ioc_vcpu_configure"),
    "VCPU_SETSTATE": (_iow(7, "struct nvmm_ioc_vcpu_setstate"), "struct nvmm_ioc_vcpu_setstate"),
    "VCPU_GETSTATE": (_iow(8, "struct nvmm_ioc_vcpu_getstate"), "struct nvmm_ioc_vcpu_getstate"),
    "VCPU_RUN": (_iowr(10, "struct nvmm_ioc_vcpu_run"), "struct nvmm_ioc_vcpu_run"),
    "GPA_MAP": (_iow(11, "struct nvmm_ioc_gpa_map"), "struct nvmm_ioc_gpa_map"),
    "GPA_UNMAP": (_iow(12, "struct nvmm_ioc_gpa_unmap"), "struct nvmm_ioc_gpa_unmap"),
    "HVA_MAP": (_iow(13, "struct nvmm_ioc_hva_map"), "struct nvmm_ioc_hva_map"),
    "HVA_UNMAP": (_iow(14, "struct nvmm_ioc_hva_unmap"), "struct nvmm_ioc_hva_unmap"),
    "CTL": (_iow(20, "struct nvmm_ioc_ctl"), "struct nvmm_ioc_ctl"),
}

NVMM_CTL_MACH_INFO = 0


def comm_off(machid: int, cpuid: int) -> int:
    """NVMM_COMM_OFF: the mmap offset of a vCPU's comm page on /dev/nvmm (NetBSD)."""
    return ((machid & 0xFF) << 20) | ((cpuid & 0xFF) << 12)


class Flavour:
    """One kernel ABI: its ioctl table, VCPU_CREATE form, comm page layout and how to map it.

    name: "netbsd" or "dragonfly"; version: the kernel's NVMM_KERN_VERSION (cap.version).
    """

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = version
        self.ioctls = dict(COMMON_IOCTLS)
        if name == "netbsd":
            self.vcpu_create_type = "struct nvmm_ioc_vcpu_create_netbsd"
            self.ioctls["VCPU_CREATE"] = (_iow(4, self.vcpu_create_type), self.vcpu_create_type)
            self.ioctls["VCPU_INJECT"] = (_iow(9, "struct nvmm_ioc_vcpu_inject"), "struct nvmm_ioc_vcpu_inject")
            self.comm_mmap = True        # mmap(/dev/nvmm, NVMM_COMM_OFF(machid, cpuid))
            self.comm_stop = version >= 2
        elif name == "dragonfly":
            self.vcpu_create_type = "struct nvmm_ioc_vcpu_create_dragonfly"
            self.ioctls["VCPU_CREATE"] = (_iowr(4, self.vcpu_create_type), self.vcpu_create_type)
            self.comm_mmap = False       # VCPU_CREATE maps it and returns args.comm
            self.comm_stop = False
        else:
            raise ValueError(f"unknown NVMM flavour {name!r}")
        self.comm_type = "struct nvmm_comm_page_v2" if self.comm_stop else "struct nvmm_comm_page_v1"
        self.names = {num: n for n, (num, _) in self.ioctls.items()}

    def request(self, name: str) -> int:
        return self.ioctls[name][0]

    def arg_type(self, name: str) -> str:
        return self.ioctls[name][1]

    def __repr__(self) -> str:
        return f"<NVMM {self.name} v{self.version}>"


# What this library speaks: NetBSD 9.0's ABI (v1) and the 2021 one with nvmm_vcpu_stop (v2), and
# DragonFly's (v1 and v2 headers: VCPU_CREATE returning the comm page, no stop, no INJECT).
SUPPORTED_VERSIONS = {"netbsd": (1, 2), "dragonfly": (1, 2)}


def supported_text() -> str:
    return "; ".join(f"{n} NVMM version {'/'.join(map(str, v))}" for n, v in SUPPORTED_VERSIONS.items())


libc = ffi.dlopen(None)
