"""Bus: address ranges -> devices, for port I/O and for MMIO. Overlaps are refused.

access() is on every port and MMIO exit: the (device, offset) of each address seen is kept in a
dict, so a repeated access is one dict lookup instead of a bisect and a range check. A guest picks
the addresses, so the dict is emptied when it reaches CACHE_LIMIT entries."""
import bisect

CACHE_LIMIT = 4096
_NONE = (None, 0)   # cached: no device at this address


class BusError(Exception):
    pass


class Bus:
    """Sorted, non-overlapping ranges. lookup(addr) -> (device, offset) or None."""

    def __init__(self, name: str):
        self.name = name
        self._starts = []
        self._entries = []  # (start, end, device, label)
        self._cache = {}    # addr -> (device or None, offset)

    def add(self, start: int, size: int, device, label: str = "") -> None:
        if size <= 0:
            raise BusError(f"{self.name}: {label or device!r} needs a positive size")
        end = start + size
        i = bisect.bisect_right(self._starts, start)
        for s, e, _, other in self._entries[max(0, i - 1):i + 1]:
            if start < e and s < end:
                raise BusError(f"{self.name}: {label or device!r} at {start:#x}+{size:#x} overlaps {other} at {s:#x}-{e - 1:#x}")
        self._starts.insert(i, start)
        self._entries.insert(i, (start, end, device, label or type(device).__name__))
        self._cache.clear()

    def lookup(self, addr: int):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            s, e, dev, _ = self._entries[i]
            if addr < e:
                return dev, addr - s
        return None

    def access(self, addr: int, is_read: bool, data) -> bool:
        """Hand an access to the device at `addr`; False (and 0xFF.. for reads) if none is there."""
        hit = self._cache.get(addr)
        if hit is None:
            hit = self._remember(addr)
        dev, offset = hit
        if dev is not None:
            if is_read:
                dev.read(offset, data)
            else:
                dev.write(offset, data)
            return True
        if is_read:
            data[:] = b"\xff" * len(data)
        return False

    def _remember(self, addr: int):
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        found = self.lookup(addr)
        hit = cache[addr] = _NONE if found is None else found
        return hit

    def label(self, addr: int) -> str:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            s, e, _, label = self._entries[i]
            if addr < e:
                return f"{label}+{addr - s:#x}"
        return "unassigned"

    def entries(self):
        return [(s, e - s, label) for s, e, _, label in self._entries]


class Shifted:
    """A device seen at `shift` bytes into its register block (a block split over two ranges,
    like the i8042's ports 0x60 and 0x64)."""
    __slots__ = ("device", "shift")

    def __init__(self, device, shift: int):
        self.device, self.shift = device, shift

    def read(self, offset, data):
        self.device.read(offset + self.shift, data)

    def write(self, offset, data):
        self.device.write(offset + self.shift, data)
