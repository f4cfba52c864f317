"""Turn a bench report into the platform profile driver="auto" uses (nvmmpy/drivers/profile.py).

Per guest mode, the nvmmpy drivers are compared on the workloads whose guest code runs in that
mode: CPL0 by the geometric mean of the CPL0 compute kernel, start-up, the CPL0 exit storms and
virtio-blk (guest work and exits alike), CPL3 by the compute kernel. Real mode is not measured, so auto keeps its built-in rule there.
"""
import math

BASIS = {
    "cpl0": ("compute-cpl0", "startup", "pio-cpl0", "mmio-cpl0", "virtio-blk"),
    "cpl3": ("compute",),
}


# The figures kept per nvmmpy driver for `nvmmpy identify` (nvmmpy/drivers/profile.py states them).
MEASURED = ("pio-cpl0", "pio-cpl3", "mmio-cpl0", "mmio-cpl3", "cpuid-cpl3", "compute", "compute-cpl0")


def measured(report: dict) -> dict:
    """{"mode", "drivers": {driver: {workload: {median, min, max, ratio, baseline}}}} for the nvmmpy
    drivers' exit-cost and compute workloads that ran; {} if none did."""
    drivers = {}
    for w in report["workloads"]:
        if w["name"] not in MEASURED:
            continue
        for runner, res in w["results"].items():
            s = res.get("summary")
            if not runner.startswith("nvmmpy-") or res.get("status") != "ok" or not s:
                continue
            drivers.setdefault(runner.removeprefix("nvmmpy-"), {})[w["name"]] = {
                "median": s["median"], "min": s["min"], "max": s["max"],
                "ratio": w.get("ratios", {}).get(runner), "baseline": w.get("baseline")}
    return {"mode": report.get("mode"), "drivers": drivers} if drivers else {}


def preferences(report: dict) -> dict:
    by_name = {w["name"]: w for w in report["workloads"]}
    drivers = [n for n, r in report["runners"].items() if n.startswith("nvmmpy-") and r["available"]]
    prefs = {}
    for mode, names in BASIS.items():
        scores = {}
        for d in drivers:
            meds = [by_name[n]["results"][d]["summary"]["median"] for n in names
                    if n in by_name and by_name[n]["results"].get(d, {}).get("summary")]
            if len(meds) == len([n for n in names if n in by_name]) and meds:
                scores[d] = math.exp(sum(math.log(m) for m in meds) / len(meds))
        if len(scores) < 2:
            continue
        ranked = sorted(scores, key=scores.get)
        best, second = ranked[0], ranked[1]
        prefs[mode] = {"driver": best.removeprefix("nvmmpy-"), "speedup": round(scores[second] / scores[best], 3),
                       "basis": f"{', '.join(n for n in names if n in by_name)} vs {second.removeprefix('nvmmpy-')}"}
    return prefs
