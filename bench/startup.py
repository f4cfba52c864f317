"""Start-up of `nvmmpy run` (the bundled default guest), split into its parts, per driver.

Each round runs fresh processes (so imports are really paid):
  python    : `python -c pass`, the interpreter alone
  cli       : `python -m nvmmpy run hello --accel D --json`, the whole command, end to end
  phases    : one process that times imports, VM set-up (machine, RAM, devices), loading, and the
              run (guest time inside vcpu.run() vs VMM time) separately
Medians over --rounds, with [min-max].

    python bench/startup.py [--rounds 5] [--drivers kvm,unicorn] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PHASES = r"""
import json, time
t0 = time.perf_counter()
import nvmmpy, nvmmpy.cli.main, nvmmpy.vmm.vm, nvmmpy.vmm.loader, nvmmpy.vmm.guests  # what `nvmmpy run` imports
from nvmmpy.vmm.vm import VirtualMachine
from nvmmpy.vmm.loader import load
from nvmmpy.vmm.guests import GUESTS
t1 = time.perf_counter()
vm = VirtualMachine(memory=64 << 20, driver=DRIVER, guest_mode="cpl0")
vm.add_legacy_devices(serial_output=lambda b: None)
t2 = time.perf_counter()
g = GUESTS["hello"]
load(vm, open(g.path, "rb").read(), cmdline=g.default_cmdline)
t3 = time.perf_counter()
r = vm.run(timeout=60)
t4 = time.perf_counter()
vm.close()
print(json.dumps(dict(imports=t1 - t0, setup=t2 - t1, load=t3 - t2, run=t4 - t3, guest=r.guest_time,
                      vmm_in_run=r.vmm_time, exits=sum(r.exits.values()), code=r.exit_code)))
"""


def timed(argv) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {p.stderr.decode()[-400:]}")
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--drivers", default="kvm,unicorn")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    drivers = [d for d in a.drivers.split(",") if d]
    res = {"python": []}
    for d in drivers:
        res[f"cli/{d}"] = []
        res[f"phases/{d}"] = []
    for _ in range(a.rounds):
        res["python"].append(timed([sys.executable, "-c", "pass"]))
        for d in drivers:
            res[f"cli/{d}"].append(timed([sys.executable, "-m", "nvmmpy.cli", "run", "hello", "--accel", d, "--json"]))
            p = subprocess.run([sys.executable, "-c", PHASES.replace("DRIVER", repr(d))], cwd=ROOT,
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-400:])
            res[f"phases/{d}"].append(json.loads(p.stdout))
    ms = lambda xs: f"{statistics.median(xs) * 1000:7.1f} ms [{min(xs) * 1000:.1f}-{max(xs) * 1000:.1f}]"  # noqa: E731
    print(f"start-up of `nvmmpy run` (guest: hello), {a.rounds} rounds, median [min-max]")
    print(f"  python -c pass                        {ms(res['python'])}")
    summary = {"python_s": statistics.median(res["python"])}
    for d in drivers:
        ph = res[f"phases/{d}"]
        col = {k: [x[k] for x in ph] for k in ph[0]}
        print(f"  [{d}] whole command                 {ms(res[f'cli/{d}'])}")
        print(f"  [{d}]   imports                     {ms(col['imports'])}")
        print(f"  [{d}]   VM set-up (machine, RAM, devs) {ms(col['setup'])}")
        print(f"  [{d}]   load image + boot info      {ms(col['load'])}")
        print(f"  [{d}]   run: guest time             {ms(col['guest'])}")
        print(f"  [{d}]   run: VMM time               {ms(col['vmm_in_run'])}   ({int(statistics.median(col['exits']))} exits)")
        overhead = [x["imports"] + x["setup"] + x["load"] + x["vmm_in_run"] for x in ph]
        print(f"  [{d}]   => VMM overhead (all but guest and interpreter) {ms(overhead)}")
        summary[d] = {k: statistics.median(v) for k, v in col.items()}
        summary[d]["command_s"] = statistics.median(res[f"cli/{d}"])
        summary[d]["vmm_overhead_s"] = statistics.median(overhead)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
