"""The interrupt controller of eventfd="irqchip" mode: KVM's in-kernel PIC pair in place of
nvmmpy.devices.legacy.pic8259.

The kernel models the 8259A pair (and the ELCR) on the guest's ports, so they never exit; devices
raise their lines from whatever thread they run on (machine.irq_line: KVM_IRQ_LINE, exact level
semantics, no vCPU kick), and the kernel injects the interrupt, takes the guest's EOI and sleeps
through HLT itself. What changes for the run loop: no HALTED or INT_READY exits, and a guest
that halts with interrupts disabled waits until the run's timeout instead of ending "halted".
"""


class KernelPic:
    """What VirtualMachine uses of a PIC: irq_line(n) and pending() (the run loop's question,
    always False here: the kernel delivers)."""

    in_kernel = True

    def __init__(self, machine):
        self._machine = machine
        self._lines = {}

    def irq_line(self, n: int):
        line = self._lines.get(n)
        if line is None:
            line = self._lines[n] = self._machine.irq_line(n)
        return line

    def pending(self) -> bool:
        return False
