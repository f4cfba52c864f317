"""One emulation step's view of the guest: registers, segmentation, the page walk and the bus.

``Ctx`` is made once per step.  Memory operands go effective address -> ``linear`` (segment
checks, base, canonical check) -> ``pieces`` (page walk, split at 4 KiB pages; every page of
an access is translated before any byte moves) -> bus calls, each recorded in ``acc`` as
``(kind, address, size, write, data)``.
"""
from .arch import CR0_PE, CR0_PG, CR4_LA57, GP, PF, RFLAGS_VM, SS_FAULT
from .faults import GuestFault
from .pagewalk import PROT_READ, PROT_WRITE, PageFault, gva_to_gpa

M16 = 0xFFFF
M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF
ES, CS, SS_, DS, FS, GS = 0, 1, 2, 3, 4, 5
_SEGNAMES = ("ES", "CS", "SS", "DS", "FS", "GS")


def rd(g, r):
    """Value of register operand ``r`` = (index, shift, mask, size)."""
    return (g[r[0]] >> r[1]) & r[2]


def wr(g, r, v):
    """Write register operand ``r``: a 32-bit write zero-extends to 64 bits (as the CPU
    does in 64-bit mode, and as QEMU does everywhere); 8/16-bit writes keep the rest."""
    idx, shift, mask, size = r
    if size >= 4:
        g[idx] = v & mask
    else:
        g[idx] = (g[idx] & ~(mask << shift)) | ((v & mask) << shift)


def set_areg(g, idx, v, asize):
    """Write rSI/rDI/rCX as an address-size-wide register (string instructions)."""
    if asize == 2:
        g[idx] = (g[idx] & ~M16) | (v & M16)
    else:
        g[idx] = v & (M32 if asize == 4 else M64)


def fault(seg, why):
    """#SS(0) for a stack-segment reference, #GP(0) otherwise."""
    return GuestFault(SS_FAULT if seg == SS_ else GP, 0, None, why)


class Ctx:
    __slots__ = ("state", "bus", "g", "segs", "mode", "cr0", "cr3", "cr4", "efer", "paging",
                 "cpl", "prot", "acc", "rip", "nrip", "max_reps", "iters", "done", "_wrap")

    def __init__(self, state, bus, mode, cr0, efer, rip, max_reps):
        self.state = state
        self.bus = bus
        self.g = g = state.gprs
        self.segs = state.segs
        self.mode = mode
        self.cr0 = cr0
        self.efer = efer
        self.rip = rip
        self.max_reps = max_reps
        self.acc = []
        self.iters = 1
        self.done = True
        self.paging = cr0 & CR0_PG
        self.cr3 = self.cr4 = 0
        self.cpl = 0
        if self.paging:  # (CR4.LA57 needs paging too: without it, CR4 is not read)
            crs = state.crs
            self.cr4 = crs[3]
            self.cr3 = crs[2]
            # CPL is SS.DPL (CS.DPL differs for conforming code); 3 in virtual-8086 mode
            self.cpl = 3 if mode != 64 and g[17] & (1 << 17) else self.segs[SS_].attrib.dpl
        # Protected-mode segment checks (type, present) apply outside real and virtual-8086 mode.
        self.prot = mode != 64 and cr0 & CR0_PE and not g[17] & RFLAGS_VM
        self._wrap = M64 if mode == 64 else M32

    # -- segmentation -------------------------------------------------------------------
    def linear(self, seg, ea, size, write):
        """Linear address of ``size`` bytes at offset ``ea`` in segment ``seg``."""
        if self.mode == 64:
            lin = (self.segs[seg].base + ea) & M64 if seg >= FS else ea
            if self.cr4 & CR4_LA57:
                top, ok = 56, 0xFF
            else:
                top, ok = 47, 0x1FFFF
            t = lin >> top
            if (t and t != ok) or (size > 1 and ((lin + size - 1) & M64) >> top not in (0, ok)):
                raise fault(seg, f"non-canonical address {lin:#x}")
            return lin
        s = self.segs[seg]
        limit = s.limit
        end = ea + size - 1
        if self.prot:
            a = s.attrib
            typ = a.type
            if not a.p or not a.s:
                raise fault(seg, f"{_SEGNAMES[seg]} is not a usable code/data segment")
            if typ & 8:
                if write:
                    raise fault(seg, f"write through code segment {_SEGNAMES[seg]}")
                if not typ & 2:
                    raise fault(seg, f"read of execute-only segment {_SEGNAMES[seg]}")
            else:
                if write and not typ & 2:
                    raise fault(seg, f"write to read-only segment {_SEGNAMES[seg]}")
                if typ & 4:  # expand-down: valid offsets are limit+1 .. 0xFFFF or 0xFFFFFFFF (B bit)
                    upper = M32 if getattr(a, "def") else M16
                    if ea <= limit or end > upper:
                        raise fault(seg, f"offset {ea:#x}+{size} outside expand-down {_SEGNAMES[seg]}")
                    return (s.base + ea) & M32
        if end > limit:
            raise fault(seg, f"offset {ea:#x}+{size} beyond {_SEGNAMES[seg]} limit {limit:#x}")
        return (s.base + ea) & M32

    # -- paging -----------------------------------------------------------------------
    def pieces(self, lin, size, access):
        """[(gpa, n), ...] covering ``size`` bytes at linear ``lin``, one per 4 KiB page."""
        first = 0x1000 - (lin & 0xFFF)
        if not self.paging:
            if size <= first:
                return ((lin, size),)
            out = []
            while size > 0:
                n = min(size, 0x1000 - (lin & 0xFFF))
                out.append((lin, n))
                lin = (lin + n) & self._wrap
                size -= n
            return out
        out = []
        read = self.bus.read
        while size > 0:
            n = min(size, 0x1000 - (lin & 0xFFF))
            try:
                gpa, _ = gva_to_gpa(read, self.cr0, self.cr3, self.cr4, self.efer, lin, access, self.cpl)
            except PageFault as e:
                raise GuestFault(PF, e.error_code, e.gva, e.reason) from None
            out.append((gpa, n))
            lin = (lin + n) & self._wrap
            size -= n
        return out

    # -- bus ----------------------------------------------------------------------------
    def read_ps(self, ps):
        acc = self.acc
        read = self.bus.read
        if len(ps) == 1:
            gpa, n = ps[0]
            data = bytes(read(gpa, n))
            acc.append(("mem", gpa, n, False, data))
            return data
        parts = []
        for gpa, n in ps:
            data = bytes(read(gpa, n))
            acc.append(("mem", gpa, n, False, data))
            parts.append(data)
        return b"".join(parts)

    def write_ps(self, ps, data):
        acc = self.acc
        write = self.bus.write
        if len(ps) == 1:
            gpa, n = ps[0]
            write(gpa, data)
            acc.append(("mem", gpa, n, True, data))
            return
        pos = 0
        for gpa, n in ps:
            part = data[pos:pos + n]
            write(gpa, part)
            acc.append(("mem", gpa, n, True, part))
            pos += n

    def read(self, seg, ea, size):
        return self.read_ps(self.pieces(self.linear(seg, ea, size, False), size, PROT_READ))

    def write(self, seg, ea, data):
        size = len(data)
        self.write_ps(self.pieces(self.linear(seg, ea, size, True), size, PROT_WRITE), data)

    def rmw(self, seg, ea, size):
        """Translate for a read-modify-write (checked as a write, like the CPU) and read."""
        ps = self.pieces(self.linear(seg, ea, size, True), size, PROT_WRITE)
        return ps, self.read_ps(ps)

    def io_in(self, port, size):
        data = bytes(self.bus.io_in(port, size))
        self.acc.append(("io", port, size, False, data))
        return data

    def io_out(self, port, data):
        self.bus.io_out(port, data)
        self.acc.append(("io", port, len(data), True, data))
