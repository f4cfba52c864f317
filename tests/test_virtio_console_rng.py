"""virtio-console and virtio-rng against a Python driver over bytearray RAM."""
import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.console import F_EMERG_WRITE, F_SIZE, MAX_PENDING_INPUT, VirtioConsole
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.rng import MAX_BYTES_PER_REQUEST, VirtioRng
from nvmmpy.devices.testing.driver import MmioDriver

ALL = 1 << virtio.F_VERSION_1 | 1 << virtio.F_INDIRECT_DESC | 1 << virtio.F_EVENT_IDX


def attach(dev, features=ALL, size=None, ram=1 << 20):
    mem = BytearrayMemory(ram)
    irq = RecordingIrq()
    drv = MmioDriver(VirtioMmio(dev, mem, irq), mem)
    drv.init(features, queue_size=size)
    return drv, irq


# --- console --------------------------------------------------------------------------------------
def test_console_output_in_order_across_segments():
    out = []
    drv, _ = attach(VirtioConsole(output=out.append))
    tx = drv.queues[1]
    heads = [tx.add([(b"line %d " % i, False), (b"continued\n", False)]) for i in range(5)]
    drv.notify(1)
    assert tx.used() == [(h, 0) for h in heads]
    assert b"".join(out) == b"".join(b"line %d continued\n" % i for i in range(5))


def test_console_input_waits_for_buffers_and_is_bounded():
    con = VirtioConsole()
    drv, irq = attach(con)
    assert con.feed(b"x" * (MAX_PENDING_INPUT + 100)) == MAX_PENDING_INPUT
    assert con.feed(b"more") == 0
    rx = drv.queues[0]
    rx.set_used_event(0xFFFF)
    h = rx.add([(100, True)])
    drv.notify(0)
    assert rx.used() == [(h, 100)] and con.pending_input == MAX_PENDING_INPUT - 100


def test_console_input_arrives_on_buffers_already_posted():
    con = VirtioConsole()
    drv, irq = attach(con, features=1 << virtio.F_VERSION_1)
    rx = drv.queues[0]
    h = rx.add([(3, True), (5, True)])
    drv.notify(0)
    assert rx.used() == [] and not irq.level      # nothing to say yet: the buffer waits
    con.feed(b"hello, guest")                      # a host thread types
    assert rx.used() == [(h, 8)] and rx.written(h) == b"hello, g" and irq.level


def test_console_config_size_and_resize():
    con = VirtioConsole(cols=132, rows=43)
    drv, irq = attach(con)
    assert drv.device_features() >> F_SIZE & 1
    assert drv.read_config(0, 2) == (132).to_bytes(2, "little")
    assert drv.read_config(2, 2) == (43).to_bytes(2, "little")
    gen = drv.r32(virtio.MMIO_CONFIG_GENERATION)
    con.resize(100, 30)
    assert drv.read_config(0, 4) == bytes([100, 0, 30, 0])
    assert drv.r32(virtio.MMIO_CONFIG_GENERATION) != gen and drv.ack_interrupts() == virtio.INT_CONFIG_CHANGE


def test_console_emergency_write_needs_the_feature():
    out = []
    drv, _ = attach(VirtioConsole(output=out.append), features=1 << virtio.F_VERSION_1)
    drv.write_config(8, b"A\0\0\0")
    assert out == []
    drv, _ = attach(VirtioConsole(output=out.append), features=1 << virtio.F_VERSION_1 | 1 << F_EMERG_WRITE)
    drv.write_config(8, b"A\0\0\0")
    assert out == [b"A"]


def test_console_tx_writable_buffer_is_harmless():
    out = []
    drv, _ = attach(VirtioConsole(output=out.append))
    tx = drv.queues[1]
    h = tx.add([(b"hi", False), (8, True)])
    drv.notify(1)
    assert tx.used() == [(h, 0)] and out == [b"hi"] and tx.written(h) == bytes(8)


def test_console_input_fed_before_a_reset_survives_it():
    con = VirtioConsole()
    con.feed(b"typed early")
    drv, _ = attach(con)          # init resets the device first
    rx = drv.queues[0]
    h = rx.add([(64, True)])
    drv.notify(0)
    assert rx.used() == [(h, 11)] and rx.written(h, 11) == b"typed early"


# --- rng -----------------------------------------------------------------------------------------
def test_rng_fills_every_writable_byte():
    drv, _ = attach(VirtioRng(source=lambda n: bytes(range(256)) * (n // 256) + bytes(range(n % 256))))
    q = drv.queues[0]
    h = q.add([(100, True), (300, True)], indirect=True)
    drv.notify(0)
    assert q.used() == [(h, 400)]
    assert q.written(h) == (bytes(range(256)) + bytes(range(144)))


def test_rng_is_random_and_bounded():
    dev = VirtioRng()
    drv, _ = attach(dev, ram=1 << 20)
    q = drv.queues[0]
    a = q.add([(64, True)])
    b = q.add([(64, True)])
    big = q.add([(MAX_BYTES_PER_REQUEST + 4096, True)])
    drv.notify(0)
    used = dict(q.used())
    assert used[a] == used[b] == 64 and q.written(a) != q.written(b)
    assert used[big] == MAX_BYTES_PER_REQUEST
    assert dev.bytes_served == 128 + MAX_BYTES_PER_REQUEST


def test_rng_readable_only_request_gets_zero_bytes():
    drv, _ = attach(VirtioRng())
    q = drv.queues[0]
    h = q.add([(b"not for me", False)])
    drv.notify(0)
    assert q.used() == [(h, 0)] and not drv.status() & virtio.S_DEVICE_NEEDS_RESET


@pytest.mark.parametrize("size", [1, 2, 256])
def test_rng_queue_sizes(size):
    drv, _ = attach(VirtioRng(), size=size)
    q = drv.queues[0]
    for _ in range(3):
        h = q.add([(8, True)])
        drv.notify(0)
        assert q.used() == [(h, 8)]
