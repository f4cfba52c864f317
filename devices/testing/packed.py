"""The driver side of a packed ring (VIRTIO 1.2 sec. 2.8) for the tests, written from the spec and
not from devices/virtio/packed_queue.py, so the two check each other.

Same interface as SplitDriverQueue: `areas`, `add(bufs, indirect=False)` -> buffer ID, `used()`,
`written(id)`; plus `add_raw()` to put arbitrary (malformed) descriptors on the ring, and the
event suppression helpers.
"""
import struct

from nvmmpy.devices.virtio import constants as virtio

_DESC = struct.Struct("<QIHH")   # addr, len, id, flags
AVAIL, USED = virtio.DESC_F_AVAIL, virtio.DESC_F_USED


class PackedDriverQueue:
    def __init__(self, mem, alloc, size: int):
        self.mem, self.alloc, self.size = mem, alloc, size
        self.desc = alloc.alloc(16 * size, 16)
        self.driver_event_addr = alloc.alloc(4, 4)
        self.device_event_addr = alloc.alloc(4, 4)
        for a, n in ((self.desc, 16 * size), (self.driver_event_addr, 4), (self.device_event_addr, 4)):
            mem.write(a, bytes(n))
        self.next_avail, self.avail_wrap = 0, 1   # driver's Avail Ring Wrap Counter starts at 1
        self.last_used, self.used_wrap = 0, 1     # where the device writes its next used descriptor
        self.num_free = size                      # ring slots the driver may still fill
        self.free_ids = list(range(size))
        self.entries = {}   # buffer ID -> ring slots its chain took
        self.buffers = {}   # buffer ID -> [(addr, len, writable)]

    @property
    def areas(self):
        return self.desc, self.driver_event_addr, self.device_event_addr

    def _avail_bits(self, wrap: int) -> int:
        return AVAIL if wrap else USED   # AVAIL == wrap counter, USED == its inverse

    def add_raw(self, descs, buf_id: int | None = None) -> int:
        """Put `descs` = [(addr, len, id, flags)] (flags without AVAIL/USED) into consecutive ring
        slots, the head's flags written last; returns the buffer ID recorded for used()."""
        if len(descs) > self.num_free:
            raise RuntimeError(f"no room for {len(descs)} descriptors ({self.num_free} free)")
        slot, wrap, head_flags = self.next_avail, self.avail_wrap, None
        for addr, length, did, flags in descs:
            f = flags | self._avail_bits(wrap)
            self.mem.write(self.desc + 16 * slot, _DESC.pack(addr, length, did, 0 if head_flags is None else f))
            if head_flags is None:
                head_flags = f
            slot += 1
            if slot == self.size:
                slot, wrap = 0, wrap ^ 1
        self.mem.write(self.desc + 16 * self.next_avail + 14, struct.pack("<H", head_flags))
        self.next_avail, self.avail_wrap = slot, wrap
        self.num_free -= len(descs)
        bid = descs[-1][2] if buf_id is None else buf_id
        self.entries[bid] = len(descs)
        return bid

    def add(self, bufs, indirect: bool = False) -> int:
        """Make a buffer available: bufs = [(bytes or int size, device_writable)]; returns its ID."""
        segs = self.alloc.place(self.mem, bufs)
        bid = self.free_ids.pop(0)
        if indirect:
            table = self.alloc.alloc(16 * len(segs), 16)
            for k, (a, n, w) in enumerate(segs):
                self.mem.write(table + 16 * k, _DESC.pack(a, n, 0, virtio.DESC_F_WRITE if w else 0))
            descs = [(table, 16 * len(segs), bid, virtio.DESC_F_INDIRECT)]
        else:
            descs = [(a, n, bid, (virtio.DESC_F_WRITE if w else 0) | (virtio.DESC_F_NEXT if k + 1 < len(segs) else 0))
                     for k, (a, n, w) in enumerate(segs)]
        try:
            self.add_raw(descs)
        except RuntimeError:
            self.free_ids.insert(0, bid)
            raise
        self.buffers[bid] = segs
        return bid

    def used(self) -> list:
        """New used descriptors since the last call: [(id, length)]; frees their slots and IDs."""
        out = []
        while True:
            _, length, bid, flags = _DESC.unpack(self.mem.read(self.desc + 16 * self.last_used, 16))
            if bool(flags & AVAIL) != self.used_wrap or bool(flags & USED) != self.used_wrap:
                return out
            out.append((bid, length))
            n = self.entries.pop(bid)
            self.num_free += n
            self.last_used += n
            if self.last_used >= self.size:
                self.last_used -= self.size
                self.used_wrap ^= 1
            if bid in self.buffers:
                self.free_ids.append(bid)

    def written(self, bid: int, length: int | None = None) -> bytes:
        """The device-writable bytes of buffer `bid` (its first `length` bytes)."""
        out = b"".join(self.mem.read(a, n) for a, n, w in self.buffers[bid] if w)
        return out if length is None else out[:length]

    # --- event suppression ---------------------------------------------------------------------
    def set_driver_event(self, flags: int, off: int = 0, wrap: int = 1) -> None:
        """Tell the device when to send used-buffer notifications (RING_EVENT_FLAGS_*; DESC: at
        ring slot `off` of the lap with wrap counter `wrap`)."""
        self.mem.write(self.driver_event_addr, struct.pack("<HH", off | wrap << 15, flags))

    def used_position(self) -> tuple:
        """(slot, wrap) where the device writes its next used descriptor, as the driver tracks it."""
        return self.last_used, self.used_wrap

    def device_event(self) -> tuple:
        """The device's (flags, off, wrap): when it wants available-buffer notifications."""
        off_wrap, flags = struct.unpack("<HH", self.mem.read(self.device_event_addr, 4))
        return flags, off_wrap & 0x7FFF, off_wrap >> 15

    def needs_notify(self, old: int, old_wrap: int) -> bool:
        """Whether making slots from (old, old_wrap) up to next_avail available needs a notification."""
        flags, off, wrap = self.device_event()
        if flags == virtio.RING_EVENT_FLAGS_DISABLE:
            return False
        if flags != virtio.RING_EVENT_FLAGS_DESC:
            return True
        lin = lambda s, w: s + (0 if w else self.size)  # noqa: E731 -- slot position over two laps
        span = (lin(self.next_avail, self.avail_wrap) - lin(old, old_wrap)) % (2 * self.size)
        return (lin(off, wrap) - lin(old, old_wrap)) % (2 * self.size) < span
