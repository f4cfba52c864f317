"""vhost-user back-ends against QEMU's own devices, measured from inside the same Linux guest, in
one run: the `vhost-user` section of `nvmmpy bench` (and `python bench/vhost_user.py`).

    section = measure(reps=3, quick=False)      # a dict for the report; report: vhost_user_report

Each setup boots the guest of bench/qemu_linux.py under QEMU (TCG) and times jobs with busybox
`time`; every run keeps the guest's own line that proves its job was done (`N+0 records out` of
dd, `aplay=0` and the frames found in the sink):
    blk    dd with O_DIRECT, sequential, 4 KiB and 64 KiB blocks, writes then reads: MB/s and
           requests/s. nvmmpy vhost-user-blk vs qemu-storage-daemon's vhost-user-blk export (the
           peer) and QEMU's built-in virtio-blk-pci.
    rng    dd from /dev/hwrng: bytes/s. nvmmpy vhost-user-rng vs QEMU's virtio-rng-pci.
    sound  aplay -D hw:0,0 of a 48 kHz S16 stereo clip of random samples: clip frames found in the
           host WAV byte for byte from the first, drift and jitter of the WAV's growth against the
           ideal clock (bench/sink_clock.py), and CPU: the back-end process's, and QEMU's outside
           its vCPU threads (bench/proc_cpu.py). nvmmpy vhost-user-snd vs QEMU's virtio-sound-pci
           with its wav audiodev.
Repetitions are the outer loop, so load drifts over the run land on every setup alike. Under TCG
the guest's own work dominates: the figures say what the device path adds, not the host's speed.
"""
import argparse
import contextlib
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from nvmmpy.bench import qemu_linux
from nvmmpy.bench.proc_cpu import ThreadCPU
from nvmmpy.bench.sink_clock import FileGrowth, audio_points, sink_timing

NEEDS = ("vhost-user-blk-pci", "vhost-user-rng-pci", "vhost-user-snd-pci", "virtio-sound-pci")
SIZES = {  # quick, full: (4 KiB requests, 64 KiB requests, rng 4 KiB reads, sound clip seconds)
    True: (512, 256, 64, 2.0),
    False: (2048, 2048, 256, 10.0),
}
CLIP_RATE = 48000
NVMMPY = [sys.executable, "-m", "nvmmpy.cli", "vhost-user"]
PEERS = {"blk": "qemu-storage-daemon vhost-user-blk", "rng": "QEMU virtio-rng-pci",
         "sound": "QEMU virtio-sound-pci"}
MAIN_FIGURE = {"blk": "MB/s", "rng": "bytes/s", "sound": "frames_delivered"}


# --- the guest's jobs and their proof lines ---------------------------------------------------------

def blk_jobs(n4k: int, n64k: int) -> list:
    """[(job name, dd command)]: writes first, so the reads read what was written."""
    jobs = []
    for bs, n in ((4096, n4k), (65536, n64k)):
        k = f"{bs // 1024}k"
        jobs.append((f"blk-write-{k}", f"dd if=/dev/zero of=/dev/vda bs={bs} count={n} oflag=direct"))
        jobs.append((f"blk-read-{k}", f"dd if=/dev/vda of=/dev/null bs={bs} count={n} iflag=direct"))
    return jobs


def script(jobs) -> str:
    return "".join(f"echo '== job {name}'\ntime {cmd}\n" for name, cmd in jobs)


def parse_jobs(out: str, jobs) -> dict:
    """{job: {"seconds", "bytes", "requests", "proof"} or {"error"}} from the guest's output: each
    job's `real` time and its `N+0 records out` line, which must say every block went."""
    parts = re.split(r"== job (\S+)", out.replace("\r", ""))
    found = dict(zip(parts[1::2], parts[2::2]))
    result = {}
    for name, cmd in jobs:
        text = found.get(name, "")
        bs, count = (int(re.search(rf"\b{k}=(\d+)", cmd).group(1)) for k in ("bs", "count"))
        m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", text)
        proof = re.search(r"^(\d+)\+0 records out$", text, re.M)
        if not m or not proof or int(proof.group(1)) != count:
            result[name] = {"error": f"no `{count}+0 records out` and time in the guest's output: "
                                     f"{text.strip()[-200:]!r}"}
            continue
        seconds = int(m.group(1)) * 60 + float(m.group(2))
        result[name] = {"seconds": seconds, "bytes": bs * count, "requests": count, "proof": proof.group(0)}
    return result


def throughput(run: dict) -> dict:
    if "error" in run or run["seconds"] <= 0:
        return run if "error" in run else {**run, "error": "took no measurable time (a larger size is needed)"}
    return {**run, "MB/s": run["bytes"] / run["seconds"] / 1e6, "req/s": run["requests"] / run["seconds"],
            "bytes/s": run["bytes"] / run["seconds"]}


# --- setups -------------------------------------------------------------------------------------------

def _wait_socket(path: str, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"back-end for {path} did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)


@contextlib.contextmanager
def backend(argv, sock):
    """A back-end process listening on `sock`; terminated (killed if it must be) on the way out."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_socket(sock, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.exists(sock):
            os.unlink(sock)     # qemu-storage-daemon leaves its socket behind


THREAD_NAMES = ("-name", "debug-threads=on")     # vCPU threads named "CPU n/TCG", for ThreadCPU


def boot(job_script: str, devices, timeout: float, files=None, work=None, watch=()) -> tuple:
    """(serial output, ThreadCPU of QEMU, ThreadCPU of each pid in `watch`) of one guest run."""
    proc = qemu_linux.start(job_script, [*THREAD_NAMES, *devices], files=files, directory=work)
    cpus = [ThreadCPU(pid) for pid in (proc.pid, *watch)]
    try:
        out = qemu_linux.finish(proc, timeout)
    finally:
        for c in cpus:
            c.stop()
    return out, *cpus


def blk_runs(work: str, sizes, timeout: float) -> dict:
    """{setup: {job: run}} for the three blk setups, on one image."""
    jobs = blk_jobs(sizes[0], sizes[1])
    img = os.path.join(work, "disk.img")
    with open(img, "wb") as f:
        f.truncate(max(4096 * sizes[0], 65536 * sizes[1]) + (1 << 20))
    text = script(jobs)
    out = {}
    s = os.path.join(work, "n-blk.sock")
    with backend([*NVMMPY, "blk", "--socket", s, img], s):
        out["nvmmpy vhost-user-blk"] = boot(text, qemu_linux.vhost_user_device("blk", s, extra="num-queues=1"), timeout)[0]
    s = os.path.join(work, "q-blk.sock")
    qsd = ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=disk,filename={img}",
           "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={s},writable=on"]
    with backend(qsd, s):
        out[PEERS["blk"]] = boot(text, qemu_linux.vhost_user_device("blk", s), timeout)[0]
    out["QEMU virtio-blk-pci"] = boot(text, ["-drive", f"file={img},format=raw,if=none,id=d0",
                                             "-device", "virtio-blk-pci,drive=d0"], timeout)[0]
    return {setup: {k: throughput(v) for k, v in parse_jobs(o, jobs).items()} for setup, o in out.items()}


def rng_runs(work: str, count: int, timeout: float) -> dict:
    jobs = [("rng", f"dd if=/dev/hwrng of=/dev/null bs=4096 count={count}")]
    s = os.path.join(work, "n-rng.sock")
    with backend([*NVMMPY, "rng", "--socket", s], s):
        ours = boot(script(jobs), qemu_linux.vhost_user_device("rng", s), timeout)[0]
    theirs = boot(script(jobs), ["-device", "virtio-rng-pci"], timeout)[0]
    return {setup: {k: throughput(v) for k, v in parse_jobs(o, jobs).items()}
            for setup, o in (("nvmmpy vhost-user-rng", ours), (PEERS["rng"], theirs))}


# --- sound --------------------------------------------------------------------------------------------

SOUND_JOB = "echo '== job sound'\ntime aplay -q -D hw:0,0 /clip.wav; echo aplay=$?\n"


def clip(seconds: float) -> tuple:
    """(WAV bytes, its samples): 48 kHz S16 stereo, random, so every frame is told apart."""
    data = random.Random(7).randbytes(int(CLIP_RATE * seconds) * 4)
    head = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 2, CLIP_RATE,
                       CLIP_RATE * 4, 4, 16, b"data", len(data))
    return head + data, data


def frames_delivered(path: str, samples: bytes) -> int:
    """Frames of the clip found at the start of the WAV's data, byte for byte."""
    from nvmmpy.devices.virtio.sound.wav import WavReader
    try:
        with WavReader(path) as r:
            got = r.read(r.frames)
    except (OSError, ValueError):
        return 0
    n = min(len(got), len(samples))
    same = next((i for i in range(0, n, 4) if got[i:i + 4] != samples[i:i + 4]), n)
    return same // 4


def _sound_run(out: str, sink: str, samples: bytes, points, seconds: float, qemu, backend_cpu=None) -> dict:
    """One aplay's figures; CPU is counted while the sink grew (per second of audio)."""
    total = len(samples) // 4
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    audio = audio_points(points, len(samples))
    if "aplay=0" not in out or not m or len(audio) < 2:
        return {"error": f"aplay did not finish with status 0 into the sink: {out.strip()[-300:]!r}"}
    got = frames_delivered(sink, samples)
    run = {"aplay_s": int(m.group(1)) * 60 + float(m.group(2)), "frames_delivered": got, "frames": total,
           "proof": f"aplay=0; {got} of {total} clip frames in the sink, byte for byte"}
    t0, t1 = audio[0][0], audio[-1][0]
    for name, sampler, part in (("qemu_other", qemu, "other"), ("backend", backend_cpu, "")):
        if sampler is not None:
            used = sampler.between(t0, t1)
            cpu = used[part] if part else used["vcpu"] + used["other"]
            run[f"{name}_cpu_s"], run[f"{name}_cpu_pct"] = cpu, 100 * cpu / max(used["seconds"], 1e-9)
    timing = sink_timing(audio, CLIP_RATE * 4)
    if timing:
        run.update(timing)
    return run


def sound_runs(work: str, seconds: float, timeout: float) -> dict:
    wav, samples = clip(seconds)
    files = {"clip.wav": wav}
    out = {}
    s, sink = os.path.join(work, "n-snd.sock"), os.path.join(work, "n.wav")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sink)
    py = [*NVMMPY, "sound", "--socket", s, "--sound", f"out=wav:{sink}"]
    with backend(py, s) as proc:
        growth = FileGrowth(sink)
        text, qemu, ours = boot(SOUND_JOB, qemu_linux.vhost_user_device("snd", s, extra="controls=on"), timeout, files, work,
                                watch=(proc.pid,))
        points = growth.stop()
    out["nvmmpy vhost-user-snd"] = _sound_run(text, sink, samples, points, seconds, qemu, ours)
    sink = os.path.join(work, "q.wav")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sink)
    growth = FileGrowth(sink)
    text, qemu = boot(SOUND_JOB, [
        "-audiodev", f"wav,id=snd0,path={sink},out.frequency={CLIP_RATE},out.channels=2,out.format=s16",
        "-device", "virtio-sound-pci,audiodev=snd0"], timeout, files, work)
    out[PEERS["sound"]] = _sound_run(text, sink, samples, growth.stop(), seconds, qemu)
    return {setup: {"sound": run} for setup, run in out.items()}


# --- the section --------------------------------------------------------------------------------------

def unavailable() -> str | None:
    """Why the section cannot run here (QEMU 10 and its devices, the guest image, the storage
    daemon), or None."""
    why = qemu_linux.skip_reason(NEEDS)
    if why is None and not _which("qemu-storage-daemon"):
        why = "qemu-storage-daemon is not installed (Debian: qemu-utils from the same suite as QEMU 10)"
    return why


def _which(name: str) -> bool:
    import shutil
    return shutil.which(name) is not None


KINDS = ("blk", "rng", "sound")


def measure(reps: int = 3, quick: bool = False, timeout: float = 600, progress=None, kinds=KINDS) -> dict:
    """The section: every setup's runs, each with its proof line, and the medians."""
    n4k, n64k, nrng, seconds = SIZES[quick]
    section = {"status": "ok", "reason": "", "repetitions": reps, "mode": "quick" if quick else "full",
               "clip": {"rate": CLIP_RATE, "channels": 2, "format": "S16_LE", "seconds": seconds,
                        "frames": int(CLIP_RATE * seconds)},
               "rows": []}
    started = time.monotonic()
    why = unavailable()
    if why:
        section.update(status="unavailable", reason=why)
        return section
    steps = [("blk", lambda w: blk_runs(w, (n4k, n64k), timeout)), ("rng", lambda w: rng_runs(w, nrng, timeout)),
             ("sound", lambda w: sound_runs(w, seconds, timeout))]
    steps = [(k, step) for k, step in steps if k in kinds]
    rows = {}      # (job, setup) -> row
    with tempfile.TemporaryDirectory(prefix="nvmmpy-vhost-bench-") as work:
        for rep in range(reps):
            for i, (kind, step) in enumerate(steps):
                if progress:
                    progress(rep * len(steps) + i, reps * len(steps), f"vhost-user {kind} ({rep + 1}/{reps})")
                try:
                    got = step(work)
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    got = {"(set-up)": {kind: {"error": str(e)}}}
                for setup, jobs in got.items():
                    for job, run in jobs.items():
                        row = rows.setdefault((job, setup), {"job": job, "kind": kind, "setup": setup,
                                                             "peer": setup == PEERS[kind], "runs": []})
                        row["runs"].append({"rep": rep, **run})
    if progress:
        progress(reps * len(steps), reps * len(steps), "done")
    for row in rows.values():
        row.update(summarize_row(row))
    section["duration_s"] = round(time.monotonic() - started, 1)
    section["rows"] = list(rows.values())
    section["ratios"] = ratios(section["rows"])
    if any(r["status"] != "ok" for r in section["rows"]):
        section["status"] = "failed"
        section["reason"] = "; ".join(f"{r['job']} on {r['setup']}: {r['reason']}" for r in section["rows"]
                                      if r["status"] != "ok")[:500]
    return section


FIGURES = ("MB/s", "req/s", "bytes/s", "aplay_s", "frames_delivered", "drift_ms_per_min", "jitter_median_ms",
           "jitter_p99_ms", "late_max_ms", "backend_cpu_pct", "qemu_other_cpu_pct")


def summarize_row(row: dict) -> dict:
    """status, reason, and the median (and the fewest frames delivered) over the row's good runs."""
    bad = [r["error"] for r in row["runs"] if "error" in r]
    good = [r for r in row["runs"] if "error" not in r]
    median = {k: statistics.median(r[k] for r in good) for k in FIGURES if good and all(k in r for r in good)}
    out = {"status": "failed" if bad else "ok", "reason": bad[0] if bad else "", "median": median}
    if good and "frames_delivered" in median:
        out["fewest_frames_delivered"] = min(r["frames_delivered"] for r in good)
    return out


def ratios(rows) -> dict:
    """{job: nvmmpy's median main figure / the peer's}, for each job where both ran."""
    out = {}
    for row in rows:
        if row["peer"] or not row["setup"].startswith("nvmmpy"):
            continue
        peer = next((r for r in rows if r["job"] == row["job"] and r["peer"]), None)
        key = MAIN_FIGURE[row["kind"]]
        a, b = row["median"].get(key), peer and peer["median"].get(key)
        if a is not None and b:
            out[row["job"]] = round(a / b, 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per setup (default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes and a 2 s clip")
    ap.add_argument("--json", help="write the section as JSON to this file")
    args = ap.parse_args(argv)
    from nvmmpy.bench.sections import show
    from nvmmpy.bench.vhost_user_report import section_table
    return show(measure(max(1, args.repeat), args.quick), section_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
