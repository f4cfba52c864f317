"""KVM calls NVMM has no counterpart for: ioeventfd, the in-kernel interrupt controller, irqfd.

They let a VMM keep guest notifications and device interrupts off the vCPU thread: a write that
matches an ioeventfd completes in the kernel and signals an eventfd (no exit to user space), and
with the in-kernel PIC an interrupt line is raised from any thread (KVM_IRQ_LINE, or an irqfd)
and delivered by the kernel, which also handles the guest's EOIs and HLT. nvmmpy.extensions
describes them for every driver.
"""
import errno

from ...errors import NvmmError
from . import abi
from .abi import ffi
from .system import ioctl


class KvmExtensions:
    """Mixed into KvmMachine (needs self.vmfd, self.sys)."""

    def _init_extensions(self) -> None:
        check = self.sys.check
        names = set()
        if check(abi.KVM_CAP_IOEVENTFD):
            names.add("ioeventfd")
        if check(abi.KVM_CAP_IRQCHIP):
            names.add("irqchip")
            if check(abi.KVM_CAP_IRQFD):
                names.add("irqfd")
        self.extensions = frozenset(names)
        self.irqchip = False

    def ioeventfd(self, gpa: int, length: int, datamatch, fd: int, pio: bool, deassign: bool) -> None:
        a = ffi.new("struct kvm_ioeventfd *")  # set-up time, any thread: a struct of its own
        a.addr, a.len, a.fd = gpa, length, fd
        a.datamatch = 0 if datamatch is None else datamatch
        a.flags = ((0 if datamatch is None else abi.KVM_IOEVENTFD_FLAG_DATAMATCH)
                   | (abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
                   | (abi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0))
        try:
            ioctl(self.vmfd, abi.KVM_IOEVENTFD, a)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_IOEVENTFD {'port' if pio else 'gpa'} {gpa:#x}+{length} failed: "
                                     f"{e.strerror}") from None

    def irqchip_create(self) -> None:
        try:
            ioctl(self.vmfd, abi.KVM_CREATE_IRQCHIP)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_CREATE_IRQCHIP failed: {e.strerror}") from None
        self.irqchip = True

    def irq_line_arg(self):
        """A struct kvm_irq_level for one caller (threads must not share one)."""
        return ffi.new("struct kvm_irq_level *")

    def irq_line(self, arg, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE with a caller's own argument struct: nothing allocated per call."""
        arg.irq = irq
        arg.level = 1 if level else 0
        try:
            ioctl(self.vmfd, abi.KVM_IRQ_LINE, arg)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_IRQ_LINE {irq} failed: {e.strerror}") from None

    def irqfd(self, gsi: int, fd: int, resample_fd: int, deassign: bool) -> None:
        if not self.irqchip:
            raise NvmmError(errno.EINVAL, "irqfd needs the in-kernel interrupt controller (irqchip_create first)")
        a = ffi.new("struct kvm_irqfd *")
        a.fd, a.gsi = fd, gsi
        a.resamplefd = max(resample_fd, 0)
        a.flags = ((abi.KVM_IRQFD_FLAG_RESAMPLE if resample_fd >= 0 else 0)
                   | (abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0))
        try:
            ioctl(self.vmfd, abi.KVM_IRQFD, a)
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_IRQFD gsi {gsi} failed: {e.strerror}") from None
