"""What `nvmmpy bench` measured on this machine, kept so that driver="auto" can use it.

The profile says, per guest mode, which driver ran that kind of guest faster here and by how
much. It is only trusted on the machine it was measured on: the fingerprint (kernel release,
CPU model, what /dev/kvm is) must match, else auto falls back to its built-in rule. Stored as
JSON at $NVMMPY_PROFILE, else $XDG_CACHE_HOME/nvmmpy/platform.json (~/.cache by default).
"""
import json
import os
import platform

VERSION = 1


def path() -> str:
    if os.environ.get("NVMMPY_PROFILE"):
        return os.environ["NVMMPY_PROFILE"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nvmmpy", "platform.json")


def fingerprint() -> dict:
    from .kvm.detect import cpu_flags, cpu_model, kvm_backend
    return {"system": platform.system(), "release": platform.release(), "cpu_model": cpu_model(),
            "kvm_backend": kvm_backend()[0], "virt_flags": sorted(cpu_flags() & {"vmx", "svm", "hypervisor"})}


def save(preferences: dict, measured_at: str, where: str | None = None) -> str:
    """preferences: {mode: {"driver": name, "speedup": x, "basis": "what was compared"}}."""
    where = where or path()
    os.makedirs(os.path.dirname(where) or ".", exist_ok=True)
    tmp = where + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": VERSION, "fingerprint": fingerprint(), "measured_at": measured_at,
                   "preferences": preferences}, f, indent=2)
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
