"""emulator.events: IVT/IDT delivery of interrupts and exceptions, checked byte by byte.

Every expected frame below is worked out by hand from the SDM (vol. 3 ch. 6, vol. 2
INT n pseudo-code), not computed with the module under test.  The guest is a
Python stand-in for struct nvmm_x64_state and a bytearray bus; long mode runs on
identity page tables built here (4 KiB pages for the low 2 MiB, so holes can be
punched, and a higher-half alias).
"""
import pytest
from hypothesis import given, settings, strategies as st

from flat_ram import FlatRam

from nvmmpy.emulator.events import (
    DeliveryFault, TripleFault, UnsupportedEvent, deliver, read_descriptor,
)

# ---------------------------------------------------------------- stand-ins

RSP, RIP, RFLAGS = 4, 16, 17
ES, CS, SS, DS, FS, GS, GDT, IDT, LDT, TR = range(10)
CR0, CR2, CR3, CR4 = 0, 1, 2, 3

IF, TF, NT, RF, VM, AC = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 17, 1 << 18


class Attrib:
    def __init__(self):
        self.type = self.s = self.dpl = self.p = self.avl = self.l = self.g = 0
        setattr(self, "def", 0)


class Seg:
    def __init__(self):
        self.selector = self.base = self.limit = 0
        self.attrib = Attrib()


class State:
    def __init__(self):
        self.gprs = [0] * 18
        self.segs = [Seg() for _ in range(10)]
        self.crs = [0] * 6
        self.msrs = [0] * 11


# ---------------------------------------------------------------- encoders

def enc_seg(base, limit, type_, s=1, dpl=0, p=1, l=0, db=1, g=1):
    raw = limit >> 12 if g else limit
    return ((raw & 0xFFFF) | ((base & 0xFF_FFFF) << 16) | (type_ << 40) | (s << 44) | (dpl << 45)
            | (p << 47) | (((raw >> 16) & 0xF) << 48) | (l << 53) | (db << 54) | (g << 55)
            | (((base >> 24) & 0xFF) << 56))


def enc_gate8(offset, sel, type_=0xE, dpl=0, p=1):
    lo = (offset & 0xFFFF) | (sel << 16)
    hi = (offset & 0xFFFF_0000) | (p << 15) | (dpl << 13) | (type_ << 8)
    return (lo | hi << 32).to_bytes(8, "little")


def enc_gate16(offset, sel, type_=0xE, dpl=0, p=1, ist=0):
    lo = (offset & 0xFFFF) | (sel << 16)
    hi = (offset & 0xFFFF_0000) | (p << 15) | (dpl << 13) | (type_ << 8) | ist
    return (lo | hi << 32 | (offset >> 32) << 64).to_bytes(16, "little")


# GDT used by every protected / long mode test (accessed bits preset, as Linux does).
K32_CS, K32_DS, U32_CS, U32_DS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
K64_CS, K64_DS, U64_CS, U64_DS = 0x38, 0x40, 0x4B, 0x53
DESCS = {
    0x08: dict(base=0, limit=0xFFFF_FFFF, type_=0xB),                 # 0x00CF9B000000FFFF
    0x10: dict(base=0, limit=0xFFFF_FFFF, type_=0x3),                 # 0x00CF93000000FFFF
    0x18: dict(base=0, limit=0xFFFF_FFFF, type_=0xB, dpl=3),
    0x20: dict(base=0, limit=0xFFFF_FFFF, type_=0x3, dpl=3),
    0x30: dict(base=0x10000, limit=0xFFFF, type_=0xB, db=0, g=0),     # 16-bit code
    0x38: dict(base=0, limit=0xFFFF_FFFF, type_=0xB, l=1, db=0),      # 0x00AF9B000000FFFF
    0x40: dict(base=0, limit=0xFFFF_FFFF, type_=0x3),
    0x48: dict(base=0, limit=0xFFFF_FFFF, type_=0xB, dpl=3, l=1, db=0),
    0x50: dict(base=0, limit=0xFFFF_FFFF, type_=0x3, dpl=3),
    0x58: dict(base=0, limit=0xFFFF_FFFF, type_=0xA),                 # code, accessed bit clear
    0x60: dict(base=0, limit=0xFFFF_FFFF, type_=0x3, p=0),            # not-present data
    0x68: dict(base=0, limit=0xFFFF_FFFF, type_=0xB, p=0),            # not-present code
    0x70: dict(base=0, limit=0x0FFF, type_=0x7, g=0),                 # expand-down stack, limit 0xFFF
}
GDT_BASE, IDT_BASE, TSS_BASE = 0x1000, 0x2000, 0x3000
PT_BASE = 0x20000            # PML4 0x20000, PDPT 0x21000, PD 0x22000, PT 0x23000, high PDPT 0x24000
HANDLER = 0x10000            # handler for vector v at HANDLER + v * 0x10
KSTACK, USTACK, ISTACK = 0x9000, 0x7000, 0xC000
HOLE = 0x50000               # a 4 KiB page left unmapped in long mode
HIGH = 0xFFFF_8000_0000_0000  # higher-half alias of physical 0 (long mode)


class Env:
    """A guest in one mode: tables in RAM, the state pointing at them."""

    def __init__(self, mode, cpl=0):
        self.mode = mode
        self.bus = FlatRam(0x100000 if mode == "real" else 0x180000)
        self.ram = self.bus.ram
        self.st = State()
        s = self.st
        if mode == "real":
            s.segs[IDT].base, s.segs[IDT].limit = 0, 0x3FF
            for i in (ES, CS, SS, DS, FS, GS):
                s.segs[i].limit = 0xFFFF
                s.segs[i].attrib.p, s.segs[i].attrib.s, s.segs[i].attrib.type = 1, 1, 3
            s.segs[CS].attrib.type = 0xB
            return
        for sel, d in DESCS.items():
            self.put(GDT_BASE + sel, enc_seg(**d).to_bytes(8, "little"))
        s.segs[GDT].base, s.segs[GDT].limit = GDT_BASE, 0x7F + 0x10
        s.segs[TR].selector, s.segs[TR].base = TSS_SEL, TSS_BASE
        s.segs[TR].attrib.type, s.segs[TR].attrib.p = 0xB, 1
        s.crs[CR0] = 0x11
        if mode == "prot":
            s.segs[IDT].base, s.segs[IDT].limit = IDT_BASE, 256 * 8 - 1
            s.segs[TR].limit = 0x67
            self.put32(TSS_BASE + 4, KSTACK)      # ESP0
            self.put32(TSS_BASE + 8, K32_DS)      # SS0
            for v in range(256):
                self.gate(v, HANDLER + v * 0x10, K32_CS)
            self.load(CS, U32_CS if cpl == 3 else K32_CS)
            self.load(SS, U32_DS if cpl == 3 else K32_DS)
        else:
            s.segs[IDT].base, s.segs[IDT].limit = IDT_BASE, 256 * 16 - 1
            s.segs[TR].limit = 0x67
            self.put64(TSS_BASE + 4, KSTACK)      # RSP0
            self.put64(TSS_BASE + 0x24, ISTACK)   # IST1
            for v in range(256):
                self.gate(v, HANDLER + v * 0x10, K64_CS)
            self.load(CS, U64_CS if cpl == 3 else K64_CS)
            self.load(SS, U64_DS if cpl == 3 else K64_DS)
            self.page_tables()
            s.crs[CR0] = 0x8001_0011
            s.crs[CR3] = PT_BASE
            s.crs[CR4] = 0x20
            s.msrs[0] = 0x500
        s.gprs[RSP] = USTACK if cpl == 3 else KSTACK
        s.gprs[RIP] = 0x4000
        s.gprs[RFLAGS] = 0x202

    # memory
    def put(self, addr, data):
        self.ram[addr:addr + len(data)] = data

    def put32(self, addr, v):
        self.put(addr, v.to_bytes(4, "little"))

    def put64(self, addr, v):
        self.put(addr, v.to_bytes(8, "little"))

    def u16(self, addr):
        return int.from_bytes(self.ram[addr:addr + 2], "little")

    def u32(self, addr):
        return int.from_bytes(self.ram[addr:addr + 4], "little")

    def u64(self, addr):
        return int.from_bytes(self.ram[addr:addr + 8], "little")

    def qwords(self, addr, n):
        return [self.u64(addr + 8 * i) for i in range(n)]

    def dwords(self, addr, n):
        return [self.u32(addr + 4 * i) for i in range(n)]

    def page_tables(self):
        """Identity map of the low 1 GiB (4 KiB pages in the first 2 MiB, HOLE
        missing, 2 MiB pages above) plus HIGH -> physical 0 for 2 MiB."""
        pml4, pdpt, pd, pt, hpdpt = PT_BASE, PT_BASE + 0x1000, PT_BASE + 0x2000, PT_BASE + 0x3000, PT_BASE + 0x4000
        self.put64(pml4, pdpt | 3)
        self.put64(pml4 + 256 * 8, hpdpt | 3)
        self.put64(pdpt, pd | 3)
        self.put64(hpdpt, pd | 3)          # HIGH aliases the same 1 GiB
        self.put64(pd, pt | 3)
        for i in range(1, 512):
            self.put64(pd + 8 * i, (i << 21) | 0x83)
        for i in range(512):
            if i << 12 != HOLE:
                self.put64(pt + 8 * i, (i << 12) | 3)

    # descriptors
    def gate(self, v, offset, sel, type_=0xE, dpl=0, p=1, ist=0):
        if self.mode == "prot":
            self.put(IDT_BASE + v * 8, enc_gate8(offset, sel, type_, dpl, p))
        else:
            self.put(IDT_BASE + v * 16, enc_gate16(offset, sel, type_, dpl, p, ist))

    def load(self, i, sel):
        d = dict(dict(s=1, dpl=0, p=1, l=0, db=1, g=1), **DESCS[sel & ~3])
        seg = self.st.segs[i]
        seg.selector, seg.base = sel, d["base"]
        seg.limit = d["limit"]
        a = seg.attrib
        a.type, a.s, a.dpl, a.p, a.l, a.g = d["type_"], d["s"], d["dpl"], d["p"], d["l"], d["g"]
        setattr(a, "def", d["db"])

    def deliver(self, *a, **kw):
        return deliver(self.st, self.bus, *a, **kw)

    @property
    def rsp(self):
        return self.st.gprs[RSP]

    @property
    def rip(self):
        return self.st.gprs[RIP]

    @property
    def rflags(self):
        return self.st.gprs[RFLAGS]

    def seg(self, i):
        s = self.st.segs[i]
        a = s.attrib
        return (s.selector, s.base, s.limit, a.type, a.s, a.dpl, a.p, a.l, getattr(a, "def"), a.g)


# ================================================================ real mode

def real_env():
    e = Env("real")
    s = e.st
    s.segs[CS].selector, s.segs[CS].base = 0x0700, 0x7000
    s.segs[SS].selector, s.segs[SS].base = 0x2000, 0x20000
    s.gprs[RSP] = 0x100
    s.gprs[RIP] = 0x0123
    s.gprs[RFLAGS] = 0x0002 | IF | TF | AC | 0x0001   # CF too
    e.put(0x20 * 4, bytes.fromhex("7856 3412"))   # IVT[0x20] = 1234:5678
    e.put(13 * 4, bytes.fromhex("3412 00f0"))     # IVT[13] = F000:1234
    e.put(8 * 4, bytes.fromhex("cdab 00e0"))      # IVT[8] = E000:ABCD
    return e


def test_real_mode_ivt_delivery():
    e = real_env()
    e.deliver(0x20, "hw")
    # FLAGS 0x40303 (AC, IF, TF, CF, bit 1) -> low 16 bits 0x0303 at SP-2, CS at SP-4, IP at SP-6.
    assert e.ram[0x200FA:0x20100] == bytes.fromhex("2301 0007 0303")
    assert e.rsp == 0xFA
    assert (e.st.segs[CS].selector, e.st.segs[CS].base, e.rip) == (0x1234, 0x12340, 0x5678)
    assert e.rflags == 0x0003    # IF, TF and AC cleared, CF and bit 1 kept


def test_real_mode_sp_wraps_at_64k_and_keeps_esp_high_bits():
    e = real_env()
    e.st.gprs[RSP] = 0xABCD_0002
    e.deliver(0x20, "hw")
    assert e.u16(0x20000) == 0x0303          # FLAGS at SP-2 = 0x0000
    assert e.u16(0x2FFFE) == 0x0700          # CS at 0xFFFE
    assert e.u16(0x2FFFC) == 0x0123          # IP at 0xFFFC
    assert e.rsp == 0xABCD_FFFC


def test_real_mode_soft_int_pushes_next_ip_and_exception_pushes_no_error_code():
    e = real_env()
    e.deliver(0x20, "soft", next_rip=0x0125)
    assert e.u16(0x200FA) == 0x0125
    e = real_env()
    e.deliver(13, "exception", error_code=0x1234)
    # Real mode never pushes an error code: exactly 6 bytes, IP first.
    assert e.rsp == 0xFA and e.ram[0x200FA:0x20100] == bytes.fromhex("2301 0007 0303")
    assert e.ram[0x200F8:0x200FA] == b"\0\0"
    assert (e.st.segs[CS].selector, e.rip) == (0xF000, 0x1234)


def test_real_mode_ivt_limit_gp_then_df_then_shutdown():
    e = real_env()
    e.st.segs[IDT].limit = 0x37          # covers up to vector 13 (13*4+3 = 0x37), not 0x20
    e.deliver(0x20, "hw")                # -> #GP, delivered serially (the interrupt is benign)
    assert (e.st.segs[CS].selector, e.rip) == (0xF000, 0x1234)
    assert e.u16(0x200FA) == 0x0123

    e = real_env()
    e.st.segs[IDT].limit = 0x23          # covers #DF (8*4+3 = 0x23) but not #GP
    e.deliver(0x20, "hw")                # -> #GP -> #GP again: contributory twice -> #DF
    assert (e.st.segs[CS].selector, e.rip) == (0xE000, 0xABCD)
    assert e.rsp == 0xFA                 # one frame only

    e = real_env()
    e.st.segs[IDT].limit = 0             # the classic "LIDT limit 0" reboot
    before = bytes(e.ram)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")
    assert [v for v, *_ in info.value.chain] == [0x20, 13, 13, 8, 13]
    assert bytes(e.ram) == before and e.rsp == 0x100 and e.rip == 0x123


# ================================================================ protected mode

def test_protected_interrupt_gate_cpl0_no_stack_switch():
    e = Env("prot")
    e.st.gprs[RFLAGS] = 0x202 | TF | NT | AC
    e.deliver(0x20, "hw")
    # EFLAGS, CS, EIP as dwords: EIP at ESP-12.
    assert e.dwords(KSTACK - 12, 3) == [0x4000, K32_CS, 0x202 | TF | NT | AC]
    assert e.rsp == KSTACK - 12
    assert e.rip == HANDLER + 0x200
    assert e.rflags == 0x2 | AC           # IF, TF, NT cleared; AC kept in protected mode
    assert e.seg(CS) == (K32_CS, 0, 0xFFFF_FFFF, 0xB, 1, 0, 1, 0, 1, 1)


def test_protected_trap_gate_keeps_if():
    e = Env("prot")
    e.gate(0x21, 0x1234_5678, K32_CS, type_=0xF)
    e.deliver(0x21, "hw")
    assert e.rip == 0x1234_5678 and e.rflags == 0x202
    assert e.dwords(KSTACK - 12, 3) == [0x4000, K32_CS, 0x202]


def test_protected_from_cpl3_switches_to_tss_stack_with_error_code():
    e = Env("prot", cpl=3)
    e.st.gprs[RSP] = 0x6FF4
    e.deliver(13, "exception", error_code=0x18)
    # New stack SS0:ESP0 = 0x10:0x9000; pushes SS, ESP, EFLAGS (RF set: #GP is a fault), CS, EIP, error,
    # so from the new ESP upwards: error, EIP, CS, EFLAGS, old ESP, old SS.
    assert e.dwords(KSTACK - 24, 6) == [0x18, 0x4000, U32_CS, 0x10202, 0x6FF4, U32_DS]
    assert e.rsp == KSTACK - 24
    assert e.seg(SS) == (K32_DS, 0, 0xFFFF_FFFF, 0x3, 1, 0, 1, 0, 1, 1)
    assert e.seg(CS)[:1] == (K32_CS,) and e.st.segs[CS].attrib.dpl == 0
    assert e.rip == HANDLER + 13 * 0x10 and e.rflags == 0x2


def test_protected_16bit_gate_pushes_words():
    e = Env("prot")
    e.gate(0x30, 0xDEAD_0042, 0x30, type_=0x6)       # 16-bit interrupt gate into a 16-bit segment
    e.st.gprs[RIP] = 0x0001_2345
    e.deliver(0x30, "hw")
    assert [e.u16(KSTACK - 6 + 2 * i) for i in range(3)] == [0x2345, K32_CS, 0x0202]
    assert e.rsp == KSTACK - 6
    assert e.rip == 0x0042                            # only the low 16 bits of the gate offset
    assert e.seg(CS) == (0x30, 0x10000, 0xFFFF, 0xB, 1, 0, 1, 0, 0, 0)


def test_protected_soft_int_gate_dpl_check():
    e = Env("prot", cpl=3)
    e.deliver(0x80, "soft", next_rip=0x4002)          # gate DPL 0 < CPL 3
    # #GP(0x80*8+2 = 0x402), EXT clear; the return address is the INT instruction itself.
    assert e.dwords(KSTACK - 24, 6) == [0x402, 0x4000, U32_CS, 0x10202, USTACK, U32_DS]
    assert e.rip == HANDLER + 13 * 0x10

    e = Env("prot", cpl=3)
    e.gate(0x80, 0x8888, K32_CS, type_=0xF, dpl=3)
    e.deliver(0x80, "soft", next_rip=0x4002)
    assert e.dwords(KSTACK - 20, 5) == [0x4002, U32_CS, 0x202, USTACK, U32_DS]
    assert e.rip == 0x8888 and e.rflags == 0x202


def test_hw_interrupt_ignores_gate_dpl():
    e = Env("prot", cpl=3)
    e.deliver(0x80, "hw")
    assert e.rip == HANDLER + 0x800 and e.dwords(KSTACK - 20, 5) == [0x4000, U32_CS, 0x202, USTACK, U32_DS]


def test_protected_not_present_gate_gives_np_serially():
    e = Env("prot")
    e.gate(0x21, 0x1111, K32_CS, p=0)
    e.deliver(0x21, "hw")
    # #NP(0x21*8 + IDT 2 + EXT 1 = 0x10B); RF set in the image (#NP is a fault).
    assert e.dwords(KSTACK - 16, 4) == [0x10B, 0x4000, K32_CS, 0x10202]
    assert e.rip == HANDLER + 11 * 0x10


def test_protected_vector_beyond_idt_limit_gp():
    e = Env("prot")
    e.st.segs[IDT].limit = 0x20 * 8 - 1
    e.deliver(0x20, "hw")
    assert e.dwords(KSTACK - 16, 4) == [0x103, 0x4000, K32_CS, 0x10202]
    assert e.rip == HANDLER + 13 * 0x10


def test_protected_gate_checks_error_codes():
    cases = [
        (0x0000, 0x0E, 13, 0x1),          # null code selector: #GP(EXT)
        (0x0400, 0x0E, 13, 0x401),        # beyond the GDT limit: #GP(sel|EXT)
        (K32_DS, 0x0E, 13, 0x11),         # not a code segment
        (U32_CS, 0x0E, 13, 0x19),         # DPL 3 > CPL 0
        (0x68, 0x0E, 11, 0x69),           # code segment not present: #NP(sel|EXT)
        (K32_CS, 0x0C, 13, 0x103),        # call gate type in the IDT: #GP(IDT|EXT)
    ]
    for sel, type_, vec, code in cases:
        e = Env("prot")
        e.gate(0x20, 0x1000, sel, type_=type_)
        e.deliver(0x20, "hw")
        assert e.rip == HANDLER + vec * 0x10, (sel, type_)
        assert e.u32(e.rsp) == code, (sel, type_)


def test_protected_tss_checks():
    e = Env("prot", cpl=3)
    e.st.segs[TR].limit = 8                  # ESP0/SS0 need offsets 4..9
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")                # #TS(TR|EXT) needs the same stack switch -> #DF -> ...
    assert info.value.chain[1][:3] == (10, "exception", TSS_SEL | 1)

    e = Env("prot", cpl=3)
    e.put32(TSS_BASE + 8, U32_DS)            # SS0 with RPL 3
    e.gate(10, 0x7777, K32_CS)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")
    assert info.value.chain[1][:3] == (10, "exception", U32_DS & ~3 | 1)

    e = Env("prot", cpl=3)
    e.put32(TSS_BASE + 8, 0x60)              # not-present data segment: #SS(sel|EXT)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")
    assert info.value.chain[1][:3] == (12, "exception", 0x61)


def test_gp_while_delivering_gp_is_double_fault():
    e = Env("prot")
    e.gate(13, 0x1000, 0x0000)                # #GP handler gate has a null selector
    e.deliver(13, "exception", error_code=0)
    # #GP -> #GP(EXT) -> #DF(0): the frame is #DF's, RF not set (abort class).
    assert e.rip == HANDLER + 8 * 0x10
    assert e.dwords(KSTACK - 16, 4) == [0, 0x4000, K32_CS, 0x202]
    assert e.rsp == KSTACK - 16


def test_not_present_np_handler_escalates_to_df_then_triple():
    e = Env("prot")
    e.gate(0x21, 0x1111, K32_CS, p=0)
    e.gate(11, 0x2222, K32_CS, p=0)
    e.deliver(0x21, "hw")                     # #NP(0x10B) serially, its gate absent -> #NP: #DF
    assert e.rip == HANDLER + 8 * 0x10
    assert e.dwords(KSTACK - 16, 4) == [0, 0x4000, K32_CS, 0x202]

    e = Env("prot")
    e.gate(0x21, 0x1111, K32_CS, p=0)
    e.gate(11, 0x2222, K32_CS, p=0)
    e.gate(8, 0x3333, K32_CS, p=0)
    before = bytes(e.ram)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x21, "hw")
    assert [(v, c) for v, _, c, _ in info.value.chain] == [
        (0x21, None), (11, 0x10B), (11, 0x5B), (8, 0), (11, 0x43)]
    assert bytes(e.ram) == before
    assert (e.rsp, e.rip, e.rflags) == (KSTACK, 0x4000, 0x202)


def test_task_gate_is_unsupported():
    e = Env("prot")
    e.gate(0x22, 0, 0x28, type_=0x5)
    with pytest.raises(UnsupportedEvent, match="task gate"):
        e.deliver(0x22, "hw")


def test_protected_expand_down_stack_and_limit_violation():
    e = Env("prot")
    e.load(SS, 0x70)                           # expand-down, limit 0xFFF, 32-bit
    e.st.gprs[RSP] = 0x600C
    e.deliver(0x20, "hw")                      # offsets 0x6000..0x600B are all above the limit
    assert e.dwords(0x6000, 3) == [0x4000, K32_CS, 0x202] and e.rsp == 0x6000

    e = Env("prot")
    e.load(SS, 0x70)
    e.st.gprs[RSP] = 0x1008                    # the EIP push would land at 0xFFC <= limit
    before = bytes(e.ram)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")
    assert [(v, c) for v, _, c, _ in info.value.chain] == [
        (0x20, None), (12, 1), (12, 1), (8, 0), (12, 1)]
    assert bytes(e.ram) == before


def test_accessed_bit_is_set_when_loading_cs():
    e = Env("prot")
    e.gate(0x20, 0x1000, 0x58)
    assert e.ram[GDT_BASE + 0x58 + 5] == 0x9A
    e.deliver(0x20, "hw")
    assert e.ram[GDT_BASE + 0x58 + 5] == 0x9B
    assert e.st.segs[CS].attrib.type == 0xB and e.st.segs[CS].selector == 0x58


def test_virtual_8086_interrupt():
    e = Env("prot")
    s = e.st
    for i, sel in ((CS, 0x1234), (SS, 0x2000), (DS, 0x3000), (ES, 0x4000), (FS, 0x5000), (GS, 0x6000)):
        s.segs[i].selector, s.segs[i].base, s.segs[i].limit = sel, sel << 4, 0xFFFF
        s.segs[i].attrib.dpl = 3
    s.gprs[RSP], s.gprs[RIP], s.gprs[RFLAGS] = 0x100, 0x10, VM | IF | 0x2
    e.deliver(0x20, "hw")
    assert e.dwords(KSTACK - 36, 9) == [0x10, 0x1234, VM | IF | 0x2, 0x100, 0x2000,
                                        0x4000, 0x3000, 0x5000, 0x6000]
    assert e.rsp == KSTACK - 36 and e.rip == HANDLER + 0x200 and e.rflags == 0x2
    assert [s.segs[i].selector for i in (DS, ES, FS, GS)] == [0, 0, 0, 0]
    assert e.seg(SS)[:3] == (K32_DS, 0, 0xFFFF_FFFF) and e.seg(CS)[:1] == (K32_CS,)

    s.gprs[RFLAGS] = VM | IF | 0x2              # IOPL 0: INT n faults with #GP(0)
    for i, sel in ((CS, 0x1234), (SS, 0x2000)):
        s.segs[i].selector = sel
    s.gprs[RSP] = 0x100
    e.deliver(0x21, "soft", next_rip=0x12)
    assert e.rip == HANDLER + 13 * 0x10 and e.u32(e.rsp) == 0


def test_protected_paging_idt_at_high_address():
    """32-bit paging with a 4 MiB PSE page: IDT, GDT and TSS seen at 0xC0000000+."""
    e = Env("prot", cpl=3)
    pd = 0x30000
    e.put32(pd, 0x83)                          # 0..4 MiB identity
    e.put32(pd + 0x300 * 4, 0x83)              # 0xC0000000 -> 0
    s = e.st
    s.crs[CR0] = 0x8001_0011
    s.crs[CR3] = pd
    s.crs[CR4] = 0x10
    s.segs[IDT].base += 0xC000_0000
    s.segs[GDT].base += 0xC000_0000
    s.segs[TR].base += 0xC000_0000
    e.deliver(0x20, "hw")
    assert e.rip == HANDLER + 0x200
    assert e.dwords(KSTACK - 20, 5) == [0x4000, U32_CS, 0x202, USTACK, U32_DS]


# ================================================================ long mode

def test_long_mode_cpl0_aligns_rsp_and_pushes_five_qwords():
    e = Env("long")
    e.st.gprs[RSP] = KSTACK + 8                # misaligned: the frame starts at 0x9000
    e.st.gprs[RIP] = 0xFFFF_FFFF_8000_1234
    e.deliver(0x20, "hw")
    assert e.qwords(KSTACK - 40, 5) == [0xFFFF_FFFF_8000_1234, K64_CS, 0x202, KSTACK + 8, K64_DS]
    assert e.u64(KSTACK) == 0                  # nothing above the aligned RSP
    assert e.rsp == KSTACK - 40 and e.rip == HANDLER + 0x200 and e.rflags == 0x2
    assert e.seg(CS) == (K64_CS, 0, 0xFFFF_FFFF, 0xB, 1, 0, 1, 1, 0, 1)
    assert e.seg(SS)[0] == K64_DS             # no privilege change: SS untouched


def test_long_mode_from_cpl3_uses_rsp0_and_null_ss():
    e = Env("long", cpl=3)
    e.put64(TSS_BASE + 4, KSTACK + 8)          # RSP0, aligned down to KSTACK
    e.st.gprs[RSP] = 0x7003
    e.st.crs[CR2] = 0xDEAD_B000
    e.deliver(14, "exception", error_code=0x6)
    assert e.qwords(KSTACK - 48, 6) == [0x6, 0x4000, U64_CS, 0x10202, 0x7003, U64_DS]
    assert e.rsp == KSTACK - 48 and e.rip == HANDLER + 14 * 0x10
    assert e.st.crs[CR2] == 0xDEAD_B000        # CR2 is the caller's
    ss = e.st.segs[SS]
    assert (ss.selector, ss.attrib.dpl, ss.attrib.p) == (0, 0, 1)
    assert e.st.segs[CS].selector == K64_CS and e.st.segs[CS].attrib.dpl == 0


def test_long_mode_ist_used_at_cpl0():
    e = Env("long")
    e.gate(2, 0x5555, K64_CS, ist=1)
    e.deliver(2, "hw")                         # NMI through IST1
    assert e.qwords(ISTACK - 40, 5) == [0x4000, K64_CS, 0x202, KSTACK, K64_DS]
    assert e.rsp == ISTACK - 40 and e.rip == 0x5555
    assert e.st.segs[SS].selector == K64_DS


def test_long_mode_gp_error_code_and_trap_gate():
    e = Env("long")
    e.gate(13, 0x6666, K64_CS, type_=0xF)
    e.deliver(13, "exception", error_code=0x10)
    assert e.qwords(KSTACK - 48, 6) == [0x10, 0x4000, K64_CS, 0x10202, KSTACK, K64_DS]
    assert e.rflags == 0x202                   # trap gate: IF kept; RF cleared in RFLAGS


@pytest.mark.parametrize("vector", [8, 10, 11, 12, 13, 14, 17, 21, 29, 30])
def test_error_code_vectors_push_one(vector):
    """SDM vol. 3 table 6-1 and AMD APM vol. 2 table 8-1: #DF #TS #NP #SS #GP #PF #AC #CP, and
    AMD's #VC and #SX, push an error code (emulator/arch.py says why it is the union)."""
    e = Env("long")
    e.gate(vector, 0x6666, K64_CS)
    e.deliver(vector, "exception", error_code=0x10)
    assert e.rsp == KSTACK - 48 and e.qwords(KSTACK - 48, 3) == [0x10, 0x4000, K64_CS]


def test_long_mode_soft_int_dpl():
    e = Env("long", cpl=3)
    e.deliver(0x80, "soft", next_rip=0x4002)
    assert e.qwords(KSTACK - 48, 6) == [0x402, 0x4000, U64_CS, 0x10202, USTACK, U64_DS]
    assert e.rip == HANDLER + 13 * 0x10

    e = Env("long", cpl=3)
    e.gate(0x80, 0x8080, K64_CS, type_=0xF, dpl=3)
    e.deliver(0x80, "soft", next_rip=0x4002)
    assert e.qwords(KSTACK - 40, 5) == [0x4002, U64_CS, 0x202, USTACK, U64_DS]
    assert e.rip == 0x8080


def test_long_mode_int3_at_cpl0_with_dpl0_gate():
    e = Env("long")
    e.deliver(3, "soft", next_rip=0x4001)
    assert e.qwords(KSTACK - 40, 5) == [0x4001, K64_CS, 0x202, KSTACK, K64_DS]


def test_long_mode_gate_and_segment_checks():
    cases = [
        dict(sel=K32_CS, vec=13, code=K32_CS | 1),      # 32-bit code segment (L=0)
        dict(sel=K64_CS, type_=0x6, vec=13, code=0x103),  # 16-bit gate in IA-32e mode
        dict(sel=K64_CS, off=0x0000_8000_0000_0000, vec=13, code=1),  # non-canonical handler RIP
        dict(sel=K64_CS, p=0, vec=11, code=0x103),
    ]
    for c in cases:
        e = Env("long")
        e.gate(0x20, c.get("off", 0x1000), c["sel"], type_=c.get("type_", 0xE), p=c.get("p", 1))
        e.deliver(0x20, "hw")
        assert e.rip == HANDLER + c["vec"] * 0x10, c
        assert e.u64(e.rsp) == c["code"], c


def test_long_mode_idt_limit_and_idt_in_higher_half():
    e = Env("long")
    e.st.segs[IDT].limit = 0x20 * 16 - 1
    e.deliver(0x20, "hw")
    assert e.rip == HANDLER + 13 * 0x10 and e.u64(e.rsp) == 0x103

    e = Env("long")
    for i in (IDT, GDT, TR):
        e.st.segs[i].base += HIGH
    e.st.gprs[RSP] = HIGH + KSTACK
    e.deliver(0x21, "hw")
    assert e.rip == HANDLER + 0x210 and e.rsp == HIGH + KSTACK - 40
    assert e.qwords(KSTACK - 40, 5) == [0x4000, K64_CS, 0x202, HIGH + KSTACK, K64_DS]


def test_long_mode_stack_page_fault_serial_then_double_then_triple():
    # Interrupt with RSP in an unmapped page: #PF(W=1 -> 2) delivered serially on IST1.
    e = Env("long")
    e.gate(14, 0x1414, K64_CS, ist=1)
    e.st.gprs[RSP] = HOLE + 0x1000
    e.deliver(0x20, "hw")
    assert e.st.crs[CR2] == HOLE + 0xFF8
    assert e.qwords(ISTACK - 48, 6) == [0x2, 0x4000, K64_CS, 0x10202, HOLE + 0x1000, K64_DS]
    assert e.rip == 0x1414

    # #PF while delivering #PF -> #DF(0) on IST1.
    e = Env("long")
    e.gate(8, 0x0808, K64_CS, ist=1)
    e.st.gprs[RSP] = HOLE + 0x1000
    e.deliver(14, "exception", error_code=0)
    assert e.st.crs[CR2] == HOLE + 0xFF8
    assert e.qwords(ISTACK - 48, 6) == [0, 0x4000, K64_CS, 0x202, HOLE + 0x1000, K64_DS]
    assert e.rip == 0x0808

    # Everything on the broken stack: shutdown, nothing written.
    e = Env("long")
    e.st.gprs[RSP] = HOLE + 0x1000
    before = bytes(e.ram)
    with pytest.raises(TripleFault) as info:
        e.deliver(0x20, "hw")
    assert [(v, c) for v, _, c, _ in info.value.chain] == [
        (0x20, None), (14, 2), (14, 2), (8, 0), (14, 2)]
    assert bytes(e.ram) == before and e.rsp == HOLE + 0x1000 and e.rip == 0x4000


def test_long_mode_user_stack_page_fault_error_code():
    # Same-privilege delivery at CPL3 (DPL3 handler): pushes are user writes.
    e = Env("long", cpl=3)
    e.gate(0x20, 0x2020, U64_CS)
    e.gate(14, 0x1414, K64_CS, ist=1)
    e.st.gprs[RSP] = HOLE + 0x1000
    e.deliver(0x20, "hw")
    assert e.u64(e.rsp) == 0x6                 # #PF: W | U, not present


def test_contributory_then_page_fault_is_serial():
    # #GP delivery hits the stack hole: #PF is delivered (table 6-5: contributory then #PF).
    e = Env("long")
    e.gate(14, 0x1414, K64_CS, ist=1)
    e.st.gprs[RSP] = HOLE + 0x1000
    e.deliver(13, "exception", error_code=0)
    assert e.rip == 0x1414 and e.u64(e.rsp) == 0x2


# ================================================================ helpers and validation

def test_read_descriptor():
    e = Env("prot")
    d = read_descriptor(e.st, e.bus, K32_CS)
    assert d["raw"] == 0x00CF_9B00_0000_FFFF
    assert (d["base"], d["limit"], d["type"], d["s"], d["dpl"], d["p"], d["l"], d["db"], d["g"]) == (
        0, 0xFFFF_FFFF, 0xB, 1, 0, 1, 0, 1, 1)
    d = read_descriptor(e.st, e.bus, K64_CS)
    assert d["raw"] == 0x00AF_9B00_0000_FFFF and d["l"] == 1 and d["db"] == 0
    d = read_descriptor(e.st, e.bus, 0x30)
    assert (d["base"], d["limit"], d["g"]) == (0x10000, 0xFFFF, 0)
    with pytest.raises(DeliveryFault) as info:
        read_descriptor(e.st, e.bus, 0x400)
    assert (info.value.vector, info.value.error_code) == (13, 0x400)
    with pytest.raises(DeliveryFault) as info:
        read_descriptor(e.st, e.bus, 0x0C)      # LDT selector, no LDT
    assert (info.value.vector, info.value.error_code) == (13, 0x0C)


def test_argument_validation():
    e = Env("prot")
    with pytest.raises(ValueError):
        e.deliver(0x80, "soft")                 # next_rip missing
    with pytest.raises(ValueError):
        e.deliver(6, "exception", error_code=1)  # #UD has no error code
    with pytest.raises(ValueError):
        e.deliver(0x20, "hw", error_code=0)
    with pytest.raises(ValueError):
        e.deliver(0x40, "exception")
    with pytest.raises(ValueError):
        e.deliver(0x20, "irq")
    assert e.bus.writes == 0


# ================================================================ properties

@settings(max_examples=40, deadline=None)
@given(rsp=st.integers(0x8100, 0x9000), vector=st.integers(0x20, 0xFF),
       flags=st.integers(0, 0xFFFF), rip=st.integers(0, (1 << 47) - 1))
def test_long_mode_frame_property(rsp, vector, flags, rip):
    e = Env("long")
    e.st.gprs[RSP], e.st.gprs[RIP], e.st.gprs[RFLAGS] = rsp, rip, flags
    e.deliver(vector, "hw")
    top = rsp & ~0xF
    assert e.rsp == top - 40
    assert e.qwords(top - 40, 5) == [rip, K64_CS, flags | 2, rsp, K64_DS]
    assert e.rflags == flags & ~(IF | TF | NT | RF)
    assert e.rip == HANDLER + vector * 0x10


@settings(max_examples=40, deadline=None)
@given(sp=st.integers(0, 0xFFFF), ip=st.integers(0, 0xFFFF), cs=st.integers(0, 0xFFFF),
       flags=st.integers(0, 0xFFFF), vector=st.integers(0, 0xFF))
def test_real_mode_frame_property(sp, ip, cs, flags, vector):
    e = Env("real")
    s = e.st
    s.segs[SS].selector, s.segs[SS].base = 0x3000, 0x30000
    s.segs[CS].selector, s.segs[CS].base = cs, cs << 4
    s.gprs[RSP], s.gprs[RIP], s.gprs[RFLAGS] = sp, ip, flags
    e.put(vector * 4, bytes([vector, 0x11, vector, 0x22]))
    e.deliver(vector, "hw")
    assert e.u16(0x30000 + ((sp - 2) & 0xFFFF)) == flags | 2
    assert e.u16(0x30000 + ((sp - 4) & 0xFFFF)) == cs
    assert e.u16(0x30000 + ((sp - 6) & 0xFFFF)) == ip
    assert e.rsp == (sp - 6) & 0xFFFF
    assert (s.segs[CS].selector, s.segs[CS].base, e.rip) == (
        0x2200 | vector, (0x2200 | vector) << 4, 0x1100 | vector)
    assert e.rflags == flags & ~(IF | TF | AC)
