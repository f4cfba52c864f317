"""The virtio-mmio v2 transport to the letter of VIRTIO 1.2 sec. 4.2: registers, access rules,
feature negotiation, the status state machine, queue set-up and reset, interrupts, config."""
import struct

import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.device import VirtioDevice
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.rng import VirtioRng
from nvmmpy.devices.testing.driver import MmioDriver

BASIC = (1 << virtio.F_VERSION_1)


class ConfigDevice(VirtioDevice):
    """A device with 8 config bytes (the last four writable) and two queues of different sizes."""
    device_id = 42
    queue_sizes = (16, 8)
    device_features = 1 << 3

    def __init__(self):
        super().__init__()
        self.cfg = bytearray(b"\x11\x22\x33\x44\0\0\0\0")
        self.activated = self.resets = 0
        self.stopped = []

    def config_space(self):
        return bytes(self.cfg)

    def write_config(self, offset, data):
        if offset >= 4:
            self.cfg[offset:offset + len(data)] = data

    def activate(self):
        self.activated += 1

    def queue_stopped(self, index):
        self.stopped.append(index)

    def reset(self):
        self.resets += 1


@pytest.fixture
def setup():
    mem = BytearrayMemory(1 << 20)
    irq = RecordingIrq()
    dev = ConfigDevice()
    drv = MmioDriver(VirtioMmio(dev, mem, irq), mem)
    return mem, irq, dev, drv


def test_identity_registers(setup):
    _, _, dev, drv = setup
    assert drv.r32(virtio.MMIO_MAGIC_VALUE) == 0x74726976
    assert drv.r32(virtio.MMIO_VERSION) == 2
    assert drv.r32(virtio.MMIO_DEVICE_ID) == 42
    assert drv.r32(virtio.MMIO_VENDOR_ID) == virtio.MMIO_VENDOR
    f = drv.device_features()
    assert f >> virtio.F_VERSION_1 & 1 and f >> 3 & 1 and f >> virtio.F_RING_PACKED & 1
    assert not f >> virtio.F_ADMIN_VQ & 1, "an MMIO device must not offer VIRTIO_F_ADMIN_VQ"
    drv.w32(virtio.MMIO_DEVICE_FEATURES_SEL, 2)
    assert drv.r32(virtio.MMIO_DEVICE_FEATURES) == 0


def test_control_registers_need_aligned_32bit_access(setup):
    _, _, _, drv = setup
    b = bytearray(2)
    drv.t.read(virtio.MMIO_MAGIC_VALUE, memoryview(b))
    assert b == b"\0\0"
    b = bytearray(4)
    drv.t.read(virtio.MMIO_MAGIC_VALUE + 1, memoryview(b))
    assert b == bytes(4)
    drv.t.write(virtio.MMIO_STATUS, memoryview(bytearray(b"\x01")))   # a byte write to Status is dropped
    assert drv.status() == 0
    assert drv.t.bad_accesses == 3


def test_config_space_bytewise_and_bounds(setup):
    _, _, _, drv = setup
    assert drv.read_config(0, 1) == b"\x11"
    assert drv.read_config(1, 2) == b"\x22\x33"
    assert drv.read_config(0, 4) == b"\x11\x22\x33\x44"
    assert drv.read_config(0, 8) == b"\x11\x22\x33\x44\0\0\0\0"
    assert drv.read_config(6, 4) == bytes(4)   # crosses the end: reads as zero
    drv.write_config(4, b"\xAA")
    assert drv.read_config(4, 1) == b"\xAA"
    drv.write_config(0x50, b"\xAA")            # outside: dropped
    assert drv.t.bad_accesses == 2


def test_config_generation_changes(setup):
    _, irq, dev, drv = setup
    g = drv.r32(virtio.MMIO_CONFIG_GENERATION)
    drv.init()
    dev.config_changed()
    assert drv.r32(virtio.MMIO_CONFIG_GENERATION) != g
    assert drv.r32(virtio.MMIO_INTERRUPT_STATUS) == virtio.INT_CONFIG_CHANGE and irq.level
    drv.w32(virtio.MMIO_INTERRUPT_ACK, virtio.INT_CONFIG_CHANGE)
    assert drv.r32(virtio.MMIO_INTERRUPT_STATUS) == 0 and not irq.level


def test_negotiation_accepts_a_subset_with_version_1(setup):
    _, _, dev, drv = setup
    assert drv.negotiate(BASIC | 1 << 3) & virtio.S_FEATURES_OK
    assert dev.driver_features == BASIC | 1 << 3


@pytest.mark.parametrize("features", [0, 1 << 3, BASIC | 1 << 5, BASIC | 1 << 50])
def test_negotiation_refuses_unoffered_or_legacy(setup, features):
    _, _, dev, drv = setup
    assert not drv.negotiate(features) & virtio.S_FEATURES_OK
    drv.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER | virtio.S_FEATURES_OK | virtio.S_DRIVER_OK)
    assert not drv.status() & virtio.S_DRIVER_OK
    assert dev.activated == 0


def test_driver_features_frozen_after_features_ok(setup):
    _, _, dev, drv = setup
    drv.negotiate(BASIC)
    drv.w32(virtio.MMIO_DRIVER_FEATURES_SEL, 0)
    drv.w32(virtio.MMIO_DRIVER_FEATURES, 1 << 3)
    assert drv.t.driver_features == BASIC


def test_status_bits_cannot_be_cleared_and_zero_resets(setup):
    _, irq, dev, drv = setup
    drv.init()
    assert dev.activated == 1
    drv.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE)
    assert drv.status() == 0xF
    before = dev.resets
    drv.w32(virtio.MMIO_STATUS, 0)
    assert drv.status() == 0 and dev.resets == before + 1 and dev.stopped == [0, 1]
    drv.w32(virtio.MMIO_QUEUE_SEL, 0)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 0
    assert drv.r32(virtio.MMIO_INTERRUPT_STATUS) == 0 and not irq.level


def test_queue_registers(setup):
    _, _, dev, drv = setup
    drv.negotiate(BASIC)
    drv.w32(virtio.MMIO_QUEUE_SEL, 1)
    assert drv.r32(virtio.MMIO_QUEUE_NUM_MAX) == 8
    drv.w32(virtio.MMIO_QUEUE_SEL, 2)
    assert drv.r32(virtio.MMIO_QUEUE_NUM_MAX) == 0   # no such queue
    q = drv.setup_queue(0, 16)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 1
    live = dev.queues[0]
    drv.w32(virtio.MMIO_QUEUE_DESC_LOW, 0x5000)    # a live queue's registers cannot change
    assert dev.queues[0] is live and live.desc is not None
    drv.w32(virtio.MMIO_QUEUE_READY, 0)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 0 and dev.stopped == [0]
    assert q.size == 16


@pytest.mark.parametrize("size", [0, 3, 32])
def test_bad_queue_size_is_refused(setup, size):
    _, _, dev, drv = setup
    drv.negotiate(BASIC)
    drv.setup_queue(0, size)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 0
    assert drv.status() & virtio.S_DEVICE_NEEDS_RESET


@pytest.mark.parametrize("which", ["desc", "driver", "device", "outside"])
def test_misaligned_or_outside_areas_are_refused(setup, which):
    mem, _, dev, drv = setup
    drv.negotiate(BASIC)
    drv.w32(virtio.MMIO_QUEUE_SEL, 0)
    drv.w32(virtio.MMIO_QUEUE_NUM, 16)
    addrs = {virtio.MMIO_QUEUE_DESC_LOW: 0x2000, virtio.MMIO_QUEUE_DRIVER_LOW: 0x3000, virtio.MMIO_QUEUE_DEVICE_LOW: 0x4000}
    if which == "outside":
        addrs[virtio.MMIO_QUEUE_DEVICE_LOW] = len(mem.buf) - 8
    else:
        key = {"desc": virtio.MMIO_QUEUE_DESC_LOW, "driver": virtio.MMIO_QUEUE_DRIVER_LOW, "device": virtio.MMIO_QUEUE_DEVICE_LOW}[which]
        addrs[key] += 1
    for reg, a in addrs.items():
        drv.w32(reg, a)
    drv.w32(virtio.MMIO_QUEUE_READY, 1)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 0
    assert drv.status() & virtio.S_DEVICE_NEEDS_RESET


def test_queue_before_features_ok_is_refused(setup):
    _, _, dev, drv = setup
    drv.w32(virtio.MMIO_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER)
    drv.features = BASIC
    drv.setup_queue(0, 16)
    assert drv.r32(virtio.MMIO_QUEUE_READY) == 0


def test_queue_reset(setup):
    _, _, dev, drv = setup
    drv.init(BASIC | 1 << virtio.F_RING_RESET)
    drv.w32(virtio.MMIO_QUEUE_SEL, 1)
    assert drv.r32(virtio.MMIO_QUEUE_RESET) == 0
    drv.w32(virtio.MMIO_QUEUE_RESET, 1)
    assert drv.r32(virtio.MMIO_QUEUE_RESET) == 1 and drv.r32(virtio.MMIO_QUEUE_READY) == 0
    assert dev.queues[1] is None and dev.queues[0] is not None and dev.stopped == [1]
    drv.setup_queue(1, 8)   # the driver re-enables it
    assert drv.r32(virtio.MMIO_QUEUE_RESET) == 0 and drv.r32(virtio.MMIO_QUEUE_READY) == 1


def test_queue_reset_needs_the_feature(setup):
    _, _, dev, drv = setup
    drv.init(BASIC)
    drv.w32(virtio.MMIO_QUEUE_SEL, 0)
    drv.w32(virtio.MMIO_QUEUE_RESET, 1)
    assert dev.queues[0] is not None


def test_shared_memory_regions_absent(setup):
    _, _, _, drv = setup
    drv.w32(virtio.MMIO_SHM_SEL, 0)
    for reg in (virtio.MMIO_SHM_LEN_LOW, virtio.MMIO_SHM_LEN_HIGH, virtio.MMIO_SHM_BASE_LOW, virtio.MMIO_SHM_BASE_HIGH):
        assert drv.r32(reg) == 0xFFFFFFFF


def test_notify_before_driver_ok_is_served_at_driver_ok():
    mem = BytearrayMemory(1 << 20)
    dev = VirtioRng()
    drv = MmioDriver(VirtioMmio(dev, mem, RecordingIrq()), mem)
    drv.negotiate(BASIC)
    q = drv.setup_queue(0, 8)
    head = q.add([(16, True)])
    drv.notify(0)
    assert q.used() == []   # no buffer consumed before DRIVER_OK
    drv.w32(virtio.MMIO_STATUS, 0xF)
    assert q.used() == [(head, 16)]


def test_interrupt_line_follows_status_and_ack():
    mem = BytearrayMemory(1 << 20)
    irq = RecordingIrq()
    drv = MmioDriver(VirtioMmio(VirtioRng(), mem, irq), mem)
    drv.init(BASIC)
    q = drv.queues[0]
    q.add([(8, True)])
    drv.notify(0)
    assert irq.level and drv.r32(virtio.MMIO_INTERRUPT_STATUS) == virtio.INT_USED_BUFFER
    q.add([(8, True)])
    drv.notify(0)                       # still pending: the line stays up, no new edge
    assert irq.edges == 1
    drv.w32(virtio.MMIO_INTERRUPT_ACK, virtio.INT_USED_BUFFER)
    assert not irq.level


def test_needs_reset_raises_config_interrupt_and_stops_the_queue():
    mem = BytearrayMemory(1 << 20)
    irq = RecordingIrq()
    dev = VirtioRng()
    drv = MmioDriver(VirtioMmio(dev, mem, irq), mem)
    drv.init(BASIC)
    q = drv.queues[0]
    q.write_desc(0, len(mem.buf) - 4, 64, virtio.DESC_F_WRITE, 0)   # runs off the end of RAM
    q.publish(0)
    drv.notify(0)
    assert drv.status() & virtio.S_DEVICE_NEEDS_RESET
    assert drv.r32(virtio.MMIO_INTERRUPT_STATUS) & virtio.INT_CONFIG_CHANGE and irq.level
    assert "outside guest RAM" in drv.t.last_error
    q.add([(8, True)])
    drv.notify(0)
    assert q.used() == []               # the device keeps its hands off until reset
    drv.init(BASIC)
    q = drv.queues[0]
    h = q.add([(8, True)])
    drv.notify(0)
    assert q.used() == [(h, 8)]


def test_unknown_register_reads_zero(setup):
    _, _, _, drv = setup
    assert drv.r32(0x0E0) == 0
    assert drv.r32(virtio.MMIO_QUEUE_NOTIFY) == 0   # write-only
    drv.w32(virtio.MMIO_MAGIC_VALUE, 5)             # read-only: dropped
    assert drv.r32(virtio.MMIO_MAGIC_VALUE) == 0x74726976


def test_packing_of_64bit_addresses(setup):
    _, _, dev, drv = setup
    drv.negotiate(BASIC)
    drv.w32(virtio.MMIO_QUEUE_SEL, 0)
    drv.w32(virtio.MMIO_QUEUE_DESC_LOW, 0x1000)
    drv.w32(virtio.MMIO_QUEUE_DESC_HIGH, 0x2)
    assert drv.t.regs[0].desc == 0x2_0000_1000
    assert struct.calcsize("<QIHH") == 16
