"""Loaders: flat binaries (16-, 32-, 64-bit), ELF64/ELF32, and the boot info block (docs/guest-abi.md)."""
import io
import struct
from dataclasses import dataclass

from nvmmpy import constants as nvmm

from . import cpu_modes

FORMATS = ("auto", "raw16", "raw32", "raw64", "elf")
INFO_ADDR = 0xA000
CMDLINE_ADDR = 0xA800
CMDLINE_MAX = 2047
STACK_TOP = 0x80000
KERNEL_STACK_TOP = 0x70000  # RSP0 for CPL3 guests: 64 KiB below the initial stack
LOW_RESERVED = (0x500, 0xB000)   # GDT, TSS + I/O bitmap, page tables, info block
HIGH_LOAD = 0x100000
INFO_RAM = 32   # boot info entry type of a RAM region (base, size); irq 0xFFFFFFFF
EM_386, EM_X86_64 = 3, 62


class LoadError(Exception):
    """A guest image that cannot be loaded; the message says what is wrong and what to do."""


@dataclass
class LoadInfo:
    format: str
    entry: int
    mode: str          # "real", "protected", "long"
    cpl: int
    segments: list     # [(gpa, size)]


def guest_mode_of(data: bytes, fmt: str, cpl3: bool) -> str:
    """The guest_mode hint for Machine(driver="auto") before the VM exists."""
    if not data:
        raise LoadError("the image is empty")
    fmt = detect_format(data) if fmt == "auto" else fmt
    if fmt == "raw16":
        return "real"
    if fmt == "elf":
        _elf_image(data)     # a truncated or foreign ELF is reported before the VM is made
    return "cpl3" if cpl3 else "cpl0"


def detect_format(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        return "elf"
    raise LoadError("cannot tell the image's format (it is not ELF): give --format raw16, raw32 or raw64")


def _check_fits(vm, gpa: int, size: int, what: str) -> None:
    ram = vm.ram
    if not ram.contains(gpa, size):
        where = " and ".join(f"{r.gpa:#x}-{r.end - 1:#x}" for r in ram.regions)
        raise LoadError(f"{what} needs guest memory {gpa:#x}-{gpa + size - 1:#x} but the VM's "
                        f"{ram.size >> 20} MiB of RAM is at {where}: give a larger --memory")
    lo, hi = LOW_RESERVED
    if gpa < hi and lo < gpa + size:
        raise LoadError(f"{what} at {gpa:#x}-{gpa + size - 1:#x} overlaps the VMM's boot area "
                        f"{lo:#x}-{hi - 1:#x}: link or load it at 1 MiB")


def info_entries(vm) -> list:
    """The boot info block's table: the devices, then one INFO_RAM entry per RAM region."""
    return list(vm.info_devices) + [(INFO_RAM, 0xFFFFFFFF, r.gpa, r.size) for r in vm.ram.regions]


def write_info_block(vm, cmdline: str) -> int:
    """The boot info block of docs/guest-abi.md; returns its address."""
    raw = cmdline.encode()
    if len(raw) > CMDLINE_MAX:
        raise LoadError(f"the command line is {len(raw)} bytes; at most {CMDLINE_MAX} fit")
    entries = info_entries(vm)
    if 40 + 24 * len(entries) > CMDLINE_ADDR - INFO_ADDR:
        raise LoadError(f"{len(entries)} boot info entries do not fit below the command line: use fewer devices")
    block = b"NVMMPYBI" + struct.pack("<IIQQII", 1, 40 + 24 * len(entries), vm.ram.size,
                                      CMDLINE_ADDR if raw else 0, len(raw), len(entries))
    for t, irq, base, size in entries:
        block += struct.pack("<IIQQ", t, irq & 0xFFFFFFFF, base, size)
    vm.ram.write(INFO_ADDR, block)
    vm.ram.write(CMDLINE_ADDR, raw + b"\0")
    return INFO_ADDR


def _check_elf_header(data: bytes) -> None:
    """LoadError in plain words for a truncated or corrupt ELF header, before pyelftools (whose
    messages for these are "expected 7, found 1" and the like)."""
    n = len(data)
    if data[:4] != b"\x7fELF":
        raise LoadError(f"the file is {n} bytes, too short to be an ELF image: it is truncated"
                        if n < 4 and b"\x7fELF".startswith(data) else
                        "not an ELF image (it does not start with \\x7fELF)")
    if n < 6:
        raise LoadError(f"the file is {n} bytes, too short to be an ELF image (its header alone is "
                        "52 or 64 bytes): it is truncated")
    klass, order = data[4], data[5]
    if klass not in (1, 2):
        raise LoadError(f"corrupt ELF header: class byte {klass} (1 is ELF32, 2 is ELF64)")
    if order == 2:
        raise LoadError("the ELF file is big-endian: nvmmpy runs x86 (little-endian) guests")
    if order != 1:
        raise LoadError(f"corrupt ELF header: data encoding byte {order} (1 is little-endian)")
    bits, head, phent = (64, 64, 56) if klass == 2 else (32, 52, 32)
    if n < head:
        raise LoadError(f"the file is {n} bytes, too short for an ELF{bits} header ({head} bytes): "
                        "it is truncated")
    if bits == 64:
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
    else:
        phoff, = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
    if phnum and phentsize != phent:
        raise LoadError(f"corrupt ELF header: program headers of {phentsize} bytes (ELF{bits}'s are {phent})")
    end = phoff + phnum * phentsize
    if end > n:
        raise LoadError(f"the file is {n} bytes but its program headers end at byte {end}: it is truncated or corrupt")


_PT_LOAD, _PT_DYNAMIC = 1, 2
_PLAIN = {(2, 62): "EM_X86_64", (1, 3): "EM_386"}   # (class, e_machine) -> pyelftools' name


def _plain_elf_segments(data: bytes):
    """_elf_segments' answer read with struct for the usual x86 executable, or None for pyelftools.

    Importing pyelftools cost ~20 ms of every start. Anything unusual (another machine or file
    type, an extended program header count, a dynamic segment, which pyelftools parses further)
    still goes to pyelftools, so its names and its errors stay those of before. Called after
    _check_elf_header, which guarantees the program header table lies inside `data`.
    """
    klass = data[4]
    if klass == 2:
        e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIQQ", data, 16)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        phdr = struct.Struct("<IIQQQQQQ")   # type, flags, offset, vaddr, paddr, filesz, memsz, align
        fields = lambda t: (t[0], t[2], t[3], t[4], t[5], t[6])  # noqa: E731
    else:
        e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIII", data, 16)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
        phdr = struct.Struct("<8I")          # type, offset, vaddr, paddr, filesz, memsz, flags, align
        fields = lambda t: t[:6]  # noqa: E731
    machine = _PLAIN.get((klass, e_machine))
    if machine is None or e_type not in (2, 3) or phnum >= 0xFFFF:
        return None
    segs = []
    for i in range(phnum):
        p_type, offset, vaddr, paddr, filesz, memsz = fields(phdr.unpack_from(data, phoff + i * phentsize))
        if p_type == _PT_DYNAMIC:
            return None
        if p_type == _PT_LOAD and memsz:
            segs.append((paddr or vaddr, offset, filesz, memsz))
    for paddr, offset, filesz, memsz in segs:
        if filesz > memsz:
            raise LoadError(f"corrupt ELF program header: the segment at {paddr:#x} has more bytes "
                            "in the file than in memory")
        if offset + filesz > len(data):
            raise LoadError(f"the file is {len(data)} bytes but its segment at {paddr:#x} ends at "
                            f"byte {offset + filesz}: it is truncated or corrupt")
    return 64 if klass == 2 else 32, machine, entry, segs


def _elf_segments(data: bytes):
    _check_elf_header(data)
    plain = _plain_elf_segments(data)
    return plain if plain is not None else _elftools_segments(data)


def _elftools_segments(data: bytes):
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
    except ImportError:  # pragma: no cover - a dependency
        raise LoadError("pyelftools is not installed (pip install pyelftools)") from None
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        if isinstance(elf["e_type"], int):    # pyelftools names the types it knows
            raise LoadError(f"corrupt ELF header: unknown file type {elf['e_type']}")
        if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise LoadError(f"the ELF file is {elf['e_type']}, not an executable: link it first")
        segs = []
        for ph in elf.iter_segments():
            if ph["p_type"] == "PT_LOAD" and ph["p_memsz"]:
                paddr = ph["p_paddr"] or ph["p_vaddr"]
                if ph["p_filesz"] > ph["p_memsz"]:
                    raise LoadError(f"corrupt ELF program header: the segment at {paddr:#x} has more bytes "
                                    "in the file than in memory")
                end = ph["p_offset"] + ph["p_filesz"]
                if end > len(data):
                    raise LoadError(f"the file is {len(data)} bytes but its segment at {paddr:#x} ends at "
                                    f"byte {end}: it is truncated or corrupt")
                segs.append((paddr, ph["p_offset"], ph["p_filesz"], ph["p_memsz"]))
        return elf.elfclass, machine, elf["e_entry"], segs
    except (ELFError, struct.error, ValueError) as e:
        raise LoadError(f"corrupt ELF file: {e}") from None


def _elf_image(data: bytes):
    """(bits, entry, [(paddr, offset, filesz, memsz)]) of an ELF image nvmmpy can start, else LoadError."""
    klass, machine, entry, segs = _elf_segments(data)
    if machine not in ("EM_X86_64", "EM_386"):
        raise LoadError(f"the ELF file is for {machine}, not x86: nvmmpy runs x86 guests")
    if (klass == 64) != (machine == "EM_X86_64"):
        raise LoadError(f"ELF{klass} for {machine} is not a combination nvmmpy can start")
    if not segs:
        raise LoadError("the ELF file has no loadable segment")
    return klass, entry, segs


def load(vm, data: bytes, fmt: str = "auto", cmdline: str = "", load_at: tuple | None = None,
         cpl3: bool = False, iopl: int = 0) -> LoadInfo:
    """Put `data` into the VM's RAM and its vCPU at the entry, per docs/guest-abi.md."""
    if not data:
        raise LoadError("the image is empty")
    if fmt not in FORMATS:
        raise LoadError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(data)
    if cpl3 and fmt in ("raw16", "raw32"):
        raise LoadError("--cpl3 needs a 64-bit image (raw64 or ELF64)")
    ram = vm.ram
    if fmt == "raw16":
        seg, off = load_at or (0x1000, 0)
        gpa = seg * 16 + off
        _check_fits(vm, gpa, len(data), "the image")
        if gpa + len(data) > 0x10FFF0:
            raise LoadError("a real-mode image must sit below 1 MiB + 64 KiB")
        ram.write(gpa, data)
        cpu_modes.set_real_mode(vm.vcpu, seg, off, sp=0xFFFE)
        return LoadInfo(fmt, gpa, "real", 0, [(gpa, len(data))])
    if fmt in ("raw32", "raw64"):
        gpa = HIGH_LOAD if load_at is None else load_at[0] * 16 + load_at[1]
        _check_fits(vm, gpa, len(data), "the image")
        ram.write(gpa, data)
        segments, entry, bits = [(gpa, len(data))], gpa, 32 if fmt == "raw32" else 64
    else:
        bits, entry, segs = _elf_image(data)
        segments = []
        for paddr, off, filesz, memsz in segs:
            _check_fits(vm, paddr, memsz, f"ELF segment at {paddr:#x}")
            ram.write(paddr, data[off:off + filesz])
            if memsz > filesz:
                ram.write(paddr + filesz, bytes(memsz - filesz))
            segments.append((paddr, memsz))
        if not any(p <= entry < p + n for p, n in segments):
            raise LoadError(f"the ELF entry point {entry:#x} is not inside a loaded segment")
    info = write_info_block(vm, cmdline)
    st = vm.vcpu.state
    if bits == 32:
        cpu_modes.set_protected_mode(vm.vcpu, ram.view_all, entry, STACK_TOP)
        vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
        st.gprs[nvmm.X64_GPR_RBX] = info
        vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
        return LoadInfo(fmt, entry, "protected", 0, segments)
    cpl = 3 if cpl3 else 0
    cpu_modes.set_long_mode(vm.vcpu, ram.view_all, entry, STACK_TOP, cpl=cpl, iopl=iopl,
                            kernel_stack=KERNEL_STACK_TOP, map_size=4 << 30)
    vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    st.gprs[nvmm.X64_GPR_RDI] = info
    st.gprs[nvmm.X64_GPR_RSI] = 0
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
    return LoadInfo(fmt, entry, "long", cpl, segments)
