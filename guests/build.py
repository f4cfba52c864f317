#!/usr/bin/env python3
"""Build nvmmpy's bundled guests: python3 guests/build.py [--out DIR] [--check] [-v] [NAME ...]

Each guest is one C file here plus the runtime in runtime/, linked at 1 MiB by
link.ld into a static, stripped ELF64 (<name>.elf). `qemu-shim` (qemu-shim.S) is
the position-independent boot shim with which bench/qemu.py starts these guests
under QEMU's multiboot loader: its raw bytes go to qemu-shim.bin. The build is reproducible:
no debug info, no build id, no .comment, fixed input order and relative paths,
so the same sources and toolchain (Debian 12: gcc 12.2, binutils 2.40) give
byte-identical images. The default output is the package directory vmm/guests/,
whose images ship in the wheel so that installing nvmmpy needs no compiler.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent
DEFAULT_OUT = SRC.parent / "vmm" / "guests"
GUESTS = ("hello", "compute", "exits", "interrupts", "virtio-console", "virtio-rng", "virtio-blk",
          "virtio-sound-play", "virtio-sound-record")
RUNTIME = ("start.S", "entry.c", "console.c", "exit.c", "lib.c", "pic.c", "pit.c", "trap.c", "user.c", "virtio.c")
TOOLS = ("gcc", "as", "ld")
SHIM = "qemu-shim"  # qemu-shim.S -> qemu-shim.bin (raw, position-independent, no relocations)
TARGETS = GUESTS + (SHIM,)

CFLAGS = [
    "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone",
    "-mno-sse", "-mno-mmx", "-mgeneral-regs-only", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-ident",
    "-fno-tree-loop-distribute-patterns",  # no memset/memcpy calls made up from loops
    "-ffunction-sections", "-fdata-sections",
    f"-ffile-prefix-map={SRC}=.",
]
LDFLAGS = [
    "-nostdlib", "-static", "-no-pie", "-T", "link.ld",
    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-Wl,--gc-sections",
    "-Wl,--strip-all",  # section and program headers stay; symbols go
]


def missing_tools() -> list:
    """The build tools that are not on PATH (empty when the build can run)."""
    return [t for t in TOOLS if shutil.which(t) is None]


def toolchain_version() -> str:
    """e.g. "gcc 12.2.0, GNU ld 2.40" (what the images' byte-identity depends on)."""
    gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True, check=False).stdout.strip()
    ld = subprocess.run(["ld", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    return f"gcc {gcc}, ld {ld.split()[-1]}"


def _run(cmd, verbose):
    if verbose:
        print(" ".join(cmd))
    env = dict(os.environ, LC_ALL="C", SOURCE_DATE_EPOCH="0")
    r = subprocess.run(cmd, cwd=SRC, env=env, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    if r.stderr.strip():
        print(r.stderr, file=sys.stderr, end="")


def shim_bytes(obj: bytes) -> bytes:
    """The .text of the shim's ELF64 object, checked to need no relocation (so that it runs
    wherever it is loaded) and to have no other contents."""
    import struct
    if obj[:5] != b"\x7fELF\x02":
        raise SystemExit(f"build failed: {SHIM}.o is not an ELF64 object")
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    strtab = secs[shstrndx]
    names = [obj[strtab[4] + s[0]:obj.index(b"\0", strtab[4] + s[0])].decode() for s in secs]
    text = None
    for name, (_, typ, flags, _, off, size, *_rest) in zip(names, secs):
        if typ in (4, 9):  # SHT_RELA, SHT_REL
            raise SystemExit(f"build failed: {SHIM}.S needs relocations ({name}): it must be position-independent")
        if name == ".text":
            text = obj[off:off + size]
        elif flags & 0x2 and size:  # SHF_ALLOC
            raise SystemExit(f"build failed: {SHIM}.S puts {size} bytes in {name}; everything belongs in .text")
    if not text:
        raise SystemExit(f"build failed: {SHIM}.o has no .text")
    return text


def build(out_dir=DEFAULT_OUT, names=TARGETS, verbose=False) -> list:
    """Build the named guests (and the QEMU shim) into out_dir; returns the image paths."""
    missing = missing_tools()
    if missing:
        raise SystemExit(f"cannot build the guests: {', '.join(missing)} not found "
                         "(on Debian: apt-get install gcc binutils)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    with tempfile.TemporaryDirectory(prefix="nvmmpy-guests-") as tmp:
        def compile_one(src, obj):
            _run(["gcc", *CFLAGS, "-c", src, "-o", str(Path(tmp) / obj)], verbose)
            return str(Path(tmp) / obj)

        runtime = [compile_one(f"runtime/{s}", f"rt_{s}.o") for s in RUNTIME] \
            if any(n != SHIM for n in names) else []
        for name in names:
            if name == SHIM:
                dest = out_dir / f"{SHIM}.bin"
                dest.write_bytes(shim_bytes(Path(compile_one(f"{SHIM}.S", f"{SHIM}.o")).read_bytes()))
                os.chmod(dest, 0o644)
                outputs.append(dest)
                continue
            if not (SRC / f"{name}.c").exists():
                raise SystemExit(f"no guest {name!r}: guests/{name}.c does not exist")
            obj = compile_one(f"{name}.c", f"{name}.o")
            tmp_elf = str(Path(tmp) / f"{name}.elf")
            _run(["gcc", *CFLAGS, *LDFLAGS, "-o", tmp_elf, *runtime, obj], verbose)
            dest = out_dir / f"{name}.elf"
            shutil.copyfile(tmp_elf, dest)
            os.chmod(dest, 0o644)
            outputs.append(dest)
    return outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(TARGETS),
                   help=f"guests to build (default: all: {' '.join(TARGETS)})")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: the package's vmm/guests/)")
    p.add_argument("--check", action="store_true",
                   help="build into a temporary directory and compare with the images in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="print every command")
    a = p.parse_args(argv)
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            bad = []
            for path in build(tmp, a.names, a.verbose):
                shipped = Path(a.out) / path.name
                same = shipped.exists() and shipped.read_bytes() == path.read_bytes()
                print(f"{path.name:16} {'identical' if same else 'DIFFERS'}")
                bad += [] if same else [path.name]
            if bad:
                print(f"rebuilt with {toolchain_version()}: {', '.join(bad)} differ from {a.out}")
            return 1 if bad else 0
    print(f"building into {a.out} with {toolchain_version()}")
    for path in build(a.out, a.names, a.verbose):
        data = path.read_bytes()
        print(f"  {path.name:16} {len(data):6} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
