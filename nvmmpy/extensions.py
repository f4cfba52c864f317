"""Machine calls beyond libnvmm's API, offered where a driver has them (today: kvm).

NVMM has no way to complete a guest's notification write in the kernel or to raise an interrupt
without the vCPU thread; KVM has (ioeventfd, the in-kernel PIC, irqfd), and a VMM that uses them
takes far fewer exits per device request. A VMM asks `machine.extensions` and falls back to the
NVMM path when a name is missing; calling one the driver lacks fails with EOPNOTSUPP.

    "ioeventfd"  ioeventfd(gpa, length, datamatch, fd, pio=False, deassign=False): a guest write of
                 `length` bytes at `gpa` (a port with pio=True) whose value is `datamatch` (None:
                 any) adds 1 to eventfd `fd` instead of exiting.
    "irqchip"    irqchip_create(), before the first vCPU: the kernel models the PIC pair (ports
                 0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1), I/O APIC and local APIC, delivers
                 interrupts and handles HLT itself (no HALTED exits; vcpu.inject of interrupts is
                 refused). Then irq_line(n) is an IrqLine for ISA line n, usable from any thread.
    "irqfd"      irqfd(gsi, fd, resample_fd=-1, deassign=False), with the irqchip: a write to `fd`
                 raises `gsi`; with `resample_fd` the line stays raised until the guest's EOI, which
                 then signals `resample_fd` (for level-triggered lines).
"""
import errno
import threading

from .errors import NvmmError


class MachineExtensions:
    """Mixed into Machine (needs self._impl, self._alive, self.vcpus)."""

    @property
    def extensions(self) -> frozenset:
        """Names of the extension calls this machine's driver has (empty on nvmm and unicorn)."""
        return getattr(self._impl, "extensions", frozenset())

    def _need(self, name: str) -> None:
        self._alive()
        if name not in self.extensions:
            raise NvmmError(errno.EOPNOTSUPP, f"the {self.driver_name} driver has no {name} "
                                              f"(machine.extensions: {sorted(self.extensions) or 'none'})")

    def ioeventfd(self, gpa: int, length: int, datamatch, fd: int, *, pio: bool = False,
                  deassign: bool = False) -> None:
        self._need("ioeventfd")
        if length not in (0, 1, 2, 4, 8):
            raise NvmmError(errno.EINVAL, f"ioeventfd length must be 0, 1, 2, 4 or 8, not {length}")
        self._impl.ioeventfd(gpa, length, datamatch, fd, pio, deassign)

    def irqchip_create(self) -> None:
        self._need("irqchip")
        if self.vcpus:
            raise NvmmError(errno.EBUSY, "the in-kernel interrupt controller must be created before any vCPU")
        if self.irqchip:
            raise NvmmError(errno.EEXIST, "the in-kernel interrupt controller already exists")
        self._impl.irqchip_create()

    @property
    def irqchip(self) -> bool:
        """The in-kernel interrupt controller was created."""
        return bool(getattr(self._impl, "irqchip", False))

    def irq_line(self, n: int) -> "KernelIrqLine":
        if not self.irqchip:
            raise NvmmError(errno.EINVAL, "irq_line needs the in-kernel interrupt controller (irqchip_create first)")
        if not 0 <= n < 16:
            raise ValueError(f"ISA interrupt line {n} out of range 0-15")
        return KernelIrqLine(self._impl, n)

    def irqfd(self, gsi: int, fd: int, *, resample_fd: int = -1, deassign: bool = False) -> None:
        self._need("irqfd")
        self._impl.irqfd(gsi, fd, resample_fd, deassign)


class KernelIrqLine:
    """An IrqLine (trigger / set_level) on the in-kernel interrupt controller, from any thread.
    Each line has its own ioctl argument (so set_level allocates nothing) and a lock for it."""
    __slots__ = ("_impl", "_n", "_arg", "_lock")

    def __init__(self, impl, n: int):
        self._impl, self._n, self._arg = impl, n, impl.irq_line_arg()
        self._lock = threading.Lock()

    def set_level(self, level: bool) -> None:
        with self._lock:
            self._impl.irq_line(self._arg, self._n, level)

    def trigger(self) -> None:
        with self._lock:
            self._impl.irq_line(self._arg, self._n, True)
            self._impl.irq_line(self._arg, self._n, False)
