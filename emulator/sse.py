"""SSE / AVX-128 data moves between an XMM register and memory.

The state carries XMM0-15 (FXSAVE image) but not the upper YMM halves, so a VEX.128 load
writes XMM bits 127:0 and cannot clear bits 255:128 as the CPU does; 256-bit forms are
refused at decode time."""
from .arch import CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE, GP, NM, UD
from .faults import EmulationError, GuestFault
from .pagewalk import PROT_READ, PROT_WRITE

# name -> (alignment or 0, load semantics for a partial-width load: "zero" / "lo" / "hi")
TABLE = {
    "movdqa": 16, "movaps": 16, "movapd": 16, "movntdq": 16, "movntps": 16, "movntpd": 16,
    "movntdqa": 16,
    "movdqu": 0, "movups": 0, "movupd": 0, "lddqu": 0,
    "movd": 0, "movq": 0, "movss": 0, "movsd": 0,
    "movlps": 0, "movlpd": 0, "movhps": 0, "movhpd": 0,
}
# Partial loads that merge into the register (offset of the loaded bytes); all other
# partial loads zero the rest of the register.
MERGE = {"movlps": 0, "movlpd": 0, "movhps": 8, "movhpd": 8}


def _check(c, d):
    cr0 = c.cr0
    if d.vex:
        if not cr0 & 1 or c.g[17] & (1 << 17):
            raise EmulationError(d.mnemonic, d.raw, c.rip,
                                 "C4/C5 are LES/LDS, not VEX, in real and virtual-8086 mode")
        if cr0 & CR0_TS:
            raise GuestFault(NM, None, None, "CR0.TS set")
        # XCR0 is not checked: a VEX instruction that reached a memory exit passed that check
        # on the CPU, and not every state carries XCR0 (the unicorn view reports 1).
        if not c.state.crs[3] & CR4_OSXSAVE:
            raise GuestFault(UD, None, None, "AVX not enabled (CR4.OSXSAVE clear)")
        return
    if cr0 & CR0_EM:
        raise GuestFault(UD, None, None, "CR0.EM set")
    if cr0 & CR0_TS:
        raise GuestFault(NM, None, None, "CR0.TS set")
    if not c.state.crs[3] & CR4_OSFXSR:
        raise GuestFault(UD, None, None, "CR4.OSFXSR clear")


def _lin(c, d, write):
    lin = c.linear(d.seg, d.ea(c.g, c.nrip), d.size, write)
    if d.align and lin & (d.align - 1):
        raise GuestFault(GP, 0, None, f"{d.mnemonic} operand {lin:#x} not {d.align}-byte aligned")
    return lin


def h_load(c, d):
    _check(c, d)
    size = d.size
    data = c.read_ps(c.pieces(_lin(c, d, False), size, PROT_READ))
    x = c.state.fpu.fx_xmm[d.xmm].xmm_bytes
    if size < 16:
        if d.xoff < 0:
            data = data + bytes(16 - size)
        else:
            old = bytes(x)
            data = old[:d.xoff] + data + old[d.xoff + size:]
    x[0:16] = data
    c.g[16] = c.nrip


def h_store(c, d):
    _check(c, d)
    size = d.size
    off = max(d.xoff, 0)
    data = bytes(c.state.fpu.fx_xmm[d.xmm].xmm_bytes)[off:off + size]
    c.write_ps(c.pieces(_lin(c, d, True), size, PROT_WRITE), data)
    c.g[16] = c.nrip
