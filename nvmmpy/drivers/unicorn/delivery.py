"""Exceptions the guest raises and events the VMM injects, delivered in software.

Unicorn reports a guest exception (UC_HOOK_INTR) instead of delivering it; the vCPU delivers it,
and the events the VMM injects, through the real-mode IVT or the protected/long-mode IDT
(emulator.events), with escalation to #DF and shutdown. A mixin of UnicornVCpu: these run on
exits, so they read the vCPU's fields directly rather than through another object.
"""
from unicorn import x86_const as x86

from nvmmpy.emulator.arch import ERROR_CODE_VECTORS
from nvmmpy.emulator import pagewalk
from nvmmpy.emulator.events import TripleFault, deliver

from ... import constants as nvmm
from ...errors import NvmmError
from .lazystate import LazyState
from .ucstate import SEG_IDS, attrib_to_flags


class EventDelivery:
    """Delivery of exceptions and injected events (UnicornVCpu's)."""

    def _guest_exception(self, intno: int):
        uc = self.uc
        rip = uc.reg_read(x86.UC_X86_REG_RIP)
        kind, next_rip, error = "exception", None, None
        code_before = self._read_linear(max(0, self._cs_base() + rip - 2), 2, partial=True)
        if len(code_before) == 2 and code_before[0] == 0xCD and code_before[1] == intno:
            kind, next_rip = "soft", rip
            uc.reg_write(x86.UC_X86_REG_RIP, rip - 2)
        elif intno in (3, 4) and code_before[-1:] in (b"\xcc", b"\xce"):
            kind, next_rip = "soft", rip
            uc.reg_write(x86.UC_X86_REG_RIP, rip - 1)
        elif intno in ERROR_CODE_VECTORS:
            error = self._fault_error_code(intno)
        return self._deliver(kind, intno, error, next_rip)

    def _fault_error_code(self, vector: int) -> int:
        """The error code unicorn computed (its API does not report it: read from its CPU state
        when the exception was reported); #DF's is always 0."""
        return 0 if vector == 8 else self._intr_error

    def _deliver(self, kind, vector, error, next_rip=None):
        """Deliver an event through the IVT/IDT in software. Delivery runs on a lazy view of the
        registers, so only what it touches is read (CS, SS, RIP, RSP, RFLAGS, CR0/CR3/CR4, EFER,
        IDTR, GDTR, and TR on a privilege change), and only what it changed is written back: RIP,
        RSP, RFLAGS (and CR2 after a #PF during delivery) directly; CS and SS, when they change,
        through a helper handle. Control registers and MSRs are not rewritten, so the vCPU keeps
        its TLB and translated code."""
        st = LazyState(self.uc, self._fast, self._seg_info)
        try:
            deliver(st, self._bus, vector, kind, error, next_rip)
        except TripleFault:
            self.exit.reason = nvmm.VCPU_EXIT_SHUTDOWN
            return self.exit
        changed = st.changed_segs()
        if changed:
            self._load_delivered_segs(st, changed)
        st.write_back()
        self._rip = st.gprs[nvmm.X64_GPR_RIP]
        return None

    def _load_delivered_segs(self, st, changed) -> None:
        """Load the segment registers a delivery changed (CS to the handler's; SS on a privilege
        change; the data segments when leaving virtual-8086 mode) into unicorn."""
        cr0, efer = st.crs[nvmm.X64_CR_CR0], st.msrs[nvmm.X64_MSR_EFER]
        sels = {i: st.segs[i].selector for i in changed if i in SEG_IDS}
        to_cpl0 = bool(cr0 & nvmm.CR0_PE) and nvmm.X64_SEG_SS in sels  # SS changes with the privilege level
        if to_cpl0 and sels[nvmm.X64_SEG_SS] & 3:
            raise ValueError("the unicorn driver can set up CPL 0 or 3, not rings 1 and 2")
        self._sync.load_segments(sels, cr0, efer, to_cpl0)
        lma = efer & nvmm.EFER_LMA
        for i, sel in sels.items():
            self._last_lm_seg.pop(i, None)
            if cr0 & nvmm.CR0_PE and sel & ~3:   # unicorn now has the descriptor just read: cache that
                seg = st.segs[i]
                table = st.segs[nvmm.X64_SEG_LDT if sel & 4 else nvmm.X64_SEG_GDT]
                self._segcache[(i, sel, lma, table.base, table.limit)] = \
                    (seg.base, seg.limit, attrib_to_flags(seg.attrib))
        g = st.gprs      # the helper went through EFLAGS (and may have cut RIP): write them all back
        for i in (nvmm.X64_GPR_RIP, nvmm.X64_GPR_RSP, nvmm.X64_GPR_RFLAGS):
            g[i] = g[i]

    def _pre_run(self):
        ex = self.exit
        if self._pending_event is not None:
            kind, vector, error = self._pending_event
            self._pending_event = None
            if vector == 2 and kind == "hw":
                self._nmi_blocked = True
            elif kind == "hw":
                self._skip_shadowed_hlt()
            r = self._deliver(kind, vector, error)
            if r is not None:
                return r
        if self._int_window or self._nmi_window:
            rflags = self._fast.read(x86.UC_X86_REG_RFLAGS)
            if self._int_window and rflags & nvmm.RFLAGS_IF:
                self._int_window = False
                ex.reason = nvmm.VCPU_EXIT_INT_READY
                return ex
            if self._nmi_window and not self._nmi_blocked:
                self._nmi_window = False
                ex.reason = nvmm.VCPU_EXIT_NMI_READY
                return ex
        return None

    def _skip_shadowed_hlt(self) -> None:
        """`sti; hlt` (Linux's safe_halt): STI's interrupt shadow covers the HLT, so a CPU takes an
        interrupt pending at the STI only once halted, returning behind the HLT. Unicorn ends the
        block at STI and the window opens on the HLT: deliver as the CPU would, or the guest would
        sleep through the interrupt that was meant to wake it, until the next one."""
        rip = self._fast.read(x86.UC_X86_REG_RIP)
        try:
            code = self._read_linear(self._cs_base() + rip - 1, 2)
        except (NvmmError, pagewalk.PageFault):
            return
        if code == b"\xfb\xf4":
            self._fast.write(x86.UC_X86_REG_RIP, rip + 1)
            self._rip = rip + 1

    def _inject_exception(self, vector, has_error, error):
        self._pending_event = ("exception", vector, error if has_error else None)

    def _inject_interrupt(self, vector):
        self._pending_event = ("hw", vector, None)

    def _inject_nmi(self):
        self._pending_event = ("hw", 2, None)
