"""The packed virtqueue (VIRTIO 1.2 sec. 2.8): one descriptor ring plus two event suppression areas.

The driver makes a chain available by writing consecutive ring slots (wrapping flips its wrap
counter), the buffer ID in the last one, and the head's flags last; the device reads them in
place and writes one used descriptor per chain at its own position, then skips the slots the
chain took. The same queue.Virtqueue contract as SplitQueue, so devices do not care which ring the driver chose.
Every value the driver wrote is checked and a violation raises QueueError (the transport then
sets DEVICE_NEEDS_RESET): a chain longer than the ring, a chained slot that is not available
in its lap (its AVAIL/USED bits; a used descriptor of the previous lap is not part of a chain),
a buffer ID >= the queue size, a descriptor or indirect table outside guest RAM, an indirect
table of a bad size, inside another one or combined with NEXT, a readable buffer after a
writable one. What the device resolves per chain is bounded by the queue size plus
MAX_INDIRECT_DESCRIPTORS.
"""
import struct

from . import constants as virtio
from .chain import DescriptorChain
from .errors import QueueError
from .ring_checks import check_aligned, check_indirect, indirect_table, map_areas

_DESC = struct.Struct("<QIHH")     # addr, len, id, flags
_U16 = struct.Struct("<H")
_LEN_ID = struct.Struct("<IH")     # a used descriptor's len and id (its addr is reserved)
_EVENT = struct.Struct("<HH")      # event suppression: off_wrap, flags
_unpack_desc = _DESC.unpack_from
_u16 = _U16.unpack_from
_pack_u16 = _U16.pack_into
_pack_len_id = _LEN_ID.pack_into

NEXT, WRITE, INDIRECT = virtio.DESC_F_NEXT, virtio.DESC_F_WRITE, virtio.DESC_F_INDIRECT
AVAIL, USED = virtio.DESC_F_AVAIL, virtio.DESC_F_USED
AVAIL_USED = AVAIL | USED
EV_ENABLE, EV_DISABLE, EV_DESC = virtio.RING_EVENT_FLAGS_ENABLE, virtio.RING_EVENT_FLAGS_DISABLE, virtio.RING_EVENT_FLAGS_DESC
WRAP_BIT = 1 << 15   # in an event suppression off_wrap


def check_size(size: int, size_max: int) -> None:
    if not 0 < size <= size_max:
        raise QueueError(f"queue size {size} is not in 1..{size_max}")


class PackedQueue:
    """A queue.Virtqueue over the packed layout."""
    packed = True

    def __init__(self, memory, size: int, desc: int, driver: int, device: int, *, size_max: int = virtio.MAX_QUEUE_SIZE,
                 event_idx: bool = False, indirect: bool = False):
        check_size(size, size_max)
        check_aligned((("descriptor", desc, virtio.PACKED_DESC_ALIGN), ("driver", driver, virtio.PACKED_EVENT_ALIGN),
                       ("device", device, virtio.PACKED_EVENT_ALIGN)))
        # driver_event is written by the driver (used-buffer notifications), device_event by us
        # (available-buffer notifications)
        self.desc, self.driver_event, self.device_event = map_areas(memory, ((desc, 16 * size), (driver, 4),
                                                                            (device, 4)))
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.next_avail, self.avail_wrap = 0, 1   # where the driver's next chain starts
        self.next_used, self.used_wrap = 0, 1     # where our next used descriptor goes
        self._undo_avail, self._undo_wrap = 0, 1  # next_avail, avail_wrap before the last pop
        self._unsignalled = 0                     # ring slots pushed since the last should_notify()
        self._pool = [DescriptorChain() for _ in range(size)]
        self._spare = DescriptorChain()           # resolved into before the buffer ID is known
        self._notify_enabled = True

    # --- driver -> device ------------------------------------------------------------------------
    def pending(self) -> int:
        """1 if the driver has made a chain available at our position, else 0."""
        flags = _u16(self.desc, 16 * self.next_avail + 14)[0]
        return int(flags & AVAIL_USED == (AVAIL if self.avail_wrap else USED))   # AVAIL == wrap != USED

    def pop(self):
        """The next available chain, resolved and checked, or None."""
        if not self.pending():
            return None
        self._undo_avail, self._undo_wrap = self.next_avail, self.avail_wrap
        chain = self._resolve()
        if self.event_idx and self._notify_enabled:
            _pack_u16(self.device_event, 0, self._avail_off_wrap())
        return chain

    def _resolve(self) -> DescriptorChain:
        """Read the chain at next_avail into the spare chain, then file it under its buffer ID
        (known only at the last descriptor); the ID's old chain object becomes the spare."""
        size, ring, view = self.size, self.desc, self.memory.view
        chain = self._spare
        chain.clear(self.next_avail)
        add = chain.add
        start, idx, wrap = self.next_avail, self.next_avail, self.avail_wrap
        avail = AVAIL if wrap else USED   # AVAIL/USED of an available slot in this lap (2.8.1)
        entries = 0
        while True:
            slot = idx
            addr, length, buf_id, flags = _unpack_desc(ring, 16 * slot)
            entries += 1
            if entries > size:
                raise QueueError(f"descriptor chain from slot {start} is longer than the queue ({size})")
            if flags & AVAIL_USED != avail:  # e.g. a used descriptor of the last lap: its addr is stale
                raise QueueError(f"chain from slot {start}: slot {slot} is not available (flags {flags:#06x}, "
                                 f"wrap counter {wrap})")
            idx += 1
            if idx == size:  # a chain may run over the end of the ring: its tail is in the next lap
                idx, wrap = 0, wrap ^ 1
                avail = AVAIL if wrap else USED
            if flags & INDIRECT:
                check_indirect(flags, NEXT, self.indirect, False, f"slot {slot}: ")
                self._resolve_indirect(chain, addr, length)
                break
            add(view, addr, length, flags & WRITE, slot)
            if not flags & NEXT:
                break
        if buf_id >= size:
            raise QueueError(f"chain from slot {start}: buffer ID {buf_id} is not below the queue size {size}")
        self.next_avail, self.avail_wrap = idx, wrap
        chain.head, chain.ring_entries = buf_id, entries
        self._spare, self._pool[buf_id] = self._pool[buf_id], chain
        return chain

    def _resolve_indirect(self, chain: DescriptorChain, addr: int, length: int) -> None:
        """Append the buffers of an indirect table: consecutive entries, only WRITE counts."""
        table = indirect_table(self.memory, addr, length)
        view = self.memory.view
        for off in range(0, length, 16):
            a, n, _, flags = _unpack_desc(table, off)
            if flags & INDIRECT:
                check_indirect(flags, NEXT, self.indirect, True)
            chain.add(view, a, n, flags & WRITE, off // 16)

    def undo_pop(self) -> None:
        """Give the last popped chain back (the device could not take it yet, e.g. no host data)."""
        self.next_avail, self.avail_wrap = self._undo_avail, self._undo_wrap

    # --- device -> driver ------------------------------------------------------------------------
    def push(self, chain: DescriptorChain, length: int) -> None:
        """Return `chain` to the driver with `length` bytes written into it: one used descriptor
        at our position (flags last, so the driver never sees a half-written one)."""
        off = 16 * self.next_used
        _pack_len_id(self.desc, off + 8, length, chain.head)
        flags = (AVAIL | USED if self.used_wrap else 0) | (WRITE if length else 0)
        _pack_u16(self.desc, off + 14, flags)
        n = self.next_used + chain.ring_entries
        if n >= self.size:
            n -= self.size
            self.used_wrap ^= 1
        self.next_used = n
        self._unsignalled += chain.ring_entries

    def should_notify(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was pushed since the last call."""
        pushed, self._unsignalled = self._unsignalled, 0
        if not pushed:
            return False
        off_wrap, flags = _EVENT.unpack_from(self.driver_event)
        flags &= 3
        if flags == EV_DISABLE:
            return False
        if flags != EV_DESC or not self.event_idx:
            return True  # ENABLE, or a value we cannot honour: a spurious interrupt is harmless
        size = self.size
        if pushed > size:
            return True  # the event may lie further back than the ring can tell; notify to be safe
        # Positions counted modulo two laps: the event slot `back` slots before our position was
        # written in this batch iff 1 <= back <= pushed (within a lap back or ahead of us).
        event = (off_wrap & 0x7FFF) + (0 if off_wrap & WRAP_BIT else size)
        here = self.next_used + (0 if self.used_wrap else size)
        back = (here - event) % (2 * size)
        return 1 <= back <= pushed

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to notify (or not) when it makes buffers available (device-side suppression)."""
        self._notify_enabled = enabled
        if not enabled:
            _pack_u16(self.device_event, 2, EV_DISABLE)
        elif self.event_idx:  # notify us when the slot we read next becomes available (pop() keeps it current)
            _pack_u16(self.device_event, 0, self._avail_off_wrap())
            _pack_u16(self.device_event, 2, EV_DESC)
        else:
            _pack_u16(self.device_event, 2, EV_ENABLE)

    def _avail_off_wrap(self) -> int:
        return self.next_avail | (WRAP_BIT if self.avail_wrap else 0)
