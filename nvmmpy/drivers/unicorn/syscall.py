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

Speed: the privilege change goes through the state helper engine (ucstate.load_segments), 48 us of
the 114 us a SYSCALL entry took in Python (a system call's round trip measured 196 us in a Linux
guest). Its effect on the CPU context is always the same for the same starting point, so the first
entry learns it (_Learned: the context bytes the segment load changed, before and after) and later
entries whose context holds the same bytes there, under the same STAR, GDTR, CR0 and EFER, apply
it to the context image directly; anything else takes the full path again and relearns.
"""
import ctypes

from unicorn import UcError
from unicorn import x86_const as x86

from ... import constants as nvmm
from .cpu_env import context_address
from .lazystate import LazyState

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084
EFER_SCE = 1
RFLAGS_RF = 1 << 16


class _Learned:
    """What the CPL0 segment load of SYSCALL entries did to the context image: for each starting
    point seen (the image's bytes over `spans`), the bytes it left there. Bounded."""
    __slots__ = ("key", "spans", "table")
    LIMIT = 64

    def __init__(self, key, spans):
        self.key, self.spans, self.table = key, spans, {}

    def lookup(self, image):
        return self.table.get(tuple(bytes(image[a:b]) for a, b in self.spans))

    def add(self, old: bytes, new: bytes) -> bool:
        """Keep this transition; False if it changed bytes outside the spans (relearn)."""
        if any(not any(a <= i < b for a, b in self.spans) for i in _changed(old, new)):
            return False
        if len(self.table) >= self.LIMIT:
            self.table.clear()
        self.table[tuple(old[a:b] for a, b in self.spans)] = tuple(new[a:b] for a, b in self.spans)
        return True


def _changed(old: bytes, new: bytes):
    return (i for i in range(len(old)) if old[i] != new[i])


def _spans(old: bytes, new: bytes, join: int = 16) -> list:
    """[(start, end)] byte ranges where two images differ (ranges closer than `join` merged)."""
    out = []
    i, n = 0, len(old)
    while i < n:
        if old[i] != new[i]:
            j = i
            last = i
            while j < n and j - last <= join:
                if old[j] != new[j]:
                    last = j
                j += 1
            out.append((i, last + 1))
            i = last + 1
        else:
            i += 1
    return out


class SyscallEntry:
    """A mixin of UnicornVCpu."""

    _sys_learned = None   # _Learned, once a SYSCALL entry took the full path
    _sys_ctx = None       # a context buffer and a writable view of it

    def _on_syscall(self, uc, _):
        self._syscall = True
        uc.emu_stop()

    def _enter_syscall(self):
        """After a SYSCALL: RIP already points behind it. Returns None, or an exit (shutdown)."""
        self._syscall = False
        fast = self._fast
        efer = fast.read_msr(MSR_EFER)
        rip = fast.read(x86.UC_X86_REG_RIP)
        cr0 = fast.read(x86.UC_X86_REG_CR0)
        cs_l = self._seg_info(nvmm.X64_SEG_CS, fast.read16(x86.UC_X86_REG_CS), cr0, efer)[2] >> 21 & 1
        if not efer & EFER_SCE or not efer & nvmm.EFER_LMA or not cs_l:
            fast.write(x86.UC_X86_REG_RIP, rip - 2)
            self._rip = rip - 2
            return self._deliver("exception", 6, None)
        star = fast.read_msr(MSR_STAR)
        rflags = fast.read(x86.UC_X86_REG_RFLAGS)
        fast.write(x86.UC_X86_REG_RFLAGS, rflags)    # the flags as one value, not QEMU's lazy parts
        key = (star, fast.read_mmr(x86.UC_X86_REG_GDTR)[1:3], cr0, efer)
        image = self._sys_image()
        learned = self._sys_learned
        after = learned.lookup(image) if learned is not None and learned.key == key else None
        if after is not None:
            for (a, b), now in zip(learned.spans, after):
                image[a:b] = now
            self.uc.context_restore(self._sys_ctx[0])
            for i in (nvmm.X64_SEG_CS, nvmm.X64_SEG_SS):
                self._last_lm_seg.pop(i, None)
        else:
            before = bytes(image)
            sel = (star >> 32) & 0xFFFF
            st = LazyState(self.uc, fast, self._seg_info)
            for i in (nvmm.X64_GPR_RIP, nvmm.X64_GPR_RSP, nvmm.X64_GPR_RFLAGS):
                st.gprs[i]    # read now: the helper engine the segments load through clobbers them
            _flat(st.segs[nvmm.X64_SEG_CS], sel & 0xFFFC, code=True)
            _flat(st.segs[nvmm.X64_SEG_SS], (sel + 8) & 0xFFFC, code=False)
            try:
                self._load_delivered_segs(st, st.changed_segs())
            except UcError:
                # A CPU loads fixed descriptors; unicorn can only load the GDT's, and refused
                # these: say so rather than run the kernel with the user's segments
                fast.write(x86.UC_X86_REG_RIP, rip - 2)
                self._rip = rip - 2
                ex = self.exit
                ex.reason, ex.inv.hwcode = nvmm.VCPU_EXIT_INVALID, 0
                ex.inv.detail = (f"SYSCALL: STAR selects CS {sel & 0xFFFC:#x} and SS {(sel + 8) & 0xFFFC:#x}, which "
                                 "the guest's GDT does not hold as flat ring-0 code and data; the unicorn driver "
                                 "can only load them from there")
                return ex
            st.write_back()                                # RIP and RFLAGS as they were
            new = bytes(self._sys_image())
            if learned is None or learned.key != key or not learned.add(before, new):
                learned = self._sys_learned = _Learned(key, _spans(before, new))
                learned.add(before, new)
        lstar = fast.read_msr(MSR_LSTAR)
        fast.write(x86.UC_X86_REG_RCX, rip)
        fast.write(x86.UC_X86_REG_R11, rflags & ~RFLAGS_RF)
        fast.write(x86.UC_X86_REG_RFLAGS, (rflags & ~fast.read_msr(MSR_FMASK) & ~RFLAGS_RF) | 2)
        fast.write(x86.UC_X86_REG_RIP, lstar)
        self._rip = lstar
        return None

    def _sys_image(self):
        """The vCPU's context image now, as a writable view (context_restore puts it back)."""
        if self._sys_ctx is None:
            ctx = self.uc.context_save()
            addr = context_address(ctx)
            self._sys_ctx = (ctx, memoryview((ctypes.c_char * ctx.size).from_address(addr)).cast("B"))
        else:
            self.uc.context_update(self._sys_ctx[0])
        return self._sys_ctx[1]


def _flat(seg, selector: int, code: bool) -> None:
    """The fixed descriptor SYSCALL loads (it does not read the GDT)."""
    seg.selector, seg.base, seg.limit = selector, 0, 0xFFFFFFFF
    a = seg.attrib
    a.type, a.s, a.dpl, a.p, a.avl, a.g = (0xB if code else 0x3), 1, 0, 1, 0, 1
    a.l, a.def_ = (1, 0) if code else (0, 1)
