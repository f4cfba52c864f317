"""SYSCALL on the unicorn driver: the CPU's side of the instruction, done by the driver.

Unicorn's SYSCALL only calls the UC_HOOK_INSN hooks and steps RIP over the instruction (its
helper_syscall is replaced by the hook call); the privilege change is left undone, so a user
process's system call would run the kernel's entry code at CPL3 on the user stack. SYSRET,
IRET and the rest are unicorn's own and work. The hook records the SYSCALL and stops unicorn
(synchronously, at the end of the block SYSCALL ends); the vCPU then does what the SDM (Vol. 2B,
SYSCALL) says the CPU does in 64-bit mode:
  RCX <- RIP of the next instruction; R11 <- RFLAGS with RF cleared;
  CS <- STAR[47:32] & ~3 (64-bit code, DPL 0), SS <- STAR[47:32] + 8 (DPL 0);
  RFLAGS <- RFLAGS & ~FMASK (and RF); RIP <- LSTAR.
#UD when EFER.SCE is clear or outside long mode (compatibility-mode SYSCALL through CSTAR is not
used by the guests this serves and is reported as #UD too).
"""
from unicorn import x86_const as x86

from ... import constants as nvmm
from .lazystate import LazyState

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084
EFER_SCE = 1
RFLAGS_RF = 1 << 16


class SyscallEntry:
    """A mixin of UnicornVCpu."""

    def _on_syscall(self, uc, _):
        self._syscall = True
        uc.emu_stop()

    def _enter_syscall(self):
        """After a SYSCALL: RIP already points behind it. Returns None, or an exit (shutdown)."""
        self._syscall = False
        fast = self._fast
        efer = fast.read_msr(MSR_EFER)
        rip = fast.read(x86.UC_X86_REG_RIP)
        cs_l = self._seg_info(nvmm.X64_SEG_CS, fast.read16(x86.UC_X86_REG_CS), fast.read(x86.UC_X86_REG_CR0), efer)[2] >> 21 & 1
        if not efer & EFER_SCE or not efer & nvmm.EFER_LMA or not cs_l:
            fast.write(x86.UC_X86_REG_RIP, rip - 2)
            self._rip = rip - 2
            return self._deliver("exception", 6, None)
        st = LazyState(self.uc, fast, self._seg_info)
        g = st.gprs
        rflags = g[nvmm.X64_GPR_RFLAGS]
        g[nvmm.X64_GPR_RCX] = rip
        g[nvmm.X64_GPR_R11] = rflags & ~RFLAGS_RF
        g[nvmm.X64_GPR_RFLAGS] = (rflags & ~fast.read_msr(MSR_FMASK) & ~RFLAGS_RF) | 2
        g[nvmm.X64_GPR_RIP] = fast.read_msr(MSR_LSTAR)
        sel = (fast.read_msr(MSR_STAR) >> 32) & 0xFFFF
        _flat(st.segs[nvmm.X64_SEG_CS], sel & 0xFFFC, code=True)
        _flat(st.segs[nvmm.X64_SEG_SS], (sel + 8) & 0xFFFC, code=False)
        self._load_delivered_segs(st, st.changed_segs())
        st.write_back()
        self._rip = g[nvmm.X64_GPR_RIP]
        return None


def _flat(seg, selector: int, code: bool) -> None:
    """The fixed descriptor SYSCALL loads (it does not read the GDT)."""
    seg.selector, seg.base, seg.limit = selector, 0, 0xFFFFFFFF
    a = seg.attrib
    a.type, a.s, a.dpl, a.p, a.avl, a.g = (0xB if code else 0x3), 1, 0, 1, 0, 1
    a.l, a.def_ = (1, 0) if code else (0, 1)
