"""Bad user input to `nvmmpy` is found before any guest runs and told in one line that names the
file and what is wrong with it, with a non-zero exit and no traceback; usage errors point to the
help of the command they were given to. Run in-process through nvmmpy.cli.main (no interpreter start
per case); one subprocess run checks the real command end to end."""
import json
import os
import subprocess
import sys

import pytest

from nvmmpy.cli.main import main
from nvmmpy.vmm.guests import guest_path
from nvmmpy.vmm.loader import LoadError, guest_mode_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = open(guest_path("hello"), "rb").read()


def cli(capsys, *argv):
    """(exit code, stdout, the stderr lines) of `nvmmpy ARGV`, run in this process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, [ln for ln in err.splitlines() if ln.strip()]


def one_line(capsys, argv, *words, code=2):
    """The one stderr line of a failed `nvmmpy ARGV`, checked to contain every one of `words`."""
    rc, out, err = cli(capsys, *argv)
    assert rc == code, (rc, out, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    for w in words:
        assert str(w) in err[0], err[0]
    return err[0]


# --- host files a backend will write or read: checked before the guest starts ------------------
@pytest.mark.parametrize("option, value, words", [
    # the issue's case: the guest used to boot and report PREPARE IO_ERR, naming no path
    ("--sound", "out=wav:{tmp}/missing/x.wav", ["cannot write {tmp}/missing/x.wav: directory {tmp}/missing does not exist"]),
    ("--sound", "out=wav:{tmp}", ["cannot write {tmp}: it is a directory"]),
    ("--sound", "out=null,in=wav:{tmp}/voice.wav", ["cannot read {tmp}/voice.wav: no such file"]),
    ("--sound", "in=wav:{tmp}/missing/voice.wav", ["cannot read {tmp}/missing/voice.wav: directory {tmp}/missing does not exist"]),
    ("--serial", "{tmp}/missing/com1.txt", ["--serial", "cannot write {tmp}/missing/com1.txt: directory {tmp}/missing does not exist"]),
    ("--serial", "{tmp}", ["--serial", "cannot write {tmp}: it is a directory"]),
    ("--input", "{tmp}/missing/in.txt", ["--input", "cannot read {tmp}/missing/in.txt: directory {tmp}/missing does not exist"]),
    ("--virtio-console", "{tmp}/missing/con.txt", ["--virtio-console", "cannot write {tmp}/missing/con.txt: directory"]),
    ("--virtio-blk", "{tmp}/missing/disk.img", ["--virtio-blk", "cannot read {tmp}/missing/disk.img: directory {tmp}/missing does not exist"]),
])
def test_unusable_host_paths_are_one_line(capsys, tmp_path, option, value, words):
    guest = "virtio-sound-play" if option == "--sound" else "hello"
    one_line(capsys, ["run", guest, "--accel", "unicorn", option, value.format(tmp=tmp_path)],
             *[w.format(tmp=tmp_path) for w in words])


def test_virtio_blk_on_a_directory_says_so(capsys, tmp_path):
    line = one_line(capsys, ["run", "virtio-blk", "--accel", "unicorn", "--virtio-blk", tmp_path],
                    f"--virtio-blk: cannot read {tmp_path}: it is a directory, not a disk image")
    assert "truncate" not in line          # it used to suggest `truncate -s 1M DIR`


def test_virtio_console_input_directory(capsys, tmp_path):
    one_line(capsys, ["run", "hello", "--virtio-console", "stdio", "--virtio-console-input", tmp_path],
             f"--virtio-console-input: cannot read {tmp_path}: it is a directory, not a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot fail")
def test_unwritable_directory(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    one_line(capsys, ["run", "virtio-sound-play", "--sound", f"out=wav:{ro}/x.wav"],
             f"cannot write {ro}/x.wav: directory {ro} is not writable")


def test_errors_come_before_notes_about_default_devices(capsys, tmp_path):
    """The virtio-blk guest gets a scratch disk when no --virtio-blk is given, and says so; a bad
    option is the only line, not one after that note."""
    one_line(capsys, ["run", "virtio-blk", "--serial", tmp_path / "missing" / "out.txt"],
             f"cannot write {tmp_path}/missing/out.txt: directory {tmp_path}/missing does not exist")


# --- nvmmpy bench: its file options ------------------------------------------------------------
SMALL_BENCH = ["bench", "--workloads", "compute", "--runners", "native", "--reps", "1", "--no-save-profile"]


@pytest.mark.parametrize("args, words", [
    (["--json", "{tmp}/missing/b.json"], ["--json: cannot write {tmp}/missing/b.json: directory {tmp}/missing does not exist"]),
    (["--json", "{tmp}"], ["--json: cannot write {tmp}: it is a directory"]),
    (["--chart", "{tmp}"], ["--chart: cannot write {tmp}: it is a directory"]),
    (["--chart", "-"], ["--chart: the chart is a PNG file"]),
])
def test_bench_output_paths_checked_before_the_run(capsys, tmp_path, args, words):
    one_line(capsys, [*SMALL_BENCH, "--quick", *[a.format(tmp=tmp_path) for a in args]],
             *[w.format(tmp=tmp_path) for w in words], "see 'nvmmpy bench --help'")


@pytest.mark.slow
def test_bench_json_to_stdout_writes_no_files(capsys, tmp_path, monkeypatch):
    """`--json -` is a full run (the mode is --quick's alone) that writes the JSON to stdout and
    nothing into the current directory (it used to add nvmmpy-bench.png there)."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *SMALL_BENCH, "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["mode"] == "full"
    assert err[0] == "nvmmpy bench: full mode, 1 repetition"
    assert os.listdir(tmp_path) == []
    assert not any("nvmmpy-bench" in ln or "wrote" in ln for ln in err), err


# --- guest images -------------------------------------------------------------------------------
def _corrupt(offset, value):
    b = bytearray(HELLO)
    b[offset] = value
    return bytes(b)


@pytest.mark.parametrize("data, words", [
    (HELLO[:2], "the file is 2 bytes, too short to be an ELF image: it is truncated"),
    (HELLO[:10], "the file is 10 bytes, too short for an ELF64 header (64 bytes): it is truncated"),
    (HELLO[:63], "the file is 63 bytes, too short for an ELF64 header (64 bytes): it is truncated"),
    (HELLO[:100], "the file is 100 bytes but its program headers end at byte 176: it is truncated"),
    (HELLO[:4096], "the file is 4096 bytes but its segment at 0x100000 ends at byte"),
    (HELLO[:12296], "the file is 12296 bytes but its segment at 0x102000 ends at byte"),
    (_corrupt(4, 7), "corrupt ELF header: class byte 7 (1 is ELF32, 2 is ELF64)"),
    (_corrupt(5, 2), "the ELF file is big-endian"),
    (_corrupt(0x36, 3), "corrupt ELF header: program headers of 3 bytes (ELF64's are 56)"),
    (_corrupt(0x10, 77), "corrupt ELF header: unknown file type 77"),
    (b"\x00ELF" + HELLO[4:], "not an ELF image"),
    (b"", "the image is empty"),
], ids=["2-bytes", "10-bytes", "63-bytes", "100-bytes", "4096-bytes", "12296-bytes", "class", "big-endian",
        "phentsize", "type", "magic", "empty"])
def test_malformed_elf_images_are_named(data, words):
    """Checked before the VM exists (guest_mode_of), in words rather than pyelftools'
    "expected 7, found 1"."""
    with pytest.raises(LoadError) as e:
        guest_mode_of(data, "elf", False)
    assert words in str(e.value)


def test_whole_bundled_elf_still_loads():
    assert guest_mode_of(HELLO, "auto", False) == "cpl0"


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(HELLO[:10]), "{p}: the file is 10 bytes, too short for an ELF64 header"),
    (lambda p: p.write_bytes(b""), "{p}: the image is empty"),
    (lambda p: p.mkdir(), "'{p}' is a directory, not a guest image"),
], ids=["truncated", "empty", "directory"])
def test_bad_guest_images_on_the_command_line(capsys, tmp_path, make, words):
    p = tmp_path / "guest.elf"
    make(p)
    one_line(capsys, ["run", p, "--format", "elf"], words.format(p=p), "see 'nvmmpy run --help'")


# --- which help a usage error points to ---------------------------------------------------------
@pytest.mark.parametrize("argv, help_of", [
    (["run", "--bogus"], "nvmmpy run --help"),
    (["run", "--memory", "12Q"], "nvmmpy run --help"),
    (["bench", "--bogus"], "nvmmpy bench --help"),
    (["bench", "--workloads", "nope"], "nvmmpy bench --help"),
    (["guests", "--bogus"], "nvmmpy guests --help"),
    (["frobnicate"], "nvmmpy --help"),
])
def test_usage_errors_point_to_their_commands_help(capsys, argv, help_of):
    line = one_line(capsys, argv, f"(see '{help_of}')")
    assert line.endswith(f"(see '{help_of}')")


def test_the_issue_command_end_to_end(tmp_path):
    """`nvmmpy run virtio-sound-play --sound out=wav:/nonexistent/dir/x.wav` as a real process."""
    wav = tmp_path / "nonexistent" / "dir" / "x.wav"
    p = subprocess.run([sys.executable, "-m", "nvmmpy.cli", "run", "virtio-sound-play", "--sound", f"out=wav:{wav}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"nvmmpy: Invalid value for --sound: 'out=wav:{wav}': cannot write {wav}: "
                                f"directory {wav.parent} does not exist (see 'nvmmpy run --help')")


def test_in_process_runs_give_back_the_sigint_handler(capsys, tmp_path):
    """`nvmmpy run` makes Ctrl-C stop its VM while it runs; called in-process (a library user, these
    tests) it must put the caller's SIGINT handler back however it ends, or a later Ctrl-C would stop
    a VM that is long gone (it hung the suite's next KeyboardInterrupt test)."""
    import signal
    before = signal.getsignal(signal.SIGINT)
    big = tmp_path / "big16.bin"
    big.write_bytes(b"\xf4" * (1200 << 10))           # a real-mode image past 1 MiB + 64 KiB: fails at load
    one_line(capsys, ["run", big, "--format", "raw16", "--accel", "unicorn"], "real-mode image")
    assert signal.getsignal(signal.SIGINT) is before
    rc, _, _ = cli(capsys, "run", "hello", "--accel", "unicorn")
    assert rc == 0 and signal.getsignal(signal.SIGINT) is before
