"""Linux boot protocols (vmm/linux.py): what the kernel is handed, checked byte by byte, and the one-line
errors for bad kernels. The real kernel's boot is in test_linux_boot.py."""
import struct

import pytest

from nvmmpy import constants as nvmm
from nvmmpy.vmm import linux
from nvmmpy.vmm.loader import LoadError
from nvmmpy.vmm.vm import VirtualMachine

MiB = 1 << 20


def make_bzimage(version=0x20F, xloadflags=linux.XLF_KERNEL_64, setup_sects=4, kernel=b"\x90" * 4096,
                 init_size=64 * MiB, pref=0x1000000, initrd_max=0x7FFFFFFF) -> bytes:
    img = bytearray((setup_sects + 1) * 512)
    img[0x1F1] = setup_sects
    img[0x201] = 0x6A                                    # setup header ends at 0x202 + 0x6A
    img[0x202:0x206] = linux.HDRS
    struct.pack_into("<H", img, 0x206, version)
    struct.pack_into("<I", img, 0x22C, initrd_max)
    struct.pack_into("<H", img, 0x236, xloadflags)
    struct.pack_into("<Q", img, 0x258, pref)
    struct.pack_into("<I", img, 0x260, init_size)
    return bytes(img) + kernel


def make_pvh_elf(entry=0x1000000, paddr=0x1000000, body=b"\xf4" * 64, note=True) -> bytes:
    """A minimal ELF64 vmlinux: one PT_LOAD and (optionally) the Xen PVH entry note."""
    desc = struct.pack("<I", entry)
    note_bytes = struct.pack("<III", 4, len(desc), linux.XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + desc
    phnum = 2 if note else 1
    ehdr_size, ph_size = 64, 56
    note_off = ehdr_size + ph_size * phnum
    body_off = (note_off + len(note_bytes) + 15) & ~15
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, entry, ehdr_size, 0, 0, ehdr_size, ph_size, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 7, body_off, paddr, paddr, len(body), len(body) + 4096, 16)
    phs = load + (struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note_bytes), len(note_bytes), 4) if note else b"")
    out = bytearray(ehdr + phs + (note_bytes if note else b""))
    out += bytes(body_off - len(out)) + body
    return bytes(out)


@pytest.fixture
def vm():
    v = VirtualMachine(memory=128 * MiB, driver="unicorn")
    v.add_legacy_devices()
    yield v
    v.close()


def test_memory_map_reserves_the_legacy_area_and_the_mmio_hole(vm):
    m = linux.memory_map(vm)
    assert m == [(0, linux.EBDA_START, 1), (linux.EBDA_START, 0x100000 - linux.EBDA_START, 2),
                 (0x100000, 127 * MiB, 1), (0xC0000000, 1 << 30, 2)]


def test_bzimage_boot_params(vm):
    img = make_bzimage()
    info = linux.boot(vm, img, b"INITRD" * 1000, "console=ttyS0 quiet")
    assert info.protocol == "bzimage" and info.entry == 0x1000000 + 0x200
    bp = vm.ram.read(linux.BOOT_AREA, 4096)
    assert bp[0x202:0x206] == b"HdrS" and bp[0x210] == 0xFF and bp[0x211] & linux.LOADED_HIGH
    gpa, size = struct.unpack_from("<II", bp, 0x218)
    assert (gpa, size) == info.initrd and size == 6000 and gpa % 4096 == 0 and gpa + size <= 128 * MiB
    assert vm.ram.read(gpa, 6) == b"INITRD"
    assert struct.unpack_from("<I", bp, 0x228)[0] == linux.CMDLINE_ADDR
    assert vm.ram.read(linux.CMDLINE_ADDR, 20) == b"console=ttyS0 quiet\0"
    n = bp[0x1E8]
    e820 = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(n)]
    assert e820 == [tuple(e) for e in linux.memory_map(vm)]
    rsdp = struct.unpack_from("<Q", bp, 0x070)[0]
    assert rsdp == linux.ACPI_ADDR and vm.ram.read(rsdp, 8) == b"RSD PTR "
    assert vm.ram.read(0x1000000, 4096) == b"\x90" * 4096
    st = vm.vcpu.getstate(nvmm.X64_STATE_ALL)
    assert st.gprs[nvmm.X64_GPR_RSI] == linux.BOOT_AREA and st.gprs[nvmm.X64_GPR_RIP] == info.entry
    assert st.segs[nvmm.X64_SEG_CS].selector == linux.BOOT_CS and st.segs[nvmm.X64_SEG_DS].selector == linux.BOOT_DS
    assert st.msrs[nvmm.X64_MSR_EFER] & nvmm.EFER_LMA


def test_pvh_start_info(vm):
    img = make_pvh_elf()
    info = linux.boot(vm, img, b"\xAA" * 8192, "root=/dev/vda")
    assert info.protocol == "pvh" and info.entry == 0x1000000
    si = vm.ram.read(linux.BOOT_AREA, 56)
    magic, ver, flags, nmod, modlist, cmdline, rsdp, memmap, nmap, _ = struct.unpack("<IIIIQQQQII", si)
    assert (magic, ver, nmod) == (linux.PVH_MAGIC, 1, 1)
    assert vm.ram.read(cmdline, 14) == b"root=/dev/vda\0" and vm.ram.read(rsdp, 8) == b"RSD PTR "
    paddr, size, _, _ = struct.unpack("<QQQQ", vm.ram.read(modlist, 32))
    assert size == 8192 and vm.ram.read(paddr, 8192) == b"\xAA" * 8192
    entries = [struct.unpack_from("<QQI", vm.ram.read(memmap + 24 * i, 24)) for i in range(nmap)]
    assert entries == [tuple(e) for e in linux.memory_map(vm)]
    st = vm.vcpu.getstate(nvmm.X64_STATE_ALL)
    assert st.gprs[nvmm.X64_GPR_RBX] == linux.BOOT_AREA and st.gprs[nvmm.X64_GPR_RIP] == 0x1000000
    assert st.crs[nvmm.X64_CR_CR0] & nvmm.CR0_PE and not st.crs[nvmm.X64_CR_CR0] & nvmm.CR0_PG
    assert vm.ram.read(0x1000000, 64) == b"\xf4" * 64 and vm.ram.read(0x1000040, 16) == bytes(16)  # bss zeroed


@pytest.mark.parametrize("image, words", [
    (b"", "empty"),
    (b"\x7fELF" + bytes(20), "not a valid ELF"),
    (b"MZ" + bytes(100), "too short"),
    (bytes(4096), "neither a bzImage"),
    (make_bzimage(version=0x20B), "boot protocol 2.11"),
    (make_bzimage(xloadflags=0), "no 64-bit entry"),
    (make_bzimage()[:0x230], "truncated"),
    (make_bzimage(init_size=512 * MiB), "larger --memory"),
    (make_pvh_elf(note=False), "no PVH entry note"),
    (make_pvh_elf()[:150], "truncated"),
    (make_pvh_elf(paddr=0x10000), "larger --memory"),
])
def test_bad_kernels_give_one_line(vm, image, words):
    with pytest.raises(LoadError) as e:
        linux.boot(vm, image)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_initrd_too_large_for_ram(vm):
    with pytest.raises(LoadError, match="initrd .* does not fit"):
        linux.boot(vm, make_bzimage(), bytes(120 * MiB))
    with pytest.raises(LoadError, match="command line is 5000 bytes"):
        linux.boot(vm, make_bzimage(), b"", "x" * 5000)
