"""Software delivery of x86 interrupts and exceptions through the guest's IVT / IDT.

Unicorn raises CPU exceptions and INT n to a hook but never vectors them through
the guest's tables, so a software driver has to do what the CPU does.  This module
does it on a ``struct nvmm_x64_state``-shaped object and a guest-physical bus
(``bus.read(gpa, size) -> bytes``, ``bus.write(gpa, data)``), written from the
Intel SDM: vol. 3 chapter 6 ("Interrupt and Exception Handling", sections 6.12-6.15
and table 6-5) and the vol. 2 pseudo-code of INT n/INTO/INT3.  Every linear access
(IVT, IDT, GDT/LDT, TSS, stack) goes through :func:`emulator.pagewalk.gva_to_gpa`,
so paging may be on.

Modes
-----
* real-address mode (CR0.PE = 0): 4-byte IVT entries (IP, CS) at IDTR.base, limit
  check, FLAGS/CS/IP pushed as 16-bit words on SS:SP (SP wraps at 64 KiB, the SS
  limit is not checked), IF/TF/AC cleared, CS.base = selector * 16.  No error
  code is ever pushed.
* protected mode (CR0.PE = 1, EFER.LMA = 0): 8-byte gates, 32-bit (0xE/0xF) and
  16-bit (0x6/0x7) interrupt and trap gates, all the gate, code-segment, TSS and
  stack-segment checks of the INT n pseudo-code with their error codes,
  inter-privilege delivery with the stack from a 32-bit or 16-bit TSS, segment
  limit checks of the pushes (expand-up and expand-down, 16/32-bit stacks) and
  delivery from virtual-8086 mode (EFLAGS.VM = 1, CR4.VME = 0: GS/FS/DS/ES are
  pushed and nulled).  Task gates raise :class:`UnsupportedEvent`.
* IA-32e mode (EFER.LMA = 1, 64-bit or compatibility code): 16-byte gates, target
  code segment must have L = 1 and D = 0, IST / RSP0-2 / current RSP stacks,
  RSP aligned down to 16, SS:RSP, RFLAGS, CS:RIP (+ error code) pushed as 8-byte
  values, SS := null selector with RPL = new CPL on a privilege change,
  canonical checks of the target RIP and of every stack address.

Conventions and choices (documented because the SDM leaves them open or because
the state format forces a choice)
--------------------------------------------------------------------------
* CPL is ``CS.selector & 3`` in protected and IA-32e mode (3 in virtual-8086
  mode, 0 in real mode).  The RPL of CS always equals CPL on a CPU, and the
  selector survives every way of building the state (hidden attributes do not
  necessarily).  After delivery CS.RPL, CS.dpl (non-conforming) and SS.dpl (when SS is
  loaded) hold the new CPL.
* The state's RIP must be the address of the interrupted / faulting instruction;
  for kind ``"soft"`` ``next_rip`` is the address after INT n, which is what gets
  pushed, while a fault raised by the delivery of INT n (gate DPL check, ...)
  pushes the INT instruction's own address, as on a CPU.
* RFLAGS.RF in the pushed image: set for fault-class exceptions (vectors 0, 5, 6,
  7, 10-14, 16, 17, 19, 20, 21) delivered with kind ``"exception"``, including a
  fault raised by delivery itself (SDM 17.3.1.1); #DB (vector 1) and every other
  event push the current RF.  RF set by a REP-string interruption is the
  caller's business.  Bit 1 of the pushed flags is always 1.
* Segment selectors pushed by 32-bit gates are zero-extended to 32 bits (the SDM
  allows either this or a 16-bit write).
* Loading CS or SS from a descriptor whose accessed bit is clear sets it in the
  GDT/LDT, as the CPU does (an implicit supervisor write, which may #PF).
* A ``#PF`` raised by delivery itself loads CR2 with the faulting linear address
  (the caller sets CR2 for a #PF it asks to deliver).
* In virtual-8086 mode kind ``"soft"`` with IOPL < 3 raises #GP(0), as INT n does
  without VME (INT3/INTO cannot be told apart here); CR4.VME with a soft
  interrupt raises :class:`UnsupportedEvent`.
* Where the SDM's texts disagree, the vol. 2 INT n pseudo-code / exception list
  wins: a 16-bit gate in IA-32e mode is #GP(vector*8+2+EXT) (6.14.1 says
  #GP(0)), and a target code segment that is not 64-bit (L=1, D=0) is
  #GP(selector+EXT) (6.14.1 says the vector is reported).
* A ``bus`` exception (guest-physical address outside RAM) propagates as is; it
  is not turned into a guest-visible fault.
* Delivery is atomic: every check and every page translation is made before
  anything is written, so a delivery that faults leaves memory and the state
  as they were (except CR2 for a #PF and descriptor accessed bits, as on a CPU).

Escalation (SDM table 6-5): a fault raised while delivering a benign event
(external interrupt, NMI, INT n, benign exception) is delivered serially; while
delivering a contributory exception (0, 10-13, 21) a contributory fault becomes
#DF(0) and a #PF is delivered serially; while delivering a #PF/#VE a contributory
fault or #PF becomes #DF(0); a fault while delivering #DF raises
:class:`TripleFault` (shutdown).  Real mode escalates the same way (e.g. an IVT
limit of 0 turns any event into #GP, #DF, then shutdown).

Not covered: task switches through task gates, shadow stacks (CET), VME/PVI
interrupt redirection, SMEP/SMAP/PKE effects on the pushes, NMI/interrupt
blocking and priority (the caller decides what to deliver and when), and
setting the TSS busy bit (no task switch happens).
"""

from .arch import (AC, BR, CP, CR0_PE, CR0_PG, CR4_LA57, CR4_VME, DE, DF, EFER_LMA, EFER_LME,
                   ERROR_CODE_VECTORS, GP, MF, NM, NMI, NP, PF, RFLAGS_AC, RFLAGS_FIXED, RFLAGS_IF, RFLAGS_IOPL,
                   RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM, SS_FAULT, TS, UD, VE, VECTOR_NAMES, XM)
from .pagewalk import PROT_READ, PROT_WRITE, PageFault, gva_to_gpa

__all__ = [
    "DeliveryFault", "TripleFault", "UnsupportedEvent", "deliver", "read_descriptor",
    "current_cpl", "ERROR_CODE_VECTORS", "CONTRIBUTORY", "PAGE_FAULT_CLASS", "FAULT_VECTORS",
]

# Register indices of struct nvmm_x64_state.
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
RIP, RFLAGS = 16, 17
ES, CS, SS, DS, FS, GS, GDT, IDT, LDT, TR = range(10)
CR0, CR2, CR3, CR4 = 0, 1, 2, 3
EFER = 0

CONTRIBUTORY = frozenset({DE, TS, NP, SS_FAULT, GP, CP})
PAGE_FAULT_CLASS = frozenset({PF, VE})
FAULT_VECTORS = frozenset({DE, BR, UD, NM, TS, NP, SS_FAULT, GP, PF, MF, AC, XM, VE, CP})

KINDS = ("hw", "exception", "soft")

# Gate types (system descriptors, S = 0).
TASK_GATE, INT_GATE16, TRAP_GATE16, INT_GATE32, TRAP_GATE32 = 0x5, 0x6, 0x7, 0xE, 0xF

_M16, _M32, _M64 = 0xFFFF, 0xFFFF_FFFF, (1 << 64) - 1

class DeliveryFault(Exception):
    """Delivery itself faulted (bad gate, not-present, limit, #PF on the stack...).

    ``vector`` and ``error_code`` name the new exception (the SDM's error-code
    format: selector index, TI, IDT and EXT bits, or a #PF error code);
    ``reason`` says what was wrong.  :func:`deliver` escalates these itself;
    they escape only from helpers such as :func:`read_descriptor`.
    """

    def __init__(self, vector, error_code=0, reason=""):
        name = VECTOR_NAMES.get(vector, f"vector {vector}")
        super().__init__(f"{name}({error_code:#x}) during event delivery: {reason}")
        self.vector = vector
        self.error_code = error_code
        self.reason = reason


class TripleFault(Exception):
    """A fault while delivering #DF: the CPU shuts down.  ``chain`` lists the
    events tried, as ``(vector, kind, error_code, reason)`` tuples, the first
    one being the event asked for."""

    def __init__(self, chain):
        text = " -> ".join(f"{VECTOR_NAMES.get(v, v)}[{k}]" + (f"({e:#x})" if e is not None else "")
                           + (f" ({r})" if r else "") for v, k, e, r in chain)
        super().__init__(f"triple fault: {text}")
        self.chain = chain


class UnsupportedEvent(NotImplementedError):
    """The delivery needs something this module does not implement (task gates,
    VME interrupt redirection)."""


# ---------------------------------------------------------------- helpers

def _fault(vector, error_code, reason):
    raise DeliveryFault(vector, error_code & 0xFFFF_FFFF, reason)


def _sel_ec(selector, ext):
    """Error code naming a GDT/LDT selector (IDT bit clear)."""
    return (selector & 0xFFFC) | ext


def _idt_ec(vector, ext):
    """Error code naming an IDT entry."""
    return (vector << 3) | 2 | ext


def _lma(state):
    efer = int(state.msrs[EFER])
    cr0 = int(state.crs[CR0])
    return bool(efer & EFER_LMA) or (bool(efer & EFER_LME) and bool(cr0 & CR0_PG)
                                     and bool(cr0 & CR0_PE))


def current_cpl(state):
    """CPL as this module sees it: 0 in real mode, 3 in virtual-8086 mode,
    else the RPL of CS."""
    if not int(state.crs[CR0]) & CR0_PE:
        return 0
    if not _lma(state) and int(state.gprs[RFLAGS]) & RFLAGS_VM:
        return 3
    return int(state.segs[CS].selector) & 3


def parse_descriptor(raw, selector=0, address=None):
    """Decode an 8-byte segment descriptor (an int) into a dict."""
    limit_raw = (raw & 0xFFFF) | ((raw >> 32) & 0xF_0000)
    g = (raw >> 55) & 1
    return {
        "selector": selector,
        "address": address,
        "raw": raw,
        "base": ((raw >> 16) & 0xFF_FFFF) | ((raw >> 32) & 0xFF00_0000),
        "limit": ((limit_raw << 12) | 0xFFF) if g else limit_raw,
        "limit_raw": limit_raw,
        "type": (raw >> 40) & 0xF,
        "s": (raw >> 44) & 1,
        "dpl": (raw >> 45) & 3,
        "p": (raw >> 47) & 1,
        "avl": (raw >> 52) & 1,
        "l": (raw >> 53) & 1,
        "db": (raw >> 54) & 1,
        "g": g,
    }


def _is_code(d):
    return d["s"] == 1 and bool(d["type"] & 8)


def _is_writable_data(d):
    return d["s"] == 1 and not d["type"] & 8 and bool(d["type"] & 2)


class _Cpu:
    """Linear-memory access for one delivery attempt."""

    def __init__(self, state, bus):
        self.state = state
        self.bus = bus
        self.cr0 = int(state.crs[CR0])
        self.cr3 = int(state.crs[CR3])
        self.cr4 = int(state.crs[CR4])
        self.lma = _lma(state)
        # The page walk takes the mode from EFER.LMA; keep it consistent with ours.
        self.efer = int(state.msrs[EFER]) | (EFER_LMA if self.lma else 0)
        self.width = 57 if self.cr4 & CR4_LA57 else 48
        # (linear page, access, cpl) -> guest-physical page, for this attempt only: the page
        # tables cannot change before its writes are committed (the stack pushes share a page)
        self._pages = {}

    def canonical(self, addr):
        top = (addr & _M64) >> (self.width - 1)
        return top in (0, (1 << (65 - self.width)) - 1)

    def _pieces(self, lin, size, access, cpl, noncanon):
        """[(gpa, n)] covering ``size`` bytes at ``lin``, translated page by page."""
        mask = _M64 if self.lma else _M32
        lin &= mask
        if self.lma and not (self.canonical(lin) and self.canonical(lin + size - 1)):
            _fault(noncanon[0], noncanon[1], f"non-canonical address {lin:#x}")
        out = []
        pages = self._pages
        while size > 0:
            off = lin & 0xFFF
            n = min(size, 0x1000 - off)
            key = (lin >> 12, access, cpl)
            page = pages.get(key)
            if page is None:
                try:
                    gpa, _ = gva_to_gpa(self.bus.read, self.cr0, self.cr3, self.cr4, self.efer,
                                        lin, access, cpl)
                except PageFault as exc:
                    if exc.error_code == 0 and "canonical" in exc.reason:
                        _fault(noncanon[0], noncanon[1], str(exc))
                    # A #PF detected during delivery loads CR2, whatever happens next.
                    self.state.crs[CR2] = lin
                    _fault(PF, exc.error_code, str(exc))
                page = pages[key] = gpa - off
            out.append((page + off, n))
            lin = (lin + n) & mask
            size -= n
        return out

    def read(self, lin, size, noncanon):
        """Implicit supervisor read of a system structure (IVT, IDT, GDT, LDT, TSS)."""
        data = b"".join(bytes(self.bus.read(gpa, n))
                        for gpa, n in self._pieces(lin, size, PROT_READ, 0, noncanon))
        return int.from_bytes(data, "little")

    def plan_write(self, lin, data, cpl, noncanon):
        """Translate a write now, return [(gpa, bytes)] to perform at commit."""
        out, pos = [], 0
        for gpa, n in self._pieces(lin, len(data), PROT_WRITE, cpl, noncanon):
            out.append((gpa, data[pos:pos + n]))
            pos += n
        return out

    def descriptor(self, selector, fault_vector, ext):
        """Fetch the GDT/LDT descriptor of ``selector``; a selector outside its
        table faults with ``fault_vector`` and the selector as error code."""
        ec = _sel_ec(selector, ext)
        st = self.state
        if selector & 4:
            table = st.segs[LDT]
            if not int(table.selector) & 0xFFFC:
                _fault(fault_vector, ec, f"selector {selector:#x} refers to a null LDT")
        else:
            table = st.segs[GDT]
        index = selector & 0xFFF8
        if index + 7 > int(table.limit):
            _fault(fault_vector, ec, f"selector {selector:#x} beyond its descriptor table limit")
        address = int(table.base) + index
        raw = self.read(address, 8, (fault_vector, ec))
        d = parse_descriptor(raw, selector, address)
        if self.lma and d["s"] == 0 and d["type"] in (0x2, 0x9, 0xB, 0xC):
            # 16-byte system descriptor in IA-32e mode: bits 63:32 of the base follow.
            high = self.read(address + 8, 8, (fault_vector, ec))
            d["base"] |= (high & _M32) << 32
        return d

    def plan_accessed(self, d):
        """Setting the accessed bit of a segment descriptor being loaded."""
        if d["s"] == 1 and not d["type"] & 1:
            byte = ((d["raw"] >> 40) & 0xFF) | 1
            return self.plan_write(d["address"] + 5, bytes([byte]), 0,
                                   (GP, _sel_ec(d["selector"], 0)))
        return []


def _load_seg(seg, selector, d):
    """Load a segment register (selector and hidden part) from a descriptor."""
    seg.selector = selector & 0xFFFF
    seg.base = d["base"]
    seg.limit = d["limit"]
    a = seg.attrib
    a.type = d["type"] | (1 if d["s"] else 0)
    a.s = d["s"]
    a.dpl = d["dpl"]
    a.p = d["p"]
    a.avl = d["avl"]
    a.l = d["l"]
    setattr(a, "def", d["db"])
    a.g = d["g"]


def _null_seg(seg, selector=0):
    seg.selector = selector
    seg.base = 0
    seg.limit = 0
    a = seg.attrib
    a.type = a.s = a.dpl = a.p = a.avl = a.l = a.g = 0
    setattr(a, "def", 0)


def read_descriptor(state, bus, selector, fault_vector=GP, ext=0):
    """The GDT/LDT descriptor named by ``selector`` as a dict: ``base``,
    ``limit`` (byte granular, scaled by G), ``limit_raw``, ``type``, ``s``,
    ``dpl``, ``p``, ``avl``, ``l``, ``db``, ``g``, ``raw`` (the 8 bytes as an
    int), ``address`` (its linear address) and ``selector``.  A null selector
    or one beyond its table raises DeliveryFault(fault_vector, ...)."""
    if not selector & 0xFFFC and not selector & 4:
        _fault(fault_vector, ext, "null selector")
    return _Cpu(state, bus).descriptor(selector, fault_vector, ext)


def _legacy_stack(base, limit, big, expand_down, sp_full, values, size):
    """Plan pushes of ``values`` (each ``size`` bytes) on a legacy stack segment.
    Returns ([(linear, bytes)], new ESP) or None when a push breaks the limit."""
    mask = _M32 if big else _M16
    sp = sp_full & mask
    out = []
    for v in values:
        sp = (sp - size) & mask
        hi = sp + size - 1
        if expand_down:
            ok = sp > limit and hi <= mask
        else:
            ok = hi <= limit and hi <= mask
        if not ok:
            return None
        out.append(((base + sp) & _M32, (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")))
    return out, (sp_full & _M32 & ~mask) | sp


# ---------------------------------------------------------------- one attempt

class _Event:
    __slots__ = ("vector", "kind", "error_code", "next_rip", "reason")

    def __init__(self, vector, kind, error_code, next_rip, reason=""):
        self.vector, self.kind, self.error_code = vector, kind, error_code
        self.next_rip, self.reason = next_rip, reason

    @property
    def ext(self):
        return 0 if self.kind == "soft" else 1

    @property
    def pushes_error(self):
        return self.kind == "exception" and self.vector in ERROR_CODE_VECTORS

    @property
    def klass(self):
        if self.kind != "exception":
            return "benign"
        if self.vector in CONTRIBUTORY:
            return "contributory"
        if self.vector in PAGE_FAULT_CLASS:
            return "pagefault"
        return "benign"


def _flags_image(state, ev):
    flags = int(state.gprs[RFLAGS]) | RFLAGS_FIXED
    if ev.kind == "exception" and ev.vector in FAULT_VECTORS:
        flags |= RFLAGS_RF
    return flags


def _return_rip(state, ev):
    return ev.next_rip if ev.kind == "soft" else int(state.gprs[RIP])


def _commit_writes(bus, writes):
    for gpa, data in writes:
        bus.write(gpa, data)


def _deliver_real(cpu, ev):
    st = cpu.state
    idt = st.segs[IDT]
    if ev.vector * 4 + 3 > int(idt.limit):
        _fault(GP, 0, f"vector {ev.vector:#x} beyond the IVT limit {int(idt.limit):#x}")
    entry = cpu.read(int(idt.base) + ev.vector * 4, 4, (GP, 0))
    new_ip, new_cs = entry & _M16, entry >> 16
    flags = _flags_image(st, ev)
    ss = st.segs[SS]
    sp = int(st.gprs[RSP]) & _M16
    writes = []
    for v in (flags, int(st.segs[CS].selector), _return_rip(st, ev)):
        sp = (sp - 2) & _M16
        lin = (int(ss.base) + sp) & _M32
        writes += cpu.plan_write(lin, (v & _M16).to_bytes(2, "little"), 0, (SS_FAULT, 0))
    _commit_writes(cpu.bus, writes)
    st.gprs[RSP] = (int(st.gprs[RSP]) & ~_M16 & _M64) | sp
    st.gprs[RFLAGS] = int(st.gprs[RFLAGS]) & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC) & _M64
    cs = st.segs[CS]
    cs.selector = new_cs
    cs.base = new_cs << 4
    st.gprs[RIP] = new_ip


def _read_gate(cpu, ev, size):
    st = cpu.state
    idt = st.segs[IDT]
    ext = ev.ext
    vec_ec = _idt_ec(ev.vector, ext)
    if ev.vector * size + size - 1 > int(idt.limit):
        _fault(GP, vec_ec, f"vector {ev.vector:#x} beyond the IDT limit {int(idt.limit):#x}")
    raw = cpu.read(int(idt.base) + ev.vector * size, size, (GP, vec_ec))
    lo, hi = raw & _M32, (raw >> 32) & _M32
    gate = {
        "offset": (lo & 0xFFFF) | (hi & 0xFFFF_0000),
        "selector": lo >> 16,
        "ist": hi & 7,
        "type": (hi >> 8) & 0xF,
        "s": (hi >> 12) & 1,
        "dpl": (hi >> 13) & 3,
        "p": (hi >> 15) & 1,
    }
    if size == 16:
        gate["offset"] |= ((raw >> 64) & _M32) << 32
        gate["upper_type"] = (raw >> 104) & 0x1F
    return gate


def _check_gate(cpu, ev, gate, valid_types, cpl):
    vec_ec = _idt_ec(ev.vector, ev.ext)
    if gate["s"] or gate["type"] not in valid_types or gate.get("upper_type", 0):
        _fault(GP, vec_ec, f"IDT entry {ev.vector:#x} is not a valid gate (type {gate['type']:#x})")
    if ev.kind == "soft" and gate["dpl"] < cpl:
        _fault(GP, _idt_ec(ev.vector, 0),
               f"INT {ev.vector:#x} at CPL {cpl} through a gate of DPL {gate['dpl']}")
    if not gate["p"]:
        _fault(NP, vec_ec, f"IDT gate {ev.vector:#x} not present")
    if gate["type"] == TASK_GATE:
        raise UnsupportedEvent(f"vector {ev.vector:#x} goes through a task gate: "
                               "task switches are not supported")


def _code_segment(cpu, ev, gate, cpl):
    """Fetch and check the gate's target code segment; return (descriptor, new CPL)."""
    ext = ev.ext
    sel = gate["selector"]
    if not sel & 0xFFFC:
        _fault(GP, ext, f"IDT gate {ev.vector:#x} has a null code selector")
    d = cpu.descriptor(sel, GP, ext)
    ec = _sel_ec(sel, ext)
    if not _is_code(d) or d["dpl"] > cpl:
        _fault(GP, ec, f"gate selector {sel:#x} is not a code segment of DPL <= CPL {cpl}")
    if cpu.lma and not (d["l"] == 1 and d["db"] == 0):
        _fault(GP, ec, f"gate selector {sel:#x} is not a 64-bit code segment")
    if not d["p"]:
        _fault(NP, ec, f"code segment {sel:#x} not present")
    conforming = bool(d["type"] & 4)
    return d, (cpl if conforming else d["dpl"])


def _tss_stack_legacy(cpu, ev, new_cpl):
    """(NewSS, NewESP) for ring ``new_cpl`` from a 32-bit or 16-bit TSS."""
    st = cpu.state
    tr = st.segs[TR]
    ext = ev.ext
    tr_ec = _sel_ec(int(tr.selector), ext)
    base, limit = int(tr.base), int(tr.limit)
    if tr.attrib.type in (0x1, 0x3):          # 16-bit TSS
        off = (new_cpl << 2) + 2
        if off + 3 > limit:
            _fault(TS, tr_ec, "TSS too small for the ring stack pointer")
        val = cpu.read(base + off, 4, (TS, tr_ec))
        return (val >> 16) & _M16, val & _M16
    off = (new_cpl << 3) + 4
    if off + 5 > limit:
        _fault(TS, tr_ec, "TSS too small for the ring stack pointer")
    val = cpu.read(base + off, 6, (TS, tr_ec))
    return (val >> 32) & _M16, val & _M32


def _new_stack_segment(cpu, ev, new_ss, new_cpl):
    ext = ev.ext
    if not new_ss & 0xFFFC:
        _fault(TS, ext, f"null SS for ring {new_cpl} in the TSS")
    ec = _sel_ec(new_ss, ext)
    d = cpu.descriptor(new_ss, TS, ext)
    if new_ss & 3 != new_cpl:
        _fault(TS, ec, f"TSS SS {new_ss:#x} has RPL != {new_cpl}")
    if d["dpl"] != new_cpl or not _is_writable_data(d):
        _fault(TS, ec, f"TSS SS {new_ss:#x} is not a writable data segment of DPL {new_cpl}")
    if not d["p"]:
        _fault(SS_FAULT, ec, f"stack segment {new_ss:#x} not present")
    return d


def _deliver_protected(cpu, ev):
    st = cpu.state
    flags_now = int(st.gprs[RFLAGS])
    vm = bool(flags_now & RFLAGS_VM)
    cpl = current_cpl(st)
    ext = ev.ext
    if vm and ev.kind == "soft":
        if cpu.cr4 & CR4_VME:
            raise UnsupportedEvent("INT n in virtual-8086 mode with CR4.VME (interrupt redirection)")
        if (flags_now & RFLAGS_IOPL) >> 12 < 3:
            _fault(GP, 0, "INT n in virtual-8086 mode with IOPL < 3")

    gate = _read_gate(cpu, ev, 8)
    _check_gate(cpu, ev, gate, (TASK_GATE, INT_GATE16, TRAP_GATE16, INT_GATE32, TRAP_GATE32), cpl)
    csd, new_cpl = _code_segment(cpu, ev, gate, cpl)
    sel = gate["selector"]
    size = 4 if gate["type"] in (INT_GATE32, TRAP_GATE32) else 2
    target = gate["offset"] if size == 4 else gate["offset"] & _M16

    flags = _flags_image(st, ev)
    ret = _return_rip(st, ev) & (_M32 if size == 4 else _M16)
    old_cs = int(st.segs[CS].selector)
    tail = [flags, old_cs, ret] + ([ev.error_code] if ev.pushes_error else [])

    privilege_change = new_cpl < cpl
    if vm and not privilege_change:
        _fault(GP, _sel_ec(sel, ext), "interrupt from virtual-8086 mode to a non-ring-0 handler")
    if vm and new_cpl != 0:
        _fault(GP, _sel_ec(sel, ext), "interrupt from virtual-8086 mode to a handler of DPL != 0")

    if privilege_change:
        new_ss, new_esp = _tss_stack_legacy(cpu, ev, new_cpl)
        ssd = _new_stack_segment(cpu, ev, new_ss, new_cpl)
        old_esp = int(st.gprs[RSP]) & _M32
        values = [int(st.segs[SS].selector), old_esp] + tail
        if vm:
            values = [int(st.segs[i].selector) for i in (GS, FS, DS, ES)] + values
        plan = _legacy_stack(ssd["base"], ssd["limit"], ssd["db"], ssd["type"] & 4,
                             new_esp, values, size)
        if plan is None:
            _fault(SS_FAULT, _sel_ec(new_ss, ext), "new stack has no room for the frame")
    else:
        ss = st.segs[SS]
        plan = _legacy_stack(int(ss.base), int(ss.limit), getattr(ss.attrib, "def"),
                             ss.attrib.type & 4, int(st.gprs[RSP]), tail, size)
        if plan is None:
            _fault(SS_FAULT, ext, "stack has no room for the frame")
    pushes, esp = plan
    if target > csd["limit"]:
        _fault(GP, ext, f"handler offset {target:#x} beyond the code segment limit")

    # Everything checked: translate, then write, then update the state.
    writes = cpu.plan_accessed(csd)
    if privilege_change:
        writes += cpu.plan_accessed(ssd)
    for lin, data in pushes:
        writes += cpu.plan_write(lin, data, new_cpl, (SS_FAULT, ext))
    _commit_writes(cpu.bus, writes)

    if privilege_change:
        _load_seg(st.segs[SS], new_ss, ssd)
        if vm:
            for i in (GS, FS, DS, ES):
                _null_seg(st.segs[i])
    st.gprs[RSP] = esp
    _load_seg(st.segs[CS], (sel & ~3) | new_cpl, csd)
    st.gprs[RIP] = target
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if gate["type"] in (INT_GATE16, INT_GATE32):
        clear |= RFLAGS_IF
    st.gprs[RFLAGS] = flags_now & ~clear & _M64


def _deliver_long(cpu, ev):
    st = cpu.state
    cpl = current_cpl(st)
    ext = ev.ext
    gate = _read_gate(cpu, ev, 16)
    _check_gate(cpu, ev, gate, (INT_GATE32, TRAP_GATE32), cpl)
    csd, new_cpl = _code_segment(cpu, ev, gate, cpl)
    sel = gate["selector"]
    privilege_change = new_cpl < cpl
    ist = gate["ist"]

    if privilege_change or ist:
        tr = st.segs[TR]
        tr_ec = _sel_ec(int(tr.selector), ext)
        off = (ist << 3) + 28 if ist else (new_cpl << 3) + 4
        if off + 7 > int(tr.limit):
            _fault(TS, tr_ec, "TSS too small for the " + (f"IST{ist}" if ist else f"RSP{new_cpl}")
                   + " field")
        rsp = cpu.read(int(tr.base) + off, 8, (TS, tr_ec))
    else:
        rsp = int(st.gprs[RSP]) & _M64
    if not cpu.canonical(rsp):
        _fault(SS_FAULT, ext, f"new RSP {rsp:#x} is not canonical")
    target = gate["offset"]
    if not cpu.canonical(target):
        _fault(GP, ext, f"handler RIP {target:#x} is not canonical")
    rsp &= ~0xF & _M64

    values = [int(st.segs[SS].selector), int(st.gprs[RSP]), _flags_image(st, ev),
              int(st.segs[CS].selector), _return_rip(st, ev)]
    if ev.pushes_error:
        values.append(ev.error_code)
    writes = cpu.plan_accessed(csd)
    for v in values:
        rsp = (rsp - 8) & _M64
        if not cpu.canonical(rsp):
            _fault(SS_FAULT, ext, f"push at non-canonical {rsp:#x}")
        writes += cpu.plan_write(rsp, (v & _M64).to_bytes(8, "little"), new_cpl, (SS_FAULT, ext))
    _commit_writes(cpu.bus, writes)

    if privilege_change:
        # SS := null selector with RPL = new CPL; kept usable with DPL = CPL.
        ss = st.segs[SS]
        ss.selector = new_cpl
        ss.base = 0
        ss.limit = 0xFFFF_FFFF
        a = ss.attrib
        a.type, a.s, a.dpl, a.p, a.avl, a.l, a.g = 0x3, 1, new_cpl, 1, 0, 0, 1
        setattr(a, "def", 1)
    st.gprs[RSP] = rsp
    _load_seg(st.segs[CS], (sel & ~3) | new_cpl, csd)
    st.gprs[RIP] = target
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if gate["type"] == INT_GATE32:
        clear |= RFLAGS_IF
    st.gprs[RFLAGS] = int(st.gprs[RFLAGS]) & ~clear & _M64


def _deliver_once(state, bus, ev):
    cpu = _Cpu(state, bus)
    if not cpu.cr0 & CR0_PE:
        _deliver_real(cpu, ev)
    elif cpu.lma:
        _deliver_long(cpu, ev)
    else:
        _deliver_protected(cpu, ev)


# ---------------------------------------------------------------- entry point

def _validate(vector, kind, error_code, next_rip):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not isinstance(vector, int) or not 0 <= vector <= 255:
        raise ValueError(f"vector must be 0..255, not {vector!r}")
    if kind == "exception":
        if vector > 31:
            raise ValueError(f"exception vectors are 0..31, not {vector}")
        if vector == NMI:
            raise ValueError("NMI (vector 2) is delivered with kind 'hw'")
        if vector in ERROR_CODE_VECTORS:
            return 0 if error_code is None else error_code & _M32
    if error_code is not None:
        raise ValueError(f"vector {vector} of kind {kind!r} has no error code")
    if kind == "soft" and next_rip is None:
        raise ValueError("kind 'soft' needs next_rip (the address after INT n)")
    return None


def deliver(state, bus, vector: int, kind: str, error_code: int | None = None,
            next_rip: int | None = None) -> None:
    """Deliver one event through the guest's IVT (real mode) or IDT (protected /
    long mode), mutating ``state``.

    ``kind``: ``"hw"`` (external interrupt, or NMI as vector 2), ``"exception"``
    (fault/trap/abort: the return address is the state's RIP; the vectors in
    arch.ERROR_CODE_VECTORS push ``error_code``, default 0, outside real mode) or ``"soft"``
    (INT n / INT3 / INTO: the return address is ``next_rip`` and the gate's DPL
    must be >= CPL, else #GP(vector*8+2)).

    A fault raised by the delivery is handled as the CPU does (SDM table 6-5):
    delivered serially, or turned into #DF(0); a fault while delivering #DF
    raises :class:`TripleFault`.  Task gates raise :class:`UnsupportedEvent`.
    """
    error_code = _validate(vector, kind, error_code, next_rip)
    ev = _Event(vector, kind, error_code, next_rip)
    chain = [(vector, kind, error_code, "")]
    while True:
        try:
            _deliver_once(state, bus, ev)
            return
        except DeliveryFault as fault:
            chain.append((fault.vector, "exception", fault.error_code, fault.reason))
            if ev.kind == "exception" and ev.vector == DF:
                raise TripleFault(chain) from fault
            second = _Event(fault.vector, "exception",
                            fault.error_code if fault.vector in ERROR_CODE_VECTORS else None,
                            None, fault.reason)
            first_class, second_class = ev.klass, second.klass
            if ((first_class == "contributory" and second_class == "contributory")
                    or (first_class == "pagefault" and second_class in ("contributory", "pagefault"))):
                ev = _Event(DF, "exception", 0, None, "double fault")
                chain.append((DF, "exception", 0, "double fault"))
            else:
                ev = second
