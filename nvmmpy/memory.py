"""Host memory for guests and NVMM's mapping rules (hva_map / gpa_map bookkeeping).

Every driver shares this bookkeeping so that alignment, overlap and range errors are NVMM's
whatever the kernel underneath: KVM, for instance, has no hva_map at all.
"""
import bisect
import errno
import mmap
import platform
import sys

from .constants import PAGE_SIZE, MAX_HVA_MAPPINGS, PROT_READ, PROT_WRITE, PROT_EXEC
from .errors import NvmmError
from .nvmm_abi import ffi

_PAGE_MASK = PAGE_SIZE - 1
# Reserve no swap for guest RAM: pages cost host memory only when the guest touches them, so a
# guest may have more RAM than the host (as with QEMU). Python's mmap module lacks MAP_NORESERVE on
# some versions (3.11 has none); without the flag Linux refuses a mapping larger than RAM + swap
# (ENOMEM). 0x4000 is its value in Linux's generic and x86 headers; elsewhere map without it.
_LINUX_GENERIC = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "i686", "i386", "aarch64", "riscv64")
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if _LINUX_GENERIC else 0)
# Guest RAM on transparent huge pages, as QEMU has it: with THP in "madvise" mode only madvised
# memory gets 2 MiB pages, and a CPL3 compute kernel on kvm ran ~30% faster on them (fewer TLB
# misses and shadow/nested page walks). A huge page needs its 2 MiB of host memory 2 MiB-aligned,
# so memory of that size or more is mapped with up to 2 MiB of slack and used from an aligned
# start; the slack is never touched and, being MAP_NORESERVE, costs address space only.
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


class HostMemory:
    """Page-aligned anonymous host memory to back guest RAM: `.address` for hva_map, `.view` to use it.

    From 2 MiB up it is 2 MiB-aligned and madvised for transparent huge pages (see HUGE_PAGE).
    """

    def __init__(self, size: int):
        if size <= 0 or size & _PAGE_MASK:
            raise NvmmError(errno.EINVAL, f"host memory size {size:#x} must be a positive multiple of {PAGE_SIZE}")
        self.size = size
        huge = size >= HUGE_PAGE
        slack = HUGE_PAGE - PAGE_SIZE if huge else 0
        self._mmap = mmap.mmap(-1, size + slack, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        self._cdata = ffi.from_buffer(self._mmap)
        base = int(ffi.cast("uintptr_t", self._cdata))
        start = -base % HUGE_PAGE if huge else 0
        self.address = base + start
        self._whole = memoryview(self._mmap)
        self.view = self._whole[start:start + size] if slack else self._whole
        if huge and MADV_HUGEPAGE is not None:
            try:
                self._mmap.madvise(MADV_HUGEPAGE, start, size)
            except OSError:  # THP compiled out or disabled: small pages, as before
                pass

    def close(self) -> None:
        if self._mmap is not None:
            self.view.release()
            self._whole.release()
            self._cdata = None
            try:
                self._mmap.close()
            except BufferError:  # a caller still holds a view; the kernel frees it with the process
                pass
            self._mmap = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def host_buffer(hva: int, size: int):
    """A writable buffer over `size` bytes of this process's memory at `hva` (caller guarantees it is mapped)."""
    return ffi.buffer(ffi.cast("char *", hva), size)


def _check_aligned(what: str, value: int) -> None:
    if value & _PAGE_MASK:
        raise NvmmError(errno.EINVAL, f"{what} {value:#x} is not page-aligned ({PAGE_SIZE} bytes)")


class GpaArea:
    __slots__ = ("gpa", "size", "hva", "prot")

    def __init__(self, gpa, size, hva, prot):
        self.gpa, self.size, self.hva, self.prot = gpa, size, hva, prot

    @property
    def end(self):
        return self.gpa + self.size


class AreaMap:
    """hva ranges the machine may use, and gpa -> hva areas, checked as NVMM checks them."""

    def __init__(self, max_ram: int):
        self.max_ram = max_ram
        self.hva = {}  # hva -> size
        self._gpa_starts = []  # sorted gpa starts
        self._areas = []  # GpaArea, same order

    # --- host ranges -------------------------------------------------------------------------
    def hva_map(self, hva: int, size: int) -> None:
        if hva == 0 or size == 0:
            raise NvmmError(errno.EINVAL, "hva_map needs a non-zero address and size")
        _check_aligned("hva", hva)
        _check_aligned("size", size)
        for start, length in self.hva.items():
            if hva < start + length and start < hva + size:
                raise NvmmError(errno.EEXIST, f"hva range {hva:#x}+{size:#x} overlaps mapped range {start:#x}+{length:#x}")
        if len(self.hva) >= MAX_HVA_MAPPINGS:
            raise NvmmError(errno.ENOBUFS, f"at most {MAX_HVA_MAPPINGS} host ranges per machine")
        self.hva[hva] = size

    def hva_unmap(self, hva: int, size: int) -> None:
        if self.hva.get(hva) != size:
            raise NvmmError(errno.ENOENT, f"no host range {hva:#x}+{size:#x} was hva_map'ed")
        for a in self._areas:
            if hva <= a.hva < hva + size:
                raise NvmmError(errno.EBUSY, f"host range {hva:#x} still backs guest memory at {a.gpa:#x}; gpa_unmap it first")
        del self.hva[hva]

    # --- guest-physical areas ----------------------------------------------------------------
    def check_gpa_map(self, hva: int, gpa: int, size: int, prot: int) -> None:
        if hva == 0 or size == 0:
            raise NvmmError(errno.EINVAL, "gpa_map needs a non-zero hva and size")
        _check_aligned("hva", hva)
        _check_aligned("gpa", gpa)
        _check_aligned("size", size)
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise NvmmError(errno.EINVAL, f"prot {prot:#x} has bits other than PROT_READ|PROT_WRITE|PROT_EXEC")
        if gpa < 0 or gpa + size > self.max_ram:
            raise NvmmError(errno.EINVAL, f"gpa range {gpa:#x}+{size:#x} exceeds the machine's guest-physical space ({self.max_ram:#x})")
        if not any(start <= hva and hva + size <= start + length for start, length in self.hva.items()):
            raise NvmmError(errno.EINVAL, f"hva {hva:#x}+{size:#x} is not inside one hva_map'ed range")
        i = bisect.bisect_right(self._gpa_starts, gpa)
        for a in self._areas[max(0, i - 1):i + 1]:
            if gpa < a.end and a.gpa < gpa + size:
                raise NvmmError(errno.EEXIST, f"gpa range {gpa:#x}+{size:#x} overlaps mapped area {a.gpa:#x}+{a.size:#x}")

    def add(self, hva: int, gpa: int, size: int, prot: int) -> GpaArea:
        area = GpaArea(gpa, size, hva, prot)
        i = bisect.bisect_right(self._gpa_starts, gpa)
        self._gpa_starts.insert(i, gpa)
        self._areas.insert(i, area)
        return area

    def find_exact(self, hva: int, gpa: int, size: int) -> GpaArea:
        i = bisect.bisect_left(self._gpa_starts, gpa)
        if i < len(self._areas):
            a = self._areas[i]
            if a.gpa == gpa and a.size == size and a.hva == hva:
                return a
        raise NvmmError(errno.ENOENT, f"no gpa area {gpa:#x}+{size:#x} backed by hva {hva:#x}")

    def remove(self, area: GpaArea) -> None:
        i = self._areas.index(area)
        del self._areas[i]
        del self._gpa_starts[i]

    def lookup(self, gpa: int):
        """The area holding `gpa`, or None (unmapped: MMIO)."""
        i = bisect.bisect_right(self._gpa_starts, gpa) - 1
        if i >= 0:
            a = self._areas[i]
            if gpa < a.gpa + a.size:
                return a
        return None

    def gpa_to_hva(self, gpa: int):
        a = self.lookup(gpa)
        if a is None:
            raise NvmmError(errno.ENOENT, f"gpa {gpa:#x} is not mapped to host memory")
        return a.hva + (gpa - a.gpa), a.prot

    def areas(self):
        return list(self._areas)
