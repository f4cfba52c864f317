"""Semantics of the general-purpose instructions the emulator runs: one handler per form,
``handler(ctx, decoded)``.  Each handler does every memory/port access through ``ctx``,
then updates registers, RFLAGS and RIP; a GuestFault raised on the way leaves the
registers as they were (string instructions: as after the last completed iteration)."""
from .access import ES, M32, SS_, set_areg, rd, wr
from .alu import ARITH, CF, DF, MASK, SIGN, ZF, add, cond, sub
from .arch import GP, UD
from .faults import EmulationError, GuestFault

ACC = {1: (0, 0, 0xFF, 1), 2: (0, 0, 0xFFFF, 2), 4: (0, 0, M32, 4), 8: (0, 0, MASK[8], 8)}
_LOG2 = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4}


def h_fail(c, d):
    raise EmulationError(d.mnemonic, d.raw, c.rip, d.why)


def h_ud(c, d):
    raise GuestFault(UD, None, None, d.why)


# -- moves -------------------------------------------------------------------------------
def h_load(c, d):
    """MOV r, m / MOVZX / MOVSX / MOVSXD / moffs loads."""
    g = c.g
    v = int.from_bytes(c.read(d.seg, d.ea(g, c.nrip), d.msize), "little")
    if d.ext and v & SIGN[d.msize]:
        v -= 1 << (8 * d.msize)
    wr(g, d.reg, v)
    g[16] = c.nrip


def h_store(c, d):
    """MOV m, r / MOV m, imm / MOVNTI / moffs stores."""
    g = c.g
    v = rd(g, d.reg) if d.reg is not None else d.imm
    c.write(d.seg, d.ea(g, c.nrip), v.to_bytes(d.size, "little"))
    g[16] = c.nrip


def h_load_be(c, d):
    """MOVBE r, m: load with the bytes reversed."""
    g = c.g
    wr(g, d.reg, int.from_bytes(c.read(d.seg, d.ea(g, c.nrip), d.size), "big"))
    g[16] = c.nrip


def h_store_be(c, d):
    """MOVBE m, r: store with the bytes reversed."""
    g = c.g
    c.write(d.seg, d.ea(g, c.nrip), rd(g, d.reg).to_bytes(d.size, "big"))
    g[16] = c.nrip


def h_cmov(c, d):
    """CMOVcc r, m: the memory operand is read whatever the condition; a 32-bit
    destination has its upper half cleared even when the condition is false."""
    g = c.g
    v = int.from_bytes(c.read(d.seg, d.ea(g, c.nrip), d.size), "little")
    if cond(d.cc, g[17]):
        wr(g, d.reg, v)
    elif d.size == 4:
        g[d.reg[0]] &= M32
    g[16] = c.nrip


def h_setcc(c, d):
    g = c.g
    c.write(d.seg, d.ea(g, c.nrip), b"\x01" if cond(d.cc, g[17]) else b"\x00")
    g[16] = c.nrip


# -- arithmetic ----------------------------------------------------------------------------
def h_alu_m(c, d):
    """op m, r / op m, imm (group 1 and TEST); memory is the destination."""
    g = c.g
    size = d.size
    b = rd(g, d.reg) if d.reg is not None else d.imm
    ea = d.ea(g, c.nrip)
    if d.wb:
        ps, data = c.rmw(d.seg, ea, size)
    else:
        data = c.read(d.seg, ea, size)
    fl = g[17]
    r, f = d.fn(int.from_bytes(data, "little"), b, fl, size)
    if d.wb:
        c.write_ps(ps, r.to_bytes(size, "little"))
    g[17] = (fl & ~ARITH) | f
    g[16] = c.nrip


def h_alu_r(c, d):
    """op r, m: memory is the source."""
    g = c.g
    size = d.size
    b = int.from_bytes(c.read(d.seg, d.ea(g, c.nrip), size), "little")
    fl = g[17]
    r, f = d.fn(rd(g, d.reg), b, fl, size)
    if d.wb:
        wr(g, d.reg, r)
    g[17] = (fl & ~ARITH) | f
    g[16] = c.nrip


def h_unary(c, d):
    """INC / DEC / NEG / NOT m."""
    g = c.g
    size = d.size
    ps, data = c.rmw(d.seg, d.ea(g, c.nrip), size)
    a = int.from_bytes(data, "little")
    fl = g[17]
    op = d.op
    if op == "not":
        r = ~a & MASK[size]
    elif op == "neg":
        r, f = sub(0, a, 0, size)
        fl = (fl & ~ARITH) | f
    else:
        r, f = add(a, 1, 0, size) if op == "inc" else sub(a, 1, 0, size)
        fl = (fl & ~(ARITH & ~CF)) | (f & ~CF)
    c.write_ps(ps, r.to_bytes(size, "little"))
    g[17] = fl
    g[16] = c.nrip


def h_xchg(c, d):
    g = c.g
    size = d.size
    ps, data = c.rmw(d.seg, d.ea(g, c.nrip), size)
    c.write_ps(ps, rd(g, d.reg).to_bytes(size, "little"))
    wr(g, d.reg, int.from_bytes(data, "little"))
    g[16] = c.nrip


def h_xadd(c, d):
    g = c.g
    size = d.size
    ps, data = c.rmw(d.seg, d.ea(g, c.nrip), size)
    a = int.from_bytes(data, "little")
    r, f = add(a, rd(g, d.reg), 0, size)
    c.write_ps(ps, r.to_bytes(size, "little"))
    wr(g, d.reg, a)
    g[17] = (g[17] & ~ARITH) | f
    g[16] = c.nrip


def h_cmpxchg(c, d):
    """CMPXCHG m, r: flags of CMP accumulator, m. The CPU always writes the destination
    (the old value back when the comparison fails); the accumulator is loaded only on
    failure (Intel SDM), so a 32-bit success keeps RAX's upper half."""
    g = c.g
    size = d.size
    ps, data = c.rmw(d.seg, d.ea(g, c.nrip), size)
    dest = int.from_bytes(data, "little")
    accr = ACC[size]
    r, f = sub(rd(g, accr), dest, 0, size)
    if f & ZF:
        c.write_ps(ps, rd(g, d.reg).to_bytes(size, "little"))
    else:
        c.write_ps(ps, data)
        wr(g, accr, dest)
    g[17] = (g[17] & ~ARITH) | f
    g[16] = c.nrip


def h_cmpxchg8b(c, d):
    """CMPXCHG8B m64 / CMPXCHG16B m128 (16-byte alignment required): only ZF changes."""
    g = c.g
    size = d.size
    half = size // 2
    hm = MASK[half]
    bits = half * 8
    ea = d.ea(g, c.nrip)
    lin = c.linear(d.seg, ea, size, True)
    if size == 16 and lin & 15:
        raise GuestFault(GP, 0, None, f"cmpxchg16b operand {lin:#x} not 16-byte aligned")
    ps = c.pieces(lin, size, 2)
    data = c.read_ps(ps)
    m = int.from_bytes(data, "little")
    if m == ((g[2] & hm) << bits) | (g[0] & hm):
        c.write_ps(ps, (((g[1] & hm) << bits) | (g[3] & hm)).to_bytes(size, "little"))
        g[17] |= ZF
    else:
        c.write_ps(ps, data)
        g[0] = m & hm
        g[2] = m >> bits
        g[17] &= ~ZF
    g[16] = c.nrip


def h_bt(c, d):
    """BT/BTS/BTR/BTC m, r|imm8. With a register bit offset the offset is signed and may
    address memory outside the operand (Intel SDM, "BT"): the operand is read at
    EA + operand_size * floor(offset / operand_bits). Only CF is defined; the other
    status flags are left unchanged (what unicorn does)."""
    g = c.g
    size = d.size
    bits = size * 8
    ea = d.ea(g, c.nrip)
    if d.reg is not None:
        off = rd(g, d.reg)
        if off & SIGN[size]:
            off -= 1 << bits
        ea = (ea + (off >> (3 + _LOG2[size])) * size) & d.amask
        bit = off & (bits - 1)
    else:
        bit = d.imm & (bits - 1)
    op = d.op
    if op == "bt":
        v = int.from_bytes(c.read(d.seg, ea, size), "little")
    else:
        ps, data = c.rmw(d.seg, ea, size)
        v = int.from_bytes(data, "little")
    cf = (v >> bit) & 1
    if op != "bt":
        if op == "bts":
            v |= 1 << bit
        elif op == "btr":
            v &= ~(1 << bit)
        else:
            v ^= 1 << bit
        c.write_ps(ps, v.to_bytes(size, "little"))
    g[17] = (g[17] & ~CF) | cf
    g[16] = c.nrip


# -- stack ---------------------------------------------------------------------------------
def _stack_size(c):
    if c.mode == 64:
        return 8
    return 4 if getattr(c.segs[SS_].attrib, "def") else 2


def h_push(c, d):
    """PUSH m: the source address uses rSP before the decrement."""
    g = c.g
    size = d.size
    data = c.read(d.seg, d.ea(g, c.nrip), size)
    sa = _stack_size(c)
    sp = (g[4] - size) & MASK[sa]
    c.write(SS_, sp, data)
    set_areg(g, 4, sp, sa)
    g[16] = c.nrip


def h_pop(c, d):
    """POP m: a destination address based on rSP uses the incremented rSP."""
    g = c.g
    size = d.size
    sa = _stack_size(c)
    old = g[4]
    sp = old & MASK[sa]
    data = c.read(SS_, sp, size)
    set_areg(g, 4, sp + size, sa)
    try:
        c.write(d.seg, d.ea(g, c.nrip), data)
    except BaseException:
        g[4] = old
        raise
    g[16] = c.nrip


# -- port I/O ------------------------------------------------------------------------------
def h_in(c, d):
    g = c.g
    port = d.imm if d.imm is not None else g[2] & 0xFFFF
    data = c.io_in(port, d.size)
    wr(g, ACC[d.size], int.from_bytes(data, "little"))
    g[16] = c.nrip


def h_out(c, d):
    g = c.g
    port = d.imm if d.imm is not None else g[2] & 0xFFFF
    c.io_out(port, (g[0] & MASK[d.size]).to_bytes(d.size, "little"))
    g[16] = c.nrip


# -- string instructions -----------------------------------------------------------------
REP, REPE, REPNE = 1, 1, 2


def h_string(c, d):
    """MOVS STOS LODS CMPS SCAS INS OUTS, with REP/REPE/REPNE: at most ``max_reps``
    iterations per step; RIP stays on the instruction while iterations remain."""
    g = c.g
    am = d.amask
    size = d.size
    delta = -size if g[17] & DF else size
    rep = d.rep
    if rep:
        cnt = g[1] & am
        if not cnt:
            c.iters = 0
            g[16] = c.nrip
            return
        n = min(cnt, max(1, c.max_reps))
    else:
        cnt = n = 1
    op = d.op
    seg = d.seg
    si = g[6] & am
    di = g[7] & am
    fl = g[17]
    done = 0
    stop = False
    last = None
    try:
        if op == "movs":
            while done < n:
                data = c.read(seg, si, size)
                c.write(ES, di, data)
                si = (si + delta) & am
                di = (di + delta) & am
                done += 1
        elif op == "stos":
            data = (g[0] & MASK[size]).to_bytes(size, "little")
            while done < n:
                c.write(ES, di, data)
                di = (di + delta) & am
                done += 1
        elif op == "lods":
            while done < n:
                last = c.read(seg, si, size)
                si = (si + delta) & am
                done += 1
        elif op == "cmps" or op == "scas":
            a = g[0] & MASK[size]
            while done < n:
                if op == "cmps":
                    a = int.from_bytes(c.read(seg, si, size), "little")
                b = int.from_bytes(c.read(ES, di, size), "little")
                _, f = sub(a, b, 0, size)
                fl = (fl & ~ARITH) | f
                if op == "cmps":
                    si = (si + delta) & am
                di = (di + delta) & am
                done += 1
                if (rep == REPE and not f & ZF) or (rep == REPNE and f & ZF):
                    stop = True
                    break
        elif op == "ins":
            port = g[2] & 0xFFFF
            while done < n:
                lin = c.linear(ES, di, size, True)
                ps = c.pieces(lin, size, 2)
                c.write_ps(ps, c.io_in(port, size))
                di = (di + delta) & am
                done += 1
        elif op == "outs":
            port = g[2] & 0xFFFF
            while done < n:
                c.io_out(port, c.read(seg, si, size))
                si = (si + delta) & am
                done += 1
    finally:
        c.iters = done
        if done:
            asz = d.asize
            if op in ("movs", "lods", "cmps", "outs"):
                set_areg(g, 6, si, asz)
            if op != "lods" and op != "outs":
                set_areg(g, 7, di, asz)
            if rep:
                set_areg(g, 1, cnt - done, asz)
            if op == "lods":
                wr(g, ACC[size], int.from_bytes(last, "little"))
            g[17] = fl
    if not rep or done == cnt or stop:
        g[16] = c.nrip
    else:
        c.done = False
