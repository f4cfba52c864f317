"""Debian's own kernel booted by `nvmmpy run --kernel`, and Linux's own drivers on our devices.

One boot per driver serves the driver tests (a boot takes ~20-40 s of software CPU here): its
/test.sh exercises virtio-rng, virtio-blk, the virtio console both ways, and virtio-sound playback
and capture, and prints what it saw; the host side (image, WAV sink, console file) is checked
after poweroff. The guest image is Debian's linux-image-6.12 + busybox + alsa-utils, built by
setup.sh (nvmmpy.bench.linux_image).

On kvm: where /dev/kvm has VMX or SVM the same boot runs there. On kvm_pvm (this project's
development machine) a kernel's CPL0 code is emulated one instruction at a time by the host
kernel (a whole boot would take hours), so there the kvm test boots the same kernel through the
same loader to its banner and memory map, then stops it with Ctrl-C.
"""
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from harness import kvm_runs_kernel_code, need, random_wav, sigint_as_in_a_terminal
from nvmmpy.devices.virtio.sound.wav import WavReader

pytestmark = pytest.mark.slow

SCRIPT = r"""
cat /sys/class/misc/hw_random/rng_current
dd if=/dev/hwrng of=/tmp/r bs=4096 count=1 2>/dev/null
echo rng got $(wc -c < /tmp/r) bytes, $(od -An -tx1 /tmp/r | tr ' ' '\n' | sort -u | wc -l) distinct
cat /sys/block/vda/size
dd if=/pat.bin of=/dev/vda bs=64k seek=1 conv=fsync 2>/dev/null && echo blk written
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=64k skip=1 count=4 2>/dev/null
cmp /pat.bin /tmp/back && echo blk read back same
exec 3<>/dev/hvc0
stty -F /dev/hvc0 -echo
echo guest-to-host >&3
read -r line <&3; echo "console read: $line"
aplay -D hw:0,0 /play.wav; echo aplay=$?
arecord -D hw:0,0 -f S16_LE -r 48000 -c 2 -s 4800 -t raw /tmp/cap.raw; echo arecord=$?
od -An -tx1 -v /tmp/cap.raw | tr -d ' \n'; echo
"""


def _image():
    from nvmmpy.bench.linux_image import ImageUnavailable, ensure
    try:
        return ensure(build=False)
    except ImageUnavailable as e:
        pytest.skip(f"the Linux guest image is not built ({e}): run ./setup.sh")


# kvm where it runs a kernel at native speed (VMX/SVM); on kvm_pvm see test_kvm_starts_the_kernel_...
BOOT_DRIVERS = ["unicorn", *(["kvm"] if kvm_runs_kernel_code() else [])]


@pytest.fixture(scope="module", params=BOOT_DRIVERS)
def booted(request, tmp_path_factory):
    accel = request.param
    from nvmmpy.bench.linux_image import script_cpio
    paths = _image()
    d = tmp_path_factory.mktemp(f"linux-{accel}")
    pattern = random.Random(3).randbytes(256 << 10)
    play, play_data = random_wav(2, 48000, 2, 9600, seed=11)          # 0.2 s, the last frame checked too
    src, src_data = random_wav(2, 48000, 2, 9600, seed=5)
    (d / "src.wav").write_bytes(src)
    (d / "disk.img").write_bytes(bytes(4 << 20))
    os.mkfifo(d / "console-in")
    initrd = d / "initrd"
    with open(paths.initrd, "rb") as f:
        initrd.write_bytes(f.read() + script_cpio(SCRIPT, {"pat.bin": pattern, "play.wav": play}))
    cmd = [sys.executable, "-m", "nvmmpy", "run", "--accel", accel, "--kernel", paths.vmlinux,
           "--initrd", str(initrd), "--virtio-rng", "--virtio-blk", str(d / "disk.img"),
           "--virtio-console", str(d / "console-out"), "--virtio-console-input", str(d / "console-in"),
           "--sound", f"out=wav:{d / 'play.wav'},in=wav:{d / 'src.wav'}", "--timeout", "400"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answer = threading.Thread(target=_answer_console, args=(d, p), daemon=True)
    answer.start()
    try:
        stdout, stderr = p.communicate(timeout=480)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    answer.join(5)
    out = stdout.decode(errors="replace").replace("\r", "")
    return dict(rc=p.returncode, out=out, err=stderr.decode(errors="replace"), dir=d, pattern=pattern,
                play=play_data, src=src_data)


def _answer_console(d, p):
    """The host end of the console, as a person at it: answer once the guest has written (a
    console port without VIRTIO_CONSOLE_F_MULTIPORT cannot say when the guest opened it, and Linux
    drops what arrives before then, so input that is there from the start is lost in the guest)."""
    with open(d / "console-in", "wb") as fifo:       # the VMM opens the other end at start
        while p.poll() is None:
            try:
                if b"guest-to-host" in (d / "console-out").read_bytes():
                    fifo.write(b"host-to-guest\n")
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.2)


E820 = ["BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        "BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved"]


def test_kvm_starts_the_kernel_through_the_same_loader_and_ctrl_c_ends_it():
    """On kvm, the PVH entry, the command line and the memory map reach the kernel as on unicorn
    (its banner and e820 map on our UART), and Ctrl-C ends the run cleanly with the account. Runs
    on every /dev/kvm, kvm_pvm included (there the kernel's first lines take ~12 s of emulation)."""
    need("kvm")
    paths = _image()
    append = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"
    p = subprocess.Popen([sys.executable, "-m", "nvmmpy", "run", "--accel", "kvm", "--kernel", paths.vmlinux,
                          "--append", append, "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=sigint_as_in_a_terminal)
    seen = []
    try:
        for raw in p.stdout:                     # the console, line by line as the kernel prints it
            line = raw.decode(errors="replace").rstrip("\r\n")
            seen.append(line)
            if E820[-1] in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "\n".join(seen)
    assert "Linux version 6.12" in out and f"Command line: {append}" in out, out[-3000:]
    assert all(any(e in x for x in seen) for e in E820), out[-3000:]
    err = err.decode(errors="replace")
    assert p.returncode == 130 and ": interrupted (exit status 130)" in err and "Traceback" not in err, err


def test_the_kernel_gets_the_same_memory_map_in_the_full_boot(booted):
    assert all(e in booted["out"] for e in E820), _show(booted)


def _show(b):
    return f"rc={b['rc']}\nstdout tail:\n{b['out'][-3000:]}\nstderr:\n{b['err'][-2000:]}"


def test_boots_to_init_and_powers_off_cleanly(booted):
    assert "init: up 6.12" in booted["out"], _show(booted)
    assert "init: test.sh exit 0" in booted["out"], _show(booted)
    assert booted["rc"] == 0 and "poweroff (exit status 0)" in booted["err"], _show(booted)
    assert "(pvh), command line: console=ttyS0" in booted["err"]          # what booted, and how, is shown


def test_hwrng_gives_bytes(booted):
    assert "virtio_rng" in booted["out"], _show(booted)
    line = next((x for x in booted["out"].splitlines() if x.startswith("rng got")), "")
    assert "4096 bytes" in line, _show(booted)
    assert int(line.split("bytes, ")[1].split()[0]) > 200                 # nearly all 256 byte values


def test_blk_written_synced_and_read_back(booted):
    out = booted["out"]
    assert "\n8192\n" in out and "blk written" in out and "blk read back same" in out, _show(booted)
    data = (booted["dir"] / "disk.img").read_bytes()
    assert data[64 << 10:(64 << 10) + len(booted["pattern"])] == booted["pattern"]   # on the host's image
    assert data[:64 << 10] == bytes(64 << 10)


def test_virtio_console_both_ways(booted):
    assert "console read: host-to-guest" in booted["out"], _show(booted)
    assert b"guest-to-host" in (booted["dir"] / "console-out").read_bytes()


def test_aplay_reaches_the_wav_sink_bit_exact(booted):
    assert "aplay=0" in booted["out"], _show(booted)
    with WavReader(str(booted["dir"] / "play.wav")) as r:
        assert (r.channels, r.rate) == (2, 48000)
        got = r.read(r.frames)
    want = booted["play"]
    assert got[:len(want)] == want, f"{len(got)} bytes in the sink for {len(want)} played"   # every frame
    assert got[len(want):] == bytes(len(got) - len(want))                 # then only aplay's silence padding


def test_arecord_returns_the_wav_source_frames(booted):
    assert "arecord=0" in booted["out"], _show(booted)
    hexline = next(x.strip() for x in booted["out"].splitlines() if len(x.strip()) >= 2 * 19200)
    assert bytes.fromhex(hexline) == booted["src"][:19200]                # 4800 frames, as the file has them


# --- bad input: one line, status 2, nothing booted ------------------------------------------------------
def _run(*args):
    p = subprocess.run([sys.executable, "-m", "nvmmpy", "run", "--accel", "unicorn", *args],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def _one_line_error(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], err


def test_truncated_bzimage_is_one_line(tmp_path):
    paths = _image()
    k = tmp_path / "bz"
    k.write_bytes(open(paths.bzimage, "rb").read()[:400])
    _one_line_error(*_run("--kernel", str(k)), "truncated")


def test_truncated_vmlinux_is_one_line(tmp_path):
    paths = _image()
    k = tmp_path / "vmlinux"
    with open(paths.vmlinux, "rb") as f:
        k.write_bytes(f.read(4 << 20))
    _one_line_error(*_run("--kernel", str(k)), "truncated")


def test_unknown_boot_protocol_version_is_one_line(tmp_path):
    paths = _image()
    data = bytearray(open(paths.bzimage, "rb").read())
    struct.pack_into("<H", data, 0x206, 0x0201)
    k = tmp_path / "old-bz"
    k.write_bytes(bytes(data))
    _one_line_error(*_run("--kernel", str(k)), "boot protocol 2.1")


def test_initrd_too_large_for_ram_is_one_line(tmp_path):
    paths = _image()
    big = tmp_path / "big.cpio"
    with open(big, "wb") as f:
        f.truncate(60 << 20)
    _one_line_error(*_run("--kernel", paths.vmlinux, "--initrd", str(big), "--memory", "80M"), "initrd", "--memory")


def test_initrd_larger_than_ram_is_refused_before_it_is_read(tmp_path):
    paths = _image()
    big = tmp_path / "huge.cpio"
    with open(big, "wb") as f:
        f.truncate(64 << 30)                       # sparse: 64 GiB that would be read into memory
    _one_line_error(*_run("--kernel", paths.vmlinux, "--initrd", str(big)), "65536 MiB", "256 MiB of RAM", "--initrd")


def test_not_a_kernel_is_one_line(tmp_path):
    k = tmp_path / "notes.txt"
    k.write_bytes(b"hello, this is not a kernel\n" * 100)
    _one_line_error(*_run("--kernel", str(k)), "neither a bzImage")


@pytest.mark.parametrize("args,words", [
    (["hello", "--kernel", "K"], ["GUEST", "--kernel"]),
    (["--initrd", "x"], ["--initrd goes with --kernel"]),
    (["--append", "quiet"], ["--append goes with --kernel"]),
    (["--kernel", "K", "--cmdline", "x"], ["--append"]),
    (["--kernel", "/nonexistent/vmlinux"], ["/nonexistent/vmlinux"]),
])
def test_option_mistakes_are_one_line(args, words):
    _one_line_error(*_run(*args), *words)


def test_bzimage_boots_through_the_64bit_boot_protocol_and_reboot_ends_the_run(tmp_path):
    """The kernel as Debian ships it (bzImage: boot_params, E820, the in-kernel decompressor); the
    guest's `reboot` (ACPI reset register) ends the run with status 0, as poweroff does."""
    from nvmmpy.bench.linux_image import script_cpio
    paths = _image()
    initrd = tmp_path / "initrd"
    with open(paths.initrd, "rb") as f:
        initrd.write_bytes(f.read() + script_cpio("echo rebooting; reboot -f\n"))
    p = subprocess.run([sys.executable, "-m", "nvmmpy", "run", "--accel", "unicorn", "--kernel", paths.bzimage,
                        "--initrd", str(initrd), "--timeout", "400"], capture_output=True, timeout=480)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert "init: up 6.12" in out and "rebooting" in out, out[-3000:] + err
    assert "(bzimage), command line: console=ttyS0 panic=-1 pci=off" in err, err
    assert p.returncode == 0 and ": reset (exit status 0) - guest reset the machine through the ACPI reset register" in err, err
