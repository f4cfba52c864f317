"""Capstone -> a compact, cached description of one instruction (``Decoded``).

Capstone is asked once per distinct (mode, bytes); what the step needs afterwards is kept
in a slotted object: the handler, operand size, a closure computing the effective address
from the GPRs, the segment, the register operand as (index, shift, mask, size), the
immediate, and so on.  Nothing from capstone's detail objects is kept.

Displacements and immediates (sign-extended by capstone) are masked to the address /
operand size, as the CPU does.
"""
import capstone
from capstone import x86_const as x86

from . import ops, sse
from .access import DS, SS_
from .alu import BINOPS, MASK

MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}

OP_REG, OP_IMM, OP_MEM = x86.X86_OP_REG, x86.X86_OP_IMM, x86.X86_OP_MEM


def _reg_id(name):
    return getattr(x86, "X86_REG_" + name.upper())


def _build_regs():
    regs = {}
    n64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{i}" for i in range(8, 16)]
    n32 = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"] + [f"r{i}d" for i in range(8, 16)]
    n16 = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"] + [f"r{i}w" for i in range(8, 16)]
    n8 = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"] + [f"r{i}b" for i in range(8, 16)]
    for i in range(16):
        regs[_reg_id(n64[i])] = (i, 0, MASK[8], 8)
        regs[_reg_id(n32[i])] = (i, 0, MASK[4], 4)
        regs[_reg_id(n16[i])] = (i, 0, MASK[2], 2)
        regs[_reg_id(n8[i])] = (i, 0, MASK[1], 1)
    for i, name in enumerate(["ah", "ch", "dh", "bh"]):
        regs[_reg_id(name)] = (i, 8, 0xFF, 1)
    return regs


GPR = _build_regs()
XMM = {_reg_id(f"xmm{i}"): i for i in range(16)}
YMM = {_reg_id(f"ymm{i}") for i in range(16)}
MMX = {_reg_id(f"mm{i}") for i in range(8)}
NOINDEX = {0, x86.X86_REG_RIZ, x86.X86_REG_EIZ}
RIPREL = {x86.X86_REG_RIP, x86.X86_REG_EIP}
SEGPFX = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
LEGACY_PFX = {0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}

STRING_OPS = {0xA4: "movs", 0xA5: "movs", 0xA6: "cmps", 0xA7: "cmps", 0xAA: "stos", 0xAB: "stos",
              0xAC: "lods", 0xAD: "lods", 0xAE: "scas", 0xAF: "scas", 0x6C: "ins", 0x6D: "ins",
              0x6E: "outs", 0x6F: "outs"}
UNARY = {"inc", "dec", "neg", "not"}
BITOPS = {"bt", "bts", "btr", "btc"}
LOCKABLE = {"add", "adc", "and", "btc", "btr", "bts", "cmpxchg", "cmpxchg8b", "cmpxchg16b", "dec",
            "inc", "neg", "not", "or", "sbb", "sub", "xor", "xadd", "xchg"}


class Decoded:
    __slots__ = ("mnemonic", "length", "raw", "run", "why", "size", "msize", "ea", "seg", "amask",
                 "asize", "reg", "imm", "fn", "wb", "op", "cc", "rep", "ext", "xmm", "xoff",
                 "align", "vex")

    def __init__(self, mnemonic, length, raw, run, why=""):
        self.mnemonic = mnemonic
        self.length = length
        self.raw = raw
        self.run = run
        self.why = why
        self.size = self.msize = 0
        self.ea = None
        self.seg = DS
        self.amask = self.asize = 0
        self.reg = self.imm = self.fn = self.op = self.cc = None
        self.wb = False
        self.rep = 0
        self.ext = False
        self.xmm = 0
        self.xoff = -1
        self.align = 0
        self.vex = False

    def __repr__(self):
        return f"<Decoded {self.mnemonic} len={self.length} run={self.run.__name__}>"


class Refuse(Exception):
    """Raised inside decoding: the instruction decodes but is not one we emulate."""


def make_ea(base, index, scale, disp, am, riprel):
    """Closure (gprs, next_rip) -> effective address, masked to the address size."""
    if riprel:
        return lambda g, nrip: (nrip + disp) & am
    if base >= 0:
        if index >= 0:
            return lambda g, nrip: (g[base] + g[index] * scale + disp) & am
        if disp:
            return lambda g, nrip: (g[base] + disp) & am
        return lambda g, nrip: g[base] & am
    if index >= 0:
        return lambda g, nrip: (g[index] * scale + disp) & am
    disp &= am
    return lambda g, nrip: disp


def _imm(i, raw, o):
    return o.imm


def _toggle_addr16(code):
    """``code`` with its address-size prefix toggled (0x67 removed from, or added to, the
    legacy prefixes), and the change in length."""
    code = bytes(code[:15])
    p = 0
    while p < len(code) and code[p] in LEGACY_PFX:
        p += 1
    pfx = code[:p]
    if 0x67 in pfx:
        kept = bytes(b for b in pfx if b != 0x67)
        return kept + code[p:], len(kept) - p
    return b"\x67" + code, 1


def _sse16(md32, code):
    """Capstone 5 (16-bit mode) takes a mandatory 0x66 prefix for an operand-size toggle:
    66 0F 6F decodes as MMX MOVQ instead of MOVDQA, 66 0F D6 not at all. The CPU does not
    care about the mode here, so decode such an instruction as 32-bit code with the
    address size toggled (16-bit addressing stays 16-bit). Returns (insn, delta) or None."""
    p = 0
    while p < len(code) and code[p] in LEGACY_PFX:
        p += 1
    if 0x66 not in code[:p] or p >= len(code) or code[p] != 0x0F:
        return None
    alt, delta = _toggle_addr16(code)
    insn = next(md32.disasm(alt, 0, 1), None)
    if insn is None or insn.insn_name() not in sse.TABLE:
        return None
    return insn, delta


def _undecodable(md, code):
    """Capstone rejects LOCK on an instruction that does not allow it; the CPU raises #UD."""
    p = 0
    while p < len(code) and code[p] in LEGACY_PFX:
        p += 1
    if 0xF0 in code[:p]:
        kept = bytes(b for b in code[:p] if b != 0xF0)
        insn = next(md.disasm(kept + bytes(code[p:]), 0, 1), None)
        if insn is not None:
            n = insn.size + p - len(kept)
            return Decoded("lock " + insn.mnemonic, n, bytes(code[:n]), ops.h_ud,
                           "LOCK prefix on an instruction that does not allow it (#UD)")
    return Decoded(None, 0, bytes(code[:15]), ops.h_fail, "bytes do not decode as an x86 instruction")


def decode(md, mode, code, md32=None):
    """Decode the first instruction of ``code`` in ``mode`` (16/32/64) -> Decoded.
    ``md32``: a 32-bit capstone handle, used for SSE forms in 16-bit mode (see _sse16)."""
    insn = None
    length = 0
    if mode == 16 and md32 is not None:
        alt = _sse16(md32, code)
        if alt is not None:
            insn, delta = alt
            length = insn.size - delta
            mode = 32
    if insn is None:
        insn = next(md.disasm(code, 0, 1), None)
        if insn is None:
            return _undecodable(md, code)
        length = insn.size
    raw = bytes(insn.bytes)
    d = Decoded(insn.mnemonic, length, bytes(code[:length]), None)
    try:
        _fill(d, insn, raw, mode)
    except Refuse as e:
        d.run = ops.h_fail
        d.why = str(e)
    return d


def _mem(d, insn, raw, o, seg_override):
    m = o.mem
    am = MASK[insn.addr_size]
    d.amask = am
    d.asize = insn.addr_size
    disp = m.disp  # (capstone 5's disp_size is wrong under a 0x66 prefix; the value is right)
    riprel = m.base in RIPREL
    base = -1
    if m.base and not riprel:
        if m.base not in GPR:
            raise Refuse(f"unexpected base register {insn.reg_name(m.base)}")
        base = GPR[m.base][0]
    index = -1
    if m.index not in NOINDEX:
        if m.index not in GPR:
            raise Refuse("vector-indexed (VSIB) memory operand")
        index = GPR[m.index][0]
    if seg_override is not None:
        d.seg = seg_override
    else:
        d.seg = SS_ if base in (4, 5) else DS
    d.ea = make_ea(base, index, m.scale, disp, am, riprel)


def _gpr(insn, o):
    if o.type != OP_REG or o.reg not in GPR:
        raise Refuse(f"operand {insn.reg_name(o.reg) if o.type == OP_REG else ''} is not a general register")
    return GPR[o.reg]


def _source(d, insn, raw, o, mask):
    """The register or immediate source operand `o` of a memory-destination instruction."""
    if o.type == OP_IMM:
        d.imm = _imm(insn, raw, o) & mask
    else:
        d.reg = _gpr(insn, o)


def _fill(d, insn, raw, mode):
    """Fill `d` (handler and operands) for `insn`, or raise Refuse: each step below claims the
    instruction forms it knows, in the order the checks must run."""
    name = insn.insn_name()
    operands = insn.operands
    mems = [o for o in operands if o.type == OP_MEM]
    vex = _vex_form(name, raw, mode)
    if insn.prefix[0] == 0xF0 and not _lock_allowed(name, operands, mems):
        d.run = ops.h_ud
        d.why = "LOCK prefix on an instruction that does not allow it (#UD)"
        return
    if _fill_port_io(d, insn, raw, name, operands):
        return
    if _fill_string(d, insn, mems, vex):
        return
    mo = _memory_operand(operands, mems)
    _mem(d, insn, raw, mo, SEGPFX.get(insn.prefix[1]))
    memfirst = operands[0].type == OP_MEM
    d.size = mo.size
    if _fill_move(d, insn, raw, name, operands, memfirst, mo) or _fill_alu(d, insn, raw, name, operands, memfirst):
        return
    if _fill_sse(d, name, vex, operands, memfirst):
        return
    raise Refuse("instruction not supported by the emulator")


def _vex_form(name, raw, mode) -> bool:
    """Is this a VEX-encoded (C4/C5 lead byte after legacy prefixes and REX) instruction?
    EVEX (62) forms are refused."""
    p = 0
    while p < len(raw) and raw[p] in LEGACY_PFX:
        p += 1
    if mode == 64 and p < len(raw) and 0x40 <= raw[p] <= 0x4F:
        p += 1
    lead = raw[p] if p < len(raw) else 0
    if lead == 0x62 and name.startswith("v"):
        raise Refuse("EVEX-encoded (AVX-512) form is not supported")
    return lead in (0xC4, 0xC5) and name.startswith("v")


def _lock_allowed(name, operands, mems) -> bool:
    return name in LOCKABLE and bool(mems) and operands[0].type == OP_MEM


def _fill_port_io(d, insn, raw, name, operands) -> bool:
    """IN/OUT (no memory operand)."""
    opc = insn.opcode
    if name not in ("in", "out") or opc[0] not in (0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF):
        return False
    d.size = operands[0 if name == "in" else 1].size
    d.imm = (_imm(insn, raw, operands[1 if name == "in" else 0]) & 0xFF) if opc[0] < 0xEC else None
    d.run = ops.h_in if name == "in" else ops.h_out
    return True


def _fill_string(d, insn, mems, vex) -> bool:
    """MOVS/CMPS/STOS/LODS/SCAS/INS/OUTS, with their REP prefixes."""
    opc = insn.opcode
    if opc[0] not in STRING_OPS or opc[0] == 0x0F or not mems or vex:
        return False
    pfx = insn.prefix
    seg_override = SEGPFX.get(pfx[1])
    d.op = STRING_OPS[opc[0]]
    d.size = 1 if opc[0] & 1 == 0 else mems[0].size
    d.amask = MASK[insn.addr_size]
    d.asize = insn.addr_size
    d.seg = DS if seg_override is None else seg_override
    if pfx[0] == 0xF3:
        d.rep = ops.REPE
    elif pfx[0] == 0xF2:
        d.rep = ops.REPNE
    d.run = ops.h_string
    return True


def _memory_operand(operands, mems):
    """The one memory operand of a non-string instruction; register operands the state can carry."""
    if not mems:
        raise Refuse("not a memory-access instruction")
    if len(mems) != 1:
        raise Refuse("instruction with two memory operands")
    mo = mems[0]
    for o in operands:
        if o.type == OP_REG:
            if o.reg in YMM or o.size == 32 or mo.size == 32:
                raise Refuse("256-bit VEX form needs the upper YMM halves, which the state does not carry")
            if o.reg in MMX:
                raise Refuse("MMX register operand (x87/MMX register state is not emulated)")
    return mo


def _fill_move(d, insn, raw, name, operands, memfirst, mo) -> bool:
    """MOV and its byte-swapping and extending forms."""
    if name in ("mov", "movabs", "movnti"):
        if memfirst:
            _source(d, insn, raw, operands[1], MASK[d.size])
            d.run = ops.h_store
        else:
            d.reg = _gpr(insn, operands[0])
            d.msize = mo.size
            d.run = ops.h_load
        return True
    if name == "movbe":
        d.reg = _gpr(insn, operands[1] if memfirst else operands[0])
        d.run = ops.h_store_be if memfirst else ops.h_load_be
        return True
    if name in ("movzx", "movsx", "movsxd"):
        d.reg = _gpr(insn, operands[0])
        d.msize = mo.size
        d.ext = name != "movzx"
        d.run = ops.h_load
        return True
    return False


def _fill_alu(d, insn, raw, name, operands, memfirst) -> bool:
    """Integer read-modify-write, exchange, bit, conditional and stack instructions."""
    opc = insn.opcode
    if name in BINOPS:
        d.fn, d.wb = BINOPS[name]
        if memfirst:
            _source(d, insn, raw, operands[1], MASK[d.size])
            d.run = ops.h_alu_m
        else:
            d.reg = _gpr(insn, operands[0])
            d.run = ops.h_alu_r
    elif name in UNARY:
        d.op = name
        d.run = ops.h_unary
    elif name == "xchg":
        d.reg = _gpr(insn, operands[1] if memfirst else operands[0])
        d.run = ops.h_xchg
    elif name in ("xadd", "cmpxchg"):
        d.reg = _gpr(insn, operands[1])
        d.run = ops.h_xadd if name == "xadd" else ops.h_cmpxchg
    elif name in ("cmpxchg8b", "cmpxchg16b"):
        d.size = 8 if name == "cmpxchg8b" else 16
        d.run = ops.h_cmpxchg8b
    elif name in BITOPS:
        d.op = name
        _source(d, insn, raw, operands[1], 0xFF)
        d.run = ops.h_bt
    elif name.startswith("set") and opc[0] == 0x0F and 0x90 <= opc[1] <= 0x9F:
        d.cc = opc[1] & 0xF
        d.run = ops.h_setcc
    elif name.startswith("cmov") and opc[0] == 0x0F and 0x40 <= opc[1] <= 0x4F:
        d.cc = opc[1] & 0xF
        d.reg = _gpr(insn, operands[0])
        d.run = ops.h_cmov
    elif name == "push" and opc[0] == 0xFF:
        d.run = ops.h_push
    elif name == "pop" and opc[0] == 0x8F:
        d.run = ops.h_pop
    else:
        return False
    return True


def _fill_sse(d, name, vex, operands, memfirst) -> bool:
    """SSE/AVX loads and stores between one XMM register and memory (legacy or VEX-128)."""
    base = name[1:] if vex else name
    if base not in sse.TABLE or (name.startswith("v") and not vex):
        return False
    regs = [o for o in operands if o.type == OP_REG]
    if len(operands) != 2 or len(regs) != 1 or regs[0].reg not in XMM:
        raise Refuse("operand form not supported (expected one XMM register and memory)")
    d.xmm = XMM[regs[0].reg]
    d.vex = vex
    d.align = sse.TABLE[base]
    if d.size not in (4, 8, 16):
        raise Refuse(f"unexpected memory operand size {d.size}")
    if memfirst:
        d.xoff = 8 if sse.MERGE.get(base) == 8 else -1
        d.run = sse.h_store
    else:
        d.xoff = sse.MERGE.get(base, -1)
        d.run = sse.h_load
    return True
