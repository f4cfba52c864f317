"""Boot the cached Linux guest (linux_image.py) under QEMU with a test script and some devices, and
return its serial output. Used by the vhost-user tests and the benchmark.

    out = boot("cat /proc/cpuinfo | head -1", devices=["-chardev", "socket,id=c0,path=s.sock",
                                                        "-device", "vhost-user-rng-pci,chardev=c0"])
    script_status(out)   # the exit status of /test.sh, from the guest's `init: test.sh exit N` line

Guest RAM is a shared memfd (vhost-user back-ends map it). skip_reason() says exactly what is
missing (QEMU 10, the vhost-user devices, the image) or None when everything is here.
"""
import os
import re
import shutil
import subprocess
import tempfile

from . import linux_image

QEMU = "qemu-system-x86_64"
MIN_VERSION = (10, 0)
VHOST_USER_DEVICES = ("vhost-user-snd-pci", "vhost-user-blk-pci", "vhost-user-rng-pci")
MEMORY_MB = 256


def qemu_binary() -> str | None:
    return shutil.which(QEMU) or next((p for p in ("/usr/bin/" + QEMU, "/usr/local/bin/" + QEMU)
                                       if os.access(p, os.X_OK)), None)


def qemu_version(binary: str) -> tuple:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


_skip_cache: dict = {}


def skip_reason(devices=VHOST_USER_DEVICES) -> str | None:
    """Why the QEMU + Linux tests cannot run here, or None."""
    key = tuple(devices)
    if key in _skip_cache:
        return _skip_cache[key]
    why = None
    binary = qemu_binary()
    if binary is None:
        why = f"{QEMU} is not installed (QEMU >= {MIN_VERSION[0]} with vhost-user devices is needed)"
    else:
        v = qemu_version(binary)
        if v < MIN_VERSION:
            why = f"{binary} is QEMU {v[0]}.{v[1]}; QEMU >= {MIN_VERSION[0]}.{MIN_VERSION[1]} is needed"
        else:
            have = subprocess.run([binary, "-device", "help"], capture_output=True, text=True, timeout=30).stdout
            missing = [d for d in devices if f'"{d}"' not in have]
            if missing:
                why = f"{binary} lacks {', '.join(missing)}"
    if why is None:
        try:
            linux_image.ensure(build=False)
        except linux_image.ImageUnavailable as e:
            why = f"Linux guest image missing: {e}"
    _skip_cache[key] = why
    return why


def command(initrd: str, devices=(), memory_mb: int = MEMORY_MB, append: str = "") -> list:
    paths = linux_image.ensure(build=False)
    return [qemu_binary(), "-accel", "tcg", "-M", "pc", "-m", str(memory_mb), "-nographic", "-no-reboot",
            "-nic", "none", "-kernel", paths.vmlinux, "-initrd", initrd,
            "-append", f"console=ttyS0 quiet panic=-1 {append}".strip(),
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem",
            *devices]


def make_initrd(script: str, files: dict | None = None, directory: str | None = None) -> str:
    """The base initrd with /test.sh (and `files`) appended, written to a file; returns its path."""
    paths = linux_image.ensure(build=False)
    fd, path = tempfile.mkstemp(prefix="initrd-", suffix=".cpio", dir=directory)
    with os.fdopen(fd, "wb") as f, open(paths.initrd, "rb") as base:
        shutil.copyfileobj(base, f)
        f.write(linux_image.script_cpio(script, files))
    return path


def start(script: str, devices=(), files: dict | None = None, directory: str | None = None,
          memory_mb: int = MEMORY_MB) -> subprocess.Popen:
    """QEMU running the guest (stdout: its serial console, stderr merged); the caller waits."""
    initrd = make_initrd(script, files, directory)
    proc = subprocess.Popen(command(initrd, devices, memory_mb), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.initrd = initrd
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for QEMU (killed after `timeout`), remove its initrd, return the serial output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += b"\n[qemu_linux: killed after timeout]\n"
    finally:
        try:
            os.unlink(proc.initrd)
        except OSError:
            pass
    return out.decode("utf-8", "replace")


def boot(script: str, devices=(), files: dict | None = None, timeout: float = 120, **kw) -> str:
    return finish(start(script, devices, files, **kw), timeout)


def script_status(output: str) -> int | None:
    m = re.search(r"init: test\.sh exit (\d+)", output)
    return int(m.group(1)) if m else None


def vhost_user_device(kind: str, socket_path: str, chardev: str = "c0", extra: str = "") -> list:
    """QEMU arguments for a vhost-user device of `kind` (rng, blk, snd) on `socket_path`."""
    opts = f"vhost-user-{kind}-pci,chardev={chardev}" + (f",{extra}" if extra else "")
    return ["-chardev", f"socket,id={chardev},path={socket_path}", "-device", opts]
