"""A real Linux guest for tests and benchmarks, built from Debian's own packages into a cache dir.

Debian's 6.12 kernel (virtio_snd, virtio_blk, virtio-rng and virtio_mmio are modules there),
busybox-static and alsa-utils (aplay, arecord, amixer with libasound2 and its config) become:

    vmlinux        the ELF kernel cut out of the bzImage (zstd payload; it carries the PVH note)
    bzImage        the kernel as Debian ships it
    initrd.cpio    busybox, the ALSA tools with the libraries they link, the virtio/sound modules in
                   dependency order, and an /init that loads them and runs /test.sh, then powers off

A test appends its own /test.sh as a second small cpio (script_cpio), so one base image serves
every test. Built once per kernel version with `python -m nvmmpy.bench.linux_image` (setup.sh does),
then reused; `ensure()` says exactly what is missing where it cannot be built.
"""
import argparse
import glob
import io
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

from elftools.elf.elffile import ELFFile

PACKAGES = ("busybox-static", "alsa-utils", "libasound2", "libasound2-data", "libc6")
TOOLS = ("usr/bin/aplay", "usr/bin/arecord", "usr/bin/amixer")
# What the tests load, in any order: dependencies are found from each module's own modinfo.
MODULES = ("virtio_mmio", "virtio_blk", "virtio-rng", "virtio_snd", "snd-pcm", "snd-timer")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FORMAT = 1  # bump when the image's contents change, so caches rebuild


class ImageUnavailable(Exception):
    """The guest image cannot be built here; the message says what is missing."""


def cache_root() -> str:
    from nvmmpy.native import cache_root as nvmmpy_cache
    return os.path.join(nvmmpy_cache(), "linux-guest")


def kernel_package() -> str:
    """The newest linux-image-6.12.*+deb12-amd64 apt knows (what linux-image-6.12-amd64 depends on)."""
    try:
        out = subprocess.run(["apt-cache", "depends", "linux-image-6.12-amd64"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageUnavailable(f"apt-cache is not usable here ({e}): the Linux guest needs Debian's packages")
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-6.12.") and name.endswith("-amd64"):
            return name
    raise ImageUnavailable("apt knows no linux-image-6.12.*+deb12-amd64 (enable bookworm-security and "
                           "run `apt-get update`)")


class Paths:
    def __init__(self, root: str):
        self.root = root
        self.vmlinux = os.path.join(root, "vmlinux")
        self.bzimage = os.path.join(root, "bzImage")
        self.initrd = os.path.join(root, "initrd.cpio")
        self.version_file = os.path.join(root, "version")

    @property
    def kernel_version(self) -> str:
        with open(self.version_file) as f:
            return f.read().split()[0]

    def ready(self) -> bool:
        try:
            with open(self.version_file) as f:
                return int(f.read().split()[1]) == FORMAT and all(
                    os.path.exists(p) for p in (self.vmlinux, self.bzimage, self.initrd))
        except (OSError, ValueError, IndexError):
            return False


def ensure(build: bool = True) -> Paths:
    """The cached image, built first if needed (build=False: only look)."""
    for d in sorted(glob.glob(os.path.join(cache_root(), "*")), reverse=True):
        p = Paths(d)
        if p.ready():
            return p
    if not build:
        raise ImageUnavailable(f"no Linux guest image in {cache_root()} (build it: python -m nvmmpy.bench.linux_image)")
    return build_image(kernel_package())


def _download(packages, into: str) -> dict:
    """apt-get download each package into `into`; {package: .deb path}."""
    proc = subprocess.run(["apt-get", "download", "-q", *packages], cwd=into, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise ImageUnavailable(f"apt-get download {' '.join(packages)} failed: {proc.stderr.strip()[-300:]}")
    debs = {}
    for pkg in packages:
        found = glob.glob(os.path.join(into, f"{pkg}_*.deb"))
        if not found:
            raise ImageUnavailable(f"apt-get download gave no .deb for {pkg}")
        debs[pkg] = found[0]
    return debs


def _unpack(deb: str, into: str) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", deb, into], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ImageUnavailable(f"dpkg-deb -x {os.path.basename(deb)} failed: {proc.stderr.strip()}")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage with a zstd payload, found through the boot protocol's
    payload_offset/payload_length (protocol 2.08+), not by searching for the magic."""
    import struct
    import zstandard
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ImageUnavailable("not a bzImage (no HdrS boot header)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    if payload[:4] != ZSTD_MAGIC:
        raise ImageUnavailable("the bzImage's payload is not zstd-compressed")
    # one frame (the kernel's build appends the size after it); `zstd --ultra -22` needs a big window
    elf = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj().decompress(payload)
    if elf[:4] != b"\x7fELF":
        raise ImageUnavailable("the bzImage's zstd payload is not an ELF vmlinux")
    return elf


def _modinfo(ko: bytes) -> dict:
    elf = ELFFile(io.BytesIO(ko))
    sec = elf.get_section_by_name(".modinfo")
    info = {}
    for item in (sec.data() if sec else b"").split(b"\0"):
        k, _, v = item.decode("utf-8", "replace").partition("=")
        if k:
            info.setdefault(k, v)
    return info


def module_order(moddir: str, wanted) -> list:
    """[(name, uncompressed .ko bytes)] for `wanted` and everything they depend on, dependencies first."""
    files = {}
    for path in glob.glob(os.path.join(moddir, "**", "*.ko*"), recursive=True):
        name = os.path.basename(path).split(".ko")[0]
        files[name.replace("-", "_")] = path
    order, seen = [], set()

    def load(path):
        data = open(path, "rb").read()
        return lzma.decompress(data) if path.endswith(".xz") else data

    def visit(name, chain=()):
        key = name.replace("-", "_")
        if key in seen:
            return
        if key not in files:
            raise ImageUnavailable(f"kernel module {name} is not in {moddir}")
        if key in chain:
            raise ImageUnavailable(f"module dependency loop at {name}")
        ko = load(files[key])
        for dep in filter(None, _modinfo(ko).get("depends", "").split(",")):
            visit(dep, chain + (key,))
        seen.add(key)
        order.append((key, ko))

    for name in wanted:
        visit(name)
    return order


def _needed(path: str) -> list:
    with open(path, "rb") as f:
        dyn = ELFFile(f).get_section_by_name(".dynamic")
        return [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"] if dyn else []


def _find_lib(root: str, name: str) -> str:
    for d in LIB_DIRS:
        p = os.path.join(root, d, name)
        if os.path.exists(p):
            return os.path.join(d, name)
    raise ImageUnavailable(f"library {name} is in none of the unpacked packages")


class Cpio:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, 0o040755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), 0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko || echo "init: insmod $m failed"; done
echo "init: up $(uname -r)"
if [ -x /test.sh ]; then /test.sh; echo "init: test.sh exit $?"; else echo "init: no /test.sh"; fi
sync
poweroff -f
"""


def script_cpio(script: str, files: dict | None = None) -> bytes:
    """A second cpio with /test.sh (and any other files), to append to initrd.cpio."""
    c = Cpio()
    c.file("test.sh", ("#!/bin/sh\n" + script).encode(), 0o755)
    for path, data in (files or {}).items():
        c.file(path, data, 0o755 if path.endswith(".sh") else 0o644)
    return c.finish()


def build_image(kpkg: str) -> Paths:
    kver = kpkg.removeprefix("linux-image-")
    root = os.path.join(cache_root(), kver)
    os.makedirs(cache_root(), exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=cache_root())
    try:
        debs = _download([kpkg, *PACKAGES], work)
        tree = os.path.join(work, "root")
        for deb in debs.values():
            _unpack(deb, tree)
        bz = open(os.path.join(tree, "boot", f"vmlinuz-{kver}"), "rb").read()
        vmlinux = extract_vmlinux(bz)
        mods = module_order(os.path.join(tree, "lib", "modules", kver), MODULES)

        c = Cpio()
        c.file("bin/busybox", open(os.path.join(tree, "bin", "busybox"), "rb").read(), 0o755)
        c.file("init", INIT.encode(), 0o755)
        libs = set()
        for tool in TOOLS:
            c.file(tool, open(os.path.join(tree, tool), "rb").read(), 0o755)
            todo = _needed(os.path.join(tree, tool))
            while todo:
                name = todo.pop()
                if name in libs:
                    continue
                libs.add(name)
                rel = _find_lib(tree, name)
                real = os.path.realpath(os.path.join(tree, rel))
                c.file(rel, open(real, "rb").read(), 0o755)
                todo += _needed(real)
        ld = "lib64/ld-linux-x86-64.so.2"
        c.file(ld, open(os.path.realpath(os.path.join(tree, "lib", "x86_64-linux-gnu", "ld-linux-x86-64.so.2")),
                        "rb").read(), 0o755)
        for dirpath, _, files in os.walk(os.path.join(tree, "usr", "share", "alsa")):
            for f in files:
                p = os.path.join(dirpath, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    c.file(os.path.relpath(p, tree), open(p, "rb").read())
        for name, ko in mods:
            c.file(f"lib/modules/{name}.ko", ko)
        c.file("lib/modules/order", "\n".join(n for n, _ in mods).encode() + b"\n")

        staged = root + ".new"
        shutil.rmtree(staged, ignore_errors=True)
        os.makedirs(staged)
        p = Paths(staged)
        for path, data in ((p.vmlinux, vmlinux), (p.bzimage, bz), (p.initrd, c.finish())):
            with open(path, "wb") as f:
                f.write(data)
        with open(p.version_file, "w") as f:
            f.write(f"{kver} {FORMAT}\n")
        shutil.rmtree(root, ignore_errors=True)
        os.rename(staged, root)
        return Paths(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say whether the image is there")
    args = ap.parse_args(argv)
    try:
        p = ensure(build=not args.check)
    except ImageUnavailable as e:
        print(f"linux guest: {e}", file=sys.stderr)
        return 1
    print(f"linux guest {p.kernel_version}: {p.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
