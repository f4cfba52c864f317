"""Virtio queue notifications off the vCPU thread, where the driver has ioeventfd (kvm).

Each queue of a virtio-mmio device gets an eventfd, registered for a 4-byte write of its index to
the QueueNotify register, and a thread blocked reading it: the guest's notification completes in
the kernel (no exit to user space) and the device's work runs on that thread, while the vCPU goes
on in the guest. The interrupt the device raises reaches the guest the way the VMM's interrupt
controller takes it: the Python PIC kicks the vCPU (VirtualMachine._irq_changed), the in-kernel
one (irqchip mode) delivers it itself. A write that matches no eventfd (another value, as with
VIRTIO_F_NOTIFICATION_DATA) still exits and is handled on the vCPU thread, as without eventfds.

Modes (VirtualMachine(eventfd=...)):
    "off"        every notification exits to the VMM (NVMM's way; unicorn and nvmm always)
    "ioeventfd"  notifications through eventfds and I/O threads, the Python PIC
    "irqchip"    the same, with KVM's in-kernel PIC instead of the Python one (vmm/kernel_pic.py)
    "auto"       the most the driver has: "irqchip", else "ioeventfd", else "off"

VirtualMachine's default is "off": "ioeventfd" alone trades the notification exit for a HALTED
exit and two thread hand-offs when the guest sleeps until the interrupt (slower per request), and
"irqchip" changes what the run loop sees (kernel_pic.py), so both are asked for by name or "auto".
"""
import os
import threading

MODES = ("auto", "off", "ioeventfd", "irqchip")
DRAIN = 1 << 32   # added to a queue's eventfd by drain(); a guest's notifications add 1 each


def resolve_mode(machine, wanted: str) -> str:
    """The mode a VirtualMachine on `machine` runs in for `wanted` (ValueError if it cannot)."""
    if wanted not in MODES:
        raise ValueError(f"eventfd must be one of {', '.join(MODES)}, not {wanted!r}")
    have = machine.extensions
    if wanted == "auto":
        return "irqchip" if {"ioeventfd", "irqchip"} <= have else "ioeventfd" if "ioeventfd" in have else "off"
    need = {"off": (), "ioeventfd": ("ioeventfd",), "irqchip": ("ioeventfd", "irqchip")}[wanted]
    missing = [n for n in need if n not in have]
    if missing:
        raise ValueError(f"eventfd={wanted!r} needs {' and '.join(missing)}, which the {machine.driver_name} "
                         f"driver does not have")
    return wanted


class QueueNotifier:
    """One queue's eventfd and the thread that serves it."""

    def __init__(self, machine, gpa: int, transport, index: int, name: str):
        self.machine, self.gpa, self.transport, self.index = machine, gpa, transport, index
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.served = False           # a notification came through the eventfd (a flag: a count would allocate)
        self._closed = False
        buf = bytearray(8)
        self._bufs = [buf]            # os.readv target, reused: nothing allocated per notification
        self._count = memoryview(buf).cast("Q")
        self._drained = threading.Event()
        try:
            machine.ioeventfd(gpa, 4, index, self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        readv, fd, bufs, count = os.readv, self.fd, self._bufs, self._count
        notified, index, mask, drain = self.transport.notified, self.index, DRAIN - 1, DRAIN
        while True:
            readv(fd, bufs)
            if self._closed:
                return
            n = count[0]   # notifications folded into this wake-up (plus DRAIN if drain() asked)
            if n & mask:
                self.served = True
                notified(index)
            if n >= drain:
                self._drained.set()

    def drain(self) -> None:
        """Return once the notifications signalled so far are handled (the thread reads them all
        at its next wake-up, with drain's own mark)."""
        self._drained.clear()
        os.eventfd_write(self.fd, DRAIN)
        while not self._drained.wait(0.1):
            if not self._thread.is_alive():   # it died of a bug (the traceback is printed): do not hang
                return

    def close(self) -> None:
        """Stop the thread (after the work it is doing) and unregister the eventfd."""
        self._closed = True
        os.eventfd_write(self.fd, 1)
        self._thread.join()
        try:
            self.machine.ioeventfd(self.gpa, 4, self.index, self.fd, deassign=True)
        except Exception:  # noqa: BLE001 - the machine may be gone already; its eventfds went with it
            pass
        os.close(self.fd)


class IoThreads:
    """The notifiers of a VirtualMachine's virtio devices."""

    def __init__(self, machine):
        self.machine = machine
        self.notifiers = []

    def add_virtio(self, base: int, transport, label: str) -> None:
        """Serve every queue of the virtio-mmio `transport` at `base` from its own thread."""
        from nvmmpy.devices.virtio.constants import MMIO_QUEUE_NOTIFY
        for i in range(len(transport.device.queue_sizes)):
            self.notifiers.append(QueueNotifier(self.machine, base + MMIO_QUEUE_NOTIFY, transport, i,
                                                f"nvmmpy-io-{label}-q{i}"))

    def drain(self) -> None:
        """At the end of a run: the devices have seen every notification the guest made."""
        for n in self.notifiers:
            n.drain()

    def close(self) -> None:
        while self.notifiers:
            self.notifiers.pop().close()
