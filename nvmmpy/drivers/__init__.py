"""Driver registry and selection. Each driver module exposes probe() -> (ok, reason) and Driver."""
import errno
import importlib

from ..errors import DriverUnavailable

# In the order driver="auto" prefers them: nvmm (NetBSD/DragonFly; its probe says "not this OS"
# elsewhere without touching anything), then kvm, then the unicorn software CPU.
DRIVER_MODULES = {
    "nvmm": "nvmmpy.drivers.nvmm.driver",
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


GUEST_MODES = ("real", "cpl0", "cpl3")


def choose(name: str = "auto", guest_mode: str | None = None):
    """(Driver class, why) for a driver name, or for 'auto': the driver `nvmmpy bench` measured as
    faster for this guest mode on this machine (nvmmpy/drivers/profile.py) if it did and that
    driver is usable; else the first usable driver in the order nvmm, kvm, unicorn, skipping a
    hardware driver that would run this guest slower than the software one (kvm_pvm emulates
    real-mode and CPL0 code in the host kernel)."""
    if name != "auto":
        return load(name), f"{name} requested"
    if guest_mode is not None and guest_mode not in GUEST_MODES:
        raise DriverUnavailable(f"unknown guest mode {guest_mode!r}: use one of {', '.join(GUEST_MODES)}",
                                errno.EINVAL)
    measured = _measured_choice(guest_mode)
    if measured is not None:
        return measured
    reasons = []
    for n, modname in DRIVER_MODULES.items():
        mod = importlib.import_module(modname)
        ok, reason = mod.probe()
        if ok:
            slower = getattr(mod, "slower_than_software", lambda mode: None)(guest_mode)
            if slower:
                reasons.append(f"{n} skipped: {slower}")
                continue
            why = f"auto chose {n}: {reason}"
            return load(n), why + ("" if not reasons else " (" + "; ".join(reasons) + ")")
        reasons.append(f"{n}: {reason}")
    raise DriverUnavailable("no driver is usable: " + "; ".join(reasons))


def _measured_choice(guest_mode):
    """(Driver class, why) from the bench's platform profile, or None to use the built-in rule."""
    from . import profile
    pref = profile.preference(guest_mode)
    if pref is None or pref[0] not in DRIVER_MODULES:
        return None
    name, why = pref
    try:
        return load(name), f"auto chose {name}: {why}"
    except DriverUnavailable:
        return None
