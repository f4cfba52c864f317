"""emulator.pagewalk: software x86 page walks over page tables built in a bytearray."""
import pytest
from hypothesis import given, settings, strategies as st

from nvmmpy.emulator.pagewalk import (
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE,
    PF_I, PF_P, PF_RSVD, PF_U, PF_W,
    PROT_ALL, PROT_EXEC, PROT_READ, PROT_USER, PROT_WRITE,
    PageFault, gva_to_gpa, read_virt, write_virt,
)
from nvmmpy.emulator.arch import CR0_PE, EFER_LME
from flat_ram import FlatRam

P, RW, US, PS = 1, 2, 4, 0x80
XD = 1 << 63

PAGING32 = dict(cr0=CR0_PE | CR0_PG | CR0_WP, cr4=0, efer=0)
PSE32 = dict(cr0=CR0_PE | CR0_PG | CR0_WP, cr4=CR4_PSE, efer=0)
PAE = dict(cr0=CR0_PE | CR0_PG | CR0_WP, cr4=CR4_PAE, efer=EFER_NXE)
LONG4 = dict(cr0=CR0_PE | CR0_PG | CR0_WP, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA | EFER_NXE)
LONG5 = dict(LONG4, cr4=CR4_PAE | CR4_LA57)

SHIFTS = {"32": [22, 12], "pae": [30, 21, 12], "4": [39, 30, 21, 12], "5": [48, 39, 30, 21, 12]}
LEVELS = {"4": ["PML4", "PDPT", "PD", "PT"], "5": ["PML5", "PML4", "PDPT", "PD", "PT"]}


class Guest(FlatRam):
    """Guest RAM holding page tables; tables come from a bump allocator at 0x1000."""

    def __init__(self, regs, kind, size=256 << 10):
        super().__init__(size)
        self.regs = dict(regs)
        self.kind = kind
        self.esize = 4 if kind == "32" else 8
        self.next = 0x1000
        self.cr3 = self.alloc()

    def alloc(self):
        addr, self.next = self.next, self.next + 0x1000
        assert self.next <= len(self.ram), "test guest RAM too small for its page tables"
        return addr

    def slot(self, table, gva, shift):
        bits = 10 if self.kind == "32" else 9
        return table + ((gva >> shift) & ((1 << bits) - 1)) * self.esize

    def get(self, addr):
        return int.from_bytes(self.ram[addr:addr + self.esize], "little")

    def put(self, addr, value):
        self.ram[addr:addr + self.esize] = value.to_bytes(self.esize, "little")

    def map(self, gva, leaf, shift=12, upper=P | RW | US):
        """Store ``leaf`` (a whole entry) for ``gva`` in the table at level ``shift``,
        creating missing upper tables with ``upper`` flags (only P for a PAE PDPTE).
        Returns the address of each entry on the way down."""
        shifts = SHIFTS[self.kind]
        table, path = self.cr3, []
        for s in shifts[:shifts.index(shift)]:
            addr = self.slot(table, gva, s)
            entry = self.get(addr)
            if not entry & P:
                flags = P if self.kind == "pae" and s == 30 else upper
                entry = self.alloc() | flags
                self.put(addr, entry)
            path.append(addr)
            table = entry & 0x000F_FFFF_FFFF_F000
        path.append(self.slot(table, gva, shift))
        self.put(path[-1], leaf)
        return path

    def tr(self, gva, access=0, cpl=0, **over):
        r = dict(self.regs, **over)
        return gva_to_gpa(self.read, r["cr0"], over.get("cr3", self.cr3), r["cr4"], r["efer"],
                          gva, access, cpl)

    def fault(self, gva, access=0, cpl=0, **over):
        with pytest.raises(PageFault) as info:
            self.tr(gva, access, cpl, **over)
        assert info.value.gva == gva
        return info.value


# ---------------------------------------------------------------- paging off

def test_paging_off_is_identity_and_reads_nothing():
    g = Guest(dict(cr0=CR0_PE, cr4=CR4_PAE, efer=EFER_NXE), "4")
    assert g.tr(0x1234_5678) == (0x1234_5678, PROT_ALL)
    assert g.tr(0xABC, access=PROT_WRITE | PROT_EXEC, cpl=3, cr3=0xDEAD_0000) == (0xABC, PROT_ALL)
    assert g.reads == 0


# ---------------------------------------------------------------- 32-bit paging

def test_32bit_4k_page():
    g = Guest(PAGING32, "32")
    g.map(0x0804_8123, 0x0003_5000 | P | RW | US)
    assert g.tr(0x0804_8123) == (0x35123, PROT_ALL)
    assert g.tr(0x0804_8FFF) == (0x35FFF, PROT_ALL)
    g.fault(0x0804_9000)


def test_32bit_truncates_address_to_32_bits():
    g = Guest(PAGING32, "32")
    g.map(0x0804_8000, 0x0003_5000 | P | RW | US)
    assert g.tr(0xFFFF_FFFF_0804_8010)[0] == 0x35010


def test_32bit_4m_pse36_page():
    g = Guest(PSE32, "32")
    pde = 0x12C0_0000 | (0x5A << 13) | PS | P | RW
    g.put(g.slot(g.cr3, 0xC040_0000, 22), pde)
    assert g.tr(0xC07F_FFFF) == (0x5A_12FF_FFFF, PROT_READ | PROT_WRITE | PROT_EXEC)
    assert g.tr(0xC040_0000 + 0x1234) == (0x5A_12C0_1234, PROT_READ | PROT_WRITE | PROT_EXEC)


def test_32bit_ps_ignored_without_cr4_pse():
    g = Guest(PAGING32, "32")
    pt = g.alloc()
    g.put(g.slot(g.cr3, 0x0040_0000, 22), pt | PS | P | RW | US)
    g.put(g.slot(pt, 0x0040_1000, 12), 0x7000 | P | RW | US)
    assert g.tr(0x0040_1234) == (0x7234, PROT_ALL)
    g.regs["cr4"] = CR4_PSE    # now the same PDE maps a 4 MiB page (PSE-36 bits from pt too)
    assert g.tr(0x0040_1234)[0] == ((pt >> 13) & 0xFF) << 32 | (pt & 0xFFC0_0000) | 0x1234


def test_32bit_4m_page_reserved_bit21():
    g = Guest(PSE32, "32")
    g.put(g.slot(g.cr3, 0x0080_0000, 22), 0x0080_0000 | (1 << 21) | PS | P)
    f = g.fault(0x0080_0000)
    assert f.reason == "reserved bit set in PDE" and f.level == "PD"
    assert f.error_code & (PF_RSVD | PF_P) == PF_RSVD | PF_P


def test_32bit_not_present_levels_and_no_nx():
    g = Guest(dict(PAGING32, efer=EFER_NXE), "32")
    f = g.fault(0x0040_0000)
    assert (f.reason, f.level) == ("not present at PD", "PD")
    path = g.map(0x0040_0000, 0x9000 | P)
    g.put(path[-1], 0)
    f = g.fault(0x0040_0000)
    assert (f.reason, f.level) == ("not present at PT", "PT")
    g.put(path[-1], 0x9000 | P)
    assert g.tr(0x0040_0000, access=PROT_EXEC) == (0x9000, PROT_READ | PROT_EXEC)


def test_32bit_permissions_combine_across_levels():
    g = Guest(PAGING32, "32")
    path = g.map(0x1000_0000, 0x5000 | P | RW | US, upper=P | US)   # PDE read-only
    assert g.tr(0x1000_0000)[1] == PROT_READ | PROT_EXEC | PROT_USER
    g.put(path[0], g.get(path[0]) | RW)
    g.put(path[1], 0x5000 | P | RW)                                 # PTE supervisor
    assert g.tr(0x1000_0000)[1] == PROT_READ | PROT_WRITE | PROT_EXEC
    f = g.fault(0x1000_0000, access=PROT_READ, cpl=3)
    assert f.error_code == PF_P | PF_U


# ---------------------------------------------------------------- PAE

def test_pae_4k_page_and_pdpt_at_cr3_bits_31_5():
    g = Guest(PAE, "pae")
    g.cr3 = 0x1020                         # a 32-byte aligned PDPT inside a page
    g.map(0xC000_1234, 0x0001_2345_6000 | P | RW | US)
    assert g.tr(0xC000_1234) == (0x0001_2345_6234, PROT_ALL)


def test_pae_pdpte_rw_us_do_not_restrict():
    g = Guest(PAE, "pae")
    g.map(0x4000_0000, 0x8000 | P | RW | US)
    assert g.tr(0x4000_0000, access=PROT_WRITE, cpl=3) == (0x8000, PROT_ALL)


def test_pae_2m_page():
    g = Guest(PAE, "pae")
    g.map(0x8060_0000, 0x0010_8000_0000 | PS | P | RW, shift=21)
    assert g.tr(0x807F_FFFF) == (0x0010_801F_FFFF, PROT_READ | PROT_WRITE | PROT_EXEC)


def test_pae_2m_page_with_low_address_bits_is_reserved():
    g = Guest(PAE, "pae")
    g.map(0x0020_0000, 0x0020_0000 | (1 << 13) | PS | P, shift=21)
    assert g.fault(0x0020_0000).reason == "reserved bit set in PDE"
    g.map(0x0020_0000, 0x0020_0000 | (1 << 12) | PS | P, shift=21)   # bit 12 is PAT: fine
    assert g.tr(0x0020_0010)[0] == 0x0020_0010


def test_pae_ps_in_pdpte_is_rejected():
    g = Guest(PAE, "pae")
    g.put(g.slot(g.cr3, 0x4000_0000, 30), 0x4000_0000 | PS | P)
    f = g.fault(0x4000_0000)
    assert (f.reason, f.level) == ("reserved bit set in PDPTE", "PDPT")
    assert f.error_code & PF_RSVD
    g.put(g.slot(g.cr3, 0x4000_0000, 30), g.alloc() | RW | P)       # R/W is reserved too
    assert g.fault(0x4000_0000).reason == "reserved bit set in PDPTE"


def test_pae_not_present_levels():
    g = Guest(PAE, "pae")
    assert g.fault(0x0).reason == "not present at PDPT"
    path = g.map(0x0, 0x5000 | P)
    g.put(path[2], 0)
    assert g.fault(0x0).level == "PT"
    g.put(path[1], 0)
    assert g.fault(0x0).reason == "not present at PD"


def test_pae_nx_with_and_without_nxe():
    g = Guest(PAE, "pae")
    g.map(0x0040_0000, 0x6000 | XD | P | RW | US)
    assert g.tr(0x0040_0000) == (0x6000, PROT_READ | PROT_WRITE | PROT_USER)
    f = g.fault(0x0040_0000, access=PROT_EXEC)
    assert f.reason == "instruction fetch from no-execute page"
    assert f.error_code == PF_P | PF_I
    g.regs["efer"] = 0
    f = g.fault(0x0040_0000)
    assert (f.reason, f.level) == ("reserved bit set in PTE", "PT")
    assert f.error_code == PF_P | PF_RSVD


# ---------------------------------------------------------------- 4-level

def test_long4_4k_page_high_half_and_pcid_bits_ignored():
    g = Guest(LONG4, "4")
    gva = 0xFFFF_8000_1234_5678
    g.map(gva, 0x000F_FFFF_FFFF_F000 | P | RW)
    assert g.tr(gva) == (0x000F_FFFF_FFFF_F678, PROT_READ | PROT_WRITE | PROT_EXEC)
    assert g.tr(gva, cr3=g.cr3 | 0xABC)[0] == 0x000F_FFFF_FFFF_F678
    # bits 62:52 of an entry are not address bits
    g.map(gva, (0x7FF << 52) | 0x9000 | P | RW)
    assert g.tr(gva)[0] == 0x9678


def test_long4_2m_and_1g_pages():
    g = Guest(LONG4, "4")
    g.map(0x4000_0000, 0x0080_0000_0000 | PS | P | RW | US, shift=30)
    assert g.tr(0x7FFF_FFFF) == (0x0080_3FFF_FFFF, PROT_ALL)
    g.map(0x0060_0000, 0x0001_0020_0000 | PS | P | US, shift=21)
    assert g.tr(0x0060_1234) == (0x0001_0020_1234, PROT_READ | PROT_EXEC | PROT_USER)


def test_long4_1g_page_reserved_low_bits_and_ps_in_pml4e():
    g = Guest(LONG4, "4")
    g.map(0x4000_0000, 0x4000_0000 | (1 << 20) | PS | P, shift=30)
    assert g.fault(0x4000_0000).reason == "reserved bit set in PDPTE"
    g.put(g.slot(g.cr3, 0x0080_0000_0000, 39), 0x0080_0000_0000 | PS | P | RW)  # "512 GiB page"
    f = g.fault(0x0080_0000_0000)
    assert (f.reason, f.level) == ("reserved bit set in PML4E", "PML4")


@pytest.mark.parametrize("kind,regs", [("4", LONG4), ("5", LONG5)])
def test_long_not_present_at_each_level(kind, regs):
    g = Guest(regs, kind)
    gva = 0x0000_7123_4567_8000
    path = g.map(gva, 0x5000 | P)
    assert g.tr(gva)[0] == 0x5000
    for addr, level in reversed(list(zip(path, LEVELS[kind]))):
        g.put(addr, g.get(addr) & ~P)
        f = g.fault(gva, access=PROT_WRITE, cpl=3)
        assert (f.reason, f.level) == (f"not present at {level}", level)
        assert f.error_code == PF_W | PF_U


def test_long4_non_canonical():
    g = Guest(LONG4, "4")
    for gva in (0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF, 0x0001_0000_0000_0000):
        f = g.fault(gva)
        assert f.reason == "non-canonical address" and f.level is None
    assert g.reads == 0
    assert g.fault(0xFFFF_8000_0000_0000).reason == "not present at PML4"
    assert g.fault(0x0000_7FFF_FFFF_F000).reason == "not present at PML4"


def test_long4_xd_without_nxe_is_reserved():
    g = Guest(dict(LONG4, efer=EFER_LMA), "4")
    path = g.map(0x1000, 0x2000 | P | RW)
    g.put(path[1], g.get(path[1]) | XD)
    f = g.fault(0x1000)
    assert (f.reason, f.level) == ("reserved bit set in PDPTE", "PDPT")
    g.regs["efer"] |= EFER_NXE
    assert g.tr(0x1000) == (0x2000, PROT_READ | PROT_WRITE)


# ---------------------------------------------------------------- 5-level

def test_long5_pages_and_canonical_check():
    g = Guest(LONG5, "5")
    gva = 0x00FF_8000_0000_1234           # needs bit 56:48 -> only valid with LA57
    g.map(gva, 0x0003_0000_0000_0000 | P | RW | US)
    assert g.tr(gva) == (0x0003_0000_0000_0234, PROT_ALL)
    g.map(0xFF00_0000_4000_0000, 0x0000_0001_4000_0000 | PS | P | RW | US, shift=30)
    assert g.tr(0xFF00_0000_4000_0010)[0] == 0x1_4000_0010
    g.map(0x0000_8000_0020_0000, 0x0020_0000 | PS | P | RW | US, shift=21)
    assert g.tr(0x0000_8000_0021_0000)[0] == 0x0021_0000
    for bad in (0x0100_0000_0000_0000, 0xFEFF_FFFF_FFFF_FFFF):
        assert g.fault(bad).reason == "non-canonical address"
    # the same regs without LA57 are 4-level, where these addresses are not canonical
    assert g.fault(gva, cr4=CR4_PAE).reason == "non-canonical address"


def test_long5_ps_in_pml5e_rejected():
    g = Guest(LONG5, "5")
    g.put(g.slot(g.cr3, 0, 48), 0x2000 | PS | P)
    assert g.fault(0x10).reason == "reserved bit set in PML5E"


# ---------------------------------------------------------------- permissions and access

def rw_guest(leaf_flags, upper=P | RW | US, regs=LONG4):
    g = Guest(regs, "4")
    g.map(0x40_0000, 0x7000 | leaf_flags, upper=upper)
    return g


def test_permission_bits_from_any_level():
    assert rw_guest(P | RW | US).tr(0x40_0000)[1] == PROT_ALL
    assert rw_guest(P | US).tr(0x40_0000)[1] == PROT_READ | PROT_EXEC | PROT_USER
    assert rw_guest(P | RW | US, upper=P | US).tr(0x40_0000)[1] == PROT_READ | PROT_EXEC | PROT_USER
    assert rw_guest(P | RW | US, upper=P | RW).tr(0x40_0000)[1] == PROT_READ | PROT_WRITE | PROT_EXEC
    assert rw_guest(P | RW | US | XD).tr(0x40_0000)[1] == PROT_READ | PROT_WRITE | PROT_USER


def test_user_access_to_supervisor_page():
    g = rw_guest(P | RW)
    assert g.tr(0x40_0000, access=PROT_READ | PROT_WRITE, cpl=0)[0] == 0x7000
    f = g.fault(0x40_0000, access=PROT_READ, cpl=3)
    assert f.reason == "user access to supervisor page" and f.error_code == PF_P | PF_U
    assert g.fault(0x40_0000, access=PROT_READ | PROT_USER, cpl=0).error_code == PF_P | PF_U
    assert g.tr(0x40_0000, access=0, cpl=3) == (0x7000, PROT_READ | PROT_WRITE | PROT_EXEC)


def test_write_to_read_only_honours_cr0_wp():
    g = rw_guest(P | US)
    f = g.fault(0x40_0000, access=PROT_WRITE, cpl=0)
    assert f.reason == "write to read-only page" and f.error_code == PF_P | PF_W
    no_wp = LONG4["cr0"] & ~CR0_WP
    assert g.tr(0x40_0000, access=PROT_WRITE, cpl=0, cr0=no_wp) == \
        (0x7000, PROT_READ | PROT_EXEC | PROT_USER)
    f = g.fault(0x40_0000, access=PROT_WRITE, cpl=3, cr0=no_wp)
    assert f.error_code == PF_P | PF_W | PF_U
    assert g.tr(0x40_0000, access=PROT_READ | PROT_EXEC, cpl=3)[0] == 0x7000


def test_exec_on_nx_page():
    g = rw_guest(P | RW | US | XD)
    assert g.tr(0x40_0000, access=PROT_READ | PROT_WRITE, cpl=3)[0] == 0x7000
    f = g.fault(0x40_0000, access=PROT_EXEC, cpl=3)
    assert f.error_code == PF_P | PF_U | PF_I


def test_pae_supervisor_write_with_wp_clear():
    g = Guest(dict(PAE, cr0=CR0_PE | CR0_PG), "pae")
    g.map(0x1000, 0x3000 | P)
    assert g.tr(0x1000, access=PROT_WRITE)[0] == 0x3000
    g.fault(0x1000, access=PROT_WRITE, cpl=3)


# ---------------------------------------------------------------- bad states and bad tables

def test_lma_without_pae_rejected():
    g = Guest(dict(LONG4, cr4=0), "4")
    f = g.fault(0x1000)
    assert "PAE" in f.reason and f.level is None
    assert g.reads == 0


@pytest.mark.parametrize("kind,regs", [("32", PAGING32), ("pae", PAE), ("4", LONG4), ("5", LONG5)])
def test_page_table_outside_ram(kind, regs):
    g = Guest(regs, kind)
    f = g.fault(0x1000, cr3=0x4000_0000)
    assert f.reason == "page table at 0x40000000 is not in guest RAM"
    assert isinstance(f.__cause__, IndexError)
    path = g.map(0x1000, 0x2000 | P)
    g.put(path[-2], (0x7_0000_0000 if g.esize == 8 else 0xF000_0000) | P | RW)   # PDE -> no RAM
    f = g.fault(0x1000)
    assert f.reason.startswith("page table at 0x") and f.reason.endswith("is not in guest RAM")
    assert f.level == "PT"


def test_short_read_counts_as_outside_ram():
    with pytest.raises(PageFault, match="not in guest RAM"):
        gva_to_gpa(lambda gpa, n: b"\x01", LONG4["cr0"], 0x1000, LONG4["cr4"], LONG4["efer"], 0x1000)


# ---------------------------------------------------------------- read_virt / write_virt

def split_guest():
    """gva 0x40_0000 -> gpa 0x30000 and gva 0x40_1000 -> gpa 0x19000 (lower, not adjacent)."""
    g = Guest(LONG4, "4")
    g.map(0x40_0000, 0x30000 | P | RW | US)
    g.map(0x40_1000, 0x19000 | P | RW | US)
    return g


def virt_args(g):
    return (g.regs["cr0"], g.cr3, g.regs["cr4"], g.regs["efer"])


def test_read_virt_across_page_boundary():
    g = split_guest()
    g.ram[0x30FF8:0x31000] = b"ABCDEFGH"
    g.ram[0x19000:0x19008] = b"ijklmnop"
    g.ram[0x31000:0x31008] = b"XXXXXXXX"         # what a naive contiguous read would see
    assert read_virt(g.read, *virt_args(g), 0x40_0FF8, 16) == b"ABCDEFGHijklmnop"
    assert read_virt(g.read, *virt_args(g), 0x40_0FFC, 2) == b"EF"
    assert read_virt(g.read, *virt_args(g), 0x40_0000, 0) == b""
    with pytest.raises(PageFault):
        read_virt(g.read, *virt_args(g), 0x40_1FF8, 16)


def test_write_virt_across_page_boundary():
    g = split_guest()
    write_virt(g.read, g.write, *virt_args(g), 0x40_0FFD, b"hello world")
    assert g.ram[0x30FFD:0x31000] == b"hel"
    assert g.ram[0x19000:0x19008] == b"lo world"
    assert read_virt(g.read, *virt_args(g), 0x40_0FFD, 11, cpl=3) == b"hello world"


def test_write_virt_faults_before_writing_anything():
    g = split_guest()
    g.map(0x40_1000, 0x19000 | P | US)             # second page read-only
    with pytest.raises(PageFault) as info:
        write_virt(g.read, g.write, *virt_args(g), 0x40_0FFE, b"abcd", cpl=3)
    assert info.value.gva == 0x40_1000 and info.value.error_code == PF_P | PF_W | PF_U
    assert g.ram[0x30FFE:0x31000] == b"\0\0"


# ---------------------------------------------------------------- property: random 4-level maps

canonical_vpn = st.one_of(
    st.integers(0, (1 << 35) - 1),                                    # low half
    st.integers(0, (1 << 35) - 1).map(lambda v: v | (0x1FFFF << 35)),  # high half
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(canonical_vpn, st.integers(0, (1 << 40) - 1), min_size=1, max_size=24),
       st.integers(0, 0xFFF))
def test_random_4level_mappings_translate_to_chosen_gpa(pages, offset):
    g = Guest(LONG4, "4", size=(1 + 1 + 3 * len(pages)) * 0x1000)
    for vpn, pfn in pages.items():
        g.map(vpn << 12, (pfn << 12) | P | RW | US)
    for vpn, pfn in pages.items():
        gva = (vpn << 12) | offset
        assert g.tr(gva, access=PROT_READ | PROT_WRITE, cpl=3) == ((pfn << 12) | offset, PROT_ALL)
