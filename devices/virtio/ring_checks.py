"""The checks both ring layouts make of what the driver wrote (split_queue.py, packed_queue.py):
area alignment and placement, indirect tables and the flags that lead to them. One place, so a
rule tightened for one ring cannot silently stay loose in the other.
"""
from nvmmpy.devices.interfaces import GuestMemoryError

from .errors import QueueError

# An indirect table may be longer than the queue (Linux sizes it by the request); this bounds
# what one chain can make the device resolve.
MAX_INDIRECT_DESCRIPTORS = 4096


def check_aligned(areas) -> None:
    """QueueError unless each (name, address, alignment) of a queue's areas is aligned."""
    for name, addr, align in areas:
        if addr % align:
            raise QueueError(f"the {name} area at {addr:#x} is not {align}-byte aligned")


def map_areas(memory, areas) -> list:
    """The (address, length) areas of a queue as memoryviews of guest RAM; QueueError if one is outside it."""
    try:
        return [memory.view(addr, length) for addr, length in areas]
    except GuestMemoryError as e:
        raise QueueError(f"a queue area is outside guest RAM: {e}") from None


def check_indirect(flags: int, next_flag: int, negotiated: bool, nested: bool, where: str = "") -> None:
    """QueueError for an INDIRECT descriptor the driver may not use: without VIRTIO_F_INDIRECT_DESC,
    inside an indirect table, or combined with NEXT."""
    if not negotiated:
        raise QueueError("an indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated")
    if nested:
        raise QueueError("an indirect descriptor inside an indirect table")
    if flags & next_flag:
        raise QueueError(f"{where}a descriptor with both INDIRECT and NEXT")


def indirect_table(memory, addr: int, length: int) -> memoryview:
    """The indirect descriptor table at addr: 1..MAX_INDIRECT_DESCRIPTORS entries of 16 bytes, in guest RAM."""
    if length == 0 or length % 16 or length // 16 > MAX_INDIRECT_DESCRIPTORS:
        raise QueueError(f"indirect table length {length} is not 16..{16 * MAX_INDIRECT_DESCRIPTORS} in steps of 16")
    try:
        return memory.view(addr, length)
    except GuestMemoryError as e:
        raise QueueError(f"indirect table outside guest RAM: {e}") from None
