"""What the benchmark ran on, and why some of its comparisons may not mean what they seem.

A figure without its machine is a rumour: every report carries the CPU, core count, load, the
kernel, what /dev/kvm really is (VMX, SVM or the software-assisted kvm_pvm) and the versions of
the peers, plus warnings a reader must see before trusting a ratio.
"""
import os
import platform
import sys


def kvm_description() -> dict:
    """{'usable': bool, 'backend': 'vmx'|'svm'|'pvm'|'unknown'|None, 'detail': str}."""
    from nvmmpy.drivers.kvm.detect import kvm_backend
    from nvmmpy.drivers.kvm.driver import probe
    ok, reason = probe()
    if not ok:
        return {"usable": False, "backend": None, "detail": reason}
    backend, detail = kvm_backend()
    return {"usable": True, "backend": backend, "detail": detail}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("nvmmpy", "unicorn", "capstone"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def qemu_description() -> dict:
    from . import qemu
    binary = qemu.qemu_binary()
    if binary is None:
        return {"binary": None, "version": None, "firmware": None}
    return {"binary": binary, "version": qemu.qemu_version(),
            "firmware": "qboot" if qemu.qboot_path() else "SeaBIOS"}


def describe() -> dict:
    from nvmmpy.drivers.kvm.detect import cpu_model
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "loadavg": [round(x, 2) for x in load],
        "kernel": f"{platform.system()} {platform.release()}",
        "kvm": kvm_description(),
        "versions": versions(),
        "qemu": qemu_description(),
        "executable": sys.executable,
    }


def warnings_for(machine: dict, runners_used: list) -> list:
    """Plain-language caveats for this machine and the runners that ran (names)."""
    out = []
    kvm = machine["kvm"]
    if kvm["backend"] == "pvm":
        out.append("/dev/kvm here is kvm_pvm (no VMX/SVM): guest code at CPL0 and in real mode is emulated by "
                   "the host kernel one instruction at a time, so kvm figures for CPL0 workloads and QEMU-KVM's "
                   "firmware boot are not what hardware virtualization gives; only CPL3 long-mode code "
                   "(the compute kernel, the cpl3 exit storms) runs natively")
    elif kvm["backend"] == "unknown":
        out.append(f"the KVM backend could not be identified ({kvm['detail']}): treat kvm ratios with care")
    elif kvm["backend"] and "nested" in kvm["detail"]:
        out.append("this machine is itself a guest (nested virtualization): every exit pays for two "
                   "hypervisors, so exit costs are higher than on bare metal")
    load1 = machine["loadavg"][0]
    if load1 > 0.5 * machine["cores"]:
        out.append(f"the machine was busy when the run started (load {load1:.2f} on {machine['cores']} cores): "
                   "expect noisy figures")
    if machine["cores"] < 2:
        out.append("one core: QEMU's and the VMM's helper threads share it with the vCPU")
    if kvm["backend"] == "pvm" and "qemu-kvm" in runners_used:
        fw = (machine.get("qemu") or {}).get("firmware") or "its firmware"
        out.append(f"qemu-kvm starts through {fw} and the multiboot loader in real mode, which kvm_pvm "
                   "emulates: its start-up figure is mostly that emulation")
    return out
