"""Driver registry and selection. Each driver module exposes probe() -> (ok, reason) and Driver."""
import importlib

from ..errors import DriverUnavailable

# In the order driver="auto" prefers them.
DRIVER_MODULES = {
    "kvm": "nvmmpy.drivers.kvm.driver",
    "unicorn": "nvmmpy.drivers.unicorn.driver",
}


def driver_names():
    return list(DRIVER_MODULES)


def load(name: str):
    """The Driver class of `name`, or DriverUnavailable saying why it cannot be used here."""
    if name not in DRIVER_MODULES:
        raise DriverUnavailable(f"unknown driver {name!r}: choose one of {', '.join(['auto', *DRIVER_MODULES])}")
    mod = importlib.import_module(DRIVER_MODULES[name])
    ok, reason = mod.probe()
    if not ok:
        raise DriverUnavailable(f"driver {name!r} is not available: {reason}")
    return mod.Driver


def probe_all():
    """[(name, ok, reason)] for every known driver."""
    out = []
    for name, modname in DRIVER_MODULES.items():
        mod = importlib.import_module(modname)
        ok, reason = mod.probe()
        out.append((name, ok, reason))
    return out


def choose(name: str = "auto"):
    """(Driver class, why) for driver name or 'auto' (first usable in preference order)."""
    if name != "auto":
        return load(name), f"{name} requested"
    reasons = []
    for n, ok, reason in probe_all():
        if ok:
            return load(n), f"auto: {n} is the first usable driver ({reason})"
        reasons.append(f"{n}: {reason}")
    raise DriverUnavailable("no driver is usable: " + "; ".join(reasons))
