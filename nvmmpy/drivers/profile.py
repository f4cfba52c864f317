"""What `nvmmpy bench` measured on this machine, kept so that driver="auto" can use it.

The profile says, per guest mode, which driver ran that kind of guest faster here and by how
much, and what each driver's exits and guest code cost here (shown by `nvmmpy identify`, so that
the figures it states are measured, not typed in). It is only trusted on the machine it was measured on: the fingerprint (kernel release,
CPU model, what /dev/kvm is) must match, else auto falls back to its built-in rule. Stored as
JSON at $NVMMPY_PROFILE, else platform.json in nvmmpy's cache ($NVMMPY_CACHE, else
$XDG_CACHE_HOME/nvmmpy, else ~/.cache/nvmmpy: nvmmpy.native.cache_root).
"""
import json
import os
import platform

VERSION = 1


def path() -> str:
    if os.environ.get("NVMMPY_PROFILE"):
        return os.environ["NVMMPY_PROFILE"]
    from ..native import cache_root
    return os.path.join(cache_root(), "platform.json")


def fingerprint() -> dict:
    from .kvm.detect import cpu_flags, cpu_model, kvm_backend
    return {"system": platform.system(), "release": platform.release(), "cpu_model": cpu_model(),
            "kvm_backend": kvm_backend()[0], "virt_flags": sorted(cpu_flags() & {"vmx", "svm", "hypervisor"})}


def save(preferences: dict, measured_at: str, where: str | None = None, measured: dict | None = None) -> str:
    """preferences: {mode: {"driver": name, "speedup": x, "basis": "what was compared"}};
    measured: {"mode": bench mode, "drivers": {driver: {workload: {"median": s, "min": s, "max": s,
    "ratio": to the baseline or None, "baseline": runner}}}} (bench/learn.py's measured())."""
    where = where or path()
    os.makedirs(os.path.dirname(where) or ".", exist_ok=True)
    tmp = where + ".tmp"
    prof = {"version": VERSION, "fingerprint": fingerprint(), "measured_at": measured_at, "preferences": preferences}
    if measured:
        prof["measured"] = measured
    with open(tmp, "w") as f:
        json.dump(prof, f, indent=2)
    os.replace(tmp, where)
    return where


def load(where: str | None = None) -> dict | None:
    """The profile if one exists, is readable and was measured on this machine; else None."""
    try:
        with open(where or path()) as f:
            prof = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(prof, dict) or prof.get("version") != VERSION or prof.get("fingerprint") != fingerprint():
        return None
    if not isinstance(prof.get("preferences"), dict):
        return None
    return prof


def preference(guest_mode: str | None):
    """(driver, why) that the bench measured as faster for guests of this mode, or None."""
    if guest_mode is None:
        return None
    prof = load()
    if prof is None:
        return None
    pref = prof["preferences"].get(guest_mode)
    if not isinstance(pref, dict) or not isinstance(pref.get("driver"), str):
        return None
    why = (f"nvmmpy bench measured {pref['driver']} {pref.get('speedup', 0):.1f}x faster for {guest_mode} guests "
           f"here on {prof.get('measured_at', '?')} ({pref.get('basis', '')})")
    return pref["driver"], why


# What `nvmmpy identify` states per driver, from the bench's workloads: (label, [(workload, where)]).
EXITS = (("port I/O", (("pio-cpl0", "CPL0"), ("pio-cpl3", "CPL3"))),
         ("MMIO", (("mmio-cpl0", "CPL0"), ("mmio-cpl3", "CPL3"))),
         ("CPUID", (("cpuid-cpl3", "CPL3"),)))
COMPUTE = (("compute", "CPL3"), ("compute-cpl0", "CPL0"))
UNMEASURED = ("not measured on this machine: `nvmmpy bench` (or the shorter `nvmmpy bench --quick`) "
              "measures exit costs and guest code speed here, and identify then shows them")


def _figure(figures: dict, workload: str):
    f = figures.get(workload)
    if isinstance(f, dict) and isinstance(f.get("median"), (int, float)) and f["median"] > 0:
        return f
    return None


def measured_here(driver: str, where: str | None = None) -> dict:
    """{label: text} of what `nvmmpy bench` measured for `driver` on this machine: the cost
    of an exit by kind and privilege level, guest code against native; {} if it did not measure."""
    prof = load(where)
    m = prof and prof.get("measured")
    figures = isinstance(m, dict) and isinstance(m.get("drivers"), dict) and m["drivers"].get(driver)
    if not isinstance(figures, dict):
        return {}
    rows = {}
    exits = []
    for label, places in EXITS:
        got = [(f, at) for f, at in ((_figure(figures, w), at) for w, at in places) if f]
        if got:
            exits.append(f"{label} " + ", ".join(f"{f['median'] * 1e6:.3g} µs at {at}" for f, at in got))
    if exits:
        rows["exit cost"] = "; ".join(exits) + " (median of the bench's repetitions)"
    code = [(f, at) for f, at in ((_figure(figures, w), at) for w, at in COMPUTE)
            if f and f.get("baseline") == "native" and isinstance(f.get("ratio"), (int, float))]
    if code:
        rows["guest code"] = "compute kernel " + ", ".join(f"{f['ratio']:.3g}x native time at {at}" for f, at in code)
    if rows:
        rows = {"measured here": f"by nvmmpy bench ({m.get('mode', '?')}) on {prof.get('measured_at', '?')}", **rows}
    return rows
