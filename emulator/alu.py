"""Integer arithmetic with the RFLAGS bits the CPU defines (Intel SDM vol. 1, 3.4.3 and
appendix A; vol. 2 per instruction).

Every function returns ``(result, flags)`` where ``flags`` holds only the status bits
the instruction defines; the caller merges them into RFLAGS under the matching mask
(``ARITH`` for ADD/SUB-style, ``ARITH & ~CF`` for INC/DEC, ...).
"""
from .arch import RFLAGS_AF, RFLAGS_CF, RFLAGS_DF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF

# Short names: the flag logic below reads as the manual's tables.
CF, PF, AF, ZF, SF, DF, OF = RFLAGS_CF, RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF, RFLAGS_SF, RFLAGS_DF, RFLAGS_OF
ARITH = CF | PF | AF | ZF | SF | OF

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}

# PF is set when the low byte of the result has an even number of 1 bits.
PARITY = tuple(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))


def szp(r, sign):
    f = PARITY[r & 0xFF]
    if not r:
        f |= ZF
    if r & sign:
        f |= SF
    return f


def add(a, b, carry, size):
    m = MASK[size]
    sign = SIGN[size]
    s = a + b + carry
    r = s & m
    f = PARITY[r & 0xFF]
    if not r:
        f |= ZF
    if r & sign:
        f |= SF
    if s > m:
        f |= CF
    if (a ^ b ^ r) & 0x10:
        f |= AF
    if (a ^ r) & (b ^ r) & sign:
        f |= OF
    return r, f


def sub(a, b, borrow, size):
    m = MASK[size]
    sign = SIGN[size]
    r = (a - b - borrow) & m
    f = PARITY[r & 0xFF]
    if not r:
        f |= ZF
    if r & sign:
        f |= SF
    if a < b + borrow:
        f |= CF
    if (a ^ b ^ r) & 0x10:
        f |= AF
    if (a ^ b) & (a ^ r) & sign:
        f |= OF
    return r, f


def logic(r, size):
    """AND/OR/XOR/TEST: CF = OF = 0, SF ZF PF from the result. AF is undefined in
    the SDM; it is cleared, as QEMU/unicorn and current CPUs do."""
    f = PARITY[r & 0xFF]
    if not r:
        f |= ZF
    if r & SIGN[size]:
        f |= SF
    return r, f


# The eight group-1 operations: name -> (function(a, b, rflags, size) -> (result, flags), writes result)
def _add(a, b, fl, size):
    return add(a, b, 0, size)


def _adc(a, b, fl, size):
    return add(a, b, fl & CF, size)


def _sub(a, b, fl, size):
    return sub(a, b, 0, size)


def _sbb(a, b, fl, size):
    return sub(a, b, fl & CF, size)


def _and(a, b, fl, size):
    return logic(a & b, size)


def _or(a, b, fl, size):
    return logic(a | b, size)


def _xor(a, b, fl, size):
    return logic(a ^ b, size)


BINOPS = {
    "add": (_add, True), "adc": (_adc, True), "sub": (_sub, True), "sbb": (_sbb, True),
    "and": (_and, True), "or": (_or, True), "xor": (_xor, True),
    "cmp": (_sub, False), "test": (_and, False),
}


def cond(cc, fl):
    """Condition code ``cc`` (the low nibble of Jcc/SETcc/CMOVcc opcodes) against RFLAGS."""
    c = cc >> 1
    if c == 0:
        t = fl & OF
    elif c == 1:
        t = fl & CF
    elif c == 2:
        t = fl & ZF
    elif c == 3:
        t = fl & (CF | ZF)
    elif c == 4:
        t = fl & SF
    elif c == 5:
        t = fl & PF
    elif c == 6:
        t = bool(fl & SF) != bool(fl & OF)
    else:
        t = (fl & ZF) or (bool(fl & SF) != bool(fl & OF))
    t = bool(t)
    return (not t) if cc & 1 else t
