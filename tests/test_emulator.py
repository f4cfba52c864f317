"""emulator.x86emu: unit tests with a Python stand-in for struct nvmm_x64_state and a
bytearray-backed bus with an MMIO window that records every access."""
import timeit

import pytest

from asm import assemble
from emulator.x86emu import EmulationError, Emulator, GuestFault, Step

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
