"""vhost-user back-ends against QEMU's own devices, measured from inside the same Linux guest.

    python bench/vhost_user.py [--mib 64] [--repeat 3]

For each setup the guest (bench/qemu_linux.py) times one job with busybox `time`:
    blk   `dd if=/dev/vda of=/dev/null bs=1M count=MIB` after dropping caches (sequential read)
    rng   `dd if=/dev/hwrng of=/dev/null bs=4096 count=256` (1 MiB of entropy)
    sound `aplay -D hw:0,0` of a 2 s 48 kHz S16 stereo clip of random samples
Setups: nvmmpy's back-end over vhost-user; qemu-storage-daemon's vhost-user-blk (the C peer);
QEMU's built-in virtio-blk-pci / virtio-rng-pci / virtio-sound-pci (no vhost-user at all). For
sound the figure is the frames that reached the host WAV exactly as played (of the clip's frames,
counted from the first), and the back-end's own CPU time where it is a process of its own (QEMU's
device CPU cannot be told apart from its TCG CPU). Under TCG the guest's own
work dominates; the figures say how much the device path adds, not the host's raw speed. Each
setup runs --repeat times; the table shows the median and the spread (min-max).
"""
import statistics
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from nvmmpy.bench import qemu_linux

BLK_JOB = "echo 3 > /proc/sys/vm/drop_caches; time dd if=/dev/vda of=/dev/null bs=1M count={mib}\n"
RNG_JOB = "time dd if=/dev/hwrng of=/dev/null bs=4096 count=256\n"


def _seconds(out: str) -> float | None:
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    return int(m.group(1)) * 60 + float(m.group(2)) if m else None


def _wait_socket(path: str, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"back-end for {path} did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)


def _with_backend(argv, sock, job, devices, extra=(), files=None, cpu=None):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_socket(sock, proc)
        secs = _seconds(qemu_linux.boot(job, [*extra, *devices], files=files, timeout=300))
        if cpu is not None:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return secs
    finally:
        proc.terminate()
        proc.wait(10)


CLIP_RATE, CLIP_SECONDS = 48000, 2.0
SOUND_JOB = "time aplay -q -D hw:0,0 /clip.wav\n"


def _clip() -> tuple:
    import random
    import struct
    data = random.Random(7).randbytes(int(CLIP_RATE * CLIP_SECONDS) * 4)
    head = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 2, CLIP_RATE,
                       CLIP_RATE * 4, 4, 16, b"data", len(data))
    return head + data, data


def _frames_delivered(path: str, clip: bytes) -> int:
    """Frames of the clip found at the start of the WAV's data, byte for byte."""
    from nvmmpy.devices.virtio.sound.wav import WavReader
    try:
        with WavReader(path) as r:
            got = r.read(r.frames)
    except (OSError, ValueError):
        return 0
    n = min(len(got), len(clip))
    same = next((i for i in range(0, n, 4) if got[i:i + 4] != clip[i:i + 4]), n)
    return same // 4


def sound(work: str) -> list:
    wav, clip = _clip()
    total = len(clip) // 4
    rows, cpu = [], []
    s, sink = os.path.join(work, "n-snd.sock"), os.path.join(work, "n.wav")
    py = [sys.executable, "-m", "nvmmpy.cli", "vhost-user", "sound", "--socket", s, "--sound", f"out=wav:{sink}"]
    secs = _with_backend(py, s, SOUND_JOB, qemu_linux.vhost_user_device("snd", s, extra="controls=on"),
                         files={"clip.wav": wav}, cpu=cpu)
    rows.append(("sound", "nvmmpy vhost-user-snd", secs, _frames_delivered(sink, clip), total, cpu[0]))
    sink = os.path.join(work, "q.wav")
    secs = _seconds(qemu_linux.boot(SOUND_JOB, [
        "-audiodev", f"wav,id=snd0,path={sink},out.frequency={CLIP_RATE},out.channels=2,out.format=s16",
        "-device", "virtio-sound-pci,audiodev=snd0"], files={"clip.wav": wav}, timeout=300))
    rows.append(("sound", "QEMU built-in virtio-sound", secs, _frames_delivered(sink, clip), total, None))
    return rows


def run(mib: int, work: str) -> list:
    img = os.path.join(work, "disk.img")
    with open(img, "wb") as f:
        f.truncate((mib + 1) << 20)
    py = [sys.executable, "-m", "nvmmpy.cli", "vhost-user"]
    rows = []
    blk = BLK_JOB.format(mib=mib)
    s = os.path.join(work, "n-blk.sock")
    rows.append(("blk", "nvmmpy vhost-user", _with_backend([*py, "blk", "--socket", s, img], s, blk,
                                                          qemu_linux.vhost_user_device("blk", s, extra="num-queues=1"))))
    s = os.path.join(work, "q-blk.sock")
    qsd = ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=disk,filename={img}",
           "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={s},writable=on"]
    rows.append(("blk", "qemu-storage-daemon vhost-user", _with_backend(qsd, s, blk, qemu_linux.vhost_user_device("blk", s))))
    rows.append(("blk", "QEMU built-in virtio-blk", _seconds(qemu_linux.boot(blk, [
        "-drive", f"file={img},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"], timeout=300))))
    s = os.path.join(work, "n-rng.sock")
    rows.append(("rng", "nvmmpy vhost-user", _with_backend([*py, "rng", "--socket", s], s, RNG_JOB,
                                                          qemu_linux.vhost_user_device("rng", s))))
    rows.append(("rng", "QEMU built-in virtio-rng", _seconds(qemu_linux.boot(RNG_JOB, ["-device", "virtio-rng-pci"],
                                                                      timeout=300))))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB the blk job reads (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per setup (default 3)")
    args = ap.parse_args(argv)
    why = qemu_linux.skip_reason(("vhost-user-blk-pci", "vhost-user-rng-pci"))
    if why:
        print(f"vhost_user bench: {why}", file=sys.stderr)
        return 1
    runs, sound_runs = [], []
    with tempfile.TemporaryDirectory(prefix="nvmmpy-vhost-bench-") as work:
        for _ in range(max(1, args.repeat)):
            runs.append(run(args.mib, work))
            if not qemu_linux.skip_reason(("vhost-user-snd-pci", "virtio-sound-pci")):
                sound_runs.append(sound(work))
    print(f"{'job':4} {'setup':34} {'seconds':>8} {'min-max':>12} {'MiB/s':>8}")
    for i, (job, setup, _) in enumerate(runs[0]):
        secs = [r[i][2] for r in runs if r[i][2] is not None]
        if not secs:
            print(f"{job:4} {setup:34} {'-':>8}")
            continue
        med = statistics.median(secs)
        size = args.mib if job == "blk" else 1
        print(f"{job:4} {setup:34} {med:8.2f} {min(secs):5.2f}-{max(secs):<6.2f} {size / med:8.1f}")
    if sound_runs:
        print(f"\n{'job':5} {'setup':30} {'aplay s':>8} {'frames delivered':>22} {'back-end CPU s':>15}")
        for i, (job, setup, *_r) in enumerate(sound_runs[0]):
            got = [r[i] for r in sound_runs]
            secs = [g[2] for g in got if g[2] is not None]
            frames = min(g[3] for g in got)
            cpu = [g[5] for g in got if g[5] is not None]
            print(f"{job:5} {setup:30} {statistics.median(secs) if secs else float('nan'):8.2f} "
                  f"{frames:>10} of {got[0][4]:<8} {statistics.median(cpu) if cpu else float('nan'):15.2f}")
        print("frames delivered: the fewest over the runs, counted from the clip's first frame, byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
