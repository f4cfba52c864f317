"""Precise exits at the addresses scan.CodeScanner registered: IN/OUT/INS/OUTS, HLT, RDMSR/WRMSR
and CPUID, reported as NVMM reports them (RIP at the instruction, npc after it), after the
privilege checks the CPU makes first; known MSRs and unmasked CPUID leaves are answered in place.
A mixin of UnicornVCpu: _at_exit runs on every such exit, so it reads the vCPU's fields directly.
"""
from unicorn import x86_const as x86

from nvmmpy.emulator import pagewalk

from ... import constants as nvmm
from ...errors import NvmmError
from .scan import classify_exit

# MSRs unicorn implements itself, as NVMM's kernel does for its own set; others exit to the VMM.
KNOWN_MSRS = frozenset({0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000100,
                        0xC0000101, 0xC0000102, 0xC0000103, 0x174, 0x175, 0x176, 0x277, 0x10, 0x1B})

# Features unicorn announces but does not run as a CPU does, hidden from the guest: its TCG raises
# #UD for the VEX-encoded BMI1/BMI2 instructions (andn, shlx, ...) while CR4.OSFXSR is clear, which
# real CPUs do not require (Linux's bzImage decompressor runs shlx with CR4 = PAE only).
HIDDEN_FEATURES = {7: (0, 1 << 3 | 1 << 8, 0, 0)}   # leaf 7, subleaf 0

RESUME = object()  # an exit address handled in place: keep running the guest


class InstructionExits:
    """The exits of instructions found by scanning (UnicornVCpu's)."""

    def _at_exit(self, rip: int):
        fast = self._fast
        cr0 = fast.read(x86.UC_X86_REG_CR0)
        efer = fast.read_msr(0xC0000080)
        base, _, flags = self._seg_info(nvmm.X64_SEG_CS, fast.read16(x86.UC_X86_REG_CS), cr0, efer)
        linear = (base + rip) & 0xFFFFFFFFFFFFFFFF
        code_pages = self._code
        if linear not in code_pages.exits:
            return None
        info = code_pages.exit_info.get(linear)
        if info is None:
            code = self._read_linear(linear, 15, partial=True)
            mode = 64 if (flags >> 21) & 1 and efer & nvmm.EFER_LMA else (32 if (flags >> 22) & 1 else 16)
            info = classify_exit(code, mode)
            if info is None:
                # not one of ours after all (a prefix byte sequence): drop the exit and go on
                code_pages.drop_exit(linear)
                return RESUME
            code_pages.exit_info[linear] = info
        st = self.state
        # What the privilege check needs, and no more: CR0 and SS's selector (its RPL is the CPL).
        # (Reading every segment descriptor here cost ~90 us per CPL3 exit.)
        st.crs[nvmm.X64_CR_CR0] = cr0
        st.segs[nvmm.X64_SEG_SS].selector = fast.read16(x86.UC_X86_REG_SS) if cr0 & nvmm.CR0_PE else 0
        kind, length, *rest = info
        ex = self.exit
        npc = rip + length
        if self._privilege_fault(kind, rest, st):
            r = self._deliver("exception", 13, 0)
            return RESUME if r is None else r
        if kind == "io":
            in_, port_imm, size, rep, string, asize = rest
            io = ex.io
            io.in_ = in_
            io.port = port_imm if port_imm is not None else fast.read(x86.UC_X86_REG_RDX) & 0xFFFF
            io.operand_size, io.rep, io.str, io.address_size = size, rep, string, asize
            io.seg, io.npc, io.count = -1, npc, 1
            ex.reason = nvmm.VCPU_EXIT_IO
            self._io_completed = False
            self._io_info = (rip, npc, string, in_, io.port, size)
            self._rip = rip
            return ex
        if kind == "hlt":
            self.uc.reg_write(x86.UC_X86_REG_RIP, npc)
            ex.reason = nvmm.VCPU_EXIT_HALTED
            return ex
        if kind in ("rdmsr", "wrmsr"):
            msr = self.uc.reg_read(x86.UC_X86_REG_RCX) & 0xFFFFFFFF
            if msr in KNOWN_MSRS:
                self._emulate_known_msr(kind, msr, npc)
                return RESUME
            if kind == "rdmsr":
                ex.rdmsr.msr, ex.rdmsr.npc = msr, npc
                ex.reason = nvmm.VCPU_EXIT_RDMSR
            else:
                val = (self.uc.reg_read(x86.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (self.uc.reg_read(x86.UC_X86_REG_RAX) & 0xFFFFFFFF)
                ex.wrmsr.msr, ex.wrmsr.val, ex.wrmsr.npc = msr, val, npc
                ex.reason = nvmm.VCPU_EXIT_WRMSR
            self._rip = rip
            return ex
        if kind == "cpuid":
            leaf = self.uc.reg_read(x86.UC_X86_REG_RAX) & 0xFFFFFFFF
            conf = self.cpuid_confs.get(leaf)
            if conf is not None and conf.exit:
                ex.insn.npc = npc
                ex.reason = nvmm.VCPU_EXIT_CPUID
                self._rip = rip
                return ex
            sub = self.uc.reg_read(x86.UC_X86_REG_RCX) & 0xFFFFFFFF
            for rid, v in zip((x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX),
                              self._cpuid_values(leaf, sub)):
                self.uc.reg_write(rid, v)
            self.uc.reg_write(x86.UC_X86_REG_RIP, npc)
            return RESUME
        return None

    def _halted_at(self, rip: int):
        """Without scanning, unicorn runs HLT itself and returns from emu_start after it: a clean
        return right behind an HLT byte is the HALTED exit (at CPL0 only; at CPL3 HLT is #GP)."""
        try:
            before = self._read_linear(self._cs_base() + rip - 1, 1)
        except (NvmmError, pagewalk.PageFault):
            return None
        if before != b"\xf4":
            return None
        self.exit.reason = nvmm.VCPU_EXIT_HALTED
        return self.exit

    def _privilege_fault(self, kind, rest, st) -> bool:
        """Would the CPU raise #GP(0) before this instruction exits? (CPL and I/O permission.)"""
        cpl = st.segs[nvmm.X64_SEG_SS].selector & 3 if st.crs[nvmm.X64_CR_CR0] & nvmm.CR0_PE else 0
        if cpl == 0 or kind == "cpuid":
            return False
        if kind != "io":
            return True  # HLT, RDMSR, WRMSR are CPL0-only
        iopl = (self.uc.reg_read(x86.UC_X86_REG_RFLAGS) >> 12) & 3
        if cpl <= iopl:
            return False
        port = rest[1] if rest[1] is not None else self.uc.reg_read(x86.UC_X86_REG_RDX) & 0xFFFF
        _, tr_base, tr_limit, _ = self.uc.reg_read(x86.UC_X86_REG_TR)
        try:
            base = int.from_bytes(self._read_linear(tr_base + 102, 2), "little")
            last = base + (port + rest[2] - 1) // 8
            if tr_limit < last:
                return True
            bits = int.from_bytes(self._read_linear(tr_base + base + port // 8, last - base - port // 8 + 1), "little")
        except (NvmmError, pagewalk.PageFault):
            return True
        return bool((bits >> (port % 8)) & ((1 << rest[2]) - 1))

    def _emulate_known_msr(self, kind, msr, npc):
        uc = self.uc
        if kind == "rdmsr":
            v = uc.msr_read(msr)
            uc.reg_write(x86.UC_X86_REG_RAX, v & 0xFFFFFFFF)
            uc.reg_write(x86.UC_X86_REG_RDX, v >> 32)
        else:
            v = (uc.reg_read(x86.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(x86.UC_X86_REG_RAX) & 0xFFFFFFFF)
            uc.msr_write(msr, v)
        uc.reg_write(x86.UC_X86_REG_RIP, npc)

    def _cpuid_values(self, leaf, sub):
        """Unicorn's CPUID answer with this vCPU's masks applied (hypervisor bit and APIC id set)."""
        probe = self._um.cpuid_probe(leaf, sub)
        regs = list(probe)
        if leaf == 1:
            regs[1] = (regs[1] & 0x00FFFFFF) | ((self.cpuid & 0xFF) << 24)
            regs[2] |= 1 << 31
        hidden = HIDDEN_FEATURES.get(leaf) if sub == 0 else None
        if hidden is not None:
            regs = [r & ~h for r, h in zip(regs, hidden)]
        conf = self.cpuid_confs.get(leaf)
        if conf is not None and conf.mask:
            regs = [(r & ~d) | s for r, s, d in zip(regs, conf.set, conf.del_)]
        return regs
