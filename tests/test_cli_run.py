"""`nvmmpy run` end to end, and every bad input a user can give: one clear line, non-zero exit."""
import json
import os
import struct
import subprocess
import sys

import pytest

from asm import assemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVERS = ["kvm", "unicorn"]

HI64 = """
    lea msg(%rip), %rsi
1:  movb (%rsi), %al
    test %al, %al
    jz 2f
    mov $0x3f8, %dx
    out %al, (%dx)
    inc %rsi
    jmp 1b
2:  mov $42, %al
    mov $0x501, %dx
    out %al, (%dx)
    hlt
msg: .asciz "hi from raw64\\n"
"""


def nvmmpy(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def one_line_error(proc, words):
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert words in lines[0], lines[0]


@pytest.fixture(scope="module")
def hi64(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "hi64.bin"
    p.write_bytes(assemble(HI64, bits=64, org=0x100000))
    return str(p)


@pytest.mark.parametrize("driver", DRIVERS)
def test_run_raw64_on_each_driver(hi64, driver):
    from harness import kvm_usable
    if driver == "kvm" and not kvm_usable()[0]:
        pytest.skip("needs /dev/kvm")
    proc = nvmmpy("run", hi64, "--format", "raw64", "--accel", driver, "--json")
    assert proc.returncode == 42, proc.stderr
    assert "hi from raw64" in proc.stderr          # with --json the console goes to stderr
    d = json.loads(proc.stdout)
    assert d["driver"] == driver and d["reason"] == "exit" and d["exit_code"] == 42
    assert d["exits"]["IO"] == len("hi from raw64\n") + 1
    assert d["wall"] >= d["guest_time"] >= 0


def test_serial_to_file(hi64, tmp_path):
    out = tmp_path / "console.txt"
    proc = nvmmpy("run", hi64, "--format", "raw64", "--accel", "unicorn", "--serial", str(out))
    assert proc.returncode == 42
    assert out.read_text() == "hi from raw64\n"


def test_trace_io_shows_port_and_device(hi64):
    proc = nvmmpy("run", hi64, "--format", "raw64", "--accel", "unicorn", "--trace", "io")
    assert "port 0x03f8" in proc.stderr and "[com1+0x0]" in proc.stderr


def _elf_header(machine: int) -> bytes:
    """A minimal ELF64 header (no segments) for `machine`."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0x100000, 0, 0, 0, 64, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("make,args,words", [
    (None, ["run", "/nonexistent/guest.elf"], "no bundled guest or file named '/nonexistent/guest.elf'"),
    (None, ["run", "no-such-guest"], "no bundled guest or file named 'no-such-guest'"),
    ("hi", ["--memory", "12Q"], "is not a size"),
    ("hi", ["--memory", "1M"], "not a usable RAM size"),
    ("big", ["--format", "raw64", "--memory", "2M"], "give a larger --memory"),
    ("arm", [], "not x86"),
    ("empty", [], "the image is empty"),
    ("hi", ["--accel", "hyperv"], "Invalid value for '--accel'"),
    ("hi", ["--accel", "nvmm"], "needs NetBSD or DragonFly"),
    ("text", [], "cannot tell the image's format"),
    ("hi", ["--format", "raw16", "--cpl3"], "--cpl3 needs a 64-bit image"),
    (None, ["run", "--bogus"], "No such option"),
])
def test_bad_input_one_line(tmp_path, hi64, make, args, words):
    files = {"hi": hi64}
    if make == "big":
        files["big"] = str(tmp_path / "big.bin")
        open(files["big"], "wb").write(b"\x90" * (3 << 20))
    elif make == "arm":
        files["arm"] = str(tmp_path / "arm.elf")
        open(files["arm"], "wb").write(_elf_header(183))
    elif make == "empty":
        files["empty"] = str(tmp_path / "empty.bin")
        open(files["empty"], "wb").close()
    elif make == "text":
        files["text"] = str(tmp_path / "notes.txt")
        open(files["text"], "w").write("hello")
    argv = args if make is None else ["run", files[make], *args]
    if make == "hi" and "--format" not in args:
        argv += ["--format", "raw64"]
    one_line_error(nvmmpy(*argv), words)
