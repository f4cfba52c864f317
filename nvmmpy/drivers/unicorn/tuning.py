"""How the unicorn driver configures every engine it makes (vCPUs and the CPUID probe alike), and why.

Each knob was measured alone against QEMU-TCG on the same guests (bench/unicorn_tuning.py, Linux
boots; figures in docs/unicorn-performance.md). None moves compute speed: unicorn 2.1.4's store
path is the limit (bench/unicorn_stores.py), whatever the configuration.
- CPU model: Haswell, chosen rather than inherited. An Intel model, so Linux takes the TSC rate from
  CPUID leaf 0x15 (vmm/linux.py cpuid_confs); an AMD one (qemu64, QEMU-TCG's default) makes it
  calibrate against the PIT, which fails under a software CPU. It costs Linux page table isolation,
  which did not show in boots here next to qemu64 or `nopti` (a syscall is a trip through Python
  either way). Compute speed is the same with either model.
- Translation cache: unicorn's default (1 GiB of address space, committed as used): 32 and 256 MiB
  were no faster.
- TLB: the CPU TLB (the guest's page tables); UC_TLB_VIRTUAL ignores guest paging, so it is a
  measurement variant only, and it was no faster either.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    cpu_model: int | None = None    # UC_CPU_X86_* (None: unicorn's default)
    tcg_buffer_size: int = 0        # bytes for translated code (0: unicorn's default, 1 GiB)
    tlb_virtual: bool = False       # UC_TLB_VIRTUAL (measurements only: ignores guest paging)


def default() -> Tuning:
    from unicorn.x86_const import UC_CPU_X86_HASWELL
    return Tuning(cpu_model=UC_CPU_X86_HASWELL)


CURRENT = None      # the Tuning engines are made with (None: default()); bench/unicorn_tuning.py swaps it


def configure(uc) -> None:
    """Apply CURRENT to a new engine, before its first use (unicorn fixes the model at start)."""
    t = CURRENT or default()
    if t.cpu_model is not None:
        uc.ctl_set_cpu_model(t.cpu_model)
    if t.tcg_buffer_size:
        uc.ctl_set_tcg_buffer_size(t.tcg_buffer_size)
    if t.tlb_virtual:
        from unicorn import UC_TLB_VIRTUAL
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
