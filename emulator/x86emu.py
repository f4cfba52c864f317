"""The x86 instruction emulator behind MEMORY and IO assists (libnvmm's role, with capstone).

    emu = Emulator()
    step = emu.step(state, bus)          # the instruction at CS:RIP, operands through `bus`
    step.mnemonic, step.length, step.accesses

``state`` is shaped like ``struct nvmm_x64_state`` (gprs[18], segs[10], crs[6], msrs[11],
fpu.fx_xmm[16].xmm_bytes); ``step`` updates GPRs (incl. RIP, RFLAGS) and XMM registers in
place.  ``bus`` has ``read(gpa, size) -> bytes``, ``write(gpa, data)``, ``io_in(port, size)
-> bytes`` and ``io_out(port, data)``; page tables are read through ``bus.read`` too.

What is emulated (memory forms, every operand size capstone decodes, 16/32/64-bit modes):
MOV (incl. moffs), MOVZX, MOVSX, MOVSXD, MOVNTI, MOVBE; ADD OR ADC SBB AND SUB XOR CMP TEST (both
directions, register and immediate); INC DEC NEG NOT; XCHG XADD CMPXCHG CMPXCHG8B/16B;
BT BTS BTR BTC (immediate and register offsets); SETcc CMOVcc; PUSH m, POP m;
MOVS STOS LODS CMPS SCAS INS OUTS with REP/REPE/REPNE; IN OUT; SSE and VEX.128 moves
(MOVD MOVQ MOVDQA MOVDQU MOVAPS MOVUPS MOVAPD MOVUPD MOVNTDQ MOVNTPS MOVNTPD MOVNTDQA LDDQU
MOVSS MOVSD MOVLPS MOVHPS MOVLPD MOVHPD).  Anything else raises EmulationError.
"""
import threading

import capstone

from .access import CS, M32, M64, Ctx
from .arch import EFER_LMA, GP, RFLAGS_RF
from .decode import MODES, decode
from .faults import EmulationError, GuestFault
from .ops import h_fail
from .pagewalk import PROT_EXEC

__all__ = ["Emulator", "EmulationError", "GuestFault", "Step"]


class Step:
    """What one ``Emulator.step`` did.

    ``accesses``: ``[(kind, address, size, write, data), ...]`` in order, kind "mem"
    (address = GPA) or "io" (address = port); ``data`` is what was read or written.
    ``iterations``: elements done by a string instruction (0 when RCX was 0; 1 otherwise).
    ``complete``: False when a REP instruction still has iterations left (RIP unchanged).
    """
    __slots__ = ("mnemonic", "length", "accesses", "iterations", "complete")

    def __init__(self, mnemonic, length, accesses, iterations=1, complete=True):
        self.mnemonic = mnemonic
        self.length = length
        self.accesses = accesses
        self.iterations = iterations
        self.complete = complete

    def __repr__(self):
        acc = ", ".join(f"{k} {'W' if w else 'R'} {a:#x}/{n} {bytes(v).hex()}" for k, a, n, w, v in self.accesses)
        more = "" if self.complete else f", {self.iterations} iterations, incomplete"
        return f"Step({self.mnemonic!r}, len={self.length}, [{acc}]{more})"


class Emulator:
    """Decodes with capstone (one handle per mode, made on first use) and caches the
    decoded form of up to ``cache_size`` distinct (mode, bytes) keys."""

    def __init__(self, cache_size: int = 4096):
        self.cache_size = max(1, cache_size)
        self._cache = {}
        self._md = {}
        self._lock = threading.Lock()

    # -- decoding --------------------------------------------------------------------------
    def _handle(self, mode):
        md = self._md.get(mode)
        if md is None:
            md = capstone.Cs(capstone.CS_ARCH_X86, MODES[mode])
            md.detail = True
            self._md[mode] = md
        return md

    def decode(self, mode: int, code: bytes):
        """The cached Decoded form of the first instruction in ``code`` (mode 16/32/64)."""
        key = (mode, code)
        d = self._cache.get(key)
        if d is None:
            with self._lock:
                d = decode(self._handle(mode), mode, code, self._handle(32) if mode == 16 else None)
                cache = self._cache
                while len(cache) >= self.cache_size:
                    del cache[next(iter(cache))]
                cache[key] = d
        return d

    @staticmethod
    def mode_of(state) -> int:
        a = state.segs[CS].attrib
        if a.l and state.msrs[0] & EFER_LMA:
            return 64
        return 32 if getattr(a, "def") else 16

    # -- the step ----------------------------------------------------------------------------
    def step(self, state, bus, insn: bytes | None = None, max_reps: int = 4096) -> Step:
        a = state.segs[1].attrib
        efer = state.msrs[0]
        if a.l and efer & EFER_LMA:
            mode = 64
        elif getattr(a, "def"):
            mode = 32
        else:
            mode = 16
        g = state.gprs
        rip = g[16]
        c = Ctx(state, bus, mode, state.crs[0], efer, rip, max_reps)
        if insn is None:
            d = self._fetch(c, rip)
        else:
            if type(insn) is not bytes or len(insn) > 15:
                insn = bytes(insn[:15])
            d = self._cache.get((mode, insn))
            if d is None:
                d = self.decode(mode, insn)
                if d.mnemonic is None and len(insn) < 15:
                    d = self._fetch(c, rip)  # the bytes given may be a truncated instruction
        c.nrip = (rip + d.length) & (M64 if mode == 64 else M32)
        d.run(c, d)
        if c.done:
            fl = g[17]
            if fl & RFLAGS_RF:  # RF clears when an instruction completes
                g[17] = fl & ~RFLAGS_RF
        return Step(d.mnemonic, d.length, c.acc, c.iters, c.done)

    def _fetch(self, c, rip):
        """Read up to 15 bytes at CS:RIP through segmentation and the page walk, stopping
        early at the CS limit or a page that does not translate; fault only if the
        instruction does not fit in what could be read."""
        if c.mode == 64:
            lin = c.linear(CS, rip, 1, False)
            avail = 15
            wrap = M64
        else:
            cs = c.segs[CS]
            off = rip & M32
            if off > cs.limit:
                raise GuestFault(GP, 0, None, f"rip {off:#x} beyond CS limit {cs.limit:#x}")
            avail = min(15, cs.limit - off + 1)
            lin = (cs.base + off) & M32
            wrap = M32
        buf = b""
        err = None
        while len(buf) < avail:
            n = min(avail - len(buf), 0x1000 - (lin & 0xFFF))
            try:
                ((gpa, _),) = c.pieces(lin, n, PROT_EXEC)
            except GuestFault as e:
                err = e
                break
            buf += bytes(c.bus.read(gpa, n))
            lin = (lin + n) & wrap
        if not buf:
            raise err
        d = self.decode(c.mode, buf)
        if d.run is h_fail and d.mnemonic is None and len(buf) < 15:
            if err is not None:
                raise err
            raise GuestFault(GP, 0, None, "instruction crosses the CS limit")
        return d
