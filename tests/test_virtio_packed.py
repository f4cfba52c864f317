"""The packed virtqueue through the real virtio-mmio transport, driven by tests/packed_driver.py:
requests across many ring laps, chains, indirect tables, event suppression in both directions,
and every malformed ring a guest can write (the device must go to DEVICE_NEEDS_RESET, never
raise, and work again after a reset)."""
import random
import struct

import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.device import VirtioDevice
from nvmmpy.devices.virtio.errors import QueueError
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.packed_queue import PackedQueue
from nvmmpy.devices.virtio.rng import VirtioRng
from nvmmpy.devices.testing.packed import PackedDriverQueue
from nvmmpy.devices.testing.driver import Allocator, MmioDriver

RAM = 4 << 20
PACKED = (1 << virtio.F_VERSION_1) | (1 << virtio.F_RING_PACKED)
IND = 1 << virtio.F_INDIRECT_DESC
EVT = 1 << virtio.F_EVENT_IDX
NEXT, WRITE, INDIRECT = virtio.DESC_F_NEXT, virtio.DESC_F_WRITE, virtio.DESC_F_INDIRECT
DISABLE, ENABLE, DESC = virtio.RING_EVENT_FLAGS_DISABLE, virtio.RING_EVENT_FLAGS_ENABLE, virtio.RING_EVENT_FLAGS_DESC


class Echo(VirtioDevice):
    """Copies each request's readable bytes into its writable buffers, so what comes back shows
    exactly which guest memory the queue resolved."""
    device_id = 0x7F
    queue_sizes = (256,)

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        pushed = False
        while (chain := q.pop()) is not None:
            q.push(chain, chain.write(chain.read()))
            pushed = True
        if pushed:
            self.signal_used(index)


def make(size=4, want=PACKED, dev=None):
    mem = BytearrayMemory(RAM)
    irq = RecordingIrq()
    t = VirtioMmio(dev or Echo(), mem, irq)
    d = MmioDriver(t, mem)
    d.init(want=want, queue_size=size)
    assert d.status() == 15 and t.device.queues[0].packed
    return t, d, irq


def echo_request(d, rng, indirect=False, max_slots=None):
    """A random echo request (1-3 readable, 1-2 writable buffers): (bufs, expected bytes)."""
    nr, nw = rng.randint(1, 3), rng.randint(1, 2)
    while not indirect and max_slots is not None and nr + nw > max_slots:
        nr, nw = (nr - 1, nw) if nr > 1 else (nr, nw - 1)
    data = [rng.randbytes(rng.randint(0, 40)) for _ in range(nr)]
    wl = [rng.randint(1, 40) for _ in range(nw)]
    blob = b"".join(data)
    return [(x, False) for x in data] + [(n, True) for n in wl], blob[:sum(wl)]


def roundtrip(d, bufs, expect, indirect=False):
    q = d.queues[0]
    bid = q.add(bufs, indirect)
    d.notify(0)
    assert q.used() == [(bid, len(expect))]
    assert q.written(bid, len(expect)) == expect


def assert_works(t, d, want, size):
    """After a reset and re-init the same device serves requests again."""
    d.init(want=want, queue_size=size)
    assert d.status() == 15, t.last_error
    echo = isinstance(t.device, Echo)
    for i in range(2 * size + 1):
        q = d.queues[0]
        bid = q.add([(bytes([i]) * 3, False), (8, True)])
        d.notify(0)
        assert q.used() == [(bid, 3 if echo else 8)]
        assert not echo or q.written(bid, 3) == bytes([i]) * 3
    assert d.status() == 15


# --- normal operation -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [4, 5, 256])
def test_echo_one_at_a_time_over_many_laps(size):
    t, d, irq = make(size, PACKED | IND)
    rng = random.Random(size)
    for i in range(3 * size + 7):
        indirect = i % 4 == 3
        bufs, expect = echo_request(d, rng, indirect, max_slots=size)
        roundtrip(d, bufs, expect, indirect)
        assert d.ack_interrupts() == virtio.INT_USED_BUFFER
    assert d.status() == 15 and d.queues[0].num_free == size


@pytest.mark.parametrize("size", [4, 5, 256])
def test_echo_batches_with_chains_running_over_the_ring_end(size):
    t, d, irq = make(size, PACKED | IND)
    q, rng = d.queues[0], random.Random(size + 1)
    for _ in range(3 * size // 2 + 4):
        sent = []
        while True:
            indirect = rng.random() < 0.3
            bufs, expect = echo_request(d, rng, indirect, max_slots=size)
            need = 1 if indirect else len(bufs)
            if need > q.num_free or not q.free_ids:
                break
            sent.append((q.add(bufs, indirect), expect))
        d.notify(0)
        assert q.used() == [(bid, len(e)) for bid, e in sent]
        assert all(q.written(bid, len(e)) == e for bid, e in sent)
    assert d.status() == 15


def test_chain_as_long_as_the_queue_and_a_large_indirect_table():
    t, d, irq = make(5, PACKED | IND)
    parts = [bytes([k]) * (k + 1) for k in range(4)]
    roundtrip(d, [(p, False) for p in parts] + [(16, True)], b"".join(parts))
    many = [(bytes([k % 256]), False) for k in range(4095)] + [(4095, True)]
    roundtrip(d, many, bytes(k % 256 for k in range(4095)), indirect=True)   # 4096 entries: the maximum
    assert d.status() == 15


def test_out_of_order_completion_and_undo_pop():
    """Directly on the queue: used descriptors go in completion order, each skipping its chain's slots."""
    mem = BytearrayMemory(1 << 20)
    dq = PackedDriverQueue(mem, Allocator(0x1000, 1 << 20), 4)
    q = PackedQueue(mem, 4, *dq.areas)
    assert q.pending() == 0 and q.pop() is None
    a = dq.add([(b"abc", False), (b"de", False), (8, True)])
    b = dq.add([(b"z", False)])
    assert q.pending() == 1
    ca = q.pop()
    assert (ca.head, ca.ring_entries, ca.read()) == (a, 3, b"abcde")
    q.undo_pop()
    ca = q.pop()
    assert (ca.head, ca.ring_entries, ca.readable_len, ca.writable_len) == (a, 3, 5, 8)
    cb = q.pop()
    assert (cb.head, cb.ring_entries, q.pop()) == (b, 1, None)
    q.push(cb, 0)
    q.push(ca, ca.write(ca.read()))
    assert dq.used() == [(b, 0), (a, 5)] and dq.written(a, 5) == b"abcde"
    assert (q.next_used, q.used_wrap) == dq.used_position() == (0, 0)


def test_chain_objects_are_reused():
    mem = BytearrayMemory(1 << 20)
    dq = PackedDriverQueue(mem, Allocator(0x1000, 1 << 20), 4)
    q = PackedQueue(mem, 4, *dq.areas)
    seen = set()
    for i in range(40):
        dq.add([(b"x" * (i % 3 + 1), False)])
        c = q.pop()
        seen.add(id(c))
        q.push(c, 0)
        dq.used()
    assert len(seen) <= 5


# --- event suppression ----------------------------------------------------------------------------
def test_driver_disables_and_enables_used_notifications():
    t, d, irq = make(4)
    d.queues[0].set_driver_event(DISABLE)
    for i in range(10):
        roundtrip(d, [(b"a", False), (1, True)], b"a")
    assert t.interrupt_status == 0 and irq.edges == 0 and not irq.level
    d.queues[0].set_driver_event(ENABLE)
    roundtrip(d, [(b"a", False), (1, True)], b"a")
    assert d.ack_interrupts() == virtio.INT_USED_BUFFER and irq.edges == 1


def test_desc_without_event_idx_is_treated_as_enable():
    t, d, irq = make(4)
    d.queues[0].set_driver_event(DESC, 3, 0)
    for i in range(3):
        roundtrip(d, [(1, True)], b"")
        assert d.ack_interrupts() == virtio.INT_USED_BUFFER


@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("size", [4, 5])
def test_event_idx_interrupts_exactly_when_the_used_index_passes_the_event(size, slots):
    """Request k takes ring positions [k*slots, (k+1)*slots) counted over laps; the event at
    (off, wrap) is position off in lap 0 (wrap 1) or size+off in lap 1 (wrap 0)."""
    for wrap in (1, 0):
        for off in range(size):
            t, d, irq = make(size, PACKED | EVT)
            q = d.queues[0]
            q.set_driver_event(DESC, off, wrap)
            pos = off + (0 if wrap else size)
            hits, n = [], -(-2 * size // slots)
            for k in range(n):
                roundtrip(d, [(b"q", False)] * (slots - 1) + [(1, True)], b"q" if slots > 1 else b"")
                if d.ack_interrupts():
                    hits.append(k)
            # the event recurs every two laps (same slot, same wrap counter)
            expect = [k for k in range(n)
                      if any((p - pos) % (2 * size) == 0 for p in range(k * slots, (k + 1) * slots))]
            assert pos // slots in expect and hits == expect, (off, wrap)


def test_event_idx_in_one_batch():
    t, d, irq = make(5, PACKED | EVT)
    q = d.queues[0]
    q.set_driver_event(DESC, 2, 1)
    ids = [q.add([(1, True)]) for _ in range(3)]  # slots 0, 1, 2: passes the event
    d.notify(0)
    assert [i for i, _ in q.used()] == ids and d.ack_interrupts() == virtio.INT_USED_BUFFER
    q.set_driver_event(DESC, 0, 0)                # next lap's slot 0: not reached by slots 3, 4
    ids = [q.add([(1, True)]) for _ in range(2)]
    d.notify(0)
    assert [i for i, _ in q.used()] == ids and d.ack_interrupts() == 0
    q.add([(1, True)])                            # slot 0 of lap 1
    d.notify(0)
    assert len(q.used()) == 1 and d.ack_interrupts() == virtio.INT_USED_BUFFER


@pytest.mark.parametrize("event_idx", [False, True])
def test_device_side_notification_suppression(event_idx):
    t, d, irq = make(5, PACKED | (EVT if event_idx else 0))
    q, dq = t.device.queues[0], d.queues[0]
    q.set_notification(False)
    assert dq.device_event()[0] == DISABLE
    old = (dq.next_avail, dq.avail_wrap)
    dq.add([(1, True)])
    assert not dq.needs_notify(*old)
    q.set_notification(True)
    assert dq.needs_notify(*old)
    for i in range(7):  # across the ring end: the device keeps its event at the slot it reads next
        d.notify(0)
        dq.used()
        old = (dq.next_avail, dq.avail_wrap)
        if event_idx:
            assert dq.device_event() == (DESC, *old)
        else:
            assert dq.device_event()[0] == ENABLE
        dq.add([(b"ab", False), (2, True)])
        assert dq.needs_notify(*old)
    d.notify(0)
    assert dq.used()[0][1] == 2


# --- virtio-rng -----------------------------------------------------------------------------------
def counting_source():
    state = [0]

    def source(n):
        out = bytes((state[0] + k) & 0xFF for k in range(n))
        state[0] += n
        return out
    return source


@pytest.mark.parametrize("size", [4, 5, 256])
def test_rng_over_many_laps(size):
    src = counting_source()
    t, d, irq = make(size, PACKED | IND | EVT, dev=VirtioRng(counting_source()))
    q, served = d.queues[0], 0
    for i in range(3 * size + 2):
        want = [1 + (i * 7) % 50, 1 + i % 5][: 1 + i % 2]
        bid = q.add([(n, True) for n in want], indirect=i % 3 == 0)
        d.notify(0)
        assert q.used() == [(bid, sum(want))]
        assert q.written(bid) == src(sum(want))
        served += sum(want)
    assert t.device.bytes_served == served and d.status() == 15


def test_rng_malformed_then_recovers():
    t, d, irq = make(4, PACKED, dev=VirtioRng())
    buf = d.alloc.alloc(8)
    d.queues[0].add_raw([(buf, 8, 4, WRITE)])
    d.notify(0)
    assert t.status & virtio.S_DEVICE_NEEDS_RESET and "buffer ID" in t.last_error
    assert_works(t, d, PACKED, 4)


# --- malformed rings ------------------------------------------------------------------------------
def _table(d, entries):
    a = d.alloc.alloc(16 * max(len(entries), 1), 16)
    for k, e in enumerate(entries):
        d.mem.write(a + 16 * k, struct.pack("<QIHH", *e))
    return a


def _buf(d, n=8):
    return d.alloc.alloc(n)


MALFORMED = {
    "descriptor past the end of RAM": (0, lambda d, s: [(RAM - 4, 8, 0, 0)], "outside guest RAM"),
    "descriptor far outside RAM": (0, lambda d, s: [(1 << 63, 1, 0, 0)], "outside guest RAM"),
    "huge length": (0, lambda d, s: [(0x1000, 0xFFFFFFFF, 0, WRITE)], "outside guest RAM"),
    "writable descriptor outside RAM": (0, lambda d, s: [(_buf(d), 4, 0, NEXT), (RAM, 4, 0, WRITE)], "outside"),
    "chain longer than the queue": (0, lambda d, s: [(_buf(d), 1, 0, NEXT)] * s, "longer than the queue"),
    "readable after writable": (0, lambda d, s: [(_buf(d), 4, 0, WRITE | NEXT), (_buf(d), 4, 0, 0)],
                                "readable buffer after"),
    "buffer ID = queue size": (0, lambda d, s: [(_buf(d), 4, s, 0)], "buffer ID"),
    "buffer ID 0xffff in the last descriptor": (0, lambda d, s: [(_buf(d), 4, 0, NEXT), (_buf(d), 4, 0xFFFF, 0)],
                                                 "buffer ID"),
    "indirect not negotiated": (0, lambda d, s: [(_table(d, [(_buf(d), 4, 0, 0)]), 16, 0, INDIRECT)],
                                "not negotiated"),
    "indirect inside indirect": (IND, lambda d, s: [(_table(d, [(_buf(d), 4, 0, 0), (_table(d, [(_buf(d), 4, 0, 0)]),
                                                                                       16, 0, INDIRECT)]),
                                                     32, 0, INDIRECT)], "inside an indirect table"),
    "indirect with next": (IND, lambda d, s: [(_table(d, [(_buf(d), 4, 0, 0)]), 16, 0, INDIRECT | NEXT),
                                              (_buf(d), 4, 0, 0)], "INDIRECT and NEXT"),
    "indirect length 0": (IND, lambda d, s: [(_table(d, []), 0, 0, INDIRECT)], "indirect table length"),
    "indirect length 24": (IND, lambda d, s: [(_table(d, [(_buf(d), 4, 0, 0)] * 2), 24, 0, INDIRECT)],
                           "indirect table length"),
    "indirect table of 4097": (IND, lambda d, s: [(0x1000, 16 * 4097, 0, INDIRECT)], "indirect table length"),
    "indirect length 0xfffffff0": (IND, lambda d, s: [(0x1000, 0xFFFFFFF0, 0, INDIRECT)], "indirect table length"),
    "indirect table outside RAM": (IND, lambda d, s: [(RAM - 16, 32, 0, INDIRECT)], "outside guest RAM"),
    "indirect entry outside RAM": (IND, lambda d, s: [(_table(d, [(RAM + 8, 4, 0, 0)]), 16, 0, INDIRECT)],
                                   "outside guest RAM"),
    "indirect readable after writable": (IND, lambda d, s: [(_table(d, [(_buf(d), 4, 0, WRITE), (_buf(d), 4, 0, 0)]),
                                                             32, 0, INDIRECT)], "readable buffer after"),
}


@pytest.mark.parametrize("size", [4, 5])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_chain_sets_needs_reset(case, size):
    extra, build, why = MALFORMED[case]
    want = PACKED | extra
    t, d, irq = make(size, want)
    for i in range(size + 1):  # start somewhere in the second lap, so wrap counters matter
        roundtrip(d, [(b"ok", False), (2, True)], b"ok")
    d.ack_interrupts()
    d.queues[0].add_raw(build(d, size))
    d.notify(0)  # must not raise
    assert t.status & virtio.S_DEVICE_NEEDS_RESET, case
    assert why in t.last_error, t.last_error
    assert d.ack_interrupts() == virtio.INT_CONFIG_CHANGE
    d.notify(0)  # ignored until the driver resets the device
    assert d.status() & virtio.S_DEVICE_NEEDS_RESET
    assert_works(t, d, want, size)


def _used_slot_then_wrap(d, b):
    """The campaign's case: a request at slots 0-1 (its used descriptor is written at slot 0: addr
    still the readable buffer, len the used length, WRITE set), then a chain at slots 2-3 that goes
    on over the end of the ring onto slot 0."""
    roundtrip(d, [(b"readable!", False), (9, True)], b"readable!")
    d.queues[0].add_raw([(b, 1, 1, NEXT), (b, 1, 1, NEXT)])


def _stale_slot_of_last_lap(d, b):
    """Lap 1 leaves slots 1-2 as the driver wrote them (AVAIL set, USED clear); in lap 2 a head at
    slot 0 chains on to slot 1, which the driver did not make available again."""
    roundtrip(d, [(b"readable!", False), (b"more", False), (9, True)], b"readable!")
    roundtrip(d, [(1, True)], b"")                                      # slot 3
    assert (d.queues[0].next_avail, d.queues[0].avail_wrap) == (0, 0)
    d.queues[0].add_raw([(b, 1, 1, NEXT)])


NOT_AVAILABLE = {
    "wraps onto the used slot": _used_slot_then_wrap,
    "next slot from the previous lap": _stale_slot_of_last_lap,
    "next slot never made available": lambda d, b: d.queues[0].add_raw([(b, 1, 1, NEXT)]),
}


@pytest.mark.parametrize("case", sorted(NOT_AVAILABLE))
def test_chain_onto_a_slot_that_is_not_available(case):
    """Every descriptor of a chain must be available in its lap (2.8.1: AVAIL == wrap counter !=
    USED). A chain that runs onto one that is not is a driver error: NEEDS_RESET, and no guest
    memory outside the ring is written (the Echo device would copy into a stale buffer)."""
    t, d, irq = make(4)
    q = d.queues[0]
    b = _buf(d, 8)
    d.mem.write(b, b"g")
    ring = (q.desc, q.desc + 16 * 4)
    NOT_AVAILABLE[case](d, b)
    before = bytes(d.mem.buf)
    d.notify(0)
    assert t.status & virtio.S_DEVICE_NEEDS_RESET, case
    assert "is not available" in t.last_error, t.last_error
    after = bytes(d.mem.buf)
    assert after[:ring[0]] == before[:ring[0]] and after[ring[1]:] == before[ring[1]:]
    assert_works(t, d, PACKED, 4)


def _ready(d, size, desc, drv, dev):
    assert d.negotiate(PACKED) & virtio.S_FEATURES_OK
    d.w32(virtio.MMIO_QUEUE_SEL, 0)
    d.w32(virtio.MMIO_QUEUE_NUM, size)
    for reg, addr in ((virtio.MMIO_QUEUE_DESC_LOW, desc), (virtio.MMIO_QUEUE_DRIVER_LOW, drv), (virtio.MMIO_QUEUE_DEVICE_LOW, dev)):
        d.w32(reg, addr)
        d.w32(reg + 4, addr >> 32)
    d.w32(virtio.MMIO_QUEUE_READY, 1)


BAD_AREAS = {
    "size 0": (0, 0x2000, 0x3000, 0x3004, "queue size"),
    "size above the maximum": (257, 0x2000, 0x3000, 0x3004, "queue size"),
    "descriptor ring not 16-aligned": (4, 0x2008, 0x3000, 0x3004, "aligned"),
    "driver area not 4-aligned": (4, 0x2000, 0x3002, 0x3004, "aligned"),
    "device area not 4-aligned": (4, 0x2000, 0x3000, 0x3005, "aligned"),
    "descriptor ring past the end of RAM": (5, RAM - 64, 0x3000, 0x3004, "outside guest RAM"),
    "descriptor ring above 4 GiB": (4, 1 << 32, 0x3000, 0x3004, "outside guest RAM"),
    "driver area past the end of RAM": (4, 0x2000, RAM, 0x3004, "outside guest RAM"),
    "device area past the end of RAM": (4, 0x2000, 0x3000, RAM, "outside guest RAM"),
}


@pytest.mark.parametrize("case", sorted(BAD_AREAS))
def test_bad_queue_areas_at_queue_ready(case):
    size, desc, drv, dev, why = BAD_AREAS[case]
    t, d, irq = make(4)
    _ready(d, size, desc, drv, dev)
    assert t.status & virtio.S_DEVICE_NEEDS_RESET and why in t.last_error, t.last_error
    assert d.r32(virtio.MMIO_QUEUE_READY) == 0 and t.device.queues[0] is None
    assert_works(t, d, PACKED, 4)


def test_good_areas_at_the_edges_of_ram():
    """A non-power-of-two size and areas ending exactly at the end of RAM are fine."""
    t, d, irq = make(4)
    _ready(d, 7, RAM - 16 * 7 - 16, RAM - 8, RAM - 4)
    assert not t.status & virtio.S_DEVICE_NEEDS_RESET and t.device.queues[0].size == 7


def test_constructor_errors_directly():
    mem = BytearrayMemory(1 << 16)
    PackedQueue(mem, 3, 0, 0x100, 0x104, size_max=3)
    for args, kw in (((0, 0, 0x100, 0x104), {}), ((4, 0, 0x100, 0x104), {"size_max": 3}),
                     ((4, 8, 0x100, 0x104), {}), ((4, 0, 0x101, 0x104), {}), ((4, 0, 0x100, 1 << 16), {}),
                     ((4097, 0, 0x100, 0x104), {})):
        with pytest.raises(QueueError):
            PackedQueue(mem, *args, **kw)
