"""Assemble small test guests with GNU as/ld (binutils), cached per source text."""
import hashlib
import os
import shutil
import subprocess
import tempfile

_CACHE = os.path.join(tempfile.gettempdir(), "nvmmpy-test-asm")


def assemble(source: str, bits: int = 64, org: int = 0) -> bytes:
    """Flat binary of `source` (AT&T syntax) linked to run at guest address `org`."""
    if not shutil.which("as") or not shutil.which("ld"):
        raise RuntimeError("GNU as/ld not found: install binutils (apt-get install binutils)")
    text = f".code{bits}\n.text\n.globl _start\n_start:\n{source}\n"
    key = hashlib.sha256(f"{bits}:{org}:{text}".encode()).hexdigest()[:24]
    os.makedirs(_CACHE, exist_ok=True)
    out = os.path.join(_CACHE, key + ".bin")
    if os.path.exists(out):
        with open(out, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as d:
        src, obj, elf = (os.path.join(d, n) for n in ("g.s", "g.o", "g.elf"))
        with open(src, "w") as f:
            f.write(text)
        emu = "elf_x86_64" if bits == 64 else "elf_i386"
        subprocess.run(["as", "--64" if bits == 64 else "--32", "-o", obj, src], check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", emu, "-Ttext", hex(org), "-e", "_start", "-o", elf, obj], check=True, capture_output=True, text=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", elf, out + ".tmp"], check=True, capture_output=True, text=True)
        os.replace(out + ".tmp", out)
    with open(out, "rb") as f:
        return f.read()
