"""Put a vCPU into real, protected or long mode with flat segments, the way a loader hands over.

Writes a GDT (with a 64-bit TSS), identity page tables (2 MiB pages) and the register state a
guest expects at entry, into guest RAM given as a writable buffer. Works on any nvmmpy driver.

Low-memory layout used (all below 64 KiB, page-aligned):
    0x0500  GDT            0x0600  TSS (104 bytes + an 8 KiB I/O bitmap allowing every port)
    0x4000  PML4           0x5000  PDPT            0x6000-0x9FFF  4 page directories (4 GiB)
"""
import struct

from nvmmpy import constants as nvmm

GDT_ADDR = 0x500
TSS_ADDR = 0x600
PML4_ADDR = 0x4000
PDPT_ADDR = 0x5000
PD_ADDR = 0x6000

SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
SEL_DATA_USER = 0x20 | 3
SEL_CODE64_USER = 0x28 | 3
SEL_CODE32_USER = 0x30 | 3
SEL_TSS = 0x38
GDT_LIMIT = 0x48 - 1

# access byte, flags nibble for each descriptor
_DESCRIPTORS = {
    SEL_CODE64: (0x9B, 0xA),        # present, DPL0, code exec/read accessed; G, L
    SEL_DATA: (0x93, 0xC),          # data read/write accessed; G, D/B
    SEL_CODE32: (0x9B, 0xC),        # 32-bit code; G, D
    SEL_DATA_USER & ~3: (0xF3, 0xC),
    SEL_CODE64_USER & ~3: (0xFB, 0xA),
    SEL_CODE32_USER & ~3: (0xFB, 0xC),
}


def _descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    d = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40) | (((limit >> 16) & 0xF) << 48) \
        | (flags << 52) | (((base >> 24) & 0xFF) << 56)
    return d.to_bytes(8, "little")


TSS_LIMIT = 104 + 8192  # the I/O bitmap's terminator byte is the last one


def write_gdt(ram, kernel_stack: int = 0x3000) -> None:
    """GDT at GDT_ADDR and a 64-bit TSS at TSS_ADDR whose RSP0 is `kernel_stack`.

    The TSS carries an all-zero I/O permission bitmap so CPL3 code may use every port: some
    software-assisted KVMs (kvm_pvm) ignore RFLAGS.IOPL at CPL3 but honour the bitmap.
    """
    gdt = bytearray(GDT_LIMIT + 1)
    for sel, (access, flags) in _DESCRIPTORS.items():
        gdt[sel:sel + 8] = _descriptor(0, 0xFFFFF, access, flags)
    low = _descriptor(TSS_ADDR, TSS_LIMIT, 0x89, 0x0)  # available 64-bit TSS
    gdt[SEL_TSS:SEL_TSS + 8] = low
    gdt[SEL_TSS + 8:SEL_TSS + 16] = ((TSS_ADDR >> 32) & 0xFFFFFFFF).to_bytes(8, "little")
    ram[GDT_ADDR:GDT_ADDR + len(gdt)] = gdt
    tss = bytearray(TSS_LIMIT + 1)
    tss[4:12] = kernel_stack.to_bytes(8, "little")  # RSP0
    tss[102:104] = (104).to_bytes(2, "little")       # I/O bitmap right after the TSS
    tss[TSS_LIMIT] = 0xFF
    ram[TSS_ADDR:TSS_ADDR + len(tss)] = tss


def write_identity_page_tables(ram, size: int = 1 << 30) -> None:
    """Identity-map [0, size) with 2 MiB pages (size up to 4 GiB), writable, user-accessible."""
    npd = max(1, (size + (1 << 30) - 1) >> 30)
    if npd > 4:
        raise ValueError("identity map covers at most 4 GiB")
    ram[PML4_ADDR:PML4_ADDR + 8] = (PDPT_ADDR | 0x7).to_bytes(8, "little")
    for i in range(npd):
        ram[PDPT_ADDR + 8 * i:PDPT_ADDR + 8 * i + 8] = (PD_ADDR + 0x1000 * i | 0x7).to_bytes(8, "little")
    n = min(512 * npd, (size + (1 << 21) - 1) >> 21)
    entries = struct.pack(f"<{n}Q", *range(0x87, n << 21, 1 << 21))  # present, writable, user, PS
    ram[PD_ADDR:PD_ADDR + len(entries)] = entries


def _seg(st, idx, selector, base, limit, type_, s=1, dpl=0, l=0, d=0, g=0, p=1):
    seg = st.segs[idx]
    seg.selector, seg.base, seg.limit = selector, base, limit
    a = seg.attrib
    a.type, a.s, a.dpl, a.p, a.l, a.g, a.avl = type_, s, dpl, p, l, g, 0
    setattr(a, "def", d)


def _system_segs(st, tss_base=TSS_ADDR, tss_limit=TSS_LIMIT, gdt_base=0, gdt_limit=0xFFFF):
    _seg(st, nvmm.X64_SEG_TR, SEL_TSS if gdt_base else 0, tss_base, tss_limit, 11, s=0)
    _seg(st, nvmm.X64_SEG_LDT, 0, 0, 0, 2, s=0, p=0)
    gdt = st.segs[nvmm.X64_SEG_GDT]
    gdt.base, gdt.limit = gdt_base, gdt_limit
    idt = st.segs[nvmm.X64_SEG_IDT]
    idt.base, idt.limit = 0, 0xFFFF  # the real-mode IVT until the guest loads an IDT


_DATA_SEGS = (nvmm.X64_SEG_ES, nvmm.X64_SEG_SS, nvmm.X64_SEG_DS, nvmm.X64_SEG_FS, nvmm.X64_SEG_GS)


def _flat_segs(st, cpl: int, code_sel: int, **cs_bits) -> None:
    """Flat 4 GiB data segments and code segment (`cs_bits`: d=1 for 32-bit, l=1 for 64-bit) at
    `cpl`, and the GDT of write_gdt."""
    dsel = SEL_DATA_USER if cpl else SEL_DATA
    for idx in _DATA_SEGS:
        _seg(st, idx, dsel, 0, 0xFFFFFFFF, 3, dpl=cpl, d=1, g=1)
    _seg(st, nvmm.X64_SEG_CS, code_sel, 0, 0xFFFFFFFF, 11, dpl=cpl, g=1, **cs_bits)
    _system_segs(st, gdt_base=GDT_ADDR, gdt_limit=GDT_LIMIT)


def _finish(vcpu, *, cr0: int, cr3: int, cr4: int, efer: int, rip: int, rsp: int, rflags: int) -> None:
    """The mode's control registers, EFER and entry registers, then the whole state to the vCPU."""
    st = vcpu.state
    st.crs[nvmm.X64_CR_CR0] = cr0
    st.crs[nvmm.X64_CR_CR3] = cr3
    st.crs[nvmm.X64_CR_CR4] = cr4
    st.msrs[nvmm.X64_MSR_EFER] = efer
    st.gprs[nvmm.X64_GPR_RIP] = rip
    st.gprs[nvmm.X64_GPR_RSP] = rsp
    st.gprs[nvmm.X64_GPR_RFLAGS] = rflags
    vcpu.setstate(nvmm.X64_STATE_ALL)


def set_real_mode(vcpu, cs: int, ip: int, sp: int = 0xFFF0) -> None:
    """Real mode at cs:ip, all data segments = cs, stack ss:sp = cs:sp."""
    vcpu.getstate(nvmm.X64_STATE_ALL)
    st = vcpu.state
    base = (cs & 0xFFFF) << 4
    for idx in _DATA_SEGS:
        _seg(st, idx, cs, base, 0xFFFF, 3)
    _seg(st, nvmm.X64_SEG_CS, cs, base, 0xFFFF, 11)
    _system_segs(st, tss_base=0, tss_limit=0xFFFF)
    _finish(vcpu, cr0=nvmm.CR0_ET | nvmm.CR0_NE, cr3=0, cr4=0, efer=0, rip=ip, rsp=sp, rflags=nvmm.RFLAGS_FIXED)


def set_protected_mode(vcpu, ram, entry: int, stack: int, cpl: int = 0, iopl: int = 0) -> None:
    """32-bit protected mode, paging off, flat 4 GiB segments."""
    write_gdt(ram, kernel_stack=stack)
    vcpu.getstate(nvmm.X64_STATE_ALL)
    st = vcpu.state
    _flat_segs(st, cpl, SEL_CODE32_USER if cpl else SEL_CODE32, d=1)
    _finish(vcpu, cr0=nvmm.CR0_PE | nvmm.CR0_ET | nvmm.CR0_NE, cr3=0, cr4=nvmm.CR4_OSFXSR | nvmm.CR4_OSXMMEXCPT,
            efer=0, rip=entry, rsp=stack, rflags=nvmm.RFLAGS_FIXED | (iopl << 12))


def set_long_mode(vcpu, ram, entry: int, stack: int, cpl: int = 0, iopl: int = 0,
                  kernel_stack: int | None = None, map_size: int = 1 << 30) -> None:
    """64-bit long mode with identity paging over `map_size`; at CPL3 when cpl=3.

    `kernel_stack` is the TSS RSP0 used when an interrupt arrives at CPL3.
    """
    write_gdt(ram, kernel_stack=kernel_stack if kernel_stack is not None else stack)
    write_identity_page_tables(ram, map_size)
    vcpu.getstate(nvmm.X64_STATE_ALL)
    st = vcpu.state
    _flat_segs(st, cpl, SEL_CODE64_USER if cpl else SEL_CODE64, l=1)
    _finish(vcpu, cr0=nvmm.CR0_PE | nvmm.CR0_MP | nvmm.CR0_ET | nvmm.CR0_NE | nvmm.CR0_WP | nvmm.CR0_PG,
            cr3=PML4_ADDR, cr4=nvmm.CR4_PAE | nvmm.CR4_OSFXSR | nvmm.CR4_OSXMMEXCPT,
            efer=nvmm.EFER_LME | nvmm.EFER_LMA | nvmm.EFER_SCE | nvmm.EFER_NXE,
            rip=entry, rsp=stack, rflags=nvmm.RFLAGS_FIXED | (iopl << 12))
