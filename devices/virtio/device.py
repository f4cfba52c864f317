"""VirtioDevice: what a virtio device writes (its ID, queues, features, config and requests);
the transport (mmio.py in the VMM, vhost_user/transport.py in a back-end) does everything else,
and the device sees of it only the DeviceContext below, handed over once by attach().

A subclass sets `device_id`, `queue_sizes` (the QueueNumMax of each queue) and
`device_features` (its own feature bits; fixed before the transport is made, which offers them
once), and overrides:

    config_space()          the current device configuration bytes (read by the driver)
    write_config(off, b)    a driver write into config space (default: ignored; most is read-only)
    activate()              DRIVER_OK: self.queues holds the ready queues (queue.Virtqueue)
    process_queue(i)        the driver notified queue i: pop, handle, push, then self.signal_used(i)
    queue_stopped(i)        queue i went away (QueueReady=0, QueueReset): drop chains held from it
    reset()                 back to the power-on state (the transport has dropped the queues)

Everything runs under `self.lock`, which the transport takes around each call: host threads that
feed the device (terminal input, a timer) take it too. QueueError out of process_queue puts the
device into DEVICE_NEEDS_RESET; a host-side entry point that uses the queues catches and hands
what it meets to contain(), to the same end. BadRequest is for the device to answer with its
error status.

Counters every device keeps the same way: bad_requests (requests answered with an error status, or
returned unanswered for want of room: bad_request()), internal_errors (a device bug or host failure
turned into an error status instead of an exception: internal_error()), last_error (why, of either).
"""
import threading
from typing import Protocol

from nvmmpy.devices.interfaces import GuestMemoryError

from .errors import QueueError


class DeviceContext(Protocol):
    """What a transport offers the device it exposes, and all the device may use of it. The transport
    owns these values: the device reads them (through its own queues/driver_features/active) and
    never writes them."""
    queues: list            # per queue index: the ready queue.Virtqueue, or None
    accepted_features: int  # the feature bits the driver accepted, 0 until it has (FEATURES_OK)

    @property
    def driver_ok(self) -> bool:
        """The device may use its queues (DRIVER_OK, and not DEVICE_NEEDS_RESET)."""

    def signal_used(self, index: int) -> None:
        """Buffers were pushed on queue `index`: interrupt the driver if it wants to hear of them."""

    def config_changed(self) -> None:
        """The device configuration changed (new generation, configuration-change interrupt where there is one)."""

    def needs_reset(self, why: str) -> None:
        """The driver broke the rules: stop using the queues until it resets the device."""

    def contain(self, where: str, e: Exception) -> None:
        """An exception out of device code that used the queues: DEVICE_NEEDS_RESET instead of a raise."""

    def kick(self, index: int) -> None:
        """A host thread has new data for queue `index`: have the device process it (under the lock)."""


def contain(context, device_name: str, where: str, e: Exception) -> None:
    """DeviceContext.contain for both transports: QueueError/GuestMemoryError are the driver's fault;
    anything else is a device bug or host failure, counted in context.internal_errors."""
    if isinstance(e, (QueueError, GuestMemoryError)):
        context.needs_reset(f"{where}: {e}")
    else:
        context.internal_errors += 1
        context.needs_reset(f"{where}: internal error in {device_name}: {type(e).__name__}: {e}")


class VirtioDevice:
    device_id = 0
    queue_sizes = (256,)
    device_features = 0
    name = "virtio"

    def __init__(self):
        self.lock = threading.RLock()
        self.context = None          # the DeviceContext of the transport that exposes this device
        self.bad_requests = 0
        self.internal_errors = 0
        self.last_error = ""

    # --- for subclasses to override ------------------------------------------------------------
    def config_space(self) -> bytes:
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        pass

    def validate_features(self, features: int) -> bool:
        """Refuse a feature combination the device cannot work with (FEATURES_OK stays clear)."""
        return True

    def activate(self) -> None:
        pass

    def process_queue(self, index: int) -> None:
        pass

    def queue_stopped(self, index: int) -> None:
        pass

    def reset(self) -> None:
        pass

    # --- for the transport ------------------------------------------------------------------------
    def attach(self, context: DeviceContext) -> None:
        """The transport that exposes this device (once, when it is made)."""
        self.context = context

    # --- for subclasses to call -------------------------------------------------------------------
    @property
    def queues(self) -> list:
        """Per queue index: the ready queue.Virtqueue, or None (empty before a transport attaches)."""
        c = self.context
        return c.queues if c is not None else []

    @property
    def driver_features(self) -> int:
        """What the driver accepted (0 until FEATURES_OK)."""
        c = self.context
        return c.accepted_features if c is not None else 0

    def has_feature(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    @property
    def active(self) -> bool:
        return self.context is not None and self.context.driver_ok

    def signal_used(self, index: int) -> None:
        """Pushed buffers on queue `index`: interrupt the driver if it wants to hear of them."""
        if self.context is not None:
            self.context.signal_used(index)

    def bad_request(self, why: str) -> None:
        """A request the device refused (answered with an error status, or used length 0)."""
        self.bad_requests += 1
        self.last_error = why

    def internal_error(self, why: str) -> None:
        """A device bug or host failure, answered with an error status rather than raised."""
        self.internal_errors += 1
        self.last_error = why

    def contain(self, where: str, e: Exception) -> None:
        """Call from `except Exception` in a host-side entry point (a host thread, the VMM, a backend
        callback) whose work popped or pushed the queues: a guest fault met there (a malformed chain,
        a bad address) sets DEVICE_NEEDS_RESET as it would on a notification, and the host call
        returns normally. Host errors (bad arguments) are checked before and raised as usual."""
        if self.context is None:
            raise e
        self.context.contain(f"{self.name} {where}", e)

    def config_changed(self) -> None:
        """The configuration changed: new generation, configuration-change interrupt."""
        if self.context is not None:
            self.context.config_changed()
