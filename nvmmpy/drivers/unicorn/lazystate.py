"""A struct nvmm_x64_state look-alike that reads unicorn registers only when touched.

Reading or writing one unicorn register costs about 1.5 us from Python, and an assist touches a
handful of the ~80 the full state holds, so the emulator gets this view: each register is read
on first use, writes are kept, and write_back() stores only what changed.

Software event delivery (emulator.events) runs on the same view: it touches CS, SS, RIP, RSP,
RFLAGS, CR0/CR3/CR4, EFER, IDTR, GDTR and (on a privilege change) TR; changed_segs() tells the
driver which segment registers it has to load into unicorn.
"""
from unicorn import x86_const as x86

from ... import constants as nvmm
from .ucstate import CR_IDS, GPR_IDS, SEG_IDS

EFER = 0xC0000080


class _Regs:
    __slots__ = ("_read", "_cache", "_dirty")

    def __init__(self, read):
        self._read = read
        self._cache = {}
        self._dirty = set()

    def __getitem__(self, i):
        try:
            return self._cache[i]
        except KeyError:
            v = self._cache[i] = self._read(i)
            return v

    def __setitem__(self, i, v):
        self._cache[i] = v
        self._dirty.add(i)


class _Attrib:
    __slots__ = ("type", "s", "dpl", "p", "avl", "l", "g", "def_")


# 'def' is a keyword: getattr(a, "def") and setattr(a, "def", v) (as emulator.events does) reach def_
setattr(_Attrib, "def", property(lambda a: a.def_, lambda a, v: setattr(a, "def_", v)))


_ATTRIB_BITS = 0xF0FE00   # type (but the accessed bit), S, DPL, P, AVL, L, D/B, G


def _flags(a) -> int:
    """Attributes as descriptor bits 8-23 (unicorn's flags), without the accessed bit."""
    return ((a.type & 0xE) << 8) | (a.s << 12) | (a.dpl << 13) | (a.p << 15) | (a.avl << 20) | (a.l << 21) \
        | (a.def_ << 22) | (a.g << 23)


class _Seg:
    __slots__ = ("selector", "base", "limit", "attrib", "_orig")

    def __init__(self):
        self.attrib = _Attrib()

    def _key(self):
        return self.selector, self.base, self.limit, _flags(self.attrib)


class _Segs:
    __slots__ = ("_view", "_cache")

    def __init__(self, view):
        self._view = view
        self._cache = {}

    def __getitem__(self, i):
        s = self._cache.get(i)
        if s is None:
            s = self._cache[i] = self._view._load_seg(i)
        return s


class _Xmm:
    __slots__ = ("xmm_bytes", "_orig")

    def __init__(self, raw: bytes):
        self.xmm_bytes = bytearray(raw)
        self._orig = raw


class _XmmList:
    __slots__ = ("_uc", "_cache")

    def __init__(self, uc):
        self._uc = uc
        self._cache = {}

    def __getitem__(self, i):
        x = self._cache.get(i)
        if x is None:
            x = self._cache[i] = _Xmm(self._uc.reg_read(x86.UC_X86_REG_XMM0 + i).to_bytes(16, "little"))
        return x


class _Fpu:
    __slots__ = ("_uc", "fx_xmm", "_mxcsr")

    def __init__(self, uc):
        self._uc = uc
        self.fx_xmm = _XmmList(uc)
        self._mxcsr = None

    @property
    def fx_mxcsr(self):
        if self._mxcsr is None:
            self._mxcsr = self._uc.reg_read(x86.UC_X86_REG_MXCSR)
        return self._mxcsr


class LazyState:
    """gprs, segs, crs, msrs (EFER only) and fpu.fx_xmm / fx_mxcsr, read on demand from `uc`."""
    __slots__ = ("_uc", "_fast", "_seginfo", "gprs", "crs", "msrs", "segs", "fpu")

    def __init__(self, uc, fast, seginfo):
        self._uc = uc
        self._fast = fast
        self._seginfo = seginfo  # callable(seg_index, selector, cr0, efer) -> (base, limit, flags)
        rr = fast.read
        self.gprs = _Regs(lambda i: rr(GPR_IDS[i]))
        self.crs = _Regs(lambda i: rr(CR_IDS[i]) if i in CR_IDS else 1)
        self.msrs = _Regs(lambda i: fast.read_msr(EFER) if i == nvmm.X64_MSR_EFER else 0)
        self.segs = _Segs(self)
        self.fpu = _Fpu(uc)

    def _load_seg(self, i):
        s = _Seg()
        if i in SEG_IDS:
            sel = self._fast.read16(SEG_IDS[i])
            base, limit, flags = self._seginfo(i, sel, self.crs[nvmm.X64_CR_CR0], self.msrs[nvmm.X64_MSR_EFER])
            s.selector = sel
        else:
            rid = {nvmm.X64_SEG_GDT: x86.UC_X86_REG_GDTR, nvmm.X64_SEG_IDT: x86.UC_X86_REG_IDTR,
                   nvmm.X64_SEG_LDT: x86.UC_X86_REG_LDTR, nvmm.X64_SEG_TR: x86.UC_X86_REG_TR}[i]
            s.selector, base, limit, flags = self._fast.read_mmr(rid)
        s.base, s.limit = base, limit
        a = s.attrib
        a.type, a.s, a.dpl, a.p = (flags >> 8) & 0xF, (flags >> 12) & 1, (flags >> 13) & 3, (flags >> 15) & 1
        a.avl, a.l, a.g, a.def_ = (flags >> 20) & 1, (flags >> 21) & 1, (flags >> 23) & 1, (flags >> 22) & 1
        s._orig = (s.selector, base, limit, flags & _ATTRIB_BITS)
        return s

    def changed_segs(self) -> list:
        """Segment registers (indices) whose selector, base, limit or attributes were changed
        (the accessed bit aside)."""
        return [i for i, s in self.segs._cache.items() if s._key() != s._orig]

    def write_back(self) -> None:
        uc = self._uc
        g = self.gprs
        w = self._fast.write
        for i in g._dirty:
            w(GPR_IDS[i], g._cache[i])
        for i, x in self.fpu.fx_xmm._cache.items():
            if bytes(x.xmm_bytes) != x._orig:
                uc.reg_write(x86.UC_X86_REG_XMM0 + i, int.from_bytes(x.xmm_bytes, "little"))
        for i in self.crs._dirty:
            if i in CR_IDS:
                uc.reg_write(CR_IDS[i], self.crs._cache[i])

