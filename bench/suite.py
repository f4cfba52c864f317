"""Run the workloads on every runner, interleaved, and keep every raw run behind every figure.

Repetitions are the outer loop and runners the inner one, so a burst of machine noise lands on
all runners alike instead of on whichever happened to be measured then. Within a repetition a
slope workload runs its small and large sizes back to back on one runner.
"""
import datetime
import tempfile
import time
from dataclasses import dataclass, field

from . import machine_info
from .runners import BenchError, all_runners
from .stats import ratio, summarize
from .workloads import WORKLOADS

SCHEMA = "nvmmpy-bench/1"
# How long the difference between a slope workload's two runs should last at least.
TARGET_DELTA = {True: 0.25, False: 1.0}    # quick, full (seconds)


@dataclass
class Cell:
    """One workload on one runner: the figure of each repetition and the runs it came from."""
    workload: str
    runner: str
    status: str = "ok"              # "ok", "unsupported", "unavailable", "failed"
    reason: str = ""
    sizes: tuple = ()                               # the sizes this runner ran (after calibration)
    figures: list = field(default_factory=list)     # seconds per unit, one per repetition
    runs: list = field(default_factory=list)        # {"rep", "size", "seconds", "exit_code"}

    def summary(self):
        return summarize(self.figures)


def figure_from(workload, runs) -> float:
    """Seconds per unit from one repetition's runs (the same formula the JSON check uses)."""
    if workload.kind == "single":
        return runs[0]["seconds"]
    small, large = runs
    units = (large["size"] - small["size"]) * workload.exits_per_unit
    return (large["seconds"] - small["seconds"]) / units


class Suite:
    def __init__(self, workloads=None, runners=None, quick=False, reps=None, timeout=600.0, workdir=None,
                 runner_names=None):
        """runners: Runner objects, or else all_runners() narrowed to `runner_names`."""
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nvmmpy-bench-")
            workdir = self._tmp.name
        self.workloads = list(WORKLOADS if workloads is None else workloads)
        self.runners = runners if runners is not None else all_runners(workdir, include=runner_names)
        self.quick = quick
        self.reps = reps or (3 if quick else 5)
        self.timeout = timeout
        self.cells = {}
        self.available = {}

    def plan(self):
        """[(workload, runner)] that will run; records why the others will not."""
        for r in self.runners:
            self.available[r.name] = r.available()
        todo = []
        for w in self.workloads:
            for r in self.runners:
                cell = self.cells[(w.name, r.name)] = Cell(w.name, r.name)
                ok, why = self.available[r.name]
                if not ok:
                    cell.status, cell.reason = "unavailable", why
                    continue
                ok, why = r.supports(w)
                if not ok:
                    cell.status, cell.reason = "unsupported", why
                    continue
                todo.append((w, r))
        return todo

    def run(self, progress=None) -> dict:
        """Run everything; `progress(done, total, text)` is called before each guest run."""
        started = time.time()
        machine = machine_info.describe()
        todo = self.plan()
        calibrate = [(w, r) for w, r in todo if w.kind == "slope" and w.limit]
        state = {"done": 0, "total": 3 * len(calibrate) + self.reps * sum(len(w.sizes(self.quick)) for w, _ in todo)}

        def one(w, r, size, text):
            state["total"] = max(state["total"], state["done"] + 1)    # sizing may take more runs
            if progress:
                progress(state["done"], state["total"], text)
            state["done"] += 1
            run = r.run(w, size, self.timeout)
            self._check(w, r, size, run)
            return run

        for w, r in todo:
            cell = self.cells[(w.name, r.name)]
            cell.sizes = tuple(w.sizes(self.quick))
            if (w, r) in calibrate:
                try:
                    cell.sizes = self._calibrate(w, r, cell.sizes, lambda size: one(w, r, size, f"sizing {w.name} on {r.name}"))
                except (BenchError, OSError) as e:
                    cell.status, cell.reason = "failed", str(e)
        for rep in range(self.reps):
            for w, r in todo:
                cell = self.cells[(w.name, r.name)]
                if cell.status == "failed":
                    state["done"] += len(cell.sizes)
                    continue
                runs = []
                # alternate the order, so whatever favours a first (or second) run cancels out
                for size in (cell.sizes if rep % 2 == 0 else cell.sizes[::-1]):
                    try:
                        run = one(w, r, size, f"{w.name} on {r.name} ({rep + 1}/{self.reps})")
                    except (BenchError, OSError) as e:
                        cell.status, cell.reason = "failed", str(e)
                        break
                    runs.append({"rep": rep, "size": size, "seconds": run.seconds, "exit_code": run.exit_code})
                if cell.status == "failed":
                    continue
                runs.sort(key=lambda x: x["size"])
                cell.runs.extend(runs)
                cell.figures.append(figure_from(w, runs))
        if progress:
            progress(state["done"], state["done"], "done")
        return self.report(machine, started, time.time())

    def _calibrate(self, w, r, sizes, run):
        """Sizes whose difference takes at least TARGET_DELTA on this runner. Like timeit's
        autorange: grow the large size (at most 10x a step, within the workload's limit) and
        measure again until the difference is long enough that start-up jitter cannot fake it."""
        small, large = sizes
        target = TARGET_DELTA[self.quick]
        t_small = run(small).seconds
        for _ in range(6):
            delta = run(large).seconds - t_small
            if delta >= target or large >= w.limit:
                break
            grow = min(10.0, max(2.0, 1.3 * target / delta if delta > 0 else 10.0))
            large = min(w.limit, _round(small + int((large - small) * grow)))
        return (small, large)

    @staticmethod
    def _check(w, r, size, run):
        want = w.expect(size)
        if run.exit_code != 0 or want not in run.output:
            raise BenchError(f"{w.guest} `{w.cmdline(size)}` on {r.name}: exit code {run.exit_code}, "
                             f"expected {want.strip()!r} in the output; it ended: {run.output.strip()[-300:]!r}")

    def report(self, machine, started, finished) -> dict:
        runner_names = [r.name for r in self.runners]
        used = [n for n in runner_names if self.available.get(n, (False,))[0]]
        out = {
            "schema": SCHEMA,
            "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "duration_s": round(finished - started, 3),
            "mode": "quick" if self.quick else "full",
            "repetitions": self.reps,
            "machine": machine,
            "warnings": machine_info.warnings_for(machine, used),
            "runners": {n: {"available": ok, "reason": why} for n, (ok, why) in self.available.items()},
            "workloads": [],
        }
        for w in self.workloads:
            entry = {"name": w.name, "title": w.title, "guest": w.guest, "kind": w.kind, "unit": w.unit,
                     "display": w.display, "realtime": w.realtime, "exits_per_unit": w.exits_per_unit,
                     "sizes": list(w.sizes(self.quick)),
                     "cmdlines": [w.cmdline(s) for s in w.sizes(self.quick)], "results": {}, "ratios": {}}
            summaries = {n: self.cells[(w.name, n)].summary() for n in runner_names}
            for n in runner_names:
                c, s = self.cells[(w.name, n)], summaries[n]
                entry["results"][n] = {"status": c.status, "reason": c.reason, "sizes": list(c.sizes),
                                       "figures": c.figures,
                                       "summary": s.as_dict() if s else None, "runs": c.runs}
            base = entry["baseline"] = baseline(w, entry["results"])
            for n in runner_names:
                r = ratio(summaries[n], summaries.get(base))
                entry["ratios"][n] = None if r is None else round(r, 4)
            out["workloads"].append(entry)
        return out

    def close(self):
        if self._tmp:
            self._tmp.cleanup()


# The column ratios are taken against: native code where it ran, else the fastest hardware runner.
BASELINE_ORDER = ("native", "nvmmpy-kvm", "nvmmpy-nvmm", "qemu-kvm", "nvmmpy-unicorn", "qemu-tcg")


def _round(n: int) -> int:
    """n rounded up to two significant digits (sizes a reader can take in)."""
    k = 1
    while n >= 100 * k:
        k *= 10
    return -(-n // k) * k


def baseline(w, results) -> str | None:
    for n in BASELINE_ORDER:
        if results.get(n, {}).get("summary"):
            return n
    for n, r in results.items():
        if r.get("summary"):
            return n
    return None


def validate(report: dict) -> list:
    """Problems with a report (empty if none): the schema, and every figure recomputed from its runs."""
    problems = []
    for key in ("schema", "started", "duration_s", "mode", "repetitions", "machine", "warnings", "runners",
                "workloads"):
        if key not in report:
            problems.append(f"missing top-level key {key!r}")
    if problems:
        return problems
    if report["schema"] != SCHEMA:
        problems.append(f"schema {report['schema']!r} is not {SCHEMA!r}")
    for key in ("cpu_model", "cores", "loadavg", "kernel", "kvm", "versions"):
        if key not in report["machine"]:
            problems.append(f"machine lacks {key!r}")
    from .workloads import BY_NAME
    for entry in report["workloads"]:
        w = BY_NAME.get(entry.get("name"))
        if w is None:
            problems.append(f"unknown workload {entry.get('name')!r}")
            continue
        for runner, res in entry["results"].items():
            if runner not in report["runners"]:
                problems.append(f"{w.name}: result for unknown runner {runner!r}")
            if res["status"] != "ok":
                if res["figures"] or res["summary"]:
                    problems.append(f"{w.name}/{runner}: figures without a successful run")
                if not res["reason"]:
                    problems.append(f"{w.name}/{runner}: status {res['status']} without a reason")
                continue
            if len(res["figures"]) != report["repetitions"]:
                problems.append(f"{w.name}/{runner}: {len(res['figures'])} figures for {report['repetitions']} repetitions")
            for rep, fig in enumerate(res["figures"]):
                runs = sorted((r for r in res["runs"] if r["rep"] == rep), key=lambda r: r["size"])
                if [r["size"] for r in runs] != sorted(res["sizes"]) or len(res["sizes"]) != len(entry["sizes"]):
                    problems.append(f"{w.name}/{runner} rep {rep}: runs {[r['size'] for r in runs]} do not match "
                                    f"sizes {res['sizes']}")
                    continue
                if any(r["exit_code"] != 0 or r["seconds"] <= 0 for r in runs):
                    problems.append(f"{w.name}/{runner} rep {rep}: a run failed or took no time")
                if abs(figure_from(w, runs) - fig) > 1e-12 * max(1.0, abs(fig)):
                    problems.append(f"{w.name}/{runner} rep {rep}: figure {fig} does not follow from its runs")
            s = summarize(res["figures"])
            if s and res["summary"] and abs(s.median - res["summary"]["median"]) > 1e-12:
                problems.append(f"{w.name}/{runner}: median is not the median of the figures")
    if "vhost_user" in report:
        from .vhost_user_report import validate_section
        problems += validate_section(report["vhost_user"])
    if "linux_boot" in report:
        from .linux_boot_report import validate_section as validate_boot
        problems += validate_boot(report["linux_boot"])
    return problems
