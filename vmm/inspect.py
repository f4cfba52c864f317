"""What a person needs to see when a guest dies: registers and the instruction at RIP."""
from nvmmpy import constants as nvmm

GPR_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
             "r13", "r14", "r15", "rip", "rflags"]


def _mode(st) -> int:
    a = st.segs[nvmm.X64_SEG_CS].attrib
    if a.l and st.msrs[nvmm.X64_MSR_EFER] & nvmm.EFER_LMA:
        return 64
    return 32 if getattr(a, "def") else 16


def instruction_at_rip(machine, vcpu, rip: int | None = None) -> str:
    """'mov dword ptr [rdi], eax (89 07)' at CS:RIP (or CS:rip), or why it cannot be shown."""
    import capstone
    try:
        st = vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS)
        mode = _mode(st)
        rip = st.gprs[nvmm.X64_GPR_RIP] if rip is None else rip
        linear = st.segs[nvmm.X64_SEG_CS].base + rip
        if st.crs[nvmm.X64_CR_CR0] & nvmm.CR0_PG:
            gpa, _ = machine.gva_to_gpa(vcpu, linear)
        else:
            gpa = linear & 0xFFFFFFFF
        a = machine.areas.lookup(gpa)
        if a is None:
            return f"(rip {rip:#x} is not in guest RAM)"
        code = machine.read_guest(gpa, min(15, a.gpa + a.size - gpa))
        md = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                                 64: capstone.CS_MODE_64}[mode])
        for insn in md.disasm(code, rip, 1):
            return f"{insn.mnemonic} {insn.op_str} ({insn.bytes.hex(' ')})"
        return f"(undecodable bytes {code.hex(' ')})"
    except Exception as e:  # a dump must never raise
        return f"(instruction not readable: {e})"


def register_dump(machine, vcpu):
    """({name: value}, instruction at RIP) for a post-mortem."""
    try:
        st = vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS)
    except Exception:
        return {}, ""
    regs = {n: st.gprs[i] for i, n in enumerate(GPR_NAMES)}
    regs.update(cs=st.segs[nvmm.X64_SEG_CS].selector, ss=st.segs[nvmm.X64_SEG_SS].selector,
                cr0=st.crs[nvmm.X64_CR_CR0], cr2=st.crs[nvmm.X64_CR_CR2], cr3=st.crs[nvmm.X64_CR_CR3],
                cr4=st.crs[nvmm.X64_CR_CR4], efer=st.msrs[nvmm.X64_MSR_EFER])
    return regs, instruction_at_rip(machine, vcpu)
