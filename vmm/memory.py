"""GuestRam: the VM's RAM, mapped into the machine and offered to devices as GuestMemory.

Laid out as PC VMMs (QEMU pc, Firecracker, kvmtool) do: RAM from 0 up to the 32-bit MMIO hole,
the rest from 4 GiB. The hole [HOLE_START, 4 GiB) holds the devices of docs/guest-abi.md.
"""
import errno

import nvmmpy
from nvmmpy import constants as nvmm
from nvmmpy.errors import NvmmError

from nvmmpy.devices.interfaces import GuestMemoryError

MIN_RAM = 2 << 20
HOLE_START = 0xC000_0000   # scratch MMIO page, virtio-mmio windows from 0xD0000000
HIGH_START = 1 << 32       # where RAM beyond HOLE_START bytes goes
E820_RAM, E820_RESERVED = 1, 2


def layout(size: int) -> list:
    """[(gpa, size)] of the RAM regions for `size` bytes of RAM."""
    low = min(size, HOLE_START)
    return [(0, low)] + ([(HIGH_START, size - low)] if size > low else [])


def _human(n: int) -> str:
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}"


class RamRegion:
    __slots__ = ("gpa", "size", "end", "host", "view")

    def __init__(self, gpa: int, size: int):
        self.gpa, self.size, self.end = gpa, size, gpa + size
        try:
            self.host = nvmmpy.HostMemory(size)
        except OSError as e:
            raise NvmmError(errno.ENOMEM, f"the host cannot map {_human(size)} for guest RAM at {gpa:#x} "
                                          f"(mmap: {e.strerror}): give the VM less memory") from None
        self.view = self.host.view


class GuestRam:
    """Guest RAM regions with bounds-checked read/write/view for devices (GuestMemory).

    An access must lie inside one region: a range running into the hole or past the end of RAM is
    a GuestMemoryError. `size` is the total; `view_all` is the low region from gpa 0.
    """

    def __init__(self, machine, size: int):
        if size < MIN_RAM or size % nvmm.PAGE_SIZE:
            raise NvmmError(errno.EINVAL, f"guest RAM must be a multiple of 4 KiB and at least {MIN_RAM >> 20} MiB")
        spans = layout(size)
        top, space = spans[-1][0] + spans[-1][1], machine.capability.max_ram
        if top > space:
            raise NvmmError(errno.EINVAL, f"{_human(size)} of guest RAM would end at guest-physical {top:#x}, past the "
                                          f"{machine.driver_name} driver's {_human(space)} address space "
                                          f"(RAM above {_human(HOLE_START)} starts at 4 GiB): give the VM less memory")
        self.size = size
        self.regions = []
        mapped = []   # what to undo if a later region fails: the machine must not keep freed memory
        try:
            for gpa, n in spans:
                r = RamRegion(gpa, n)
                self.regions.append(r)
                try:
                    machine.hva_map(r.host.address, n)
                    mapped.append(lambda a=r.host.address, n=n: machine.hva_unmap(a, n))
                    machine.gpa_map(r.host.address, gpa, n, nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)
                    mapped.append(lambda a=r.host.address, g=gpa, n=n: machine.gpa_unmap(a, g, n))
                except NvmmError as e:
                    raise NvmmError(e.errno, f"the {machine.driver_name} driver cannot map {_human(n)} of guest "
                                             f"RAM at {gpa:#x} ({e.strerror}): give the VM less memory") from None
        except BaseException:
            for undo in reversed(mapped):
                undo()
            self.close()
            raise
        low, high = self.regions[0], self.regions[-1] if len(self.regions) > 1 else None
        self.view_all, self._low_end = low.view, low.end
        # no high region: an empty range that no access satisfies (1 <= gpa <= gpa + size <= 0)
        self._high_gpa, self._high_end, self._high_view = (high.gpa, high.end, high.view) if high else (1, 0, None)

    def _outside(self, gpa: int, size: int) -> GuestMemoryError:
        return GuestMemoryError(f"guest range {gpa:#x}+{size:#x} is not inside one guest RAM region "
                                f"({', '.join(f'{r.gpa:#x}-{r.end - 1:#x}' for r in self.regions)})")

    def contains(self, gpa: int, size: int) -> bool:
        """Whether [gpa, gpa+size) lies inside one RAM region."""
        return size >= 0 and any(r.gpa <= gpa and gpa + size <= r.end for r in self.regions)

    def overlaps(self, gpa: int, size: int) -> bool:
        """Whether any byte of [gpa, gpa+size) is RAM."""
        return any(gpa < r.end and r.gpa < gpa + size for r in self.regions)

    # read/write/view: one compare chain per region (there are at most two), no loop, no allocation
    def read(self, gpa: int, size: int) -> bytes:
        if 0 <= gpa <= gpa + size <= self._low_end:
            return bytes(self.view_all[gpa:gpa + size])
        if self._high_gpa <= gpa <= gpa + size <= self._high_end:
            off = gpa - self._high_gpa
            return bytes(self._high_view[off:off + size])
        raise self._outside(gpa, size)

    def write(self, gpa: int, data) -> None:
        n = len(data)
        if 0 <= gpa <= gpa + n <= self._low_end:
            self.view_all[gpa:gpa + n] = data
        elif self._high_gpa <= gpa <= gpa + n <= self._high_end:
            off = gpa - self._high_gpa
            self._high_view[off:off + n] = data
        else:
            raise self._outside(gpa, n)

    def view(self, gpa: int, size: int) -> memoryview:
        if 0 <= gpa <= gpa + size <= self._low_end:
            return self.view_all[gpa:gpa + size]
        if self._high_gpa <= gpa <= gpa + size <= self._high_end:
            off = gpa - self._high_gpa
            return self._high_view[off:off + size]
        raise self._outside(gpa, size)

    def e820(self, reserved=()) -> list:
        """An E820-style map for a Linux loader: sorted (addr, size, type) with type E820_RAM for
        usable RAM and E820_RESERVED for the MMIO hole and each (addr, size) in `reserved`, which
        is cut out of the RAM it overlaps (e.g. the legacy 0xA0000-0xFFFFF area)."""
        holes = sorted([(HOLE_START, HIGH_START - HOLE_START)] + [(a, n) for a, n in reserved if n > 0])
        merged = []
        for a, n in holes:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], a + n)
            else:
                merged.append([a, a + n])
        out = [(a, e - a, E820_RESERVED) for a, e in merged]
        for r in self.regions:
            start = r.gpa
            for a, e in merged:
                if e <= start or a >= r.end:
                    continue
                if a > start:
                    out.append((start, a - start, E820_RAM))
                start = max(start, e)
            if start < r.end:
                out.append((start, r.end - start, E820_RAM))
        return sorted(out)

    def close(self) -> None:
        self.view_all = None
        for r in self.regions:
            r.view = None
            r.host.close()
        self.regions = []
        self._low_end, self._high_gpa, self._high_end, self._high_view = 0, 1, 0, None
