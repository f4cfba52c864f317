"""The front-end's guest RAM as a GuestMemory: each region's fd mmapped (shared) from its offset.

Regions come from SET_MEM_TABLE or one at a time from ADD_MEM_REG/REM_MEM_REG. A region is refused
(ProtocolError) if it is empty, wraps 64 bits, overlaps another one in guest or user addresses,
exceeds the file behind its fd (touching pages past the end of a file is SIGBUS), or the fd is not
a mappable file. Lookups are by guest-physical address (descriptors) or by the front-end's user
address (ring addresses in SET_VRING_ADDR: QEMU's own pointers), always within one region.

A removed region is never munmapped explicitly: queues and chains may still hold views of it.
Dropping the last reference unmaps it (Python's mmap keeps the mapping alive while views exist).
"""
import bisect
import mmap
import os
import stat

from nvmmpy.devices.interfaces import GuestMemoryError

from .messages import ProtocolError

MAX_REGIONS = 32                 # what GET_MAX_MEM_SLOTS answers
_PAGE = mmap.ALLOCATIONGRANULARITY
_END = 1 << 64


class Region:
    __slots__ = ("gpa", "size", "uva", "offset", "map", "view")

    def __init__(self, gpa: int, size: int, uva: int, offset: int, mapping, view: memoryview):
        self.gpa, self.size, self.uva, self.offset, self.map, self.view = gpa, size, uva, offset, mapping, view

    def __repr__(self):
        return f"Region(gpa={self.gpa:#x}, size={self.size:#x}, uva={self.uva:#x}, offset={self.offset:#x})"


def check_layout(gpa: int, size: int, uva: int, offset: int) -> None:
    if size == 0:
        raise ProtocolError(f"memory region at guest {gpa:#x} has size 0")
    for what, base in (("guest", gpa), ("user", uva), ("mmap offset", offset)):
        if base + size > _END:
            raise ProtocolError(f"memory region {what} address {base:#x} + size {size:#x} wraps 64 bits")


def map_region(fd: int, gpa: int, size: int, uva: int, offset: int) -> Region:
    """mmap `size` bytes of `fd` from `offset` (the fd stays the caller's to close)."""
    check_layout(gpa, size, uva, offset)
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise ProtocolError(f"memory region fd: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ProtocolError("memory region fd is not a file (memfd, shm or hugetlbfs file expected)")
    if offset + size > st.st_size:
        raise ProtocolError(f"memory region at guest {gpa:#x}: offset {offset:#x} + size {size:#x} is beyond "
                            f"its file of {st.st_size:#x} bytes")
    start = offset - offset % _PAGE
    try:
        m = mmap.mmap(fd, size + (offset - start), flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    except (OSError, ValueError, OverflowError) as e:
        raise ProtocolError(f"memory region at guest {gpa:#x} (size {size:#x}): mmap failed: {e}") from None
    return Region(gpa, size, uva, offset, m, memoryview(m)[offset - start:])


class FrontendMemory:
    """GuestMemory over the mapped regions, sorted by guest address."""

    def __init__(self):
        self.regions: list = []
        self._starts: list = []

    def __len__(self):
        return len(self.regions)

    def _overlaps(self, r: Region):
        for o in self.regions:
            if r.gpa < o.gpa + o.size and o.gpa < r.gpa + r.size:
                return f"guest range {r.gpa:#x}+{r.size:#x} overlaps {o.gpa:#x}+{o.size:#x}"
            if r.uva < o.uva + o.size and o.uva < r.uva + r.size:
                return f"user range {r.uva:#x}+{r.size:#x} overlaps {o.uva:#x}+{o.size:#x}"
        return None

    def add(self, r: Region) -> None:
        if len(self.regions) >= MAX_REGIONS:
            raise ProtocolError(f"more than {MAX_REGIONS} memory regions")
        why = self._overlaps(r)
        if why:
            raise ProtocolError(f"memory region refused: {why}")
        i = bisect.bisect(self._starts, r.gpa)
        self.regions.insert(i, r)
        self._starts.insert(i, r.gpa)

    def remove(self, gpa: int, size: int, uva: int) -> None:
        for i, r in enumerate(self.regions):
            if (r.gpa, r.size, r.uva) == (gpa, size, uva):
                del self.regions[i], self._starts[i]
                return
        raise ProtocolError(f"REM_MEM_REG of guest {gpa:#x}+{size:#x} (user {uva:#x}): no such region")

    # --- GuestMemory ---------------------------------------------------------------------------
    def _find(self, gpa: int, size: int):
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and size >= 0:
            r = self.regions[i]
            off = gpa - r.gpa
            if off + size <= r.size:
                return r, off
        raise GuestMemoryError(f"guest range {gpa:#x}+{size:#x} is not inside one memory region of the front-end")

    def view(self, gpa: int, size: int) -> memoryview:
        r, off = self._find(gpa, size)
        return r.view[off:off + size]

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data) -> None:
        self.view(gpa, len(data))[:] = data

    # --- user addresses ----------------------------------------------------------------------
    def uva_to_gpa(self, uva: int, size: int) -> int:
        """The guest address of [uva, uva+size) in the front-end's address space; GuestMemoryError
        unless one region holds all of it."""
        for r in self.regions:
            off = uva - r.uva
            if 0 <= off and off + size <= r.size:
                return r.gpa + off
        raise GuestMemoryError(f"user range {uva:#x}+{size:#x} is not inside one memory region of the front-end")
