"""The only things a device sees of the VMM: guest memory, an interrupt line, and the bus calls.

Devices are written against these and nothing else (the rust-vmm way: vm-memory, vm-superio), so
each can be unit-tested with a bytearray as guest RAM and a recording interrupt line.
"""
from typing import Protocol


class GuestMemoryError(Exception):
    """A guest-physical range that is not (entirely) guest RAM. Devices turn this into the
    protocol's error status; it never reaches outside guest RAM."""


class GuestMemory(Protocol):
    def read(self, gpa: int, size: int) -> bytes:
        """Copy `size` bytes of guest RAM at `gpa`; GuestMemoryError if any byte is not RAM."""

    def write(self, gpa: int, data) -> None:
        """Copy `data` into guest RAM at `gpa`; GuestMemoryError if any byte is not RAM."""

    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view of `size` bytes at `gpa` inside one RAM region (zero-copy),
        GuestMemoryError otherwise."""


class IrqLine(Protocol):
    def trigger(self) -> None:
        """An edge: raise and lower the line once."""

    def set_level(self, level: bool) -> None:
        """Hold the line high (True) or low (False)."""


class BusDevice(Protocol):
    """Port-I/O or MMIO registers. `offset` is relative to the range the device was added at;
    `data` is a writable buffer of the access size: fill it on read, consume it on write."""

    def read(self, offset: int, data: memoryview) -> None: ...

    def write(self, offset: int, data: memoryview) -> None: ...


class BytearrayMemory:
    """GuestMemory over a bytearray: RAM from `base` for tests and tools."""

    def __init__(self, size_or_buffer, base: int = 0):
        self.buf = bytearray(size_or_buffer) if isinstance(size_or_buffer, int) else size_or_buffer
        self.base = base
        self._mv = memoryview(self.buf)

    def _range(self, gpa: int, size: int) -> int:
        off = gpa - self.base
        if size < 0 or off < 0 or off + size > len(self.buf):
            raise GuestMemoryError(f"guest range {gpa:#x}+{size:#x} is outside guest RAM")
        return off

    def read(self, gpa: int, size: int) -> bytes:
        off = self._range(gpa, size)
        return bytes(self._mv[off:off + size])

    def write(self, gpa: int, data) -> None:
        off = self._range(gpa, len(data))
        self._mv[off:off + len(data)] = data

    def view(self, gpa: int, size: int) -> memoryview:
        off = self._range(gpa, size)
        return self._mv[off:off + size]


class RecordingIrq:
    """IrqLine for tests: counts edges and remembers the level."""

    def __init__(self):
        self.edges = 0
        self.level = False

    def trigger(self) -> None:
        self.edges += 1

    def set_level(self, level: bool) -> None:
        if level and not self.level:
            self.edges += 1
        self.level = bool(level)
