"""Ctrl-C at random moments: does `nvmmpy run` always stop cleanly, on every driver?

Each run starts `nvmmpy run` on a guest that does not end by itself (a spinning raw64 image, or the
bundled `exits` guest with a huge count), waits until the run has started (the process has its
vCPU thread), sleeps a uniform random time in [0, --window] and sends SIGINT. A run is clean when
the process exits 130, prints the account (the `wall ... guest ... VMM ...; N exits` line) saying
it was interrupted, writes no traceback, and -- when the guest had run for a while -- reports guest
time (the interrupted vcpu.run() counts). Anything else (a segfault, another signal, a hang, a lost
account) is counted against its driver; the exit status is non-zero if any run was not clean.

    python bench/stress_sigint.py [--runs 200] [--drivers kvm,unicorn] [--window 2] [--jobs 2]
"""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVMMPY = [sys.executable, "-m", "nvmmpy.cli", "run"]
SPIN = b"\xeb\xfe"   # jmp $ (raw64)
GUESTS = ("spin", "exits")
ACCOUNT = re.compile(r"wall ([\d.]+) ms: guest ([\d.]+) ms, VMM ([\d.]+) ms; (\d+) exits")
HANG_S = 60.0         # a process still alive this long after SIGINT has hung


@dataclass
class Outcome:
    driver: str
    guest: str
    delay: float        # seconds from the run's start to SIGINT
    code: int | None    # exit status; negative: killed by that signal; None: hung
    account: bool
    interrupted: bool
    traceback: bool
    guest_ms: float
    stop_s: float       # seconds from SIGINT to exit

    @property
    def segfault(self) -> bool:
        return self.code in (-signal.SIGSEGV, 128 + signal.SIGSEGV)

    @property
    def guest_time_lost(self) -> bool:
        """The old bug: a guest that spun for a while reported as 0 ms of guest time."""
        return self.account and self.delay > 0.3 and self.guest_ms == 0.0

    @property
    def clean(self) -> bool:
        return (self.code == 130 and self.account and self.interrupted and not self.traceback
                and not self.guest_time_lost)


def drivers_present() -> list[str]:
    out = []
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        out.append("kvm")
    try:
        import unicorn  # noqa: F401
        out.append("unicorn")
    except ImportError:
        pass
    if os.path.exists("/dev/nvmm"):
        out.append("nvmm")
    return out


def command(guest: str, driver: str, spin_path: str) -> list[str]:
    if guest == "spin":
        return NVMMPY + [spin_path, "--format", "raw64", "--accel", driver]
    return NVMMPY + ["exits", "--cmdline", "count=100000000", "--accel", driver]


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _sigint_default() -> None:
    """The child starts with SIGINT at its default, as under a terminal (a stress run started as a
    background job would otherwise hand it an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_run(driver: str, guest: str, window: float, spin_path: str, rng: random.Random) -> Outcome:
    """Start, wait for the vCPU thread (a second thread: nothing else starts one before run()),
    SIGINT after a random delay, and classify what happened."""
    delay = rng.uniform(0.0, window)
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(command(guest, driver, spin_path), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=err, preexec_fn=_sigint_default)
        deadline = time.monotonic() + HANG_S
        while _threads(p.pid) < 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        t = time.monotonic()
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            code = p.wait(HANG_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            code = None
        stop_s = time.monotonic() - t
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    m = ACCOUNT.search(" ".join(text.split()))  # the console wraps the account line anywhere
    return Outcome(driver, guest, delay, code, m is not None, "interrupted (exit status 130)" in text,
                   "Traceback" in text, float(m.group(2)) if m else 0.0, stop_s)


def stress(drivers, runs: int, window: float, jobs: int, seed: int | None = None, progress=None) -> list[Outcome]:
    """`runs` runs per driver (the guests alternate), `jobs` processes at a time."""
    rng = random.Random(seed)
    tasks = [(d, GUESTS[i % len(GUESTS)], rng.random()) for d in drivers for i in range(runs)]
    results = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        spin_path = os.path.join(tmp, "spin.bin")
        with open(spin_path, "wb") as f:
            f.write(SPIN)

        def worker():
            while True:
                with lock:
                    if not tasks:
                        return
                    d, g, s = tasks.pop(0)
                o = one_run(d, g, window, spin_path, random.Random(s))
                with lock:
                    results.append(o)
                    if progress:
                        progress(o, len(results))
        threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def table(results: list[Outcome], driver: str) -> str:
    rows = [o for o in results if o.driver == driver]
    lines = [f"driver {driver}: {len(rows)} runs"]
    lines.append(f"  {'guest':<6} {'runs':>5} {'clean':>6} {'exit 130':>9} {'account':>8} {'traceback':>10} "
                 f"{'segfault':>9} {'hung':>5} {'0 ms guest':>11} {'stop max s':>11}  exit codes")
    for g in GUESTS + ("all",):
        sel = [o for o in rows if g == "all" or o.guest == g]
        if not sel:
            continue
        codes = Counter(o.code for o in sel)
        lines.append(f"  {g:<6} {len(sel):>5} {sum(o.clean for o in sel):>6} {codes.get(130, 0):>9} "
                     f"{sum(o.account for o in sel):>8} {sum(o.traceback for o in sel):>10} "
                     f"{sum(o.segfault for o in sel):>9} {codes.get(None, 0):>5} "
                     f"{sum(o.guest_time_lost for o in sel):>11} {max(o.stop_s for o in sel):>11.2f}  "
                     + ", ".join(f"{c}:{n}" for c, n in sorted(codes.items(), key=lambda kv: str(kv[0]))))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="runs per driver (default 200)")
    ap.add_argument("--drivers", default=",".join(drivers_present()), help="comma-separated (default: all present)")
    ap.add_argument("--window", type=float, default=2.0, help="SIGINT at uniform [0, WINDOW] s after the run starts")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    drivers = [d for d in args.drivers.split(",") if d]
    if not drivers or args.runs < 1:
        ap.error("nothing to run: give --drivers and --runs >= 1")

    def progress(o, n):
        if not o.clean:
            print(f"  not clean: {o}", flush=True)
        elif n % 50 == 0:
            print(f"  {n} runs done", flush=True)
    t = time.monotonic()
    results = stress(drivers, args.runs, args.window, args.jobs, args.seed, progress)
    for d in drivers:
        print(table(results, d))
    bad = sum(not o.clean for o in results)
    print(f"{len(results)} runs in {time.monotonic() - t:.0f} s: {bad} not clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
