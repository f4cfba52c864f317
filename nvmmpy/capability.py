"""Capability: struct nvmm_capability plus what the driver knows about the hardware underneath."""
from dataclasses import dataclass, field, asdict


@dataclass
class Capability:
    driver: str                 # "kvm", "nvmm", "unicorn"
    version: int                # NVMM interface version offered (2: vcpu_stop / EXIT_STOPPED)
    state_size: int             # sizeof(struct nvmm_x64_state)
    max_machines: int           # 0 = no fixed limit
    max_vcpus: int
    max_ram: int                # guest-physical address space in bytes
    mach_conf_support: int = 0
    vcpu_conf_support: int = 0  # CAP_ARCH_VCPU_CONF_CPUID | CAP_ARCH_VCPU_CONF_TPR
    xcr0_mask: int = 0
    mxcsr_mask: int = 0
    conf_cpuid_maxops: int = 0
    cpuid_exits: bool = False   # can a CPUID leaf be configured to exit (NVMM: yes; KVM: never)
    backend: str = ""           # "vmx", "svm", "pvm", "software", ...
    backend_detail: str = ""    # one line, plain words
    speed_note: str = ""        # what speed to expect, plain words
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)
