"""DescriptorChain: one request as the device sees it, whatever the ring layout.

A queue resolves every descriptor of a chain into a memoryview of guest RAM when it pops the
chain, so a device never handles a guest address and never reaches outside guest RAM. The
device-readable segments come first (the spec requires it of the driver; a queue refuses a chain
that breaks it), then the device-writable ones. The object belongs to the queue until the next
pop; detach() gives a device one to keep.
"""
from nvmmpy.devices.interfaces import GuestMemoryError

from .errors import QueueError


class DescriptorChain:
    __slots__ = ("head", "ring_entries", "readable", "writable", "readable_len", "writable_len", "written")

    def __init__(self):
        self.head = 0            # split: index of the head descriptor; packed: the buffer ID
        self.ring_entries = 0    # packed: ring slots the chain took (the used entry skips them)
        self.readable = []       # memoryviews of guest RAM, in chain order
        self.writable = []
        self.readable_len = 0
        self.writable_len = 0
        self.written = 0         # bytes the device wrote through write() so far

    def clear(self, head: int) -> None:
        self.head = head
        self.ring_entries = 0
        self.readable.clear()
        self.writable.clear()
        self.readable_len = self.writable_len = self.written = 0

    def add(self, view, addr: int, length: int, device_writable: bool, index: int) -> None:
        """Resolve descriptor `index` (addr, length) through `view` (GuestMemory.view) and append it;
        QueueError for a buffer outside guest RAM or a readable buffer after a writable one."""
        try:
            seg = view(addr, length)
        except GuestMemoryError as e:
            raise QueueError(f"descriptor {index} of chain {self.head}: {e}") from None
        if device_writable:
            self.writable.append(seg)
            self.writable_len += length
        else:
            if self.writable:
                raise QueueError(f"descriptor {index} of chain {self.head}: a device-readable buffer after "
                                 "a device-writable one")
            self.readable.append(seg)
            self.readable_len += length

    def detach(self) -> "DescriptorChain":
        """This chain as an object of its own, for a device that answers it after the call that popped
        it (sound keeps I/O messages until they have played). The queue pools its chain objects and
        refills one at a later pop, even for the same head if the driver reuses it early; the copy
        keeps the same views of guest RAM and is never refilled. Push it as usual."""
        c = DescriptorChain()
        c.head, c.ring_entries, c.written = self.head, self.ring_entries, self.written
        c.readable, c.writable = list(self.readable), list(self.writable)
        c.readable_len, c.writable_len = self.readable_len, self.writable_len
        return c

    def read(self, size: int | None = None, offset: int = 0) -> bytes:
        """Up to `size` device-readable bytes from `offset` (all of them by default), gathered."""
        return b"".join(self.readable_views(offset, size))

    def write(self, data, offset: int = 0) -> int:
        """Scatter `data` into the device-writable segments from `offset`; returns bytes written
        (short when the buffers are smaller)."""
        data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        done = 0
        pos = 0
        want = len(data)
        for seg in self.writable:
            n = len(seg)
            if done >= want:
                break
            if pos + n > offset:
                start = max(0, offset - pos) if done == 0 else 0
                k = min(n - start, want - done)
                seg[start:start + k] = data[done:done + k]
                done += k
            pos += n
        end = offset + done
        if end > self.written:
            self.written = end
        return done

    def writable_views(self, offset: int = 0, size: int | None = None) -> list:
        """The writable segments covering [offset, offset+size) as memoryviews (for readinto/preadv)."""
        return _views(self.writable, self.writable_len, offset, size)

    def readable_views(self, offset: int = 0, size: int | None = None) -> list:
        return _views(self.readable, self.readable_len, offset, size)

    def __repr__(self):
        return (f"DescriptorChain(head={self.head}, readable={[len(s) for s in self.readable]}, "
                f"writable={[len(s) for s in self.writable]})")


def _views(segs: list, total: int, offset: int, size: int | None) -> list:
    """The parts of `segs` (consecutive memoryviews, `total` bytes) covering [offset, offset+size)."""
    end = total if size is None else min(total, offset + size)
    out, pos = [], 0
    for seg in segs:
        if pos >= end:
            break
        n = len(seg)
        if pos + n > offset:
            out.append(seg[max(0, offset - pos):min(n, end - pos)])
        pos += n
    return out
