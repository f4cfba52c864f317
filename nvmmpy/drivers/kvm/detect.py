"""What is behind /dev/kvm: Intel VMX, AMD SVM, or a software-assisted module such as kvm_pvm."""
import os

MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")

# What to expect, in words; figures for this machine come from `nvmmpy bench` (drivers/profile.py).
SPEED_NOTES = {
    "vmx": "hardware virtualization: guest code runs at native speed; each exit to the VMM is a "
           "round trip through the kernel plus the Python handling",
    "svm": "hardware virtualization: guest code runs at native speed; each exit to the VMM is a "
           "round trip through the kernel plus the Python handling",
    "pvm": "software-assisted: guest code at CPL0 and in real mode is emulated by the host kernel one "
           "instruction at a time (slower than the unicorn driver); long-mode code at CPL3 runs natively; "
           "each exit is a round trip through the kernel plus the Python handling",
    "unknown": "unknown KVM backend: speed not characterised",
}


def cpuinfo_field(name: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first CPU's `name` line of /proc/cpuinfo ("flags", "model name"), or None."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags(path: str = "/proc/cpuinfo") -> set:
    return set((cpuinfo_field("flags", path) or "").split())


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    return cpuinfo_field("model name", path) or "unknown"


def loaded_modules(sysmodule: str = "/sys/module") -> set:
    return {m for m in MODULES if os.path.isdir(os.path.join(sysmodule, m))}


def classify(flags: set, modules: set) -> tuple[str, str]:
    """(backend, one-line detail) from CPU flags and loaded KVM modules."""
    nested = " (nested: this machine is itself a guest)" if "hypervisor" in flags else ""
    if "kvm_pvm" in modules and not flags & {"vmx", "svm"}:
        return "pvm", "kvm_pvm: software-assisted KVM, the CPU offers no VMX or SVM here"
    if "kvm_intel" in modules or ("vmx" in flags and "kvm_amd" not in modules):
        if "vmx" in flags or "kvm_intel" in modules:
            return "vmx", "Intel VMX (kvm_intel)" + nested
    if "kvm_amd" in modules or "svm" in flags:
        return "svm", "AMD SVM (kvm_amd)" + nested
    if "kvm_pvm" in modules:
        return "pvm", "kvm_pvm: software-assisted KVM"
    return "unknown", "KVM module not identified (" + (", ".join(sorted(modules)) or "no kvm_* module visible") + ")"


def kvm_backend() -> tuple[str, str]:
    return classify(cpu_flags(), loaded_modules())
