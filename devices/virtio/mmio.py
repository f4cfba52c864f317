"""The virtio-mmio version 2 transport (VIRTIO 1.2 sec. 4.2): one register window per device.

    transport = VirtioMmio(device, memory, irq)   # a BusDevice: add it at its base, 0x200 long

It owns the driver-visible state: feature windows and negotiation (VERSION_1 required), the
status state machine, per-queue registers and queue creation at QueueReady, QueueReset,
interrupt status and acknowledge on a level-triggered line, and the configuration generation.
Control registers (below 0x100) take 32-bit aligned accesses only; anything else reads as 0 and
writes are dropped (counted in `bad_accesses`). A driver that breaks the queue rules puts the
device into DEVICE_NEEDS_RESET with a configuration-change interrupt; the VMM goes on.

It is the device's DeviceContext (device.py): the ready queues, the accepted features, driver_ok,
signal_used, config_changed, needs_reset, contain and kick.
"""
import struct

from . import constants as virtio
from .device import contain
from .errors import QueueError
from .split_queue import SplitQueue

_U32 = struct.Struct("<I")

# Transport features this implementation handles for every device.
TRANSPORT_FEATURES = ((1 << virtio.F_VERSION_1) | (1 << virtio.F_INDIRECT_DESC) | (1 << virtio.F_EVENT_IDX)
                      | (1 << virtio.F_RING_PACKED) | (1 << virtio.F_RING_RESET))


class _QueueRegs:
    __slots__ = ("num", "desc", "driver", "device", "reset_done")

    def __init__(self, num_max: int):
        self.num = num_max
        self.desc = self.driver = self.device = 0
        self.reset_done = False


class VirtioMmio:
    def __init__(self, device, memory, irq, *, features_mask: int = ~0):
        self.device = device
        self.memory = memory
        self.irq = irq
        self.offered = (device.device_features | TRANSPORT_FEATURES) & features_mask & ~(1 << virtio.F_ADMIN_VQ)
        self.bad_accesses = 0
        self.last_error = ""           # why the device last went into NEEDS_RESET
        self.internal_errors = 0       # device exceptions turned into NEEDS_RESET (bugs, host failures)
        self._reset_state()
        device.attach(self)

    # --- state --------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0       # the DriverFeatures register, as the driver writes it
        self.accepted_features = 0     # driver_features once FEATURES_OK is set: what the device sees
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        self.shm_sel = 0
        self.regs = [_QueueRegs(n) for n in self.device.queue_sizes]
        self.queues = [None] * len(self.device.queue_sizes)   # per index the ready queue, or None
        self._level = False
        self.irq.set_level(False)

    @property
    def driver_ok(self) -> bool:
        return self.status & (virtio.S_DRIVER_OK | virtio.S_DEVICE_NEEDS_RESET) == virtio.S_DRIVER_OK

    def reset(self) -> None:
        """Device reset (the driver wrote 0 to Status, or the VMM resets)."""
        with self.device.lock:
            for i, q in enumerate(self.queues):
                if q is not None:
                    self.device.queue_stopped(i)
            self._reset_state()
            self.device.reset()

    # --- interrupts -----------------------------------------------------------------------------
    def _update_irq(self) -> None:
        level = self.interrupt_status != 0
        if level != self._level:
            self._level = level
            self.irq.set_level(level)

    def signal_used(self, index: int) -> None:
        q = self.queues[index] if index < len(self.queues) else None
        if q is not None and q.should_notify():
            self.interrupt_status |= virtio.INT_USED_BUFFER
            self._update_irq()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.status & virtio.S_DRIVER_OK:
            self.interrupt_status |= virtio.INT_CONFIG_CHANGE
            self._update_irq()

    def needs_reset(self, why: str) -> None:
        """The driver broke the rules: stop using the queues until it resets the device."""
        self.last_error = why
        if not self.status & virtio.S_DEVICE_NEEDS_RESET:
            self.status |= virtio.S_DEVICE_NEEDS_RESET
            if self.status & virtio.S_DRIVER_OK:
                self.interrupt_status |= virtio.INT_CONFIG_CHANGE
                self._update_irq()

    # --- the bus side ---------------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        with self.device.lock:
            if offset >= virtio.MMIO_CONFIG:
                self._read_config(offset - virtio.MMIO_CONFIG, data)
                return
            if len(data) != 4 or offset & 3:
                self.bad_accesses += 1
                data[:] = bytes(len(data))
                return
            _U32.pack_into(data, 0, self._read_reg(offset) & 0xFFFFFFFF)

    def write(self, offset: int, data: memoryview) -> None:
        with self.device.lock:
            if offset >= virtio.MMIO_CONFIG:
                self._write_config(offset - virtio.MMIO_CONFIG, data)
                return
            if len(data) != 4 or offset & 3:
                self.bad_accesses += 1
                return
            self._write_reg(offset, _U32.unpack_from(data)[0])

    def _read_config(self, offset: int, data: memoryview) -> None:
        cfg = self.device.config_space()
        n = len(data)
        if n not in (1, 2, 4, 8) or offset + n > len(cfg):
            self.bad_accesses += 1
            data[:] = bytes(n)
            return
        data[:] = cfg[offset:offset + n]

    def _write_config(self, offset: int, data: memoryview) -> None:
        n = len(data)
        if n not in (1, 2, 4, 8) or offset + n > len(self.device.config_space()):
            self.bad_accesses += 1
            return
        self.device.write_config(offset, bytes(data))

    def _sel_regs(self):
        return self.regs[self.queue_sel] if self.queue_sel < len(self.regs) else None

    def _read_reg(self, off: int) -> int:
        if off == virtio.MMIO_MAGIC_VALUE:
            return virtio.MMIO_MAGIC
        if off == virtio.MMIO_VERSION:
            return virtio.MMIO_VERSION_2
        if off == virtio.MMIO_DEVICE_ID:
            return self.device.device_id
        if off == virtio.MMIO_VENDOR_ID:
            return virtio.MMIO_VENDOR
        if off == virtio.MMIO_DEVICE_FEATURES:
            return self.offered >> (32 * self.device_features_sel) if self.device_features_sel < 2 else 0
        if off == virtio.MMIO_QUEUE_NUM_MAX:
            r = self._sel_regs()
            return self.device.queue_sizes[self.queue_sel] if r else 0
        if off == virtio.MMIO_QUEUE_READY:
            r = self._sel_regs()
            return int(r is not None and self.queues[self.queue_sel] is not None)
        if off == virtio.MMIO_QUEUE_RESET:
            r = self._sel_regs()
            return int(r is not None and r.reset_done)
        if off == virtio.MMIO_INTERRUPT_STATUS:
            return self.interrupt_status
        if off == virtio.MMIO_STATUS:
            return self.status
        if off in (virtio.MMIO_SHM_LEN_LOW, virtio.MMIO_SHM_LEN_HIGH, virtio.MMIO_SHM_BASE_LOW, virtio.MMIO_SHM_BASE_HIGH):
            return 0xFFFFFFFF  # no shared memory regions
        if off == virtio.MMIO_CONFIG_GENERATION:
            return self.config_generation
        self.bad_accesses += 1  # a write-only or reserved register
        return 0

    def _write_reg(self, off: int, value: int) -> None:
        if off == virtio.MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif off == virtio.MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif off == virtio.MMIO_DRIVER_FEATURES:
            if self.status & virtio.S_DRIVER and not self.status & virtio.S_FEATURES_OK and self.driver_features_sel < 2:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
            else:
                self.bad_accesses += 1
        elif off == virtio.MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif off in (virtio.MMIO_QUEUE_NUM, virtio.MMIO_QUEUE_DESC_LOW, virtio.MMIO_QUEUE_DESC_HIGH, virtio.MMIO_QUEUE_DRIVER_LOW,
                     virtio.MMIO_QUEUE_DRIVER_HIGH, virtio.MMIO_QUEUE_DEVICE_LOW, virtio.MMIO_QUEUE_DEVICE_HIGH):
            self._write_queue_reg(off, value)
        elif off == virtio.MMIO_QUEUE_READY:
            self._write_queue_ready(value)
        elif off == virtio.MMIO_QUEUE_RESET:
            self._write_queue_reset(value)
        elif off == virtio.MMIO_QUEUE_NOTIFY:
            self._notify(value & 0xFFFF if self.driver_features >> virtio.F_NOTIFICATION_DATA & 1 else value)
        elif off == virtio.MMIO_INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._update_irq()
        elif off == virtio.MMIO_STATUS:
            self._write_status(value)
        elif off == virtio.MMIO_SHM_SEL:
            self.shm_sel = value
        else:
            self.bad_accesses += 1  # read-only or reserved

    # --- status and features --------------------------------------------------------------------
    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        value &= 0xFF
        old = self.status
        keep = old & virtio.S_DEVICE_NEEDS_RESET
        if (value | keep) & old != old:
            self.bad_accesses += 1  # the driver must not clear bits (except by writing 0)
            return
        new = value | keep
        if new & virtio.S_FEATURES_OK and not old & virtio.S_FEATURES_OK and not self._features_acceptable():
            new &= ~virtio.S_FEATURES_OK  # the driver reads it back and gives up
        if new & virtio.S_DRIVER_OK and not new & virtio.S_FEATURES_OK:
            new &= ~virtio.S_DRIVER_OK
        self.status = new
        if new & virtio.S_FEATURES_OK and not old & virtio.S_FEATURES_OK:
            self.accepted_features = self.driver_features
        if new & virtio.S_DRIVER_OK and not old & virtio.S_DRIVER_OK:
            self.device.activate()
            for i, q in enumerate(self.queues):  # notifications sent before DRIVER_OK
                if q is not None and self.driver_ok:
                    self._process(i)

    def _features_acceptable(self) -> bool:
        f = self.driver_features
        if f & ~self.offered or not f >> virtio.F_VERSION_1 & 1 or not self.status & virtio.S_DRIVER:
            return False
        return bool(self.device.validate_features(f))

    # --- queues ---------------------------------------------------------------------------------
    def _write_queue_reg(self, off: int, value: int) -> None:
        r = self._sel_regs()
        if r is None or self.queues[self.queue_sel] is not None:
            self.bad_accesses += 1  # no such queue, or changing a live queue
            return
        if off == virtio.MMIO_QUEUE_NUM:
            r.num = value
        elif off == virtio.MMIO_QUEUE_DESC_LOW:
            r.desc = (r.desc & ~0xFFFFFFFF) | value
        elif off == virtio.MMIO_QUEUE_DESC_HIGH:
            r.desc = (r.desc & 0xFFFFFFFF) | value << 32
        elif off == virtio.MMIO_QUEUE_DRIVER_LOW:
            r.driver = (r.driver & ~0xFFFFFFFF) | value
        elif off == virtio.MMIO_QUEUE_DRIVER_HIGH:
            r.driver = (r.driver & 0xFFFFFFFF) | value << 32
        elif off == virtio.MMIO_QUEUE_DEVICE_LOW:
            r.device = (r.device & ~0xFFFFFFFF) | value
        else:
            r.device = (r.device & 0xFFFFFFFF) | value << 32

    def _write_queue_ready(self, value: int) -> None:
        r = self._sel_regs()
        if r is None:
            self.bad_accesses += 1
            return
        i = self.queue_sel
        if not value & 1:
            if self.queues[i] is not None:
                self.queues[i] = None
                self.device.queue_stopped(i)
            return
        if self.queues[i] is not None:
            return
        if not self.status & virtio.S_FEATURES_OK:
            self.needs_reset(f"queue {i} enabled before FEATURES_OK")
            return
        f = self.driver_features
        try:
            cls = SplitQueue
            if f >> virtio.F_RING_PACKED & 1:
                from .packed_queue import PackedQueue as cls
            q = cls(self.memory, r.num, r.desc, r.driver, r.device, size_max=self.device.queue_sizes[i],
                    event_idx=bool(f >> virtio.F_EVENT_IDX & 1), indirect=bool(f >> virtio.F_INDIRECT_DESC & 1))
        except QueueError as e:
            self.needs_reset(f"queue {i}: {e}")
            return
        r.reset_done = False
        self.queues[i] = q

    def _write_queue_reset(self, value: int) -> None:
        r = self._sel_regs()
        if r is None or not value & 1 or not self.driver_features >> virtio.F_RING_RESET & 1:
            self.bad_accesses += 1
            return
        i = self.queue_sel
        if self.queues[i] is not None:
            self.queues[i] = None
            self.device.queue_stopped(i)
        r.num = self.device.queue_sizes[i]
        r.desc = r.driver = r.device = 0
        r.reset_done = True

    def notified(self, index: int) -> None:
        """A QueueNotify write of `index` that reached the VMM another way than through write()
        (an ioeventfd, on an I/O thread): handled as the register write is."""
        with self.device.lock:
            self._notify(index)

    def _notify(self, index: int) -> None:
        if index >= len(self.queues) or self.queues[index] is None:
            self.bad_accesses += 1
            return
        if self.driver_ok:
            self._process(index)

    def _process(self, index: int) -> None:
        try:
            self.device.process_queue(index)
        except Exception as e:  # noqa: BLE001 - contained: the driver sees NEEDS_RESET, the VMM goes on
            self.contain(f"queue {index}", e)

    def contain(self, where: str, e: Exception) -> None:
        """An exception out of device code that used the queues, on a guest notification or a host-side
        entry point (VirtioDevice.contain): DEVICE_NEEDS_RESET instead of an exception in the VMM or a
        host thread (device.contain says whose fault it was)."""
        contain(self, self.device.name, where, e)

    def kick(self, index: int) -> None:
        """Process queue `index` from a host thread (new host data for a waiting queue)."""
        with self.device.lock:
            if self.driver_ok and index < len(self.queues) and self.queues[index] is not None:
                self._process(index)
