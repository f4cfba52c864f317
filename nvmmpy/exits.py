"""The exit object a vCPU's run() returns: NVMM's reason and payloads, preallocated and reused.

One `Exit` lives per vCPU; every run() overwrites it in place, so the run loop allocates nothing.
Payload names follow struct nvmm_vcpu_exit: `exit.mem`, `exit.io`, ... (`exit.u.io` works too).
"""
from .constants import EXIT_NAMES


class MemExit:
    __slots__ = ("prot", "gpa", "inst_len", "inst_bytes", "size")

    def __init__(self):
        self.prot = 0
        self.gpa = 0
        self.inst_len = 0
        self.inst_bytes = b""
        self.size = 0  # access size when the driver knows it (kvm decodes MMIO itself), else 0


class IoExit:
    __slots__ = ("in_", "port", "seg", "address_size", "operand_size", "rep", "str", "npc", "count")

    def __init__(self):
        self.in_ = False
        self.port = 0
        self.seg = -1
        self.address_size = 0
        self.operand_size = 0
        self.rep = False
        self.str = False
        self.npc = 0
        self.count = 1  # elements pending in this exit (kvm batches REP string I/O)


class RdmsrExit:
    __slots__ = ("msr", "npc")

    def __init__(self):
        self.msr = 0
        self.npc = 0


class WrmsrExit:
    __slots__ = ("msr", "val", "npc")

    def __init__(self):
        self.msr = 0
        self.val = 0
        self.npc = 0


class InsnExit:
    __slots__ = ("npc",)

    def __init__(self):
        self.npc = 0


class InvalidExit:
    __slots__ = ("hwcode", "detail")

    def __init__(self):
        self.hwcode = 0
        self.detail = ""


class ExitState:
    """struct nvmm_x86_exitstate. Drivers may compute fields on access instead of on every exit."""
    __slots__ = ("rflags", "cr8", "int_shadow", "int_window_exiting", "nmi_window_exiting", "evt_pending")

    def __init__(self):
        self.rflags = 2
        self.cr8 = 0
        self.int_shadow = 0
        self.int_window_exiting = 0
        self.nmi_window_exiting = 0
        self.evt_pending = 0


class Exit:
    __slots__ = ("reason", "mem", "io", "rdmsr", "wrmsr", "insn", "inv", "exitstate")

    def __init__(self, exitstate: ExitState | None = None):
        self.reason = 0
        self.mem = MemExit()
        self.io = IoExit()
        self.rdmsr = RdmsrExit()
        self.wrmsr = WrmsrExit()
        self.insn = InsnExit()
        self.inv = InvalidExit()
        self.exitstate = exitstate if exitstate is not None else ExitState()

    @property
    def u(self):
        """libnvmm spelling: exit->u.io.port is exit.u.io.port here."""
        return self

    @property
    def name(self) -> str:
        return EXIT_NAMES.get(self.reason, hex(self.reason))

    def __repr__(self) -> str:
        r = self.reason
        if r == 0x2:
            io = self.io
            return f"<Exit IO {'in' if io.in_ else 'out'} port={io.port:#x} size={io.operand_size} count={io.count}>"
        if r == 0x1:
            m = self.mem
            return f"<Exit MEMORY gpa={m.gpa:#x} prot={m.prot} size={m.size}>"
        if r == 0x2000:
            return f"<Exit RDMSR msr={self.rdmsr.msr:#x} npc={self.rdmsr.npc:#x}>"
        if r == 0x2001:
            return f"<Exit WRMSR msr={self.wrmsr.msr:#x} val={self.wrmsr.val:#x} npc={self.wrmsr.npc:#x}>"
        if r == 0xFFFFFFFFFFFFFFFF:
            return f"<Exit INVALID hwcode={self.inv.hwcode:#x} {self.inv.detail}>"
        return f"<Exit {self.name}>"
