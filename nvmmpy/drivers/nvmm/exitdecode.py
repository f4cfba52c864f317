"""struct nvmm_vcpu_exit (as VCPU_RUN returns it) into the driver-independent Exit object.

The kernel's payloads are NVMM's own, so this is a field copy: nothing is reinterpreted. MEMORY
exits keep the instruction bytes SVM's decode assists provide (inst_len 0 on VMX, and on SVM
without decode assists: the assist then fetches them through a guest page walk).
"""
from ... import constants as nvmm
from .abi import ffi

_INSN_EXITS = (nvmm.VCPU_EXIT_MONITOR, nvmm.VCPU_EXIT_MWAIT, nvmm.VCPU_EXIT_CPUID)


def decode(k, ex) -> None:
    """Fill Exit `ex` from the cdata `struct nvmm_vcpu_exit` `k`."""
    reason = k.reason
    ex.reason = reason
    u = k.u
    if reason == nvmm.VCPU_EXIT_MEMORY:
        m, out = u.mem, ex.mem
        out.prot = m.prot
        out.gpa = m.gpa
        n = min(m.inst_len, 15)
        out.inst_len = n
        out.inst_bytes = bytes(ffi.buffer(m.inst_bytes, 15))[:n] if n else b""
        out.size = 0
    elif reason == nvmm.VCPU_EXIT_IO:
        io, out = u.io, ex.io
        out.in_ = bool(getattr(io, "in"))
        out.port = io.port
        out.seg = io.seg
        out.address_size = io.address_size
        out.operand_size = io.operand_size
        out.rep = bool(io.rep)
        out.str = bool(io.str)
        out.npc = io.npc
        out.count = 1
    elif reason == nvmm.VCPU_EXIT_RDMSR:
        ex.rdmsr.msr, ex.rdmsr.npc = u.rdmsr.msr, u.rdmsr.npc
    elif reason == nvmm.VCPU_EXIT_WRMSR:
        ex.wrmsr.msr, ex.wrmsr.val, ex.wrmsr.npc = u.wrmsr.msr, u.wrmsr.val, u.wrmsr.npc
    elif reason in _INSN_EXITS:
        ex.insn.npc = u.insn.npc
    elif reason == nvmm.VCPU_EXIT_INVALID:
        ex.inv.hwcode = u.inv.hwcode
        ex.inv.detail = f"NVMM could not handle hardware exit code {u.inv.hwcode:#x}"
    es, out = k.exitstate, ex.exitstate
    out.rflags = es.rflags
    out.cr8 = es.cr8
    out.int_shadow = es.int_shadow
    out.int_window_exiting = es.int_window_exiting
    out.nmi_window_exiting = es.nmi_window_exiting
    out.evt_pending = es.evt_pending
