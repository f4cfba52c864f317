"""NVMM state groups <-> unicorn registers.

Unicorn sets a segment's hidden part (base, limit, attributes) only by loading a selector the way
the CPU would in its current mode. So a full state is built in a helper handle of the right mode
(UC_MODE_16 for real mode, UC_MODE_32 for protected and long mode: it can enable long mode and
load a 64-bit CS from the guest's GDT), then its CPU context is moved into the vCPU's UC_MODE_64
handle, whose register API reads every register at full width whatever mode the guest is in. The
helper starts from a copy of the vCPU's own context, so what it does not load (GPRs, FPU/SSE,
MSRs) comes back unchanged; event delivery uses it the same way to load just CS and SS.

Consequences (documented in the README): real-mode segment bases are selector * 16, and protected
and long-mode segments are what the guest's GDT/LDT says for their selectors.
"""
import os

os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")  # we read only registers that exist in the mode

from unicorn import Uc, UC_ARCH_X86, UC_MODE_16, UC_MODE_32  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402

from ... import constants as nvmm  # noqa: E402

GPR_IDS = [x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RSP,
           x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI] + \
          [getattr(x86, f"UC_X86_REG_R{i}") for i in range(8, 16)] + [x86.UC_X86_REG_RIP, x86.UC_X86_REG_RFLAGS]
SEG_IDS = {nvmm.X64_SEG_ES: x86.UC_X86_REG_ES, nvmm.X64_SEG_CS: x86.UC_X86_REG_CS, nvmm.X64_SEG_SS: x86.UC_X86_REG_SS,
           nvmm.X64_SEG_DS: x86.UC_X86_REG_DS, nvmm.X64_SEG_FS: x86.UC_X86_REG_FS, nvmm.X64_SEG_GS: x86.UC_X86_REG_GS}
CR_IDS = {nvmm.X64_CR_CR0: x86.UC_X86_REG_CR0, nvmm.X64_CR_CR2: x86.UC_X86_REG_CR2, nvmm.X64_CR_CR3: x86.UC_X86_REG_CR3,
          nvmm.X64_CR_CR4: x86.UC_X86_REG_CR4, nvmm.X64_CR_CR8: x86.UC_X86_REG_CR8}
DR_IDS = [x86.UC_X86_REG_DR0, x86.UC_X86_REG_DR1, x86.UC_X86_REG_DR2, x86.UC_X86_REG_DR3, x86.UC_X86_REG_DR6,
          x86.UC_X86_REG_DR7]
MSR_NUMBERS = {nvmm.X64_MSR_EFER: 0xC0000080, nvmm.X64_MSR_STAR: 0xC0000081, nvmm.X64_MSR_LSTAR: 0xC0000082,
               nvmm.X64_MSR_CSTAR: 0xC0000083, nvmm.X64_MSR_SFMASK: 0xC0000084, nvmm.X64_MSR_KERNELGSBASE: 0xC0000102,
               nvmm.X64_MSR_SYSENTER_CS: 0x174, nvmm.X64_MSR_SYSENTER_ESP: 0x175, nvmm.X64_MSR_SYSENTER_EIP: 0x176,
               nvmm.X64_MSR_PAT: 0x277, nvmm.X64_MSR_TSC: 0x10}
# The ordinary segments, in the order a loader sets them: CS first (it sets the CPL the others are checked against).
LOAD_ORDER = [nvmm.X64_SEG_CS, nvmm.X64_SEG_SS, nvmm.X64_SEG_DS, nvmm.X64_SEG_ES, nvmm.X64_SEG_FS, nvmm.X64_SEG_GS]


def attrib_to_flags(a) -> int:
    """NVMM segment attributes -> the descriptor's high-dword bits 8-23 (unicorn's mmr.flags)."""
    return (a.type << 8) | (a.s << 12) | (a.dpl << 13) | (a.p << 15) | (a.avl << 20) | (a.l << 21) \
        | (getattr(a, "def") << 22) | (a.g << 23)


def flags_to_attrib(a, flags: int) -> None:
    a.type, a.s, a.dpl, a.p = (flags >> 8) & 0xF, (flags >> 12) & 1, (flags >> 13) & 3, (flags >> 15) & 1
    a.avl, a.l, a.g = (flags >> 20) & 1, (flags >> 21) & 1, (flags >> 23) & 1
    setattr(a, "def", (flags >> 22) & 1)


def descriptor_to_seg(seg, selector: int, raw: int) -> None:
    """Fill an NVMM segment from an 8-byte GDT/LDT descriptor."""
    seg.selector = selector
    base = ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24)
    limit = (raw & 0xFFFF) | (((raw >> 48) & 0xF) << 16)
    flags = (raw >> 32) & 0xFFFF00
    if flags & (1 << 23):
        limit = (limit << 12) | 0xFFF
    seg.base, seg.limit = base, limit
    flags_to_attrib(seg.attrib, flags)


class StateSync:
    """Moves NVMM state groups in and out of one UC_MODE_64 handle."""

    def __init__(self, uc, map_memory, read_linear):
        self.uc = uc
        self._map_memory = map_memory      # callable(helper_uc): map guest RAM into a helper handle
        self._read_linear = read_linear    # callable(linear, size) -> bytes, for GDT reads
        self._helpers = {}
        self._ctx = None                   # a CPU context buffer, reused for every copy
        self.xcr0 = 1

    # --- GPRS -----------------------------------------------------------------------------------
    def read_gprs(self, st) -> None:
        rr = self.uc.reg_read
        g = st.gprs
        for i, rid in enumerate(GPR_IDS):
            g[i] = rr(rid)

    def write_gprs(self, st) -> None:
        rw = self.uc.reg_write
        g = st.gprs
        for i, rid in enumerate(GPR_IDS):
            rw(rid, g[i])

    # --- SEGS -----------------------------------------------------------------------------------
    def read_segs(self, st) -> None:
        uc = self.uc
        cr0 = uc.reg_read(x86.UC_X86_REG_CR0)
        efer = uc.msr_read(MSR_NUMBERS[nvmm.X64_MSR_EFER])
        for idx, name in ((nvmm.X64_SEG_GDT, x86.UC_X86_REG_GDTR), (nvmm.X64_SEG_IDT, x86.UC_X86_REG_IDTR)):
            _, base, limit, _ = uc.reg_read(name)
            st.segs[idx].base, st.segs[idx].limit = base, limit
        for idx, name in ((nvmm.X64_SEG_LDT, x86.UC_X86_REG_LDTR), (nvmm.X64_SEG_TR, x86.UC_X86_REG_TR)):
            sel, base, limit, flags = uc.reg_read(name)
            seg = st.segs[idx]
            seg.selector, seg.base, seg.limit = sel, base, limit
            flags_to_attrib(seg.attrib, flags)
        for idx, rid in SEG_IDS.items():
            sel = uc.reg_read(rid)
            seg = st.segs[idx]
            if not cr0 & nvmm.CR0_PE:
                seg.selector, seg.base, seg.limit = sel, sel << 4, 0xFFFF
                a = seg.attrib
                a.type, a.s, a.dpl, a.p, a.l, a.g, a.avl = (11 if idx == nvmm.X64_SEG_CS else 3), 1, 0, 1, 0, 0, 0
                setattr(a, "def", 0)
                continue
            raw = self._descriptor(st, sel)
            if raw is None:  # null selector
                seg.selector, seg.base, seg.limit = sel, 0, 0
                a = seg.attrib
                a.type = a.s = a.l = a.g = a.avl = 0
                a.p = 1 if (idx == nvmm.X64_SEG_SS and efer & nvmm.EFER_LMA) else 0
                a.dpl = sel & 3
                setattr(a, "def", 0)
            else:
                descriptor_to_seg(seg, sel, raw)
        if efer & nvmm.EFER_LMA:
            st.segs[nvmm.X64_SEG_FS].base = uc.reg_read(x86.UC_X86_REG_FS_BASE)
            st.segs[nvmm.X64_SEG_GS].base = uc.reg_read(x86.UC_X86_REG_GS_BASE)

    def _descriptor(self, st, sel: int):
        if sel & ~3 == 0:
            return None
        table = st.segs[nvmm.X64_SEG_LDT] if sel & 4 else st.segs[nvmm.X64_SEG_GDT]
        off = sel & ~7
        if off + 7 > table.limit:
            return None
        return int.from_bytes(self._read_linear(table.base + off, 8), "little")

    # --- CRS, MSRS, DRS -------------------------------------------------------------------------
    def read_crs(self, st) -> None:
        rr = self.uc.reg_read
        for idx, rid in CR_IDS.items():
            st.crs[idx] = rr(rid)
        st.crs[nvmm.X64_CR_XCR0] = self.xcr0

    def read_msrs(self, st) -> None:
        mr = self.uc.msr_read
        for idx, number in MSR_NUMBERS.items():
            st.msrs[idx] = mr(number)

    def write_msrs(self, st, uc=None) -> None:
        mw = (uc or self.uc).msr_write
        for idx, number in MSR_NUMBERS.items():
            if idx != nvmm.X64_MSR_EFER:
                mw(number, st.msrs[idx])

    def read_drs(self, st) -> None:
        rr = self.uc.reg_read
        for i, rid in enumerate(DR_IDS):
            st.drs[i] = rr(rid)

    def write_drs(self, st) -> None:
        rw = self.uc.reg_write
        for i, rid in enumerate(DR_IDS):
            rw(rid, st.drs[i])

    # --- FPU ------------------------------------------------------------------------------------
    def read_fpu(self, st) -> None:
        uc, f = self.uc, st.fpu
        f.fx_cw = uc.reg_read(x86.UC_X86_REG_FPCW)
        f.fx_sw = uc.reg_read(x86.UC_X86_REG_FPSW)
        tag = uc.reg_read(x86.UC_X86_REG_FPTAG)
        f.fx_tw = sum(1 << i for i in range(8) if (tag >> (2 * i)) & 3 != 3)  # abridged: 1 = valid
        f.fx_opcode = uc.reg_read(x86.UC_X86_REG_FOP)
        f.fx_ip.fa_64 = uc.reg_read(x86.UC_X86_REG_FIP)
        f.fx_dp.fa_64 = uc.reg_read(x86.UC_X86_REG_FDP)
        f.fx_mxcsr = uc.reg_read(x86.UC_X86_REG_MXCSR)
        f.fx_mxcsr_mask = 0xFFFF
        top = (f.fx_sw >> 11) & 7
        for i in range(8):  # FXSAVE holds ST(i); unicorn's FPn are the physical registers
            mant, exp = uc.reg_read(x86.UC_X86_REG_FP0 + ((top + i) & 7))
            raw = (mant & ((1 << 64) - 1)).to_bytes(8, "little") + (exp & 0xFFFF).to_bytes(2, "little")
            for j in range(10):
                f.fx_87_ac[i].fp_bytes[j] = raw[j]
        for i in range(16):
            v = uc.reg_read(x86.UC_X86_REG_XMM0 + i).to_bytes(16, "little")
            for j in range(16):
                f.fx_xmm[i].xmm_bytes[j] = v[j]

    def write_fpu(self, st) -> None:
        uc, f = self.uc, st.fpu
        uc.reg_write(x86.UC_X86_REG_FPCW, f.fx_cw)
        uc.reg_write(x86.UC_X86_REG_FPSW, f.fx_sw)
        uc.reg_write(x86.UC_X86_REG_FPTAG, sum((0 if (f.fx_tw >> i) & 1 else 3) << (2 * i) for i in range(8)))
        uc.reg_write(x86.UC_X86_REG_MXCSR, f.fx_mxcsr)
        top = (f.fx_sw >> 11) & 7
        for i in range(8):
            raw = bytes(f.fx_87_ac[i].fp_bytes[j] for j in range(10))
            uc.reg_write(x86.UC_X86_REG_FP0 + ((top + i) & 7),
                         (int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")))
        for i in range(16):
            uc.reg_write(x86.UC_X86_REG_XMM0 + i, int.from_bytes(bytes(f.fx_xmm[i].xmm_bytes), "little"))

    # --- the mode-defining groups (SEGS, CRS, EFER) ---------------------------------------------
    def _enter_helper(self, cr0: int):
        """The helper handle for the mode CR0 gives (16-bit real mode, else 32-bit), holding a copy of
        the vCPU's whole CPU context: what the caller does not load there (GPRs, FPU/SSE, debug
        registers, MSRs) goes back to the vCPU unchanged."""
        mode = UC_MODE_32 if cr0 & nvmm.CR0_PE else UC_MODE_16
        h = self._helpers.get(mode)
        if h is None:
            h = self._helpers[mode] = Uc(UC_ARCH_X86, mode)
            self._map_memory(h)
        if self._ctx is None:
            # the first time, the vCPU takes the helper's reset state instead: unicorn's UC_MODE_64
            # reset state has EFER.LMA set with paging off, which no CR0 write in a helper undoes
            self._ctx = h.context_save()
            self.uc.context_restore(self._ctx)
        else:
            self.uc.context_update(self._ctx)
            h.context_restore(self._ctx)
        return h

    def _leave_helper(self, h) -> None:
        """Move the helper's CPU context into the vCPU's handle (no TLB flush, no TB flush)."""
        h.context_update(self._ctx)
        self.uc.context_restore(self._ctx)

    @staticmethod
    def _real_mode_cpl0(h) -> None:
        """Put the helper in CPL0 real mode: a real-mode SS load makes the CPL 0 whatever it was.
        EFLAGS is left 0x2, and leaving long mode may drop the upper half of RIP."""
        h.reg_write(x86.UC_X86_REG_CR0, 0x10)
        h.msr_write(MSR_NUMBERS[nvmm.X64_MSR_EFER], 0)
        h.reg_write(x86.UC_X86_REG_EFLAGS, 0x2)
        h.reg_write(x86.UC_X86_REG_SS, 0)

    def load_segments(self, sels: dict, cr0: int, efer: int, to_cpl0: bool) -> None:
        """Load the segment registers `sels` ({X64_SEG_* index: selector}) from the guest's
        descriptor tables as the CPU does on an event delivery, everything else as it is.
        to_cpl0: the delivery changes the privilege level (to 0, the only ring below 3 the driver
        sets up): enter CPL0 first, then load them. Control registers and EFER do not change, so
        neither the vCPU's TLB nor its translated code is flushed. The caller rewrites RIP, RSP and
        RFLAGS afterwards."""
        h = self._enter_helper(cr0)
        if to_cpl0:
            self._real_mode_cpl0(h)
            if cr0 & nvmm.CR0_PE:   # back to this mode (paging with EFER.LME sets EFER.LMA again)
                h.msr_write(MSR_NUMBERS[nvmm.X64_MSR_EFER], efer & ~nvmm.EFER_LMA)
                h.reg_write(x86.UC_X86_REG_CR0, cr0 & 0xFFFFFFFF)
        for idx in LOAD_ORDER:
            if idx in sels:
                h.reg_write(SEG_IDS[idx], sels[idx])
        self._leave_helper(h)
        if to_cpl0 and self.uc.msr_read(MSR_NUMBERS[nvmm.X64_MSR_EFER]) != efer:
            self.uc.msr_write(MSR_NUMBERS[nvmm.X64_MSR_EFER], efer)

    def load_system(self, st) -> None:
        """Make the handle's mode, control registers and segments those of `st` (the rest of the
        CPU context, GPRs, FPU/SSE and MSRs, stays the vCPU's; RIP and RFLAGS may be clobbered:
        the caller rewrites them)."""
        cr0 = st.crs[nvmm.X64_CR_CR0]
        h = self._enter_helper(cr0)
        self._real_mode_cpl0(h)
        efer = st.msrs[nvmm.X64_MSR_EFER]
        gdt, idt = st.segs[nvmm.X64_SEG_GDT], st.segs[nvmm.X64_SEG_IDT]
        h.reg_write(x86.UC_X86_REG_GDTR, (0, gdt.base, gdt.limit, 0))
        h.reg_write(x86.UC_X86_REG_IDTR, (0, idt.base, idt.limit, 0))
        for idx, rid in ((nvmm.X64_SEG_LDT, x86.UC_X86_REG_LDTR), (nvmm.X64_SEG_TR, x86.UC_X86_REG_TR)):
            s = st.segs[idx]
            h.reg_write(rid, (s.selector, s.base, s.limit, attrib_to_flags(s.attrib)))
        h.reg_write(x86.UC_X86_REG_CR4, st.crs[nvmm.X64_CR_CR4] & 0xFFFFFFFF)
        h.reg_write(x86.UC_X86_REG_CR3, st.crs[nvmm.X64_CR_CR3] & 0xFFFFFFFF)
        h.msr_write(MSR_NUMBERS[nvmm.X64_MSR_EFER], efer & ~nvmm.EFER_LMA)
        h.reg_write(x86.UC_X86_REG_CR0, cr0 & 0xFFFFFFFF)      # with PG and EFER.LME this sets LMA
        cpl = st.segs[nvmm.X64_SEG_SS].selector & 3 if cr0 & nvmm.CR0_PE else 0
        if cpl == 3:
            # QEMU takes the CPL from SS and checks SS loads against it: enter CPL3 first by loading
            # SS the virtual-8086 way (always DPL3), then load every segment properly below.
            h.reg_write(x86.UC_X86_REG_EFLAGS, 0x20002)
            h.reg_write(x86.UC_X86_REG_SS, st.segs[nvmm.X64_SEG_SS].selector)
            h.reg_write(x86.UC_X86_REG_EFLAGS, 0x2)
        elif cpl:
            raise ValueError("the unicorn driver can set up CPL 0 or 3, not rings 1 and 2")
        for idx in LOAD_ORDER:
            h.reg_write(SEG_IDS[idx], st.segs[idx].selector)
        self._leave_helper(h)
        uc = self.uc
        uc.reg_write(x86.UC_X86_REG_CR3, st.crs[nvmm.X64_CR_CR3])  # full 64-bit value
        uc.reg_write(x86.UC_X86_REG_CR2, st.crs[nvmm.X64_CR_CR2])
        uc.reg_write(x86.UC_X86_REG_CR8, st.crs[nvmm.X64_CR_CR8])
        gdt_full = (0, gdt.base, gdt.limit, 0)
        uc.reg_write(x86.UC_X86_REG_GDTR, gdt_full)
        uc.reg_write(x86.UC_X86_REG_IDTR, (0, idt.base, idt.limit, 0))
        tr = st.segs[nvmm.X64_SEG_TR]
        uc.reg_write(x86.UC_X86_REG_TR, (tr.selector, tr.base, tr.limit, attrib_to_flags(tr.attrib)))
        if efer & nvmm.EFER_LMA:
            uc.reg_write(x86.UC_X86_REG_FS_BASE, st.segs[nvmm.X64_SEG_FS].base)
            uc.reg_write(x86.UC_X86_REG_GS_BASE, st.segs[nvmm.X64_SEG_GS].base)
        self.xcr0 = st.crs[nvmm.X64_CR_XCR0] or 1


class FastRegs:
    """uc_reg_read/uc_reg_write through ctypes with preallocated buffers: about 0.4 us a call
    instead of 1.5 us through unicorn's generic Python wrapper. Integer registers, plus reads of
    the descriptor-table registers (GDTR, IDTR, LDTR, TR) and of MSRs."""

    def __init__(self, uc):
        import ctypes
        from unicorn.unicorn_py3.unicorn import uclib

        class Mmr(ctypes.Structure):     # uc_x86_mmr
            _fields_ = (("selector", ctypes.c_uint16), ("base", ctypes.c_uint64),
                        ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32))

        class Msr(ctypes.Structure):     # uc_x86_msr
            _fields_ = (("rid", ctypes.c_uint32), ("value", ctypes.c_uint64))

        self._lib = uclib
        self._h = uc._uch
        self._b64 = ctypes.c_uint64()
        self._r64 = ctypes.byref(self._b64)
        self._b16 = ctypes.c_uint16()
        self._r16 = ctypes.byref(self._b16)
        self._mmr = Mmr()
        self._rmmr = ctypes.byref(self._mmr)
        self._msr = Msr()
        self._rmsr = ctypes.byref(self._msr)

    def read_mmr(self, rid: int) -> tuple:
        """(selector, base, limit, flags) of GDTR, IDTR, LDTR or TR, as uc.reg_read gives them."""
        if self._lib.uc_reg_read(self._h, rid, self._rmmr):
            raise ValueError(f"unicorn refused to read register {rid}")
        m = self._mmr
        return m.selector, m.base, m.limit, m.flags

    def read_msr(self, number: int) -> int:
        self._msr.rid = number
        if self._lib.uc_reg_read(self._h, x86.UC_X86_REG_MSR, self._rmsr):
            raise ValueError(f"unicorn refused to read MSR {number:#x}")
        return self._msr.value

    def read(self, rid: int) -> int:
        self._lib.uc_reg_read(self._h, rid, self._r64)
        return self._b64.value

    def read16(self, rid: int) -> int:
        self._lib.uc_reg_read(self._h, rid, self._r16)
        return self._b16.value

    def write(self, rid: int, value: int) -> None:
        self._b64.value = value & 0xFFFFFFFFFFFFFFFF
        if self._lib.uc_reg_write(self._h, rid, self._r64):
            raise ValueError(f"unicorn refused register {rid} = {value:#x}")
