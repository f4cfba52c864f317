"""Translation between NVMM's state groups and KVM's register structures.

SEGS and CRS live in kvm_sregs (EFER too, though NVMM files it under MSRS); GPRS in kvm_regs
(the kvm_run sync area); DRS in kvm_debugregs; the other MSRS through KVM_GET/SET_MSRS; XCR0
through KVM_GET/SET_XCRS; FPU is the legacy FXSAVE image at the start of KVM's XSAVE area.
"""
from ... import constants as nvmm

# NVMM GPR index -> kvm_regs field
GPR_FIELDS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")

# NVMM segment index -> kvm_sregs field (GDT and IDT are kvm_dtables)
SEG_FIELDS = {nvmm.X64_SEG_ES: "es", nvmm.X64_SEG_CS: "cs", nvmm.X64_SEG_SS: "ss", nvmm.X64_SEG_DS: "ds",
              nvmm.X64_SEG_FS: "fs", nvmm.X64_SEG_GS: "gs", nvmm.X64_SEG_LDT: "ldt", nvmm.X64_SEG_TR: "tr"}
DTABLE_FIELDS = {nvmm.X64_SEG_GDT: "gdt", nvmm.X64_SEG_IDT: "idt"}

# NVMM MSR index -> architectural MSR number (EFER is carried by kvm_sregs)
MSR_NUMBERS = {
    nvmm.X64_MSR_STAR: 0xC0000081,
    nvmm.X64_MSR_LSTAR: 0xC0000082,
    nvmm.X64_MSR_CSTAR: 0xC0000083,
    nvmm.X64_MSR_SFMASK: 0xC0000084,
    nvmm.X64_MSR_KERNELGSBASE: 0xC0000102,
    nvmm.X64_MSR_SYSENTER_CS: 0x174,
    nvmm.X64_MSR_SYSENTER_ESP: 0x175,
    nvmm.X64_MSR_SYSENTER_EIP: 0x176,
    nvmm.X64_MSR_PAT: 0x277,
    nvmm.X64_MSR_TSC: 0x10,
}


def gprs_from_kvm(st, regs) -> None:
    g = st.gprs
    for i, name in enumerate(GPR_FIELDS):
        g[i] = getattr(regs, name)


def gprs_to_kvm(regs, st) -> None:
    g = st.gprs
    for i, name in enumerate(GPR_FIELDS):
        setattr(regs, name, g[i])


def segs_from_kvm(st, sregs) -> None:
    for idx, name in SEG_FIELDS.items():
        src = getattr(sregs, name)
        dst = st.segs[idx]
        dst.selector = src.selector
        dst.base = src.base
        dst.limit = src.limit
        a = dst.attrib
        a.type = src.type
        a.s = src.s
        a.dpl = src.dpl
        a.p = 1 if (src.present and not src.unusable) else 0
        a.avl = src.avl
        a.l = src.l
        setattr(a, "def", src.db)
        a.g = src.g
    for idx, name in DTABLE_FIELDS.items():
        src = getattr(sregs, name)
        dst = st.segs[idx]
        dst.selector = 0
        dst.base = src.base
        dst.limit = src.limit


def segs_to_kvm(sregs, st) -> None:
    for idx, name in SEG_FIELDS.items():
        src = st.segs[idx]
        dst = getattr(sregs, name)
        a = src.attrib
        dst.selector = src.selector
        dst.base = src.base
        dst.limit = src.limit
        dst.type = a.type
        dst.s = a.s
        dst.dpl = a.dpl
        dst.present = a.p
        dst.avl = a.avl
        dst.l = a.l
        dst.db = getattr(a, "def")
        dst.g = a.g
        dst.unusable = 0 if a.p else 1
    for idx, name in DTABLE_FIELDS.items():
        src = st.segs[idx]
        dst = getattr(sregs, name)
        dst.base = src.base
        dst.limit = src.limit & 0xFFFF


def crs_from_kvm(st, sregs) -> None:
    c = st.crs
    c[nvmm.X64_CR_CR0] = sregs.cr0
    c[nvmm.X64_CR_CR2] = sregs.cr2
    c[nvmm.X64_CR_CR3] = sregs.cr3
    c[nvmm.X64_CR_CR4] = sregs.cr4
    c[nvmm.X64_CR_CR8] = sregs.cr8


def crs_to_kvm(sregs, st) -> None:
    c = st.crs
    sregs.cr0 = c[nvmm.X64_CR_CR0]
    sregs.cr2 = c[nvmm.X64_CR_CR2]
    sregs.cr3 = c[nvmm.X64_CR_CR3]
    sregs.cr4 = c[nvmm.X64_CR_CR4]
    sregs.cr8 = c[nvmm.X64_CR_CR8]


def fpu_from_fxsave(st, ffi, region) -> None:
    ffi.memmove(ffi.addressof(st, "fpu"), region, 512)


def fpu_to_fxsave(region, ffi, st) -> None:
    ffi.memmove(region, ffi.addressof(st, "fpu"), 512)
