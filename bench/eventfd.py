"""Virtio requests on kvm with and without the eventfd seam (vmm/iothread.py), in one run: guest-side
requests per second and exits to user space per request, for each VirtualMachine(eventfd=...) mode.

The bundled virtio-rng (64 B) and virtio-blk (a sector written, then read back: 2 requests) guests
make requests one at a time, sleeping until the interrupt (irq) or polling the used ring (poll).
Each configuration runs at two counts and the figures come from the difference, so boot and set-up
cancel out; the modes are interleaved within each repetition and the median is kept.

    python -m nvmmpy.bench.eventfd [--counts 50,250] [--reps 3] [--json out.json]
    nvmmpy bench --eventfd [--quick]
"""
import argparse
import json
import tempfile

from .runners import BenchError, NvmmpyRunner
from .stats import summarize

MODES = ("off", "ioeventfd", "irqchip")
# guest -> (command line, requests per unit of count, a line only a run that did its work prints)
CASES = {
    "virtio-rng": ("count={n} bytes=64 irq={irq}", 1, "rng: {n} requests, "),
    "virtio-blk": ("count={n} sector=0 seed=1 depth=1 irq={irq}", 2, "blk: {n} sectors from 0 written"),
}


def available_modes() -> tuple:
    """The modes this machine's kvm driver can run (BenchError if there is no usable /dev/kvm)."""
    import nvmmpy
    from nvmmpy.errors import DriverUnavailable
    from nvmmpy.vmm.iothread import resolve_mode
    try:
        m = nvmmpy.Machine("kvm")
    except DriverUnavailable as e:
        raise BenchError(f"the eventfd comparison needs /dev/kvm: {e}") from None
    try:
        modes = []
        for mode in MODES:
            try:
                modes.append(resolve_mode(m, mode))
            except ValueError:
                pass
        return tuple(modes)
    finally:
        m.destroy()


def _one(runner, guest: str, n: int, irq: int, timeout: float):
    cmdline, _, expect = CASES[guest]
    r = runner.run_guest(guest, cmdline.format(n=n, irq=irq), timeout)
    if r.exit_code != 0 or expect.format(n=n) not in r.output:
        raise BenchError(f"{guest} count={n} irq={irq} eventfd={runner.eventfd}: exit code {r.exit_code}: "
                         f"{r.output.strip()[-300:]}")
    return r.seconds, sum(r.exits.values())


def measure(counts=(50, 250), reps: int = 3, modes=None, timeout: float = 600.0, progress=None) -> list:
    """One row per (guest, irq/poll, mode): requests/s and exits per request (medians over reps)."""
    modes = modes or available_modes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = {mode: NvmmpyRunner("kvm", tmp, eventfd=mode) for mode in modes}
        for guest, (_, per, _) in CASES.items():
            for irq in (1, 0):
                rates, exits = {m: [] for m in modes}, {m: [] for m in modes}
                for _ in range(reps):
                    for mode in modes:
                        (t0, e0), (t1, e1) = (_one(runners[mode], guest, n, irq, timeout) for n in counts)
                        requests = per * (counts[1] - counts[0])
                        rates[mode].append(requests / max(t1 - t0, 1e-9))
                        exits[mode].append((e1 - e0) / requests)
                for mode in modes:
                    rows.append(dict(guest=guest, wait="irq" if irq else "poll", eventfd=mode,
                                     requests_per_s=summarize(rates[mode]).as_dict(),
                                     exits_per_request=summarize(exits[mode]).median))
                if progress:
                    progress(f"{guest} {'irq' if irq else 'poll'}")
    base = {(r["guest"], r["wait"]): r["requests_per_s"]["median"] for r in rows if r["eventfd"] == "off"}
    for r in rows:
        b = base.get((r["guest"], r["wait"]))
        r["speedup_vs_off"] = r["requests_per_s"]["median"] / b if b else None
    return rows


def table(rows) -> str:
    """Plain text: a line per (guest, wait, mode)."""
    lines = [f"{'guest':11} {'wait':4} {'eventfd':9} {'req/s':>8} {'spread':>7} {'exits/req':>9} {'vs off':>7}"]
    for r in rows:
        s = r["requests_per_s"]
        vs = f"{r['speedup_vs_off']:.2f}x" if r["speedup_vs_off"] else ""
        lines.append(f"{r['guest']:11} {r['wait']:4} {r['eventfd']:9} {s['median']:8.0f} {s['spread']:7.0%} "
                     f"{r['exits_per_request']:9.2f} {vs:>7}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="50,250", help="two request counts per configuration (the figures are the slope)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    counts = tuple(int(x) for x in a.counts.split(","))
    rows = measure(counts, a.reps, progress=lambda text: print(f"  done: {text}", flush=True))
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
