"""Boot a Linux kernel: the PVH entry of an ELF vmlinux, or the 64-bit boot protocol of a bzImage.

Both hand the kernel the same facts: the command line, the initrd, the memory map (E820 types) and
the ACPI tables' RSDP (vmm/acpi.py). Facts from the kernel's Documentation/x86/boot.rst (header
fields, 64-bit entry state) and xen/include/public/arch-x86/hvm/start_info.h (PVH).

Guest-physical layout below 1 MiB (the rest of low RAM is the kernel's):
    0x00500-0x09FFF  GDT, TSS and identity page tables (vmm/cpu_modes.py)
    0x0B000          hvm_start_info + module list + memory map (PVH) or boot_params (bzImage)
    0x20000          the command line
    0x9FC00-0xFFFFF  reserved (EBDA, ACPI tables at 0xE0000, BIOS area)
The initrd goes as high in low RAM as the kernel allows, page-aligned.
"""
import io
import struct
from dataclasses import dataclass

from nvmmpy import constants as nvmm

from . import acpi, cpu_modes
from .loader import LoadError

BOOT_AREA = 0xB000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 4095
ACPI_ADDR = 0xE0000
EBDA_START = 0x9FC00
LOW_RESERVED_END = 0x100000
STACK_TOP = 0x9000            # only until the kernel sets its own
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 pci=off"   # no PCI here: spare the probe and its "Fatal" line

E820_RAM, E820_RESERVED, E820_ACPI = 1, 2, 3
PVH_MAGIC = 0x336EC578
XEN_ELFNOTE_PHYS32_ENTRY = 18
HDRS = b"HdrS"
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80
XLF_KERNEL_64 = 0x01


@dataclass
class KernelInfo:
    protocol: str        # "pvh" or "bzimage"
    entry: int
    version: str         # the kernel's version string where the image carries one
    initrd: tuple        # (gpa, size) or (0, 0)
    cmdline: str


def kernel_kind(data: bytes) -> str:
    if len(data) >= 0x206 and data[0x202:0x206] == HDRS:
        return "bzimage"
    if data[:4] == b"\x7fELF":
        return "pvh"
    if len(data) < 0x206:
        raise LoadError(f"the kernel image is only {len(data)} bytes: too short to be a bzImage or an ELF vmlinux")
    raise LoadError("the kernel is neither a bzImage (no HdrS boot header) nor an ELF vmlinux")


def memory_map(vm) -> list:
    """The E820 map the kernel is given: the VM's RAM regions with the MMIO hole (vmm/memory.py) and
    the legacy area from the EBDA to 1 MiB (ACPI tables, BIOS) reserved."""
    return vm.ram.e820(reserved=[(EBDA_START, LOW_RESERVED_END - EBDA_START)])


def _low_ram_end(vm) -> int:
    return vm.ram.regions[0].end


def _place_initrd(vm, initrd: bytes, kernel_end: int, limit: int) -> int:
    if not initrd:
        return 0
    top = min(_low_ram_end(vm), limit + 1)
    gpa = (top - len(initrd)) & ~0xFFF
    if gpa < kernel_end:
        raise LoadError(f"the initrd ({len(initrd) >> 20} MiB) does not fit in guest RAM above the kernel "
                        f"(RAM below 4 GiB ends at {top >> 20} MiB): give a larger --memory")
    vm.ram.write(gpa, initrd)
    return gpa


def _machine_description(vm) -> acpi.MachineDescription:
    return acpi.MachineDescription(virtio=[(base, 0x200, irq) for base, irq, _ in vm.virtio])


def _write_common(vm, cmdline: str) -> int:
    raw = cmdline.encode()
    if len(raw) > CMDLINE_MAX:
        raise LoadError(f"the kernel command line is {len(raw)} bytes; at most {CMDLINE_MAX} fit")
    vm.ram.write(CMDLINE_ADDR, raw + b"\0")
    blob, rsdp = acpi.build(_machine_description(vm), ACPI_ADDR)
    vm.ram.write(ACPI_ADDR, blob)
    return rsdp


# --- PVH ----------------------------------------------------------------------------------------------
def _pvh_elf(data: bytes):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_machine"] != "EM_X86_64":
            raise LoadError(f"the vmlinux is for {elf['e_machine']}, not x86-64")
        entry, segs = None, []
        for ph in elf.iter_segments():
            if ph["p_type"] == "PT_NOTE":
                for note in ph.iter_notes():
                    if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                        desc = note["n_desc"]
                        raw = desc if isinstance(desc, bytes) else bytes.fromhex(desc) if isinstance(desc, str) else b""
                        entry = struct.unpack_from("<I", raw.ljust(4, b"\0"))[0]
            elif ph["p_type"] == "PT_LOAD" and ph["p_memsz"]:
                if ph["p_offset"] + ph["p_filesz"] > len(data) or ph["p_filesz"] > ph["p_memsz"]:
                    raise LoadError("the vmlinux is truncated (a PT_LOAD segment runs past the end of the file)")
                segs.append((ph["p_paddr"], ph["p_offset"], ph["p_filesz"], ph["p_memsz"]))
        return entry, segs
    except ELFError as e:
        raise LoadError(f"the vmlinux is not a valid ELF file ({e}): is it truncated?") from None
    except (struct.error, ValueError) as e:
        raise LoadError(f"the vmlinux is damaged ({e})") from None


def boot_pvh(vm, data: bytes, initrd: bytes, cmdline: str) -> KernelInfo:
    entry, segs = _pvh_elf(data)
    if entry is None:
        raise LoadError("the vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y "
                        "or give the bzImage")
    if not segs:
        raise LoadError("the vmlinux has no loadable segment")
    low_end = _low_ram_end(vm)
    kernel_end = 0
    for paddr, off, filesz, memsz in segs:
        if paddr < LOW_RESERVED_END or paddr + memsz > low_end:
            raise LoadError(f"the kernel needs guest memory {paddr:#x}-{paddr + memsz - 1:#x} but RAM below 4 GiB "
                            f"ends at {low_end:#x}: give a larger --memory")
        vm.ram.write(paddr, data[off:off + filesz])
        if memsz > filesz:
            vm.ram.write(paddr + filesz, bytes(memsz - filesz))
        kernel_end = max(kernel_end, paddr + memsz)
    initrd_gpa = _place_initrd(vm, initrd, kernel_end, 0xFFFFFFFF)
    rsdp = _write_common(vm, cmdline)

    memmap = memory_map(vm)
    start_info = BOOT_AREA
    modlist = start_info + 64
    memmap_at = modlist + 32
    vm.ram.write(modlist, struct.pack("<QQQQ", initrd_gpa, len(initrd), 0, 0))
    vm.ram.write(memmap_at, b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in memmap))
    vm.ram.write(start_info, struct.pack("<IIIIQQQQII", PVH_MAGIC, 1, 0, 1 if initrd else 0,
                                         modlist if initrd else 0, CMDLINE_ADDR, rsdp, memmap_at, len(memmap), 0))
    cpu_modes.set_protected_mode(vm.vcpu, vm.ram.view_all, entry, STACK_TOP)
    vm.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs[nvmm.X64_GPR_RBX] = start_info
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
    return KernelInfo("pvh", entry, _version_in(data), (initrd_gpa, len(initrd)), cmdline)


# --- bzImage, 64-bit boot protocol ----------------------------------------------------------------------
def boot_bzimage(vm, data: bytes, initrd: bytes, cmdline: str) -> KernelInfo:
    if len(data) < 0x250:
        raise LoadError("the bzImage is truncated (its boot header is cut off)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x20C:
        raise LoadError(f"the bzImage speaks boot protocol {version >> 8}.{version & 0xFF}; nvmmpy needs 2.12 or "
                        f"newer (Linux 3.8+) for the 64-bit entry")
    xloadflags = struct.unpack_from("<H", data, 0x236)[0]
    if not xloadflags & XLF_KERNEL_64:
        raise LoadError("the bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear): is it a 32-bit kernel?")
    setup_sects = data[0x1F1] or 4
    pm_offset = (setup_sects + 1) * 512
    if pm_offset >= len(data):
        raise LoadError("the bzImage is truncated (no protected-mode kernel after the setup code)")
    kernel = data[pm_offset:]
    init_size = struct.unpack_from("<I", data, 0x260)[0] if version >= 0x20A else len(kernel)
    pref = struct.unpack_from("<Q", data, 0x258)[0] if version >= 0x20A else 0x100000
    load_at = pref if pref >= LOW_RESERVED_END else 0x1000000
    need = max(init_size, len(kernel))
    if load_at + need > _low_ram_end(vm):
        raise LoadError(f"the kernel needs guest memory up to {(load_at + need) >> 20} MiB: give a larger --memory")
    vm.ram.write(load_at, kernel)
    initrd_max = struct.unpack_from("<I", data, 0x22C)[0]
    initrd_gpa = _place_initrd(vm, initrd, load_at + need, initrd_max)
    rsdp = _write_common(vm, cmdline)

    bp = bytearray(4096)                                   # struct boot_params, the "zero page"
    hdr_end = 0x202 + data[0x201]                          # the setup header's own length
    bp[0x1F1:hdr_end] = data[0x1F1:hdr_end]
    bp[0x210] = 0xFF                                       # type_of_loader: undefined boot loader
    bp[0x211] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<I", bp, 0x218, initrd_gpa & 0xFFFFFFFF)
    struct.pack_into("<I", bp, 0x21C, len(initrd) & 0xFFFFFFFF)
    struct.pack_into("<H", bp, 0x224, 0xDE00)              # heap_end_ptr
    struct.pack_into("<I", bp, 0x228, CMDLINE_ADDR)
    struct.pack_into("<Q", bp, 0x070, rsdp)                # acpi_rsdp_addr (protocol 2.14)
    memmap = memory_map(vm)
    if len(memmap) > 128:
        raise LoadError("the memory map has more than 128 entries")
    bp[0x1E8] = len(memmap)
    for i, (a, s, t) in enumerate(memmap):
        struct.pack_into("<QQI", bp, 0x2D0 + 20 * i, a, s, t)
    vm.ram.write(BOOT_AREA, bytes(bp))

    entry = load_at + 0x200                                # startup_64
    cpu_modes.set_long_mode(vm.vcpu, vm.ram.view_all, entry, STACK_TOP, map_size=4 << 30)
    _linux_boot_gdt(vm)
    vm.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs[nvmm.X64_GPR_RSI] = BOOT_AREA
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
    return KernelInfo("bzimage", entry, _version_in(data), (initrd_gpa, len(initrd)), cmdline)


BOOT_CS, BOOT_DS = 0x10, 0x18


def _linux_boot_gdt(vm) -> None:
    """The 64-bit boot protocol wants CS = __BOOT_CS (0x10) and DS/ES/SS = __BOOT_DS (0x18), flat."""
    ram = vm.ram.view_all
    gdt = bytearray(ram[cpu_modes.GDT_ADDR:cpu_modes.GDT_ADDR + cpu_modes.GDT_LIMIT + 1])
    gdt[BOOT_CS:BOOT_CS + 8] = cpu_modes._descriptor(0, 0xFFFFF, 0x9B, 0xA)
    gdt[BOOT_DS:BOOT_DS + 8] = cpu_modes._descriptor(0, 0xFFFFF, 0x93, 0xC)
    ram[cpu_modes.GDT_ADDR:cpu_modes.GDT_ADDR + len(gdt)] = gdt
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    for idx in (nvmm.X64_SEG_ES, nvmm.X64_SEG_SS, nvmm.X64_SEG_DS, nvmm.X64_SEG_FS, nvmm.X64_SEG_GS):
        st.segs[idx].selector = BOOT_DS
    st.segs[nvmm.X64_SEG_CS].selector = BOOT_CS
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)


def _version_in(data: bytes) -> str:
    """The "Linux version ..." banner, if the image is uncompressed enough to carry it."""
    at = data.find(b"Linux version ")
    if at < 0:
        if len(data) > 0x210 and data[0x202:0x206] == HDRS:
            off = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
            end = data.find(b"\0", off, off + 256)
            if 0 < off < len(data) and end > off:
                return data[off:end].decode("ascii", "replace")
        return ""
    end = data.find(b"\0", at, at + 256)
    return data[at + 14:end if end > 0 else at + 100].decode("ascii", "replace").split(" (")[0]


# --- the CPU the kernel sees ------------------------------------------------------------------------------
LEAF1_ECX_X2APIC, LEAF1_ECX_TSC_DEADLINE, LEAF1_ECX_HYPERVISOR = 1 << 21, 1 << 24, 1 << 31
LEAF1_EDX_APIC = 1 << 9
ALL = 0xFFFFFFFF


def cpuid_confs(tsc_khz):
    """CPUID masks for a machine with a PIC and no local APIC, and (when known) the TSC rate in
    leaf 0x15 (crystal 1 MHz, ratio tsc_khz/1000) and 0x16, so Linux takes it as known and does
    not calibrate against the PIT (slow, and wrong under a software CPU)."""
    from nvmmpy import CpuidConf
    confs = [CpuidConf(1, mask=True, set=(0, 0, LEAF1_ECX_HYPERVISOR, 0),
                       del_=(0, 0, LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE, LEAF1_EDX_APIC))]
    if tsc_khz:
        mhz = max(1, tsc_khz // 1000)
        confs += [CpuidConf(0, mask=True, set=(0x16, 0, 0, 0), del_=(ALL ^ 0x16, 0, 0, 0)),
                  CpuidConf(0x15, mask=True, set=(1000, tsc_khz, 1_000_000, 0),
                            del_=(ALL ^ 1000, ALL ^ tsc_khz, ALL ^ 1_000_000, ALL)),
                  CpuidConf(0x16, mask=True, set=(mhz, mhz, 100, 0), del_=(ALL ^ mhz, ALL ^ mhz, ALL ^ 100, ALL))]
    return confs


def configure_cpu(vm) -> int | None:
    """Apply cpuid_confs on the VM's vCPU; returns the TSC rate told (kHz) or None."""
    from nvmmpy import constants as NC
    tsc = vm.vcpu.tsc_khz()
    for conf in cpuid_confs(tsc):
        vm.vcpu.configure(NC.VCPU_CONF_CPUID, conf)
    return tsc


def boot(vm, kernel: bytes, initrd: bytes = b"", cmdline: str = DEFAULT_CMDLINE) -> KernelInfo:
    """Load `kernel` (bzImage or PVH vmlinux) with `initrd` and `cmdline` and set the vCPU at its entry."""
    if not kernel:
        raise LoadError("the kernel image is empty")
    kind = kernel_kind(kernel)
    info = (boot_bzimage if kind == "bzimage" else boot_pvh)(vm, kernel, initrd, cmdline)
    configure_cpu(vm)
    return info
