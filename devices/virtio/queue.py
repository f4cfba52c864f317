"""Virtqueue: the one contract both ring layouts keep (split_queue.SplitQueue, packed_queue.PackedQueue),
so devices and transports never ask which ring the driver chose.

Devices use pop/push (and undo_pop, set_notification); transports use should_notify after a device
signals, and make the queue at QueueReady (mmio.py) or ring start (vhost_user/rings.py, which also
reads and sets the ring position: that part is layout-specific and stays outside this contract).
"""
from typing import Protocol

from .chain import DescriptorChain


class Virtqueue(Protocol):
    packed: bool        # which layout (vhost-user ring bases differ); devices do not look
    size: int           # entries, as the driver set them
    event_idx: bool     # VIRTIO_F_EVENT_IDX negotiated
    indirect: bool      # VIRTIO_F_INDIRECT_DESC negotiated

    def pending(self) -> int:
        """Non-zero while the driver has made a chain available that pop() has not taken (split:
        how many; packed: 1). QueueError if the driver's index is impossible."""

    def pop(self) -> DescriptorChain | None:
        """The next available chain, resolved into guest RAM views and checked, or None. The chain
        object is the queue's own and may be reused by a later pop: keep it past the call that
        popped it only through DescriptorChain.detach()."""

    def undo_pop(self) -> None:
        """Give the last popped chain back (the device could not take it yet, e.g. no host data)."""

    def push(self, chain: DescriptorChain, length: int) -> None:
        """Return `chain` to the driver with `length` bytes written into it (any order: chains may
        complete out of order)."""

    def should_notify(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was pushed since the last
        call (EVENT_IDX / NO_INTERRUPT / event suppression honoured)."""

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to notify (or not) when it makes buffers available (device-side suppression)."""
