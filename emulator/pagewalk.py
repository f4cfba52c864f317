"""Guest-virtual to guest-physical translation for x86, done in software.

The role of libnvmm's x86_gva_to_gpa: an emulator that decodes an instruction or
follows a memory operand has a linear address and needs the guest-physical
address behind it.  This module walks the guest's own page tables through a
``read_phys(gpa, size) -> bytes`` callback, so it needs nothing from the rest of
the project (it sits at the bottom of the layering).

Covered, choosing the mode from CR0/CR4/EFER as a CPU does (Intel SDM vol. 3,
chapter 4 "Paging"; AMD APM vol. 2, chapter 5):

* paging off (identity), 32-bit paging (with PSE 4 MiB pages and PSE-36),
  PAE paging, 4-level and 5-level long-mode paging;
* R/W, U/S and XD permissions, CR0.WP for supervisor writes;
* the reserved-bit checks that matter in practice (PS where not allowed, XD
  without EFER.NXE, stray low bits in large-page addresses, PAE PDPTE bits).

Not covered: SMEP, SMAP, protection keys, PCID-tagged TLBs (there is no TLB),
and setting accessed/dirty bits (libnvmm does not set them either).
"""
from .arch import CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE, PAGE_SIZE

PROT_READ, PROT_WRITE, PROT_EXEC, PROT_USER = 1, 2, 4, 8  # NVMM's nvmm_prot_t
PROT_ALL = 0xF


# Bits of the #PF error code a CPU pushes.
PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16

# Page-table entry bits.
_P, _RW, _US, _PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
_XD = 1 << 63
# MAXPHYADDR is taken as 52, the architectural maximum, so no address bit is
# treated as reserved; bits 62:52 are ignored/software bits in PAE-format entries.
_ADDR52 = 0x000F_FFFF_FFFF_F000
# A PAE PDPTE has no R/W, U/S, A, D, PS or XD: bits 2:1, 8:5 and 63 must be zero.
_PAE_PDPTE_RSVD = 0x1E6 | _XD
_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFF_FFFF


class PageFault(Exception):
    """Translation failed.

    ``gva``: the address being translated; ``reason``: short text such as
    'not present at PML4'; ``level``: the table name ('PML5', 'PML4', 'PDPT',
    'PD', 'PT') or None when no table was involved; ``error_code``: the #PF
    error code (PF_* bits) a CPU would push, best effort.  Non-canonical
    addresses and an invalid EFER/CR4 state are #GP on a real CPU, not #PF:
    they get error_code 0.
    """

    def __init__(self, gva, reason, level=None, error_code=0):
        super().__init__(f"page fault at {gva:#x}: {reason}")
        self.gva = gva
        self.reason = reason
        self.level = level
        self.error_code = error_code


def gva_to_gpa(read_phys, cr0, cr3, cr4, efer, gva, access=0, cpl=0):
    """Translate ``gva``; return ``(gpa, prot)``.

    ``prot`` is the permission of the final mapping (PROT_* bits) as the page
    tables give it, the same for any CPL.  When ``access`` is non-zero it is
    checked as a CPU would: a write to a read-only page faults at CPL 3 or
    when CR0.WP is set, a user access (``cpl == 3`` or PROT_USER in
    ``access``) to a supervisor page faults, an instruction fetch from an XD
    page faults.  A page-table read that ``read_phys`` cannot satisfy raises
    PageFault, whatever exception ``read_phys`` itself raised.
    """
    user = cpl == 3 or bool(access & PROT_USER)
    nx_mode = bool(efer & EFER_NXE) and bool(cr4 & CR4_PAE)

    def fault(reason, level=None, present=False, rsvd=False, code=True):
        ec = 0
        if code:
            ec = ((PF_P if present or rsvd else 0) | (PF_RSVD if rsvd else 0)
                  | (PF_W if access & PROT_WRITE else 0) | (PF_U if user else 0)
                  | (PF_I if access & PROT_EXEC and nx_mode else 0))
        return PageFault(gva, reason, level, ec)

    def read_entry(addr, size, level):
        try:
            data = read_phys(addr, size)
        except Exception as exc:
            raise fault(f"page table at {addr:#x} is not in guest RAM", level) from exc
        if data is None or len(data) != size:
            raise fault(f"page table at {addr:#x} is not in guest RAM", level)
        return int.from_bytes(data, "little")

    if not cr0 & CR0_PG:
        return gva, PROT_ALL

    if efer & EFER_LMA:
        if not cr4 & CR4_PAE:
            raise fault("long mode without PAE (invalid state)", code=False)
        gpa, prot = _walk_long(read_entry, fault, cr3, cr4, efer, gva & _MASK64)
    elif cr4 & CR4_PAE:
        gpa, prot = _walk_pae(read_entry, fault, cr3, efer, gva & _MASK32)
    else:
        gpa, prot = _walk_32(read_entry, fault, cr3, cr4, gva & _MASK32)

    if access:
        if user and not prot & PROT_USER:
            raise fault("user access to supervisor page", present=True)
        if access & PROT_WRITE and not prot & PROT_WRITE and (user or cr0 & CR0_WP):
            raise fault("write to read-only page", present=True)
        if access & PROT_EXEC and not prot & PROT_EXEC:
            raise fault("instruction fetch from no-execute page", present=True)
    return gpa, prot


def _perm(entry, prot, nxe):
    """Narrow ``prot`` by one entry's R/W, U/S and (with NXE) XD bits."""
    if not entry & _RW:
        prot &= ~PROT_WRITE
    if not entry & _US:
        prot &= ~PROT_USER
    if nxe and entry & _XD:
        prot &= ~PROT_EXEC
    return prot


def _large(entry, gva, shift, fault, level):
    """Physical address of a 2 MiB / 1 GiB page; bits 12 (PAT) and above are the
    address, the bits between 13 and the page size are reserved."""
    size = 1 << shift
    if entry & (size - 1) & ~0x1FFF:
        raise fault(f"reserved bit set in {level}E", level, rsvd=True)
    return (entry & _ADDR52 & ~(size - 1)) | (gva & (size - 1))


# (level, shift) of each table from the top: 4-level and 5-level (CR4.LA57) paging, and PAE's
# tables below its PDPT
_LONG4 = (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12))
_LONG5 = (("PML5", 48),) + _LONG4
_PAE_TABLES = (("PD", 21), ("PT", 12))


def _walk_tables(read_entry, fault, table, gva, levels, nxe):
    """The walk down 512-entry tables of 8-byte entries (long mode; PAE below its PDPT) from the
    table at `table`: (gpa, prot). PS maps a 1 GiB page at the PDPT and a 2 MiB page at the PD, is
    reserved above them and is PAT at the PT; XD is reserved without EFER.NXE."""
    prot = PROT_ALL
    for level, shift in levels:
        entry = read_entry(table + ((gva >> shift) & 0x1FF) * 8, 8, level)
        if not entry & _P:
            raise fault(f"not present at {level}", level)
        if entry & _XD and not nxe:
            raise fault(f"reserved bit set in {level}E", level, rsvd=True)
        prot = _perm(entry, prot, nxe)
        if entry & _PS and level != "PT":
            if level not in ("PDPT", "PD"):
                raise fault(f"reserved bit set in {level}E", level, rsvd=True)
            return _large(entry, gva, shift, fault, level), prot
        table = entry & _ADDR52
    return table | (gva & 0xFFF), prot


def _walk_long(read_entry, fault, cr3, cr4, efer, gva):
    """4-level (48-bit) or, with CR4.LA57, 5-level (57-bit) paging."""
    levels = _LONG5 if cr4 & CR4_LA57 else _LONG4
    width = 12 + 9 * len(levels)
    top = gva >> (width - 1)  # the bits that must all equal bit width-1
    if top not in (0, (1 << (65 - width)) - 1):
        raise fault("non-canonical address", code=False)
    # CR3 bits 11:0 are PCID or PWT/PCD, not address
    return _walk_tables(read_entry, fault, cr3 & _ADDR52, gva, levels, bool(efer & EFER_NXE))


def _walk_pae(read_entry, fault, cr3, efer, gva):
    """PAE paging: a 4-entry PDPT at CR3 bits 31:5, then PD and PT of 512 entries.
    PDPTEs carry no permissions (R/W and U/S are reserved there)."""
    pdpte = read_entry((cr3 & 0xFFFF_FFE0) + (gva >> 30) * 8, 8, "PDPT")
    if not pdpte & _P:
        raise fault("not present at PDPT", "PDPT")
    if pdpte & _PAE_PDPTE_RSVD:
        raise fault("reserved bit set in PDPTE", "PDPT", rsvd=True)
    return _walk_tables(read_entry, fault, pdpte & _ADDR52, gva, _PAE_TABLES, bool(efer & EFER_NXE))


def _walk_32(read_entry, fault, cr3, cr4, gva):
    """32-bit paging: 1024-entry PD and PT of 4-byte entries; with CR4.PSE a PDE
    with PS maps 4 MiB, PSE-36 putting PDE bits 20:13 at physical bits 39:32.
    There is no XD, so the result is always executable."""
    pde = read_entry((cr3 & 0xFFFF_F000) + (gva >> 22) * 4, 4, "PD")
    if not pde & _P:
        raise fault("not present at PD", "PD")
    prot = _perm(pde, PROT_ALL, False)
    if cr4 & CR4_PSE and pde & _PS:
        if pde & (1 << 21):
            raise fault("reserved bit set in PDE", "PD", rsvd=True)
        high = (pde >> 13) & 0xFF
        return (high << 32) | (pde & 0xFFC0_0000) | (gva & 0x3F_FFFF), prot
    pte = read_entry((pde & 0xFFFF_F000) + ((gva >> 12) & 0x3FF) * 4, 4, "PT")
    if not pte & _P:
        raise fault("not present at PT", "PT")
    return (pte & 0xFFFF_F000) | (gva & 0xFFF), _perm(pte, prot, False)


def _pieces(cr0, cr3, cr4, efer, read_phys, gva, size, access, cpl):
    """Translate every 4 KiB page an access touches, before any of it is done,
    so that a fault on a later page leaves nothing half-written (as on a CPU)."""
    wrap = _MASK64 if efer & EFER_LMA else _MASK32
    out = []
    while size > 0:
        n = min(size, PAGE_SIZE - (gva & 0xFFF))
        gpa, _ = gva_to_gpa(read_phys, cr0, cr3, cr4, efer, gva, access, cpl)
        out.append((gpa, n))
        gva = (gva + n) & wrap
        size -= n
    return out


def read_virt(read_phys, cr0, cr3, cr4, efer, gva, size, access=PROT_READ, cpl=0):
    """Read ``size`` bytes at ``gva``, page by page (neighbouring virtual pages
    need not be neighbours in guest-physical memory)."""
    return b"".join(bytes(read_phys(gpa, n))
                    for gpa, n in _pieces(cr0, cr3, cr4, efer, read_phys, gva, size, access, cpl))


def write_virt(read_phys, write_phys, cr0, cr3, cr4, efer, gva, data, cpl=0):
    """Write ``data`` at ``gva`` through ``write_phys(gpa, bytes)``, page by page;
    nothing is written if any page of the range faults."""
    data = bytes(data)
    pos = 0
    for gpa, n in _pieces(cr0, cr3, cr4, efer, read_phys, gva, len(data), PROT_WRITE, cpl):
        write_phys(gpa, data[pos:pos + n])
        pos += n
