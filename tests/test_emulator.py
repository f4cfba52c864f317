"""emulator.x86emu: unit tests with a Python stand-in for struct nvmm_x64_state and a
bytearray-backed bus with an MMIO window that records every access."""
import timeit

import pytest

from asm import assemble
from nvmmpy.emulator.x86emu import EmulationError, Emulator, GuestFault, Step

# ---------------------------------------------------------------------------------------
# Stand-ins (also used by test_emulator_diff.py)
# ---------------------------------------------------------------------------------------
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15, RIP, RFLAGS = range(8, 18)
ES, CS, SS, DS, FS, GS = range(6)
CF, PF, AF, ZF, SF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x400, 0x800
ARITH = CF | PF | AF | ZF | SF | OF
CR0_PE, CR0_TS, CR0_PG = 1, 8, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXSAVE = 1 << 5, 1 << 9, 1 << 18
EFER_LME, EFER_LMA = 1 << 8, 1 << 10


class Attrib:
    def __init__(self, type=3, s=1, dpl=0, p=1, l=0, d=0, g=0):
        self.type, self.s, self.dpl, self.p, self.avl, self.l, self.g = type, s, dpl, p, 0, l, g
        setattr(self, "def", d)


class Seg:
    def __init__(self, selector=0, base=0, limit=0xFFFFFFFF, **attrib):
        self.selector, self.base, self.limit = selector, base, limit
        self.attrib = Attrib(**attrib)


class Xmm:
    def __init__(self):
        self.xmm_bytes = bytearray(16)


class Fpu:
    def __init__(self):
        self.fx_mxcsr = 0x1F80
        self.fx_xmm = [Xmm() for _ in range(16)]


class State:
    """Attribute-compatible with struct nvmm_x64_state for what the emulator reads."""

    def __init__(self, mode=64, paging=False):
        self.gprs = [0] * 18
        self.crs = [0] * 6
        self.msrs = [0] * 11
        self.fpu = Fpu()
        self.gprs[RFLAGS] = 0x2
        self.crs[5] = 7  # XCR0: x87 | SSE | AVX
        if mode == 16:
            self.segs = [Seg(limit=0xFFFF) for _ in range(10)]
            self.segs[CS].attrib.type = 11
            self.crs[3] = CR4_OSFXSR
            return
        self.segs = [Seg(0x10, 0, 0xFFFFFFFF, d=1, g=1) for _ in range(10)]
        self.segs[CS] = Seg(0x8, 0, 0xFFFFFFFF, type=11, d=int(mode == 32), l=int(mode == 64), g=1)
        self.crs[0] = CR0_PE | 0x10
        self.crs[3] = CR4_OSFXSR | CR4_OSXSAVE
        if mode == 64:
            self.msrs[0] = EFER_LME | EFER_LMA
            self.crs[3] |= CR4_PAE
        if paging:
            self.crs[0] |= CR0_PG

    def xmm(self, i):
        return bytes(self.fpu.fx_xmm[i].xmm_bytes)

    def set_xmm(self, i, data):
        self.fpu.fx_xmm[i].xmm_bytes[:] = data


MMIO = 0xFEB00000


class Bus:
    """RAM from 0, an MMIO window at ``mmio`` (4 KiB) logging ("r"|"w", offset, data), and
    ports: ``io_in`` serves bytes queued in ``inputs[port]`` (else 0xFF), ``io_out`` appends
    to ``outputs[port]``."""

    def __init__(self, size=1 << 20, mmio=MMIO):
        self.ram = bytearray(size)
        self.mmio_base = mmio
        self.mmio = bytearray(0x1000)
        self.log = []
        self.inputs = {}
        self.outputs = {}
        self.reads = 0

    def read(self, gpa, n):
        self.reads += 1
        off = gpa - self.mmio_base
        if 0 <= off < 0x1000:
            assert off + n <= 0x1000, "MMIO access crosses the window"
            data = bytes(self.mmio[off:off + n])
            self.log.append(("r", off, data))
            return data
        if gpa + n > len(self.ram):
            raise IndexError(f"gpa {gpa:#x} outside RAM")
        return bytes(self.ram[gpa:gpa + n])

    def write(self, gpa, data):
        data = bytes(data)
        off = gpa - self.mmio_base
        if 0 <= off < 0x1000:
            assert off + len(data) <= 0x1000, "MMIO access crosses the window"
            self.mmio[off:off + len(data)] = data
            self.log.append(("w", off, data))
            return
        if gpa + len(data) > len(self.ram):
            raise IndexError(f"gpa {gpa:#x} outside RAM")
        self.ram[gpa:gpa + len(data)] = data

    def io_in(self, port, n):
        q = self.inputs.setdefault(port, bytearray())
        data = bytes(q[:n]).ljust(n, b"\xff")
        del q[:n]
        return data

    def io_out(self, port, data):
        self.outputs.setdefault(port, bytearray()).extend(data)

    def put(self, gpa, data):
        self.ram[gpa:gpa + len(data)] = data

    def get(self, gpa, n):
        return bytes(self.ram[gpa:gpa + n])


P, RW, US, PS = 1, 2, 4, 0x80


def build_page_tables(bus, root=0x70000, remap=None, user=True):
    """4-level identity page tables for the first 2 MiB at ``root`` (4 pages), with
    ``remap`` = {virtual page address: physical page address} overrides, and
    ``None`` as the physical address for a not-present page. Accessed and dirty bits
    are preset (a CPU, or unicorn, would set them)."""
    pml4, pdpt, pd, pt = root, root + 0x1000, root + 0x2000, root + 0x3000
    flags = P | RW | (US if user else 0) | 0x60
    bus.put(pml4, (pdpt | flags).to_bytes(8, "little"))
    bus.put(pdpt, (pd | flags).to_bytes(8, "little"))
    bus.put(pd, (pt | flags).to_bytes(8, "little"))
    for i in range(512):
        bus.put(pt + 8 * i, ((i << 12) | flags).to_bytes(8, "little"))
    for va, pa in (remap or {}).items():
        entry = 0 if pa is None else pa | flags
        bus.put(pt + 8 * ((va >> 12) & 0x1FF), entry.to_bytes(8, "little"))
    return pml4


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
EMU = Emulator()
BITS_OF = {}


def code(src, bits=64):
    if isinstance(src, bytes):
        return src
    key = (src, bits)
    if key not in BITS_OF:
        BITS_OF[key] = assemble(src, bits)
    return BITS_OF[key]


def machine(bits=64, paging=False, mmio=MMIO, **regs):
    st, bus = State(bits, paging), Bus(mmio=mmio)
    if paging:
        st.crs[2] = build_page_tables(bus)
    st.gprs[RIP] = 0x1000
    names = dict(rax=RAX, rcx=RCX, rdx=RDX, rbx=RBX, rsp=RSP, rbp=RBP, rsi=RSI, rdi=RDI,
                 r8=R8, r9=R9, r10=R10, r11=R11, r12=R12, r13=R13, r14=R14, r15=R15, rflags=RFLAGS)
    for k, v in regs.items():
        st.gprs[names[k]] = v
    return st, bus


def run(src, bits=64, st=None, bus=None, **regs):
    if st is None:
        st, bus = machine(bits, **regs)
    c = code(src, bits)
    rip = st.gprs[RIP]
    s = EMU.step(st, bus, c)
    assert isinstance(s, Step)
    if s.complete:
        assert st.gprs[RIP] == (rip + len(c)) & ((1 << 64) - 1 if bits == 64 else 0xFFFF_FFFF)
    return st, bus, s


def fault(src, vector, bits=64, st=None, bus=None, **regs):
    if st is None:
        st, bus = machine(bits, **regs)
    rip = st.gprs[RIP]
    with pytest.raises(GuestFault) as ei:
        EMU.step(st, bus, code(src, bits))
    assert ei.value.vector == vector, ei.value
    assert st.gprs[RIP] == rip
    return ei.value


# ---------------------------------------------------------------------------------------
# MOV family
# ---------------------------------------------------------------------------------------
def test_mov_store_to_mmio_records_access():
    st, bus, s = run("movl %eax, 0x10(%rbx)", rax=0xAABBCCDD_11223344, rbx=MMIO)
    assert bus.mmio[0x10:0x14] == bytes.fromhex("44332211")
    assert bus.log == [("w", 0x10, bytes.fromhex("44332211"))]
    assert s.mnemonic == "mov" and s.length == 3
    assert s.accesses == [("mem", MMIO + 0x10, 4, True, bytes.fromhex("44332211"))]
    assert s.iterations == 1 and s.complete


@pytest.mark.parametrize("src,size,value", [
    ("movb %al, (%rbx)", 1, 0x88), ("movw %ax, (%rbx)", 2, 0x7788), ("movl %eax, (%rbx)", 4, 0x55667788),
    ("movq %rax, (%rbx)", 8, 0x1122334455667788), ("movb %ah, (%rbx)", 1, 0x77),
    ("movb %sil, (%rbx)", 1, 0xEE), ("movb %r9b, (%rbx)", 1, 0x99),
    ("movb $0xfe, (%rbx)", 1, 0xFE), ("movw $0x1234, (%rbx)", 2, 0x1234),
    ("movl $0x87654321, (%rbx)", 4, 0x87654321), ("movq $-2, (%rbx)", 8, 0xFFFF_FFFF_FFFF_FFFE),
    ("movnti %eax, (%rbx)", 4, 0x55667788), ("movnti %rax, (%rbx)", 8, 0x1122334455667788),
    ("movabs %rax, 0xfeb00000", 8, 0x1122334455667788), ("movabs %al, 0xfeb00000", 1, 0x88),
])
def test_mov_stores(src, size, value):
    st, bus, s = run(src, rax=0x1122334455667788, rbx=MMIO, rsi=0xEE, r9=0x99)
    assert bus.mmio[:8] == value.to_bytes(size, "little").ljust(8, b"\0")


@pytest.mark.parametrize("src,reg,expect", [
    ("movb (%rbx), %al", RAX, 0xFFFF_FFFF_FFFF_FF01),
    ("movb (%rbx), %ah", RAX, 0xFFFF_FFFF_FFFF_01FF),
    ("movb (%rbx), %sil", RSI, 0xFFFF_FFFF_FFFF_FF01),
    ("movw (%rbx), %ax", RAX, 0xFFFF_FFFF_FFFF_8201),
    ("movl (%rbx), %eax", RAX, 0x0000_0000_F3048201),  # 32-bit destination zero-extends
    ("movq (%rbx), %r11", R11, 0x8877665_5F3048201 & ((1 << 64) - 1)),
    ("movzbl (%rbx), %eax", RAX, 0x01), ("movzwq (%rbx), %rax", RAX, 0x8201),
    ("movzbw 1(%rbx), %ax", RAX, 0xFFFF_FFFF_FFFF_0082),
    ("movsbw 1(%rbx), %ax", RAX, 0xFFFF_FFFF_FFFF_FF82), ("movsbl 1(%rbx), %eax", RAX, 0xFFFF_FF82),
    ("movswq (%rbx), %rax", RAX, 0xFFFF_FFFF_FFFF_8201), ("movslq (%rbx), %rax", RAX, 0xFFFF_FFFF_F3048201),
    ("movbel (%rbx), %eax", RAX, 0x018204F3), ("movabs 0xfeb00000, %eax", RAX, 0xF3048201),
])
def test_mov_loads(src, reg, expect):
    st, bus = machine(rbx=MMIO)
    st.gprs[RAX] = st.gprs[RSI] = st.gprs[R11] = (1 << 64) - 1
    bus.mmio[:8] = (0x887766_55F3048201).to_bytes(8, "little")
    run(src, st=st, bus=bus)
    assert st.gprs[reg] == expect


def test_rep_prefix_on_mov_is_ignored():
    st, bus, s = run(b"\xf3\x89\x03", rax=4, rbx=MMIO, rcx=5)  # rep mov %eax, (%rbx)
    assert bus.log == [("w", 0, b"\x04\0\0\0")] and st.gprs[RCX] == 5 and s.length == 3


def test_movbe_store_and_16bit_operand():
    st, bus, _ = run("movbew %ax, (%bx)", bits=16, rax=0x1234, rbx=0x100)
    assert bus.get(0x100, 2) == b"\x12\x34"
    st, bus = machine(16, rax=0xFFFF_FFFF, rbx=0x100)
    bus.put(0x100, b"\xAB\xCD\xEF\x01")
    run("movbew (%bx), %ax", bits=16, st=st, bus=bus)
    assert st.gprs[RAX] == 0xFFFF_ABCD  # 16-bit operand: 2 bytes, upper half kept


# ---------------------------------------------------------------------------------------
# Arithmetic and flags
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,mem,reg,flags_in,mem_out,reg_out,flags_out", [
    # add m, r: carry out, zero, parity, AF
    ("addb %al, (%rbx)", 0xFF, 0x01, 0, 0x00, None, CF | ZF | PF | AF),
    ("addl %eax, (%rbx)", 0x7FFFFFFF, 0x1, 0, 0x80000000, None, SF | OF | AF | PF),
    ("addq %rax, (%rbx)", 5, 7, 0, 12, None, PF),
    ("addw (%rbx), %ax", 0x8000, 0x8000, 0, 0x8000, 0, CF | ZF | PF | OF),
    ("adcb %al, (%rbx)", 0xFE, 0x01, CF, 0x00, None, CF | ZF | PF | AF),
    ("sbbw %ax, (%rbx)", 0x0000, 0x0000, CF, 0xFFFF, None, CF | SF | PF | AF),
    ("subl (%rbx), %eax", 3, 5, 0, 3, 2, 0),
    ("subq %rax, (%rbx)", 3, 5, 0, (-2) & ((1 << 64) - 1), None, CF | SF | AF),
    ("cmpb %al, (%rbx)", 0x80, 0x01, 0, 0x80, None, OF | AF),
    ("cmpl (%rbx), %eax", 0x80, 0x01, 0, 0x80, None, CF | SF | PF),
    ("andb %al, (%rbx)", 0xF0, 0x3C, CF | OF | AF, 0x30, None, PF),
    ("orw (%rbx), %ax", 0x8000, 0x0001, CF, 0x8000, 0x8001, SF),
    ("xorl %eax, (%rbx)", 0x1234, 0x1234, 0, 0, None, ZF | PF),
    ("testq %rax, (%rbx)", 0x8000_0000_0000_0000, (1 << 64) - 1, CF | OF, 0x8000_0000_0000_0000, None, SF | PF),
    ("cmpq $-1, (%rbx)", (1 << 64) - 1, 0, 0, (1 << 64) - 1, None, ZF | PF),
    ("addw $-3, (%rbx)", 2, 0, 0, 0xFFFF, None, SF | PF),
    ("testb $0x81, (%rbx)", 0x80, 0, 0, 0x80, None, SF),
    ("incb (%rbx)", 0x7F, 0, CF, 0x80, None, CF | SF | OF | AF),   # INC keeps CF
    ("decw (%rbx)", 0x0000, 0, 0, 0xFFFF, None, SF | PF | AF),     # ... and does not set it
    ("negl (%rbx)", 0, 0, CF, 0, None, ZF | PF),                   # NEG 0: CF = 0
    ("negb (%rbx)", 0x80, 0, 0, 0x80, None, CF | SF | OF),
    ("notq (%rbx)", 0, 0, CF | ZF, (1 << 64) - 1, None, CF | ZF),  # NOT: no flags
])
def test_alu(src, mem, reg, flags_in, mem_out, reg_out, flags_out):
    st, bus = machine(rbx=MMIO, rax=reg, rflags=0x2 | flags_in)
    bus.mmio[:8] = mem.to_bytes(8, "little")
    _, _, s = run(src, st=st, bus=bus)
    assert int.from_bytes(bus.mmio[:8], "little") & ((1 << 64) - 1) == mem_out
    if reg_out is not None:
        assert st.gprs[RAX] == reg_out
    assert st.gprs[RFLAGS] == 0x2 | flags_out, hex(st.gprs[RFLAGS])
    writes = [a for a in s.accesses if a[3]]
    assert bool(writes) == (src.split()[0][:3] not in ("cmp", "tes") and "(%rbx), %" not in src)


def test_alu_register_destination_sizes():
    st, bus = machine(rbx=0x2000, rcx=0xFFFF_FFFF_FFFF_FFFF)
    bus.put(0x2000, (1).to_bytes(8, "little"))
    run("addb (%rbx), %ch", st=st, bus=bus)
    assert st.gprs[RCX] == 0xFFFF_FFFF_FFFF_00FF and st.gprs[RFLAGS] & CF
    run("addl (%rbx), %ecx", st=st, bus=bus)
    assert st.gprs[RCX] == 0xFFFF_0100


# ---------------------------------------------------------------------------------------
# Exchange family
# ---------------------------------------------------------------------------------------
def test_xchg_xadd():
    st, bus, s = run("xchgw %cx, (%rbx)", rbx=MMIO, rcx=0xAAAA_1234)
    assert bus.mmio[:2] == b"\x34\x12" and st.gprs[RCX] == 0xAAAA_0000
    assert [a[3] for a in s.accesses] == [False, True]
    st, bus = machine(rbx=0x2000, rcx=5)
    bus.put(0x2000, (0xFFFFFFFF).to_bytes(4, "little"))
    run("xaddl %ecx, (%rbx)", st=st, bus=bus)
    assert bus.get(0x2000, 4) == (4).to_bytes(4, "little") and st.gprs[RCX] == 0xFFFFFFFF
    assert st.gprs[RFLAGS] & (CF | ZF | AF) == CF | AF


def test_cmpxchg_success_and_failure():
    st, bus = machine(rbx=0x2000, rax=0xDEAD_0000_0000_0007, rcx=0x99)
    bus.put(0x2000, (7).to_bytes(4, "little"))
    _, _, s = run("cmpxchgl %ecx, (%rbx)", st=st, bus=bus)
    assert bus.get(0x2000, 4) == (0x99).to_bytes(4, "little")
    assert st.gprs[RFLAGS] & ZF and st.gprs[RAX] == 0xDEAD_0000_0000_0007  # success: RAX untouched
    _, _, s = run("cmpxchgl %ecx, (%rbx)", st=st, bus=bus)
    assert not st.gprs[RFLAGS] & ZF and st.gprs[RAX] == 0x99  # failure: accumulator loaded, zero-extended
    assert s.accesses[-1] == ("mem", 0x2000, 4, True, (0x99).to_bytes(4, "little"))  # old value written back


def test_cmpxchg8b_16b():
    st, bus = machine(rdi=0x2000, rax=1, rdx=2, rbx=3, rcx=4)
    bus.put(0x2000, (2 << 32 | 1).to_bytes(8, "little"))
    run("cmpxchg8b (%rdi)", st=st, bus=bus)
    assert bus.get(0x2000, 8) == (4 << 32 | 3).to_bytes(8, "little") and st.gprs[RFLAGS] & ZF
    run("cmpxchg8b (%rdi)", st=st, bus=bus)
    assert st.gprs[RAX] == 3 and st.gprs[RDX] == 4 and not st.gprs[RFLAGS] & ZF
    st.gprs[RDI] = 0x2008
    fault("cmpxchg16b (%rdi)", 13, st=st, bus=bus)
    st.gprs[RDI] = 0x2010
    run("cmpxchg16b (%rdi)", st=st, bus=bus)
    assert st.gprs[RAX] == 0 and st.gprs[RDX] == 0


def test_lock_prefix():
    st, bus, _ = run("lock addl $1, (%rbx)", rbx=0x2000)
    assert bus.get(0x2000, 4) == b"\x01\0\0\0"
    e = fault(b"\xf0\x89\x03", 6, rbx=0x2000)  # lock mov %eax, (%rbx): as refuses to encode it
    assert "LOCK" in e.reason
    assert e.error_code is None


# ---------------------------------------------------------------------------------------
# BT family, SETcc, CMOVcc
# ---------------------------------------------------------------------------------------
def test_bt_immediate_and_register_offsets():
    st, bus = machine(rbx=0x2000, rflags=0x2 | ZF | SF)
    bus.put(0x2000, bytes([0x02, 0, 0, 0, 0, 0, 0, 0]))
    run("btl $33, (%rbx)", st=st, bus=bus)  # imm masked to 1 -> bit 1 is set
    assert st.gprs[RFLAGS] == 0x2 | ZF | SF | CF  # only CF changes
    st.gprs[RCX] = 0x100 * 8 + 3  # bit 3 of the byte 0x100 past the operand
    _, _, s = run("btsq %rcx, (%rbx)", st=st, bus=bus)
    assert s.accesses[0][1] == 0x2100 and bus.get(0x2100, 1) == b"\x08"
    assert not st.gprs[RFLAGS] & CF
    st.gprs[RCX] = (-1) & ((1 << 64) - 1)  # bit -1: bit 63 of the qword before
    bus.put(0x1FF8, (1 << 63).to_bytes(8, "little"))
    _, _, s = run("btrq %rcx, (%rbx)", st=st, bus=bus)
    assert s.accesses[0][1:3] == (0x1FF8, 8) and bus.get(0x1FF8, 8) == bytes(8)
    assert st.gprs[RFLAGS] & CF
    st.gprs[RCX] = 0xFFFF_0000_0000_FFF0  # 16-bit operand: offset -16 from the low 16 bits
    _, _, s = run("btcw %cx, (%rbx)", st=st, bus=bus)
    assert s.accesses[0][1:3] == (0x1FFE, 2)


def test_setcc_and_cmovcc():
    st, bus, _ = run("setz (%rbx)", rbx=0x2000, rflags=0x2 | ZF)
    assert bus.get(0x2000, 1) == b"\x01"
    run("setl (%rbx)", st=st, bus=bus)  # SF == OF -> not less
    assert bus.get(0x2000, 1) == b"\x00"
    st, bus = machine(rbx=MMIO, rax=0xFFFF_FFFF_FFFF_FFFF, rflags=0x2)
    bus.mmio[:4] = b"\x01\x02\x03\x04"
    _, _, s = run("cmovzl (%rbx), %eax", st=st, bus=bus)
    assert bus.log == [("r", 0, b"\x01\x02\x03\x04")]  # memory read although the condition is false
    assert st.gprs[RAX] == 0xFFFF_FFFF  # and the 32-bit destination still zero-extends
    run("cmovnzw (%rbx), %ax", st=st, bus=bus)
    assert st.gprs[RAX] == 0xFFFF_0201


# ---------------------------------------------------------------------------------------
# PUSH / POP with a memory operand
# ---------------------------------------------------------------------------------------
def test_push_pop_memory():
    st, bus = machine(rsp=0x3000, rbx=MMIO)
    bus.mmio[:8] = b"ABCDEFGH"
    run("pushq (%rbx)", st=st, bus=bus)
    assert st.gprs[RSP] == 0x2FF8 and bus.get(0x2FF8, 8) == b"ABCDEFGH"
    run("popq 8(%rsp)", st=st, bus=bus)  # address computed with the incremented RSP
    assert st.gprs[RSP] == 0x3000 and bus.get(0x3008, 8) == b"ABCDEFGH"
    st, bus = machine(32, rsp=0x3000, rbx=0x100)
    bus.put(0x100, b"wxyz")
    run("pushw (%ebx)", bits=32, st=st, bus=bus)
    assert st.gprs[RSP] == 0x2FFE and bus.get(0x2FFE, 2) == b"wx"


# ---------------------------------------------------------------------------------------
# Addressing: SIB, RIP-relative, segments, address size, 16-bit forms
# ---------------------------------------------------------------------------------------
def test_sib_and_rip_relative():
    st, bus, s = run("movl %eax, -8(%rbx,%rcx,4)", rax=7, rbx=0x2000, rcx=0x10)
    assert s.accesses[0][1] == 0x2000 + 0x40 - 8
    st, bus, s = run("movl %eax, 0x100(,%rcx,8)", rax=7, rcx=2)
    assert s.accesses[0][1] == 0x110
    c = code("movl %eax, 0x200(%rip)")
    st, bus, s = run("movl %eax, 0x200(%rip)", rax=7)
    assert s.accesses[0][1] == 0x1000 + len(c) + 0x200


def test_address_size_override_64():
    st, bus, s = run("movl %ecx, (%eax)", rax=0xFFFF_FFFF_0000_2000, rcx=1)
    assert s.accesses[0][1] == 0x2000
    st, bus, s = run("movl %ecx, 0x10(%eax,%ebx,2)", rax=0xFFFF_FFF0, rbx=0x1000, rcx=1)
    assert s.accesses[0][1] == (0xFFFF_FFF0 + 0x2000 + 0x10) & 0xFFFF_FFFF


def test_fs_gs_bases_in_64bit_and_ignored_overrides():
    st, bus = machine(rbx=0x10)
    st.segs[FS].base = 0x5000
    st.segs[DS].base = 0x7000  # ignored in 64-bit mode
    _, _, s = run("movb %al, %fs:(%rbx)", st=st, bus=bus)
    assert s.accesses[0][1] == 0x5010
    _, _, s = run("movb %al, %ds:(%rbx)", st=st, bus=bus)
    assert s.accesses[0][1] == 0x10


def test_non_canonical_address():
    e = fault("movl %eax, (%rbx)", 13, rbx=0x0000_8000_0000_0000)
    assert e.error_code == 0
    fault("movl %eax, (%rbp)", 12, rbp=0xFFFF_7FFF_FFFF_FFF0)  # rBP base: #SS


def test_canonical_check_with_la57():
    st, bus = machine(paging=True, rbx=0x0000_8000_0000_0000)
    st.crs[3] |= 1 << 12  # LA57: 57-bit linear addresses
    e = fault("movl %eax, (%rbx)", 14, st=st, bus=bus)  # canonical now: reaches the page walk
    assert e.cr2 == 0x0000_8000_0000_0000
    st.gprs[RBX] = 0x0100_0000_0000_0000
    fault("movl %eax, (%rbx)", 13, st=st, bus=bus)


def test_32bit_segments_limits_and_types():
    st, bus = machine(32, rbx=0x10)
    st.segs[DS] = Seg(0x10, 0x4000, 0xFFF, type=3, d=1)
    _, _, s = run("movl %eax, (%ebx)", bits=32, st=st, bus=bus)
    assert s.accesses[0][1] == 0x4010
    st.gprs[RBX] = 0xFFD
    e = fault("movl %eax, (%ebx)", 13, bits=32, st=st, bus=bus)  # 0xFFD..0x1000 > limit
    assert e.error_code == 0
    st.segs[SS] = Seg(0x18, 0, 0xFFF, type=3, d=1)
    st.gprs[RBP] = 0x1000
    fault("movl %eax, (%ebp)", 12, bits=32, st=st, bus=bus)
    st.segs[ES] = Seg(0x20, 0x8000, 0xFFF, type=7, d=1)  # expand-down: valid 0x1000..0xFFFFFFFF
    fault("movl %eax, %es:(%ebx)", 13, bits=32, st=st, bus=bus)
    st.gprs[RBX] = 0x2000
    _, _, s = run("movl %eax, %es:(%ebx)", bits=32, st=st, bus=bus)
    assert s.accesses[0][1] == 0xA000
    st.segs[FS] = Seg(0x28, 0, 0xFFFFFFFF, type=1, d=1)  # read-only data
    run("movl %fs:(%ebx), %eax", bits=32, st=st, bus=bus)
    fault("movl %eax, %fs:(%ebx)", 13, bits=32, st=st, bus=bus)
    st.segs[GS] = Seg(0, 0, 0xFFFFFFFF, p=0)  # unusable (null)
    fault("movl %gs:(%ebx), %eax", 13, bits=32, st=st, bus=bus)


def test_32bit_linear_address_wraps():
    st, bus = machine(32, rbx=0x2000)
    st.segs[DS].base = 0xFFFF_F000
    _, _, s = run("movl %eax, (%ebx)", bits=32, st=st, bus=bus)
    assert s.accesses[0][1] == 0x1000
    st.gprs[RBX] = 0xFFFF_FFFE  # offset + 3 beyond the 4 GiB limit
    fault("movl %eax, (%ebx)", 13, bits=32, st=st, bus=bus)


@pytest.mark.parametrize("src,regs,addr", [
    ("movw %dx, (%bx,%si)", dict(rbx=0x10, rsi=0x20), 0x30030),
    ("movw %dx, 0x10(%bp,%di)", dict(rbp=0x100, rdi=0x1), 0x40111),      # BP: SS
    ("movb %dl, -2(%bp,%di)", dict(rbp=0x0, rdi=0x1), 0x40000 + 0xFFFF),  # wraps in 64 KiB
    ("movb %dl, 0x1234", dict(), 0x31234),                                 # disp16 only
    ("movb %dl, %es:(%bx)", dict(rbx=0xFFFF_0004), 0x50004),              # upper bits ignored
    ("movb %dl, (%ebx)", dict(rbx=0x8000), 0x38000),                      # 0x67: 32-bit addressing
    ("movl %edx, -4(%bx,%si)", dict(rbx=0x8, rsi=0x8), 0x3000C),          # 0x66: 32-bit operand
])
def test_16bit_addressing(src, regs, addr):
    st, bus = machine(16, mmio=0xA0000, rdx=0x11223344, **regs)
    st.segs[DS].base, st.segs[SS].base, st.segs[ES].base = 0x30000, 0x40000, 0x50000
    _, _, s = run(src, bits=16, st=st, bus=bus)
    assert s.accesses[0][1] == addr


def test_16bit_limit_and_stack():
    st, bus = machine(16, rbx=0xFFFF)
    fault("movw %ax, (%ebx)", 13, bits=16, st=st, bus=bus)  # crosses the 64 KiB limit
    st, bus = machine(16, rsp=0xFFFF_0002, rbx=0x10)
    st.segs[SS].base = 0x8000
    run("pushw (%bx)", bits=16, st=st, bus=bus)
    assert st.gprs[RSP] == 0xFFFF_0000  # 16-bit stack: only SP changes


# ---------------------------------------------------------------------------------------
# String instructions
# ---------------------------------------------------------------------------------------
def test_rep_movsb_forward_and_backward():
    st, bus = machine(rsi=0x2000, rdi=0x3000, rcx=4)
    bus.put(0x2000, b"abcd")
    _, _, s = run("rep movsb", st=st, bus=bus)
    assert bus.get(0x3000, 4) == b"abcd" and s.iterations == 4
    assert (st.gprs[RCX], st.gprs[RSI], st.gprs[RDI]) == (0, 0x2004, 0x3004)
    st, bus = machine(rsi=0x2006, rdi=0x3006, rcx=3, rflags=0x2 | DF)
    bus.put(0x2000, b"ABCDEFGH")
    run("rep movsw", st=st, bus=bus)
    assert bus.get(0x3002, 6) == b"CDEFGH"
    assert (st.gprs[RCX], st.gprs[RSI], st.gprs[RDI]) == (0, 0x2000, 0x3000)


def test_rep_count_masking_and_zero():
    st, bus, s = run("rep stosb", rcx=0, rdi=0x3000, rax=0x41)
    assert s.accesses == [] and s.iterations == 0 and s.complete
    # 32-bit address size in 64-bit mode: ECX counts, RSI/RDI/RCX are written as 32-bit registers
    st, bus = machine(rcx=0xFFFF_FFFF_0000_0002, rdi=0xAAAA_0000_0000_3000, rax=0x41)
    _, _, s = run("addr32 rep stosb", st=st, bus=bus)
    assert s.iterations == 2 and bus.get(0x3000, 3) == b"AA\0"
    assert st.gprs[RCX] == 0 and st.gprs[RDI] == 0x3002
    # 16-bit: CX counts, upper halves kept
    st, bus = machine(16, rcx=0xABCD_0001, rdi=0x1234_0100, rax=0x42)
    run("rep stosb", bits=16, st=st, bus=bus)
    assert st.gprs[RCX] == 0xABCD_0000 and st.gprs[RDI] == 0x1234_0101 and bus.get(0x100, 1) == b"B"


def test_rep_max_reps_leaves_rip():
    st, bus = machine(rcx=10, rdi=MMIO, rax=0x5A)
    s = EMU.step(st, bus, code("rep stosb"), max_reps=4)
    assert not s.complete and s.iterations == 4 and st.gprs[RIP] == 0x1000
    assert st.gprs[RCX] == 6 and st.gprs[RDI] == MMIO + 4
    assert [a[1] for a in s.accesses] == [MMIO, MMIO + 1, MMIO + 2, MMIO + 3]
    s = EMU.step(st, bus, code("rep stosb"), max_reps=100)
    assert s.complete and s.iterations == 6 and st.gprs[RIP] == 0x1002 and st.gprs[RCX] == 0
    assert bus.mmio[:11] == b"Z" * 10 + b"\0"


def test_repe_cmps_and_repne_scas():
    st, bus = machine(rsi=0x2000, rdi=0x3000, rcx=8)
    bus.put(0x2000, b"abcdefgh")
    bus.put(0x3000, b"abcXefgh")
    _, _, s = run("repe cmpsb", st=st, bus=bus)
    assert s.iterations == 4 and st.gprs[RCX] == 4 and st.gprs[RSI] == 0x2004
    assert not st.gprs[RFLAGS] & ZF and st.gprs[RFLAGS] & CF == 0  # 'd' > 'X'
    st, bus = machine(rdi=0x3000, rcx=100, rax=ord("f"))
    bus.put(0x3000, b"abcdefgh")
    _, _, s = run("repne scasb", st=st, bus=bus)
    assert s.iterations == 6 and st.gprs[RDI] == 0x3006 and st.gprs[RFLAGS] & ZF
    assert st.gprs[RCX] == 94 and s.complete


def test_lods_and_segment_override_on_source():
    st, bus = machine(rsi=0x10, rax=0xFFFF_FFFF_FFFF_FFFF)
    st.segs[FS].base = 0x4000
    bus.put(0x4010, b"\x78\x56\x34\x12")
    run("lodsl %fs:(%rsi), %eax", st=st, bus=bus)
    assert st.gprs[RAX] == 0x12345678 and st.gprs[RSI] == 0x14
    st, bus = machine(32, rsi=0x10, rdi=0x20, rcx=2)
    st.segs[FS] = Seg(0x18, 0x4000, 0xFFFF, type=3, d=1)
    st.segs[ES] = Seg(0x20, 0x6000, 0xFFFF, type=3, d=1)
    bus.put(0x4010, b"xy")
    _, _, s = run("rep movsb %fs:(%esi), %es:(%edi)", bits=32, st=st, bus=bus)
    assert bus.get(0x6020, 2) == b"xy" and [a[1] for a in s.accesses] == [0x4010, 0x6020, 0x4011, 0x6021]


def test_string_fault_midway_keeps_progress():
    st, bus = machine(paging=True, rcx=3, rdi=0x5FFF, rax=0x41)
    build_page_tables(bus, remap={0x6000: None})
    e = fault("rep stosb", 14, st=st, bus=bus)
    assert e.cr2 == 0x6000 and e.error_code == 2  # write, not present
    assert st.gprs[RCX] == 2 and st.gprs[RDI] == 0x6000 and bus.get(0x5FFF, 1) == b"A"


# ---------------------------------------------------------------------------------------
# Port I/O
# ---------------------------------------------------------------------------------------
def test_in_out():
    st, bus = machine(rax=0xFFFF_FFFF_FFFF_FFFF, rdx=0xABCD_03F8)
    bus.inputs[0x60] = bytearray(b"\x12\x34\x56\x78")
    _, _, s = run("inb $0x60, %al", st=st, bus=bus)
    assert st.gprs[RAX] == 0xFFFF_FFFF_FFFF_FF12 and s.accesses == [("io", 0x60, 1, False, b"\x12")]
    run("inw $0x60, %ax", st=st, bus=bus)
    assert st.gprs[RAX] == 0xFFFF_FFFF_FFFF_5634
    bus.inputs[0x3F8] = bytearray(b"\x01\x02\x03\x04")
    run("inl (%dx), %eax", st=st, bus=bus)
    assert st.gprs[RAX] == 0x04030201  # zero-extends
    run("outb %al, $0x80", st=st, bus=bus)
    _, _, s = run("outl %eax, (%dx)", st=st, bus=bus)
    assert bus.outputs == {0x80: bytearray(b"\x01"), 0x3F8: bytearray(b"\x01\x02\x03\x04")}
    assert s.accesses == [("io", 0x3F8, 4, True, b"\x01\x02\x03\x04")]


def test_rep_ins_outs():
    st, bus = machine(16, rdx=0x123, rdi=0x100, rcx=5)
    st.segs[ES].base = 0x20000
    bus.inputs[0x123] = bytearray(b"12345")
    run("rep insb", bits=16, st=st, bus=bus)
    assert bus.get(0x20100, 5) == b"12345" and st.gprs[RDI] == 0x105 and st.gprs[RCX] == 0
    st.gprs[RSI], st.gprs[RCX] = 0x100, 2
    st.segs[DS].base = 0x20000
    _, _, s = run("rep outsw", bits=16, st=st, bus=bus)
    assert bus.outputs[0x123] == b"1234" and st.gprs[RSI] == 0x104
    assert [a[0] for a in s.accesses] == ["mem", "io", "mem", "io"]


# ---------------------------------------------------------------------------------------
# SSE / AVX moves
# ---------------------------------------------------------------------------------------
X = bytes(range(0x10, 0x20))


def sse_machine(**regs):
    st, bus = machine(**regs)
    for i in range(16):
        st.set_xmm(i, bytes([0xEE]) * 16)
    bus.put(0x2000, X)
    return st, bus


@pytest.mark.parametrize("src,xmm,expect", [
    ("movdqa (%rbx), %xmm1", 1, X), ("movdqu 1(%rbx), %xmm9", 9, bytes(range(0x11, 0x20)) + b"\0"),
    ("movaps (%rbx), %xmm2", 2, X), ("movups (%rbx), %xmm3", 3, X), ("movapd (%rbx), %xmm4", 4, X),
    ("movupd (%rbx), %xmm5", 5, X), ("lddqu (%rbx), %xmm6", 6, X), ("movntdqa (%rbx), %xmm7", 7, X),
    ("movd (%rbx), %xmm1", 1, X[:4] + bytes(12)), ("movq (%rbx), %xmm15", 15, X[:8] + bytes(8)),
    ("movss (%rbx), %xmm1", 1, X[:4] + bytes(12)), ("movsd (%rbx), %xmm1", 1, X[:8] + bytes(8)),
    ("movlps (%rbx), %xmm1", 1, X[:8] + b"\xEE" * 8), ("movhpd (%rbx), %xmm1", 1, b"\xEE" * 8 + X[:8]),
    ("vmovdqu (%rbx), %xmm12", 12, X), ("vmovss (%rbx), %xmm1", 1, X[:4] + bytes(12)),
    ("vmovq (%rbx), %xmm1", 1, X[:8] + bytes(8)),
])
def test_sse_loads(src, xmm, expect):
    st, bus = sse_machine(rbx=0x2000)
    run(src, st=st, bus=bus)
    assert st.xmm(xmm) == expect


@pytest.mark.parametrize("src,expect", [
    ("movdqa %xmm1, (%rbx)", X), ("movups %xmm1, (%rbx)", X), ("movntdq %xmm1, (%rbx)", X),
    ("movd %xmm1, (%rbx)", X[:4]), ("movq %xmm1, (%rbx)", X[:8]), ("movss %xmm1, (%rbx)", X[:4]),
    ("movsd %xmm1, (%rbx)", X[:8]), ("movhps %xmm1, (%rbx)", X[8:]), ("vmovdqa %xmm1, (%rbx)", X),
    ("vmovhpd %xmm1, (%rbx)", X[8:]),
])
def test_sse_stores(src, expect):
    st, bus = machine(rbx=MMIO)
    st.set_xmm(1, X)
    _, _, s = run(src, st=st, bus=bus)
    assert bus.log == [("w", 0, expect)]


def test_sse_alignment_and_availability():
    st, bus = sse_machine(rbx=0x2008)
    e = fault("movdqa (%rbx), %xmm1", 13, st=st, bus=bus)
    assert e.error_code == 0
    fault("movaps %xmm1, (%rbx)", 13, st=st, bus=bus)
    fault("vmovdqa (%rbx), %xmm1", 13, st=st, bus=bus)
    run("movdqu (%rbx), %xmm1", st=st, bus=bus)
    st.crs[0] |= CR0_TS
    fault("movdqu (%rbx), %xmm1", 7, st=st, bus=bus)
    st.crs[0] &= ~CR0_TS
    st.crs[3] &= ~CR4_OSFXSR
    fault("movdqu (%rbx), %xmm1", 6, st=st, bus=bus)


def test_vex256_and_mmx_refused():
    st, bus = machine(rbx=0x2000)
    with pytest.raises(EmulationError) as ei:
        EMU.step(st, bus, code("vmovdqu (%rbx), %ymm1"))
    assert ei.value.mnemonic == "vmovdqu" and "256-bit" in str(ei.value) and "YMM" in str(ei.value)
    assert "'vmovdqu' (c5 fe 6f 0b)" in str(ei.value)
    with pytest.raises(EmulationError, match="MMX"):
        EMU.step(st, bus, code("movq (%rbx), %mm1"))
    assert st.gprs[RIP] == 0x1000


def test_sse_in_16bit_mode():
    st, bus = machine(16, rbx=0x100)
    bus.put(0x100, X)
    run("movdqa (%bx), %xmm2", bits=16, st=st, bus=bus)
    assert st.xmm(2) == X
    _, _, s = run("movq %xmm2, 0x200(%bx)", bits=16, st=st, bus=bus)
    assert bus.get(0x300, 8) == X[:8] and s.length == 6


# ---------------------------------------------------------------------------------------
# Paging, page crossing, faults, fetch
# ---------------------------------------------------------------------------------------
def test_page_crossing_access_splits():
    st, bus = machine(paging=True, rbx=0x5FFC, rax=0x1122334455667788)
    build_page_tables(bus, remap={0x6000: 0x9000})
    _, _, s = run("movq %rax, (%rbx)", st=st, bus=bus)
    assert s.accesses == [("mem", 0x5FFC, 4, True, bytes.fromhex("88776655")),
                          ("mem", 0x9000, 4, True, bytes.fromhex("44332211"))]
    _, _, s = run("movq (%rbx), %rcx", st=st, bus=bus)
    assert st.gprs[RCX] == 0x1122334455667788 and len(s.accesses) == 2


def test_page_fault():
    st, bus = machine(paging=True, rbx=0x5FFC, rax=1)
    build_page_tables(bus, remap={0x6000: None})
    e = fault("movq %rax, (%rbx)", 14, st=st, bus=bus)
    assert (e.error_code, e.cr2) == (2, 0x6000)
    assert bus.get(0x5FFC, 4) == bytes(4)  # nothing written when a later page faults
    e = fault("movl 4(%rbx), %eax", 14, st=st, bus=bus)
    assert (e.error_code, e.cr2) == (0, 0x6000)
    # user-mode write to a supervisor page
    build_page_tables(bus, user=False)
    st.segs[SS].attrib.dpl = st.segs[CS].attrib.dpl = 3
    e = fault("movl %eax, (%rbx)", 14, st=st, bus=bus)
    assert e.error_code == (1 | 2 | 4)


def test_fetch_through_page_walk():
    st, bus = machine(paging=True, rax=7, rbx=0x3000)
    build_page_tables(bus, remap={0x1000: 0x8000})
    bus.put(0x8000, code("movl %eax, (%rbx)"))
    s = EMU.step(st, bus)
    assert s.mnemonic == "mov" and bus.get(0x3000, 4) == b"\x07\0\0\0" and st.gprs[RIP] == 0x1002


def test_fetch_stops_at_unmapped_page_when_instruction_fits():
    st, bus = machine(paging=True, rax=7, rbx=0x3000)
    build_page_tables(bus, remap={0x2000: None})
    c = code("movl %eax, (%rbx)")
    st.gprs[RIP] = 0x2000 - len(c)
    bus.put(0x2000 - len(c), c)
    EMU.step(st, bus)
    assert bus.get(0x3000, 4) == b"\x07\0\0\0"
    c = code("movl $0x12345678, (%rbx)")
    st.gprs[RIP] = 0x2000 - 3
    bus.put(0x2000 - 3, c[:3])
    with pytest.raises(GuestFault) as ei:
        EMU.step(st, bus)
    assert ei.value.vector == 14 and ei.value.cr2 == 0x2000 and ei.value.error_code & 0x10 == 0


def test_fetch_real_mode_and_cs_limit():
    st, bus = machine(16, rax=0x4142, rbx=0x10)
    st.segs[CS].base = 0x10000
    st.gprs[RIP] = 0x20
    bus.put(0x10020, code("movw %ax, (%bx)", 16))
    EMU.step(st, bus)
    assert bus.get(0x10, 2) == b"BA" and st.gprs[RIP] == 0x22
    st, bus = machine(32, rbx=0x10)
    st.segs[CS].limit = 0x1001
    bus.put(0x1000, code("movl $1, (%ebx)", 32))
    with pytest.raises(GuestFault) as ei:
        EMU.step(st, bus)
    assert ei.value.vector == 13


# ---------------------------------------------------------------------------------------
# Refusals and errors
# ---------------------------------------------------------------------------------------
def test_error_message_for_unsupported_instruction():
    st, bus = machine()
    st.gprs[RIP] = 0x1234
    with pytest.raises(EmulationError) as ei:
        EMU.step(st, bus, b"\xd9\xfa")
    e = ei.value
    assert str(e) == "cannot emulate 'fsqrt' (d9 fa) at rip 0x1234: not a memory-access instruction"
    assert (e.mnemonic, e.insn_bytes, e.rip) == ("fsqrt", b"\xd9\xfa", 0x1234)
    with pytest.raises(EmulationError, match=r"cannot emulate 'imul' \(0f af 03\) at rip 0x1234: instruction not supported"):
        EMU.step(st, bus, b"\x0f\xaf\x03")
    with pytest.raises(EmulationError, match="not a memory-access instruction"):
        EMU.step(st, bus, b"\x0f\x0b")  # ud2
    bus.put(0x1234, b"\x0f\x04" + bytes(13))  # (fetched from RAM: the bytes given do not decode)
    with pytest.raises(EmulationError) as ei:
        EMU.step(st, bus, b"\x0f\x04")
    assert ei.value.mnemonic is None and "do not decode" in str(ei.value)
    assert ei.value.insn_bytes.startswith(b"\x0f\x04")
    assert st.gprs[RIP] == 0x1234


def test_truncated_bytes_fall_back_to_fetch_and_rf_clears():
    st, bus = machine(rax=0x11, rbx=0x3000, rflags=0x2 | (1 << 16))
    c = code("movl $0x12345678, 0x10(%rbx)")
    bus.put(0x1000, c)
    s = EMU.step(st, bus, c[:3])  # an exit that carried only part of the instruction
    assert s.length == len(c) and bus.get(0x3010, 4) == bytes.fromhex("78563412")
    assert st.gprs[RFLAGS] == 0x2  # RF is cleared once the instruction completes


def test_package_exports_and_step_repr():
    from nvmmpy import emulator
    assert emulator.Emulator is Emulator and emulator.GuestFault is GuestFault
    _, _, s = run("movw %ax, (%rbx)", rax=0x1234, rbx=0x2000)
    assert repr(s) == "Step('mov', len=3, [mem W 0x2000/2 3412])"


# ---------------------------------------------------------------------------------------
# The real cffi state, caching, speed
# ---------------------------------------------------------------------------------------
def cffi_state():
    nvmm_state = pytest.importorskip("nvmmpy.state")
    st = nvmm_state.new_state()
    for i in range(6):
        s = st.segs[i]
        s.limit, s.attrib.p, s.attrib.s, s.attrib.type, s.attrib.g = 0xFFFFFFFF, 1, 1, 3, 1
    st.segs[CS].attrib.type, st.segs[CS].attrib.l = 11, 1
    st.msrs[0] = EFER_LME | EFER_LMA
    st.crs[0] = CR0_PE | CR0_PG | 0x10
    st.crs[3] = CR4_PAE | CR4_OSFXSR
    st.crs[2] = 0x70000
    st.gprs[RFLAGS] = 2
    st.gprs[RIP] = 0x1000
    return st


def test_cffi_state():
    st = cffi_state()
    bus = Bus()
    build_page_tables(bus)
    st.gprs[RBX], st.gprs[RAX] = 0x2000, 0xFFFF_FFFF_0000_0005
    bus.put(0x2000, X)
    EMU.step(st, bus, code("addl (%rbx), %eax"))
    assert st.gprs[RAX] == 0x13121115 and st.gprs[RIP] == 0x1002
    EMU.step(st, bus, code("movdqu (%rbx), %xmm3"))
    assert bytes(st.fpu.fx_xmm[3].xmm_bytes) == X
    EMU.step(st, bus, code("movd %xmm3, 0x10(%rbx)"))
    assert bus.get(0x2010, 4) == X[:4]


def test_decode_cache():
    emu = Emulator(cache_size=2)
    c1, c2, c3 = code("movl %eax, (%rbx)"), code("movl %ecx, (%rbx)"), code("movl %edx, (%rbx)")
    d1 = emu.decode(64, c1)
    assert emu.decode(64, c1) is d1
    emu.decode(64, c2)
    emu.decode(64, c3)
    assert len(emu._cache) == 2 and emu.decode(64, c1) is not d1
    assert emu.decode(32, c1) is not emu.decode(64, c1)


def test_cached_mov_step_time():
    st = cffi_state()
    bus = Bus()
    build_page_tables(bus)
    st.gprs[RBX] = 0x2000
    c = code("movl %eax, 0x10(%rbx)")

    def one():
        st.gprs[RIP] = 0x1000
        EMU.step(st, bus, c)

    one()
    n = 2000
    t = min(timeit.repeat(one, number=n, repeat=5)) / n
    print(f"cached MOV step (cffi state, 4-level paging): {t * 1e6:.1f} us")
    assert t < 20e-6
