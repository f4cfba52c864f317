"""The VMM's own pieces: bus ranges and guest RAM bounds (devices rely on both)."""
import pytest

from nvmmpy.devices.interfaces import GuestMemoryError
from nvmmpy.vmm.bus import Bus, BusError, Shifted


class Regs:
    def __init__(self):
        self.log = []

    def read(self, offset, data):
        data[:] = bytes([offset]) * len(data)

    def write(self, offset, data):
        self.log.append((offset, bytes(data)))


def test_bus_lookup_and_overlaps():
    bus = Bus("port I/O")
    a, b = Regs(), Regs()
    bus.add(0x3F8, 8, a, "com1")
    bus.add(0x400, 4, b, "other")
    assert bus.lookup(0x3F8) == (a, 0) and bus.lookup(0x3FF) == (a, 7)
    assert bus.lookup(0x3F7) is None and bus.lookup(0x400)[1] == 0
    assert bus.label(0x3FA) == "com1+0x2" and bus.label(0x10) == "unassigned"
    for start, size in ((0x3FC, 2), (0x3F0, 9), (0x3FF, 0x10), (0x3F8, 8)):
        with pytest.raises(BusError, match="overlaps com1"):
            bus.add(start, size, Regs(), "x")
    with pytest.raises(BusError, match="positive size"):
        bus.add(0x500, 0, Regs())
    bus.add(0x3F0, 8, Regs(), "just-below")   # adjacent ranges are fine


def test_shifted_device_offsets():
    r = Regs()
    s = Shifted(r, 4)
    buf = bytearray(1)
    s.read(0, memoryview(buf))
    assert buf == b"\x04"
    s.write(0, memoryview(b"\xfe"))
    assert r.log == [(4, b"\xfe")]


def test_guest_ram_bounds():
    import nvmmpy
    from nvmmpy.vmm.memory import GuestRam
    m = nvmmpy.Machine("unicorn")
    ram = GuestRam(m, 2 << 20)
    try:
        ram.write(0x1000, b"abc")
        assert ram.read(0x1000, 3) == b"abc" and bytes(ram.view(0x1001, 2)) == b"bc"
        for gpa, size in ((-1, 1), ((2 << 20) - 1, 2), (2 << 20, 1), (0, (2 << 20) + 1)):
            with pytest.raises(GuestMemoryError):
                ram.read(gpa, size)
            with pytest.raises(GuestMemoryError):
                ram.view(gpa, size)
        with pytest.raises(GuestMemoryError):
            ram.write((2 << 20) - 2, b"xyz")
    finally:
        m.destroy()
        ram.close()


def test_bus_access_dispatch_and_unassigned():
    bus = Bus("MMIO")
    r = Regs()
    bus.add(0x1000, 0x10, r, "dev")
    buf = bytearray(2)
    assert bus.access(0x1003, True, memoryview(buf)) and buf == b"\x03\x03"
    assert bus.access(0x1004, False, memoryview(b"\x01\x02"))
    assert r.log == [(4, b"\x01\x02")]
    assert not bus.access(0x2000, True, memoryview(buf)) and buf == b"\xff\xff"
    assert not bus.access(0x2000, False, memoryview(b"\x00"))
