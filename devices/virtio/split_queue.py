"""The split virtqueue (VIRTIO 1.2 sec. 2.7): descriptor table, available ring, used ring.

The three areas are mapped once, when the driver sets QueueReady, as memoryviews of guest RAM;
pop() and push() then work on them in place. Every index and descriptor the driver wrote is
checked: a head or `next` outside the table, a chain longer than the queue (which is also how a
loop ends), an indirect table inside an indirect table or of a bad size, a descriptor outside
guest RAM, a readable buffer after a writable one, or an available index that runs ahead of
the ring all raise QueueError, after which the transport sets DEVICE_NEEDS_RESET.
"""
import struct

from . import constants as virtio
from .chain import DescriptorChain
from .errors import QueueError
from .ring_checks import check_aligned, check_indirect, indirect_table, map_areas

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_unpack_desc = _DESC.unpack_from
_u16 = _U16.unpack_from
_pack_u16 = _U16.pack_into
_pack_elem = _USED_ELEM.pack_into

NEXT, WRITE, INDIRECT = virtio.DESC_F_NEXT, virtio.DESC_F_WRITE, virtio.DESC_F_INDIRECT


def split_areas(size: int) -> tuple:
    """Bytes of (descriptor table, available ring, used ring) for a queue of `size`, event fields included."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


def check_size(size: int, size_max: int) -> None:
    if not 0 < size <= size_max or size & (size - 1):
        raise QueueError(f"queue size {size} is not a power of two in 1..{size_max}")


class SplitQueue:
    """A queue.Virtqueue over the split layout."""
    packed = False

    def __init__(self, memory, size: int, desc: int, driver: int, device: int, *, size_max: int = virtio.MAX_QUEUE_SIZE,
                 event_idx: bool = False, indirect: bool = False):
        check_size(size, size_max)
        check_aligned((("descriptor", desc, virtio.SPLIT_DESC_ALIGN), ("driver", driver, virtio.SPLIT_AVAIL_ALIGN),
                       ("device", device, virtio.SPLIT_USED_ALIGN)))
        dlen, alen, ulen = split_areas(size)
        self.desc, self.avail, self.used = map_areas(memory, ((desc, dlen), (driver, alen), (device, ulen)))
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.last_avail = 0      # free-running 16-bit counters, as the rings keep them
        self.next_used = 0
        self.signalled_used = 0  # used index at the last notification decision (EVENT_IDX)
        self._used_event_off = 4 + 2 * size
        self._avail_event_off = 4 + 8 * size
        self._pool = [DescriptorChain() for _ in range(size)]
        self._notify_enabled = True

    # --- driver -> device ------------------------------------------------------------------------
    def avail_idx(self) -> int:
        return _u16(self.avail, 2)[0]

    def pending(self) -> int:
        """Chains the driver has made available and the device has not popped."""
        n = (self.avail_idx() - self.last_avail) & 0xFFFF
        if n > self.size:
            raise QueueError(f"available index {self.avail_idx()} is {n} ahead of the device (queue size {self.size})")
        return n

    def pop(self):
        """The next available chain, resolved and checked, or None."""
        if not self.pending():
            return None
        slot = self.last_avail % self.size
        head = _u16(self.avail, 4 + 2 * slot)[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx and self._notify_enabled:
            _pack_u16(self.used, self._avail_event_off, self.last_avail)
        return self._resolve(head)

    def _resolve(self, head: int) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise QueueError(f"head descriptor {head} is outside the table of {size}")
        chain = self._pool[head]
        chain.clear(head)
        add = chain.add
        view = self.memory.view
        table, entries, idx, count, limit = self.desc, size, head, 0, size
        in_indirect = False
        while True:
            addr, length, flags, nxt = _unpack_desc(table, 16 * idx)
            count += 1
            if count > limit:
                raise QueueError(f"descriptor chain from {head} is longer than {limit} (a loop?)")
            if flags & INDIRECT:
                check_indirect(flags, NEXT, self.indirect, in_indirect)
                table = indirect_table(self.memory, addr, length)
                entries = limit = length // 16
                idx, count, in_indirect = 0, 0, True
                continue
            add(view, addr, length, flags & WRITE, idx)
            if not flags & NEXT:
                break
            idx = nxt
            if idx >= entries:
                raise QueueError(f"chain {head}: next descriptor {idx} is outside the table of {entries}")
        return chain

    def undo_pop(self) -> None:
        """Give the last popped chain back (the device could not take it yet, e.g. no host data)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    # --- device -> driver ------------------------------------------------------------------------
    def push(self, chain: DescriptorChain, length: int) -> None:
        """Return `chain` to the driver with `length` bytes written into it."""
        slot = self.next_used % self.size
        _pack_elem(self.used, 4 + 8 * slot, chain.head, length)
        self.next_used = (self.next_used + 1) & 0xFFFF
        _pack_u16(self.used, 2, self.next_used)  # after the element: x86 keeps stores in order

    def should_notify(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was pushed since the last call."""
        new, old = self.next_used, self.signalled_used
        self.signalled_used = new
        if new == old:
            return False
        if self.event_idx:
            event = _u16(self.avail, self._used_event_off)[0]
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not _u16(self.avail, 0)[0] & virtio.AVAIL_F_NO_INTERRUPT

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to notify (or not) when it makes buffers available (device-side suppression)."""
        self._notify_enabled = enabled
        if self.event_idx:
            if enabled:
                _pack_u16(self.used, self._avail_event_off, self.last_avail)
        else:
            _pack_u16(self.used, 0, 0 if enabled else virtio.USED_F_NO_NOTIFY)
