"""`nvmmpy run` end to end, and every bad input a user can give: one clear line, non-zero exit."""
import json
import struct
import subprocess
import sys

import pytest

from asm import assemble
from harness import ROOT, need, run_nvmmpy

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
    need(driver)
    proc = run_nvmmpy("run", hi64, "--format", "raw64", "--accel", driver, "--json")
    assert proc.returncode == 42, proc.stderr
    assert "hi from raw64" in proc.stderr          # with --json the console goes to stderr
    d = json.loads(proc.stdout)
    assert d["driver"] == driver and d["reason"] == "exit" and d["exit_code"] == 42
    assert d["exits"]["IO"] == len("hi from raw64\n") + 1
    assert d["wall"] >= d["guest_time"] >= 0


def test_serial_to_file(hi64, tmp_path):
    out = tmp_path / "console.txt"
    proc = run_nvmmpy("run", hi64, "--format", "raw64", "--accel", "unicorn", "--serial", str(out))
    assert proc.returncode == 42
    assert out.read_text() == "hi from raw64\n"


def test_trace_io_shows_port_and_device(hi64):
    proc = run_nvmmpy("run", hi64, "--format", "raw64", "--accel", "unicorn", "--trace", "io")
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
    one_line_error(run_nvmmpy(*argv), words)


@pytest.mark.parametrize("args,words", [
    (["--virtio-blk", "{tmp}/missing.img"], "missing.img: no such disk image (make one with: truncate -s"),
    (["--virtio-blk", "{disk},rw"], "use IMAGE or IMAGE,ro"),
    (["--virtio-blk", "{tmp}"], "it is a directory, not a disk image"),
    (["--virtio-console-input", "{disk}"], "--virtio-console-input needs --virtio-console"),
    (["--virtio-rng", "--virtio-console", "stdio", "--sound", "out=null"] + ["--virtio-blk", "{disk}"] * 8,
     "11 virtio devices asked for, but at most 10 fit"),
])
def test_bad_virtio_input_one_line(tmp_path, hi64, args, words):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    argv = [a.format(tmp=tmp_path, disk=disk) for a in args]
    one_line_error(run_nvmmpy("run", hi64, "--format", "raw64", *argv), words)


ECHO64 = """
1:  mov $0x3fd, %dx          # LSR: wait for data ready
    in (%dx), %al
    test $1, %al
    jz 1b
    mov $0x3f8, %dx
    in (%dx), %al            # RBR
    cmp $0x0a, %al
    je 2f
    add $1, %al              # echo the next letter
    out %al, (%dx)
    jmp 1b
2:  xor %eax, %eax
    mov $0x501, %dx
    out %al, (%dx)
    hlt
"""


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_serial_input_from_file_and_stdin(tmp_path, source):
    img = tmp_path / "echo.bin"
    img.write_bytes(assemble(ECHO64, bits=64, org=0x100000))
    text = b"HAL" * 3000 + b"\n"          # more than the UART's bounded input queue
    args = [sys.executable, "-m", "nvmmpy.cli", "run", str(img), "--format", "raw64", "--accel", "unicorn"]
    if source == "file":
        f = tmp_path / "in.txt"
        f.write_bytes(text)
        proc = subprocess.run(args + ["--input", str(f)], capture_output=True, cwd=ROOT, timeout=120)
    else:
        proc = subprocess.run(args + ["--input", "-"], input=text, capture_output=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"IBM" * 3000


def test_i8042_reset_ends_the_run(tmp_path):
    img = tmp_path / "reset.bin"
    img.write_bytes(assemble("mov $0xfe, %al\n mov $0x64, %dx\n out %al, (%dx)\n 1: jmp 1b", bits=64, org=0x100000))
    proc = run_nvmmpy("run", str(img), "--format", "raw64", "--accel", "unicorn", "--json")
    d = json.loads(proc.stdout)
    assert proc.returncode == 0 and d["reason"] == "reset"


@pytest.mark.parametrize("driver", DRIVERS)
def test_trace_mmio_names_instruction_and_register(tmp_path, driver):
    need(driver)
    img = tmp_path / "mmio.bin"
    img.write_bytes(assemble("""
        mov $0xc0000000, %edi
        movl $0x1234, 8(%rdi)
        movl 8(%rdi), %eax
        mov $0x501, %dx
        out %al, (%dx)
    """, bits=64, org=0x100000))
    proc = run_nvmmpy("run", str(img), "--format", "raw64", "--accel", driver, "--trace", "mmio")
    assert proc.returncode == 0x34, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "mmio" in ln and "0xc0000008" in ln]
    assert len(lines) == 2, proc.stderr
    assert "write" in lines[0] and "[scratch+0x8]" in lines[0] and "mov" in lines[0]
    assert "read" in lines[1] and "[scratch+0x8]" in lines[1] and "mov" in lines[1]
