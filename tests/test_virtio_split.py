"""The split virtqueue (VIRTIO 1.2 sec. 2.7) against a Python driver over bytearray RAM: chains,
indirect tables, EVENT_IDX and flag suppression, and every malformed ring a hostile guest can write."""
import struct
import tracemalloc

import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.device import VirtioDevice
from nvmmpy.devices.virtio.errors import QueueError
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.ring_checks import MAX_INDIRECT_DESCRIPTORS
from nvmmpy.devices.virtio.split_queue import SplitQueue
from nvmmpy.devices.testing.driver import Allocator, MmioDriver, SplitDriverQueue

BASIC = 1 << virtio.F_VERSION_1
ALL = BASIC | 1 << virtio.F_INDIRECT_DESC | 1 << virtio.F_EVENT_IDX


class Echo(VirtioDevice):
    """Copies each chain's readable bytes into its writable buffers, reversed."""
    device_id = 99
    queue_sizes = (16,)

    def process_queue(self, index):
        q = self.queues[index]
        while (c := q.pop()) is not None:
            n = c.write(c.read()[::-1])
            q.push(c, n)
        self.signal_used(index)


def make(features=ALL, size=16):
    mem = BytearrayMemory(1 << 20)
    irq = RecordingIrq()
    dev = Echo()
    drv = MmioDriver(VirtioMmio(dev, mem, irq), mem)
    drv.init(features, queue_size=size)
    return mem, irq, dev, drv, drv.queues[0]


def broken(drv, words):
    assert drv.status() & virtio.S_DEVICE_NEEDS_RESET
    for w in words:
        assert w in drv.t.last_error, drv.t.last_error


def offer_broken(drv, q, descs, why, head=0):
    """Write `descs` ((index, addr, len, flags, next) each) into the table and offer chain `head`:
    the device must stop with DEVICE_NEEDS_RESET, its error saying `why`."""
    for d in descs:
        q.write_desc(*d)
    q.publish(head)
    drv.notify(0)
    broken(drv, [why])


@pytest.mark.parametrize("indirect", [False, True])
def test_chain_gathers_and_scatters(indirect):
    _, _, _, drv, q = make()
    h = q.add([(b"abc", False), (b"defg", False), (3, True), (10, True)], indirect=indirect)
    drv.notify(0)
    assert q.used() == [(h, 7)]
    assert q.written(h) == b"gfedcba" + bytes(6)


def test_many_requests_go_round_the_ring():
    _, _, dev, drv, q = make(BASIC, size=4)
    for i in range(700):
        heads = [q.add([(bytes([i & 0xFF]), False), (1, True)]) for _ in range(2)]
        drv.notify(0)
        assert [h for h, _ in q.used()] == heads
        q.alloc.next = 0x2000 + 0x1000  # reuse buffer memory: the test RAM is small
    assert dev.queues[0].last_avail == 1400


def test_long_index_run_through_wrap():
    """Indices are free-running u16: start both sides near 0xFFFF and cross zero."""
    _, _, dev, drv, q = make(BASIC, size=8)
    q.avail_idx = q.last_used = 0xFFFE
    dq = dev.queues[0]
    dq.last_avail = dq.next_used = dq.signalled_used = 0xFFFE
    q.mem.write(q.used_addr + 2, struct.pack("<H", 0xFFFE))
    heads = [q.add([(b"x", False), (1, True)]) for _ in range(4)]
    drv.notify(0)
    assert [h for h, _ in q.used()] == heads and dq.last_avail == 2


def test_event_idx_interrupts_only_when_asked():
    _, irq, _, drv, q = make(ALL)
    q.set_used_event(2)           # "tell me when used idx passes 2"
    for _ in range(2):
        q.add([(b"a", False), (1, True)])
        drv.notify(0)
    assert not irq.level           # used idx 1, 2: not past 2 yet
    q.add([(b"a", False), (1, True)])
    drv.notify(0)
    assert irq.level               # used idx 3 crossed the event
    assert q.avail_event() == 3    # the device asks to be notified at the next new buffer


def test_no_interrupt_flag_without_event_idx():
    _, irq, _, drv, q = make(BASIC)
    q.set_avail_flags(virtio.AVAIL_F_NO_INTERRUPT)
    q.add([(b"a", False), (1, True)])
    drv.notify(0)
    assert not irq.level and len(q.used()) == 1
    q.set_avail_flags(0)
    q.add([(b"a", False), (1, True)])
    drv.notify(0)
    assert irq.level


def test_device_side_suppression():
    _, _, dev, drv, q = make(BASIC)
    dev.queues[0].set_notification(False)
    assert q.used_flags() == virtio.USED_F_NO_NOTIFY
    dev.queues[0].set_notification(True)
    assert q.used_flags() == 0


def test_undo_pop_gives_the_chain_back():
    mem, _, dev, drv, q = make(BASIC)
    h = q.add([(4, True)])
    dq = dev.queues[0]
    c = dq.pop()
    assert c.head == h and dq.pop() is None
    dq.undo_pop()
    assert dq.pop().head == h


# --- malformed rings: each puts the device into DEVICE_NEEDS_RESET, nothing escapes ------------------
def test_head_outside_the_table():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [], "head descriptor 16", head=16)


def test_next_outside_the_table():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0x8000, 4, virtio.DESC_F_NEXT, 99)], "next descriptor 99")


def test_loop_is_a_chain_longer_than_the_queue():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0x8000, 4, virtio.DESC_F_NEXT, 1),
                          (1, 0x8000, 4, virtio.DESC_F_NEXT, 0)],
                 "longer than 16")


def test_descriptor_outside_ram():
    mem, _, _, drv, q = make()
    offer_broken(drv, q, [(0, len(mem.buf) - 2, 4, virtio.DESC_F_WRITE, 0)], "outside guest RAM")


def test_descriptor_address_wraps_64_bits():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0xFFFF_FFFF_FFFF_FFF0, 0x20, virtio.DESC_F_WRITE, 0)], "outside guest RAM")


def test_readable_after_writable():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0x8000, 4, virtio.DESC_F_WRITE | virtio.DESC_F_NEXT, 1),
                          (1, 0x8100, 4, 0, 0)],
                 "readable buffer after a device-writable")


def test_indirect_without_the_feature():
    _, _, _, drv, q = make(BASIC)
    offer_broken(drv, q, [(0, 0x8000, 16, virtio.DESC_F_INDIRECT, 0)], "INDIRECT_DESC was not negotiated")


def test_indirect_inside_indirect():
    mem, _, _, drv, q = make()
    mem.write(0x8000, struct.pack("<QIHH", 0x9000, 16, virtio.DESC_F_INDIRECT, 0))
    offer_broken(drv, q, [(0, 0x8000, 16, virtio.DESC_F_INDIRECT, 0)], "inside an indirect table")


def test_indirect_with_next():
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0x8000, 16, virtio.DESC_F_INDIRECT | virtio.DESC_F_NEXT, 1)], "both INDIRECT and NEXT")


@pytest.mark.parametrize("length", [0, 15, 17, 16 * (MAX_INDIRECT_DESCRIPTORS + 1)])
def test_indirect_bad_length(length):
    _, _, _, drv, q = make()
    offer_broken(drv, q, [(0, 0x8000, length, virtio.DESC_F_INDIRECT, 0)], "indirect table length")


def test_indirect_table_outside_ram():
    mem, _, _, drv, q = make()
    offer_broken(drv, q, [(0, len(mem.buf) - 16, 32, virtio.DESC_F_INDIRECT, 0)], "indirect table outside guest RAM")


def test_indirect_loop():
    mem, _, _, drv, q = make()
    mem.write(0x8000, struct.pack("<QIHH", 0x9000, 4, virtio.DESC_F_NEXT, 1))
    mem.write(0x8010, struct.pack("<QIHH", 0x9000, 4, virtio.DESC_F_NEXT, 0))
    offer_broken(drv, q, [(0, 0x8000, 32, virtio.DESC_F_INDIRECT, 0)], "longer than 2")


def test_avail_index_too_far_ahead():
    mem, _, _, drv, q = make()
    mem.write(q.avail + 2, struct.pack("<H", 17))
    drv.notify(0)
    broken(drv, ["17 ahead"])


def test_construction_checks():
    mem = BytearrayMemory(1 << 16)
    with pytest.raises(QueueError, match="power of two"):
        SplitQueue(mem, 6, 0, 0x1000, 0x2000)
    with pytest.raises(QueueError, match="aligned"):
        SplitQueue(mem, 4, 8, 0x1000, 0x2000)
    with pytest.raises(QueueError, match="outside guest RAM"):
        SplitQueue(mem, 4, 0, 0x1000, (1 << 16) - 8)
    with pytest.raises(QueueError, match="power of two"):
        SplitQueue(mem, 32, 0, 0x1000, 0x2000, size_max=16)


def test_pop_push_keep_no_memory():
    """The steady-state pop/push path leaves nothing behind (preallocated chains, in-place rings)."""
    mem = BytearrayMemory(1 << 20)
    sq = SplitDriverQueue(mem, Allocator(0x1000, 1 << 20), 64)
    q = SplitQueue(mem, 64, *sq.areas)
    heads = [sq.add([(b"x" * 64, False), (64, True)]) for _ in range(8)]
    tracemalloc.start()
    for rnd in range(2000):
        snap = tracemalloc.get_traced_memory()[0] if rnd == 200 else None
        got = [q.pop() for _ in heads]
        for c in got:
            q.push(c, 64)
        for h in heads:       # the driver gives the same chains back
            sq.publish(h)
        if snap is not None:
            base = snap
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 4096, f"pop/push kept {grown} bytes over 1800 rounds"
