"""What a VirtioDevice sees of the vhost-user back-end: the part the mmio transport plays in the VMM.

The device-facing contract is device.DeviceContext, the members at the top of VhostUserTransport:

    queues                per ring: its queue while started and enabled, else None
    accepted_features     the device's feature bits the front-end acked (SET_FEATURES)
    driver_ok             the device may use its queues
    signal_used(i)        pushed buffers on queue i: write the ring's call eventfd if the driver
                          wants to hear of them (EVENT_IDX / NO_INTERRUPT honoured by the queue)
    config_changed()      the device's config changed (counted: no back-end channel to tell QEMU)
    needs_reset(why)      the driver broke the queue rules: stop using the queues, signal every
                          ring's error eventfd, until the front-end resets or restarts the rings
    contain(where, e)     an exception out of device code that used the queues: needs_reset, as mmio.py
    kick(i)               a host thread has new data for queue i: processed on the I/O thread

The rest is for session.py: attach memory, start/stop/enable rings, process a kick, reset. All
device calls happen under device.lock; device exceptions are contained here (as in mmio.py).
"""
import os
import struct

from ..device import contain
from . import rings

_ONE = struct.pack("<Q", 1)


def _signal(fd) -> bool:
    if fd is None:
        return False
    try:
        os.write(fd, _ONE)
        return True
    except OSError:   # a full or closed eventfd: the front-end is going away; nothing to do here
        return False


def close_fd(fd) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class VhostUserTransport:
    def __init__(self, device, log=None):
        self.device = device
        self.log = log or (lambda msg: None)
        self.rings = [rings.Vring(i, n) for i, n in enumerate(device.queue_sizes)]
        self.memory = None
        self.features = 0              # what the front-end acked (SET_FEATURES), device bits included
        self.activated = False
        self.broken = ""               # why the device went into "needs reset"
        self.wake = None               # server hook: kick(i) from another thread -> the I/O thread
        self.retired = []              # kick fds to close once the server no longer waits on them
        self.config_changes = 0
        self.internal_errors = 0
        self.device_kicks = 0
        self.queues = [None] * len(self.rings)
        self.accepted_features = 0
        device.attach(self)

    # --- the device-facing contract --------------------------------------------------------------
    @property
    def driver_ok(self) -> bool:
        return self.activated and not self.broken

    def signal_used(self, index: int) -> None:
        ring = self.rings[index] if 0 <= index < len(self.rings) else None
        if ring is not None and ring.queue is not None and ring.queue.should_notify():
            if _signal(ring.call):
                ring.calls += 1

    def config_changed(self) -> None:
        self.config_changes += 1

    def needs_reset(self, why: str) -> None:
        if not self.broken:
            self.broken = why or "device error"
            self.log(f"device needs reset: {self.broken}")
            for ring in self.rings:
                _signal(ring.err)

    def contain(self, where: str, e: Exception) -> None:
        contain(self, self.device.name, where, e)

    def kick(self, index: int) -> None:
        if self.wake is not None:
            self.wake(index)
        else:
            self.process(index)

    # --- for the session ----------------------------------------------------------------------------
    def retire_kick(self, ring) -> None:
        """Forget the ring's kick fd. It is closed by the server after it stops waiting on it: an
        fd closed while still in epoll stays registered there as long as the front-end holds the
        same eventfd, and would wake the loop for ever."""
        if ring.kick is not None:
            self.retired.append(ring.kick)
            ring.kick = None

    def set_features(self, features: int, device_bits: int) -> None:
        with self.device.lock:
            self.features = features
            self.accepted_features = device_bits

    def set_memory(self, memory) -> None:
        """A new memory table: running rings are re-made over it at their current position."""
        with self.device.lock:
            self.memory = memory
            for ring in self.rings:
                if ring.queue is not None:
                    ring.base = rings.get_base(ring.queue)
                    ring.queue = rings.make_queue(ring, memory, self.features)   # ProtocolError: bad table
                    self._expose(ring)

    def start_ring(self, index: int) -> None:
        ring = self.rings[index]
        with self.device.lock:
            if ring.queue is not None:
                return
            ring.queue = rings.make_queue(ring, self.memory, self.features)
            self._expose(ring)
        self.process(index)

    def stop_ring(self, index: int) -> int:
        """GET_VRING_BASE: stop the ring, return where it stands. The last ring to stop resets the
        device (the driver's session is over; a restart begins from a fresh device)."""
        ring = self.rings[index]
        with self.device.lock:
            if ring.queue is not None:
                ring.base = rings.get_base(ring.queue)
                ring.queue = None
                self._expose(ring)
                if not any(r.queue is not None for r in self.rings):
                    self._reset_device()
            return ring.base

    def enable_ring(self, index: int, enabled: bool) -> None:
        ring = self.rings[index]
        with self.device.lock:
            ring.enabled = enabled
            self._expose(ring)
        if enabled:
            self.process(index)

    def _expose(self, ring) -> None:
        """queues[i] (the device's queues) is the ring's queue while it is started and enabled."""
        i = ring.index
        q = ring.queue if ring.enabled else None
        old = self.queues[i]
        if old is q:
            return
        if old is not None:
            self.queues[i] = None
            self._device_call(self.device.queue_stopped, i)
        self.queues[i] = q
        if q is not None and not self.activated and not self.broken:
            self.activated = True
            self._device_call(self.device.activate)

    def activate(self) -> None:
        """SET_STATUS with DRIVER_OK."""
        with self.device.lock:
            if not self.activated:
                self.activated = True
                self._device_call(self.device.activate)
        for ring in self.rings:
            self.process(ring.index)

    def process(self, index: int) -> None:
        """A kick on ring `index` (or a host thread's kick()): let the device take what is there."""
        with self.device.lock:
            if not self.driver_ok or self.queues[index] is None:
                return
            try:
                self.device.process_queue(index)
            except Exception as e:  # noqa: BLE001 - a device bug must not take the back-end down
                self.contain(f"queue {index}", e)

    def _device_call(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            self.internal_errors += 1
            self.needs_reset(f"internal error in {self.device.name}.{fn.__name__}: {type(e).__name__}: {e}")

    def _reset_device(self) -> None:
        for ring in self.rings:
            if self.queues[ring.index] is not None:
                self.queues[ring.index] = None
                self._device_call(self.device.queue_stopped, ring.index)
        self.activated = False
        self.broken = ""
        self._device_call(self.device.reset)

    def reset(self, full: bool = True) -> None:
        """Rings stopped and disabled (kick fds closed), the device back to its power-on state.
        full (the front-end went away): every fd closed, ring settings, features and memory
        forgotten too. Not full (RESET_DEVICE, SET_STATUS 0): call/err fds and memory stay, as
        QEMU sets the error fds only once per connection."""
        with self.device.lock:
            for ring in self.rings:
                ring.queue = None
                ring.enabled = False
            self._reset_device()
            for ring in self.rings:
                self.retire_kick(ring)
                if full:
                    close_fd(ring.call)
                    close_fd(ring.err)
                    self.rings[ring.index] = rings.Vring(ring.index, ring.size_max)
            if full:
                self.features = 0
                self.accepted_features = 0
                self.memory = None
