"""A virtio driver in Python for the tests: it plays the guest against a transport over
BytearrayMemory, through the same registers and rings a real guest uses.

    mem = BytearrayMemory(1 << 20)
    drv = MmioDriver(VirtioMmio(device, mem, irq), mem)
    drv.init()                                   # ACK, DRIVER, features, FEATURES_OK, queues, DRIVER_OK
    drv.queues[0].add([(b"out bytes", False), (64, True)])   # readable data, then 64 writable bytes
    drv.notify(0)
    (head, length), = drv.queues[0].used()
"""
import struct

from nvmmpy.devices.virtio import constants as virtio


class Allocator:
    """A bump allocator over guest RAM from `start` (the tests' RAM is small and short-lived)."""

    def __init__(self, start: int, end: int):
        self.next, self.end = start, end

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise MemoryError("test guest RAM exhausted")
        self.next = addr + size
        return addr

    def place(self, mem, bufs) -> list:
        """Each buffer of `bufs` = [(bytes or int size, device_writable)] copied into fresh guest RAM:
        [(addr, len, writable)] for a chain (both rings' drivers lay out their buffers this way)."""
        segs = []
        for data, w in bufs:
            n = data if isinstance(data, int) else len(data)
            a = self.alloc(max(n, 1), 8)
            if not isinstance(data, int):
                mem.write(a, data)
            segs.append((a, n, w))
        return segs


class SplitDriverQueue:
    """The driver side of a split ring."""

    def __init__(self, mem, alloc: Allocator, size: int):
        self.mem, self.alloc, self.size = mem, alloc, size
        self.desc = alloc.alloc(16 * size, 16)
        self.avail = alloc.alloc(6 + 2 * size, 2)
        self.used_addr = alloc.alloc(6 + 8 * size, 4)
        for a, n in ((self.desc, 16 * size), (self.avail, 6 + 2 * size), (self.used_addr, 6 + 8 * size)):
            mem.write(a, bytes(n))
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.buffers = {}   # head -> [(addr, len, writable)]

    @property
    def areas(self):
        return self.desc, self.avail, self.used_addr

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(self.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, bufs, indirect: bool = False) -> int:
        """Make a chain available: bufs = [(bytes or int size, device_writable)]; returns the head."""
        segs = self.alloc.place(self.mem, bufs)
        if indirect:
            table = self.alloc.alloc(16 * len(segs), 16)
            for k, (a, n, w) in enumerate(segs):
                flags = (virtio.DESC_F_WRITE if w else 0) | (virtio.DESC_F_NEXT if k + 1 < len(segs) else 0)
                self.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, flags, k + 1))
            head = self.free.pop(0)
            self.write_desc(head, table, 16 * len(segs), virtio.DESC_F_INDIRECT, 0)
        else:
            ids = [self.free.pop(0) for _ in segs]
            for k, (a, n, w) in enumerate(segs):
                last = k + 1 == len(segs)
                flags = (virtio.DESC_F_WRITE if w else 0) | (0 if last else virtio.DESC_F_NEXT)
                self.write_desc(ids[k], a, n, flags, 0 if last else ids[k + 1])
            head = ids[0]
            self._chains = getattr(self, "_chains", {})
            self._chains[head] = ids
        self.buffers[head] = segs
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        self.mem.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write(self.avail, struct.pack("<H", flags))

    def set_used_event(self, idx: int) -> None:
        self.mem.write(self.avail + 4 + 2 * self.size, struct.pack("<H", idx))

    def used_flags(self) -> int:
        return struct.unpack("<H", self.mem.read(self.used_addr, 2))[0]

    def avail_event(self) -> int:
        return struct.unpack("<H", self.mem.read(self.used_addr + 4 + 8 * self.size, 2))[0]

    def used(self) -> list:
        """New used entries since the last call: [(head, length)]; frees their descriptors."""
        idx = struct.unpack("<H", self.mem.read(self.used_addr + 2, 2))[0]
        out = []
        while self.last_used != idx:
            slot = self.last_used % self.size
            head, length = struct.unpack("<II", self.mem.read(self.used_addr + 4 + 8 * slot, 8))
            out.append((head, length))
            self.free.extend(getattr(self, "_chains", {}).pop(head, [head]))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def written(self, head: int, length: int | None = None) -> bytes:
        """The device-writable bytes of chain `head` (its first `length` bytes)."""
        out = b"".join(self.mem.read(a, n) for a, n, w in self.buffers[head] if w)
        return out if length is None else out[:length]


class MmioDriver:
    """Register-level driver: negotiate, set up queues, notify."""

    def __init__(self, transport, mem, ram_start: int = 0x1000, ram_end: int | None = None):
        self.t, self.mem = transport, mem
        end = ram_end if ram_end is not None else mem.base + len(mem.buf)
        self.alloc = Allocator(ram_start, end)
        self.queues = []

    def r32(self, off: int) -> int:
        b = bytearray(4)
        self.t.read(off, memoryview(b))
        return struct.unpack("<I", b)[0]

    def w32(self, off: int, v: int) -> None:
        self.t.write(off, memoryview(bytearray(struct.pack("<I", v & 0xFFFFFFFF))))

    def read_config(self, off: int, size: int) -> bytes:
        b = bytearray(size)
        self.t.read(virtio.MMIO_CONFIG + off, memoryview(b))
        return bytes(b)

    def write_config(self, off: int, data: bytes) -> None:
        self.t.write(virtio.MMIO_CONFIG + off, memoryview(bytearray(data)))

    def device_features(self) -> int:
        self.w32(virtio.MMIO_DEVICE_FEATURES_SEL, 0)
        lo = self.r32(virtio.MMIO_DEVICE_FEATURES)
        self.w32(virtio.MMIO_DEVICE_FEATURES_SEL, 1)
        return lo | self.r32(virtio.MMIO_DEVICE_FEATURES) << 32

    def negotiate(self, want: int | None = None) -> int:
        """Reset, ACK, DRIVER, accept `want` (default: everything offered but RING_PACKED), FEATURES_OK."""
        self.w32(virtio.MMIO_STATUS, 0)
        self.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE)
        self.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER)
        offered = self.device_features()
        f = offered & ~(1 << virtio.F_RING_PACKED) if want is None else want
        for sel in (0, 1):
            self.w32(virtio.MMIO_DRIVER_FEATURES_SEL, sel)
            self.w32(virtio.MMIO_DRIVER_FEATURES, f >> (32 * sel))
        self.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER | virtio.S_FEATURES_OK)
        self.features = f
        return self.r32(virtio.MMIO_STATUS)

    def setup_queue(self, index: int, size: int | None = None):
        self.w32(virtio.MMIO_QUEUE_SEL, index)
        size = self.r32(virtio.MMIO_QUEUE_NUM_MAX) if size is None else size
        if self.features >> virtio.F_RING_PACKED & 1:
            from .packed import PackedDriverQueue
            q = PackedDriverQueue(self.mem, self.alloc, size)
        else:
            q = SplitDriverQueue(self.mem, self.alloc, size)
        self.w32(virtio.MMIO_QUEUE_NUM, size)
        desc, drv, dev = q.areas
        for reg, addr in ((virtio.MMIO_QUEUE_DESC_LOW, desc), (virtio.MMIO_QUEUE_DRIVER_LOW, drv), (virtio.MMIO_QUEUE_DEVICE_LOW, dev)):
            self.w32(reg, addr)
            self.w32(reg + 4, addr >> 32)
        self.w32(virtio.MMIO_QUEUE_READY, 1)
        while len(self.queues) <= index:
            self.queues.append(None)
        self.queues[index] = q
        return q

    def init(self, want: int | None = None, queue_size: int | None = None, nqueues: int | None = None) -> None:
        status = self.negotiate(want)
        assert status & virtio.S_FEATURES_OK, f"device refused features {self.features:#x}"
        for i in range(nqueues if nqueues is not None else len(self.t.device.queue_sizes)):
            self.setup_queue(i, queue_size)
        self.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER | virtio.S_FEATURES_OK | virtio.S_DRIVER_OK)

    def notify(self, index: int) -> None:
        self.w32(virtio.MMIO_QUEUE_NOTIFY, index)

    def status(self) -> int:
        return self.r32(virtio.MMIO_STATUS)

    def ack_interrupts(self) -> int:
        s = self.r32(virtio.MMIO_INTERRUPT_STATUS)
        self.w32(virtio.MMIO_INTERRUPT_ACK, s)
        return s
