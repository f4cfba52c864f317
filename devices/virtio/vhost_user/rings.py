"""One vring as the front-end configures it (SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE), and
the device's queue object made from it when the ring starts.

Ring addresses arrive as the front-end's user addresses; they are translated to guest addresses
through the memory table when the ring starts (and again if the table changes while it runs),
then the same SplitQueue/PackedQueue the VMM uses checks sizes, alignment and that every area is
inside one region. The ring base is where the device resumes: for a split ring the next available
index (the used index is read back from the used ring); for a packed ring bits 0-14 the next
available slot, bit 15 its wrap counter, bits 16-30 the next used slot, bit 31 its wrap counter.
"""
import struct

from nvmmpy.devices.interfaces import GuestMemoryError

from .. import constants as virtio
from ..errors import QueueError
from ..packed_queue import PackedQueue
from ..split_queue import SplitQueue, split_areas
from .messages import ProtocolError

_U16 = struct.Struct("<H")


class Vring:
    """Per-ring settings. `queue` is set while the ring is started (between the kick fd and
    GET_VRING_BASE); `enabled` follows SET_VRING_ENABLE."""

    __slots__ = ("index", "size_max", "num", "addrs", "log_flag", "base", "kick", "call", "err",
                 "enabled", "queue", "kicks", "calls")

    def __init__(self, index: int, size_max: int):
        self.index = index
        self.size_max = size_max
        self.num = 0
        self.addrs = None          # (desc, used, avail) user addresses
        self.log_flag = 0
        self.base = 0
        self.kick = self.call = self.err = None   # eventfds (ints) owned by the session
        self.enabled = False
        self.queue = None
        self.kicks = self.calls = 0

    @property
    def started(self) -> bool:
        return self.queue is not None


def _gpa(memory, uva: int, size: int, what: str, index: int) -> int:
    try:
        return memory.uva_to_gpa(uva, size)
    except GuestMemoryError as e:
        raise ProtocolError(f"ring {index}: the {what} area is outside every memory region ({e})") from None


def make_queue(ring: Vring, memory, features: int):
    """The started queue for `ring` at its base; ProtocolError if the ring is not fully set up or
    its areas are bad."""
    i = ring.index
    if not ring.num:
        raise ProtocolError(f"ring {i} started without SET_VRING_NUM")
    if ring.addrs is None:
        raise ProtocolError(f"ring {i} started without SET_VRING_ADDR")
    if memory is None or not len(memory):
        raise ProtocolError(f"ring {i} started before any memory table")
    desc_u, used_u, avail_u = ring.addrs
    packed = bool(features >> virtio.F_RING_PACKED & 1)
    dlen, alen, ulen = (16 * ring.num, 4, 4) if packed else split_areas(ring.num)
    desc = _gpa(memory, desc_u, dlen, "descriptor", i)
    avail = _gpa(memory, avail_u, alen, "driver", i)
    used = _gpa(memory, used_u, ulen, "device", i)
    cls = PackedQueue if packed else SplitQueue
    try:
        q = cls(memory, ring.num, desc, avail, used, size_max=ring.size_max,
                event_idx=bool(features >> virtio.F_EVENT_IDX & 1), indirect=bool(features >> virtio.F_INDIRECT_DESC & 1))
    except QueueError as e:
        raise ProtocolError(f"ring {i}: {e}") from None
    set_base(q, ring.base, i)
    return q


def set_base(q, base: int, index: int) -> None:
    if q.packed:
        avail, used = base & 0x7FFF, base >> 16 & 0x7FFF
        if avail >= q.size or used >= q.size:
            raise ProtocolError(f"ring {index}: packed base {base:#x} points outside the ring of {q.size}")
        q.next_avail, q.avail_wrap = avail, base >> 15 & 1
        q._undo_avail, q._undo_wrap = q.next_avail, q.avail_wrap
        q.next_used, q.used_wrap = used, base >> 31 & 1
    else:
        q.last_avail = base & 0xFFFF
        q.next_used = q.signalled_used = _U16.unpack_from(q.used, 2)[0]


def get_base(q) -> int:
    if q.packed:
        return q.next_avail | q.avail_wrap << 15 | q.next_used << 16 | q.used_wrap << 31
    return q.last_avail


def check_base(ring: Vring, base: int, features: int) -> None:
    """SET_VRING_BASE: a split base is a 16-bit index; a packed one as above."""
    if features >> virtio.F_RING_PACKED & 1:
        if ring.num and ((base & 0x7FFF) >= ring.num or (base >> 16 & 0x7FFF) >= ring.num):
            raise ProtocolError(f"ring {ring.index}: packed base {base:#x} points outside the ring of {ring.num}")
    elif base > 0xFFFF:
        raise ProtocolError(f"ring {ring.index}: split base {base:#x} is wider than 16 bits")
