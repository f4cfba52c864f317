"""The unicorn driver's engine configuration (nvmmpy/drivers/unicorn/tuning.py) and the study scripts
that chose it: every engine gets the chosen CPU model, CPUID answers come from that model, and
the store-path measurement really runs its loops (no timing is asserted)."""
import pytest

pytest.importorskip("unicorn")

import nvmmpy  # noqa: E402
from nvmmpy import constants as nvmm  # noqa: E402
from nvmmpy.drivers.unicorn import tuning  # noqa: E402


def test_vcpu_and_cpuid_probe_use_the_tuned_cpu_model():
    from unicorn.x86_const import UC_CPU_X86_HASWELL
    mach = nvmmpy.Machine("unicorn")
    mem = nvmmpy.HostMemory(1 << 20)
    try:
        mach.hva_map(mem.address, mem.size)
        mach.gpa_map(mem.address, 0, mem.size, nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)
        vcpu = mach.vcpu_create(0)
        assert tuning.default().cpu_model == UC_CPU_X86_HASWELL
        assert vcpu.uc.ctl_get_cpu_model() == UC_CPU_X86_HASWELL
        um = mach._impl
        _, ebx, ecx, edx = um.cpuid_probe(0, 0)
        assert (ebx, edx, ecx) == (0x756E6547, 0x49656E69, 0x6C65746E)   # "GenuineIntel"
        assert um._cpuid_uc.ctl_get_cpu_model() == UC_CPU_X86_HASWELL
    finally:
        mach.destroy()
        mem.close()


def test_a_swapped_tuning_reaches_new_engines():
    from unicorn.x86_const import UC_CPU_X86_QEMU64
    saved = tuning.CURRENT
    tuning.CURRENT = tuning.Tuning(cpu_model=UC_CPU_X86_QEMU64)
    mach = nvmmpy.Machine("unicorn")
    try:
        assert mach.vcpu_create(0).uc.ctl_get_cpu_model() == UC_CPU_X86_QEMU64
        _, ebx, _, _ = mach._impl.cpuid_probe(0, 0)
        assert ebx == 0x68747541   # "Auth"enticAMD
    finally:
        tuning.CURRENT = saved
        mach.destroy()


@pytest.mark.parametrize("op", ["alu", "load", "store"])
def test_store_study_runs_its_loops(op):
    from nvmmpy.bench.unicorn_stores import per_iteration_ns
    for nx in (False, True):
        assert per_iteration_ns(op, nx, hook=True, iterations=20000) > 0   # raises if the loop did not finish
