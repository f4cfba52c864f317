"""QEMU as a peer: run nvmmpy's bundled guests (vmm/guests/*.elf) unchanged under qemu-system-x86_64.

QEMU's `-kernel` multiboot loader takes ELF32 images only, so `multiboot_image` wraps a guest's
ELF64 segments in an ELF32 file with a multiboot header and one more segment: the boot shim
(guests/qemu-shim.S, shipped as vmm/guests/qemu-shim.bin), entered by QEMU's multiboot option
ROM in 32-bit protected mode. The shim builds the nvmmpy64 entry of docs/guest-abi.md (GDT,
TSS, identity map, boot info block with QEMU's devices) and jumps to the guest's entry.

What the guests see under QEMU (`-machine pc -device isa-debug-exit,iobase=0x501,iosize=2
-device pc-testdev`): COM1 at 0x3F8 (IRQ 4), debug-exit at 0x501, i8042 at 0x60/0x64, the PIT
(IRQ 0) and the PIC pair, and as the scratch MMIO page pc-testdev's memory window at 0xFF000000,
whose reads return what was written. The debug-exit device makes QEMU exit with (value << 1) | 1
(so guest codes 0-127 come back exactly; the process status keeps 8 bits); `run_guest` maps that
back to the guest's own exit code, and tells QEMU's own failures (status 1 with an error on
stderr) from a guest's 0.

Firmware: qboot where QEMU ships it (its `-bios qboot.rom` runs the multiboot option ROM in
milliseconds), else SeaBIOS, which takes about 3.5 s under KVM on hosts that emulate real-mode
code (kvm_pvm) and 30 ms more under TCG. With KVM the CPU is `host,-arch-capabilities`.

    from nvmmpy.bench.qemu import run_guest
    r = run_guest(guest_path("hello"), "console=ttyS0", accel="tcg")
    r.exit_code, r.output, r.wall
"""
import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass

import nvmmpy.vmm.guests as _vmm_guests
SHIM_PATH = os.path.join(os.path.dirname(os.path.abspath(_vmm_guests.__file__)), "qemu-shim.bin")
SHIM_MAGIC = b"NVMMSHIM"        # at offset 8 of the shim, followed by the guest's 64-bit entry (u64)
SHIM_PARAMS = 8
MB_MAGIC = 0x1BADB002
MB_FLAGS = 0x3                  # bit 0: modules page-aligned, bit 1: give memory information
MB_SEARCH = 8192                # the header must lie within the file's first 8 KiB
SCRATCH_BASE = 0xFF000000       # pc-testdev's memory window (the guests' scratch MMIO under QEMU)
DEBUG_EXIT_PORT = 0x501
ACCELS = ("tcg", "kvm")
INSTALL_HINT = "install it with `apt-get install qemu-system-x86`"
QEMU_DATA_DIRS = ["/usr/share/qemu", "/usr/local/share/qemu", "/usr/share/qemu-kvm"]
# -cpu per accelerator. With KVM, "host" minus arch-capabilities: on hosts whose KVM refuses
# MSR_IA32_ARCH_CAPABILITIES (0x10a; kvm_pvm does) plain "host" aborts QEMU at start-up.
CPU = {"tcg": "qemu64", "kvm": "host,-arch-capabilities"}


class QemuError(Exception):
    """QEMU missing or failing, KVM unavailable, a time-out, an image that cannot be wrapped."""


@dataclass
class QemuRun:
    exit_code: int | None       # the guest's own exit code (debug-exit), None if QEMU ended otherwise
    output: str                 # what the guest wrote to COM1
    wall: float                 # seconds from spawning QEMU to its exit
    argv: list
    returncode: int = 0         # QEMU's own exit status
    stderr: str = ""
    reason: str = ""            # "debug-exit", "reset" (i8042 reset, shutdown or triple fault with
    #                             -no-reboot), "error" (QEMU failed; see stderr), "signal"


# --- QEMU itself -----------------------------------------------------------------------------
def qemu_binary() -> str | None:
    """The path of qemu-system-x86_64 ($NVMMPY_QEMU overrides), or None."""
    env = os.environ.get("NVMMPY_QEMU")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else shutil.which(env)
    return shutil.which("qemu-system-x86_64")


_VERSIONS = {}


def qemu_version() -> str | None:
    """e.g. "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", or None without QEMU."""
    binary = qemu_binary()
    if binary is None:
        return None
    if binary not in _VERSIONS:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        first = out.splitlines()[0] if out else ""
        _VERSIONS[binary] = first.split("version", 1)[1].strip() if "version" in first else (first or None)
    return _VERSIONS[binary]


def kvm_problem() -> str | None:
    """Why QEMU cannot use KVM here (one line), or None when /dev/kvm is usable."""
    if not os.path.exists("/dev/kvm"):
        return "KVM is unavailable for QEMU: there is no /dev/kvm (no kvm module loaded, or not allowed here)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "KVM is unavailable for QEMU: /dev/kvm is not readable and writable by this user (join group kvm)"
    return None


# --- the image -------------------------------------------------------------------------------
def _shim() -> bytes:
    try:
        with open(SHIM_PATH, "rb") as f:
            shim = f.read()
    except OSError:
        raise QemuError(f"{SHIM_PATH} is missing: build it with `python3 guests/build.py qemu-shim`") from None
    if shim[SHIM_PARAMS:SHIM_PARAMS + 8] != SHIM_MAGIC:
        raise QemuError(f"{SHIM_PATH} is not nvmmpy's QEMU shim (no {SHIM_MAGIC.decode()} parameter block)")
    return shim


def _guest_loads(guest_elf_path: str):
    """(entry, [(paddr, flags, filebytes, memsz)]) of an nvmmpy64 ELF64 guest."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(guest_elf_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise QemuError(f"cannot read the guest {guest_elf_path}: {e.strerror}") from None
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise QemuError(f"{guest_elf_path} is not an x86-64 ELF64 guest (nvmmpy64 entry)")
        loads = []
        for ph in elf.iter_segments():
            if ph["p_type"] != "PT_LOAD" or not ph["p_memsz"]:
                continue
            paddr, off, filesz, memsz = ph["p_paddr"], ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
            if filesz > memsz or off + filesz > len(data):
                raise QemuError(f"{guest_elf_path}: a PT_LOAD segment is larger than the file (truncated?)")
            if paddr < 0x100000 or paddr + memsz > 0xF0000000:
                raise QemuError(f"{guest_elf_path}: segment at {paddr:#x} is not between 1 MiB and 3.75 GiB")
            loads.append((paddr, ph["p_flags"], data[off:off + filesz], memsz))
        entry = elf["e_entry"]
    except (ELFError, struct.error, ValueError) as e:
        raise QemuError(f"{guest_elf_path} is not a valid ELF file: {e}") from None
    if not loads:
        raise QemuError(f"{guest_elf_path} has no loadable segment")
    if not any(p <= entry < p + m for p, _, _, m in loads):
        raise QemuError(f"{guest_elf_path}: the entry {entry:#x} is in no loadable segment")
    return entry, sorted(loads, key=lambda s: s[0])


def multiboot_image(guest_elf_path: str, out_path: str) -> None:
    """Write an ELF32 (EM_386) multiboot kernel that QEMU's -kernel starts: the guest's PT_LOAD
    segments (same physical addresses, bytes and sizes), then the shim's page-aligned above the
    highest of them as the entry; the multiboot header sits right after the program headers."""
    entry, loads = _guest_loads(guest_elf_path)
    shim = bytearray(_shim())
    shim[SHIM_PARAMS + 8:SHIM_PARAMS + 16] = struct.pack("<Q", entry)
    shim_addr = (max(p + m for p, _, _, m in loads) + 0xFFF) & ~0xFFF
    segs = loads + [(shim_addr, 0x7, bytes(shim), len(shim))]   # R W X

    nph = len(segs)
    phoff = 52
    mboff = (phoff + 32 * nph + 7) & ~7
    if mboff + 12 > MB_SEARCH:
        raise QemuError(f"{guest_elf_path} has too many segments for a multiboot header in the first 8 KiB")
    body = bytearray(mboff + 12)
    struct.pack_into("<III", body, mboff, MB_MAGIC, MB_FLAGS, (-(MB_MAGIC + MB_FLAGS)) & 0xFFFFFFFF)
    phdrs = []
    for paddr, flags, blob, memsz in segs:
        off = ((len(body) + 0xFFF) & ~0xFFF) + (paddr & 0xFFF)   # offset = address mod page size
        body += bytes(off - len(body)) + blob
        phdrs.append(struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(blob), memsz, flags, 0x1000))
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)             # ELFCLASS32, LSB, EV_CURRENT
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, shim_addr, phoff, 0, 0, 52, 32, nph, 40, 0, 0)
    body[0:52] = header
    body[phoff:phoff + 32 * nph] = b"".join(phdrs)
    tmp = f"{out_path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, out_path)


def _cache_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), f"nvmmpy-qemu-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def image_for(guest_elf_path: str) -> str:
    """The multiboot image of a guest, built once per (guest, shim) content in a cache directory."""
    h = hashlib.sha256()
    try:
        with open(guest_elf_path, "rb") as f:
            h.update(f.read())
    except OSError as e:
        raise QemuError(f"cannot read the guest {guest_elf_path}: {e.strerror}") from None
    h.update(_shim())
    name = os.path.splitext(os.path.basename(guest_elf_path))[0]
    path = os.path.join(_cache_dir(), f"{name}-{h.hexdigest()[:16]}.mb.elf")
    if not os.path.exists(path):
        multiboot_image(guest_elf_path, path)
    return path


# --- running ---------------------------------------------------------------------------------
def qboot_path() -> str | None:
    """QEMU's qboot firmware (qboot.rom beside its other ROMs), or None."""
    binary = qemu_binary()
    dirs = [os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(binary))), "share", "qemu")] if binary else []
    for d in dirs + QEMU_DATA_DIRS:
        path = os.path.join(d, "qboot.rom")
        if os.path.isfile(path):
            return path
    return None


def qemu_argv(image: str, cmdline: str, accel: str = "tcg", memory_mib: int = 64, extra_args=(),
              bios: str = "auto") -> list:
    """The qemu-system-x86_64 command line that runs a multiboot image with the guests' devices.

    bios: "auto" (qboot where QEMU has it, else its default SeaBIOS), "qboot", "seabios", or a path.
    """
    if accel not in ACCELS:
        raise QemuError(f"unknown accelerator {accel!r}: choose tcg or kvm")
    binary = qemu_binary()
    if binary is None:
        raise QemuError(f"qemu-system-x86_64 is not installed: {INSTALL_HINT}")
    if bios in ("auto", "qboot"):
        firmware = qboot_path()
        if firmware is None and bios == "qboot":
            raise QemuError("QEMU's qboot.rom is not installed (Debian: it comes with qemu-system-data)")
    else:
        firmware = None if bios == "seabios" else bios
    return [binary, "-machine", f"pc,accel={accel}", "-cpu", CPU[accel],
            *(["-bios", firmware] if firmware else []),
            "-m", str(memory_mib), "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", "stdio", "-monitor", "none",
            "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=2", "-device", "pc-testdev",
            "-kernel", image, "-append", cmdline, *extra_args]


def run_guest(guest_elf_path: str, cmdline: str = "", accel: str = "tcg", memory_mib: int = 64,
              timeout: float = 60.0, extra_args=(), bios: str = "auto") -> QemuRun:
    """Boot an nvmmpy64 guest under QEMU (TCG or KVM) and wait for it; see QemuRun.

    The firmware is qboot where QEMU ships it (bios="auto"): it starts the multiboot option ROM
    in a few ms even where KVM emulates real-mode code (kvm_pvm), where SeaBIOS takes seconds."""
    if accel == "kvm":
        problem = kvm_problem()
        if problem:
            raise QemuError(problem)
    if qemu_binary() is None:
        raise QemuError(f"qemu-system-x86_64 is not installed: {INSTALL_HINT}")
    image = image_for(guest_elf_path)
    if any(c.isspace() for c in image):
        # QEMU passes "IMAGE CMDLINE" as the multiboot command line; the shim drops the first word
        raise QemuError(f"the image path {image!r} contains white space: set TMPDIR to a path without any")
    argv = qemu_argv(image, cmdline, accel, memory_mib, extra_args, bios)
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise QemuError(f"cannot start {argv[0]}: {e.strerror}") from None
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise QemuError(f"QEMU ({accel}) did not finish {os.path.basename(guest_elf_path)} within {timeout:g} s "
                        f"(output so far: {out.decode(errors='replace')[-200:]!r})") from None
    wall = time.perf_counter() - t0
    output, stderr, rc = out.decode(errors="replace"), err.decode(errors="replace"), p.returncode
    run = QemuRun(None, output, wall, argv, rc, stderr)
    errors = [ln for ln in stderr.splitlines() if ln.strip() and "warning" not in ln.lower()]
    if rc < 0:
        run.reason = "signal"
    elif rc % 2 == 1 and not (rc == 1 and errors):
        run.exit_code, run.reason = rc >> 1, "debug-exit"
    elif rc == 0:
        run.reason = "reset"
    else:
        run.reason = "error"
        if accel == "kvm" and "kvm" in stderr.lower():
            raise QemuError(f"KVM is unavailable for QEMU: {errors[0] if errors else stderr.strip()}")
    return run
