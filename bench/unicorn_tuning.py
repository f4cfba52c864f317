"""Each unicorn knob alone against QEMU-TCG, on the compute guests of `nvmmpy bench` (issue 17, item 5).

Every variant runs the compute workloads (CPL3 and CPL0) at two sizes (SIZES) on the
unicorn driver, interleaved round by round with the same runs under QEMU-TCG; a figure is the
slope (t_large - t_small) / (size difference), its median over the rounds, and the ratio of that
median to QEMU-TCG's. A run counts only if the guest printed its proof line.

Variants (one knob each, the rest as the driver has them; "study only" ones break general guests):
  driver          the driver as configured (nvmmpy/drivers/unicorn/tuning.py)
  qemu64          QEMU-TCG's default CPU model (AMD) instead of the tuned Haswell
  tb-32m/tb-256m  translation buffer of 32 / 256 MiB instead of unicorn's 1 GiB default
  hooks           soft_exits="hooks": no registered exits, IN/OUT/CPUID through instruction hooks
  no-mem-hooks    hooks mode without the memory hooks (no MMIO, scanning or ROM faults): bare
                  unicorn plus three instruction hooks that fire only on I/O; study only
  no-block-hook   without the C block hook that makes stops exact (tbstop.py) and without count
                  slices: stops from other threads may land inside an instruction; study only
  count-slices    the driver's fallback where no C compiler builds that hook: emu_start by counts
  tlb-virtual     UC_TLB_VIRTUAL (guest paging ignored: identity map); study only

    python -m nvmmpy.bench.unicorn_tuning [--rounds 5] [--variants driver,hooks] [--json out.json]
"""
import argparse
import contextlib
import json
import statistics
import sys

VARIANTS = ("driver", "qemu64", "tb-32m", "tb-256m", "hooks", "no-mem-hooks", "no-block-hook", "count-slices",
            "tlb-virtual")
WORKLOADS = ("compute", "compute-cpl0")
# (small, large): larger than the bench's quick sizes, so that QEMU-TCG's difference is ~0.1-0.3 s
# and process start-up jitter does not swamp it (compute-cpl0's large size is its limit)
SIZES = {"compute": (1, 9), "compute-cpl0": (1, 400)}


@contextlib.contextmanager
def variant(name: str):
    """Configure the unicorn driver for one variant; yields the VirtualMachine soft_exits."""
    import unicorn
    from unicorn.x86_const import UC_CPU_X86_QEMU64
    from nvmmpy.drivers.unicorn import tbstop, tuning, vcpu
    base = tuning.default()
    t = {"qemu64": dict(cpu_model=UC_CPU_X86_QEMU64), "tb-32m": dict(tcg_buffer_size=32 << 20),
         "tb-256m": dict(tcg_buffer_size=256 << 20), "tlb-virtual": dict(tlb_virtual=True)}.get(name, {})
    saved_tuning, saved_hook_add = tuning.CURRENT, unicorn.Uc.hook_add
    saved_attach, saved_slice = tbstop.attach, vcpu.SLICE_COUNT
    tuning.CURRENT = tuning.Tuning(**{**base.__dict__, **t})
    if name == "no-mem-hooks":
        mem_hooks = unicorn.UC_HOOK_MEM_UNMAPPED | unicorn.UC_HOOK_MEM_PROT

        def hook_add(self, htype, *a, **k):
            return 0 if htype & mem_hooks else saved_hook_add(self, htype, *a, **k)
        unicorn.Uc.hook_add = hook_add
    if name in ("no-block-hook", "count-slices"):
        tbstop.attach = lambda uc: None
        if name == "no-block-hook":
            vcpu.SLICE_COUNT = 0
    try:
        yield "hooks" if name in ("hooks", "no-mem-hooks") else "scan"
    finally:
        tuning.CURRENT, unicorn.Uc.hook_add = saved_tuning, saved_hook_add
        tbstop.attach, vcpu.SLICE_COUNT = saved_attach, saved_slice


def run_unicorn(w, size: int, name: str, timeout: float) -> float:
    from nvmmpy.vmm.guests import GUESTS
    from nvmmpy.vmm.loader import load
    from nvmmpy.vmm.vm import VirtualMachine
    g = GUESTS[w.guest]
    with variant(name) as soft_exits:
        vm = VirtualMachine(memory=64 << 20, driver="unicorn", guest_mode=g.mode, soft_exits=soft_exits)
        out = bytearray()
        try:
            vm.add_legacy_devices(serial_output=out.extend)
            with open(g.path, "rb") as f:
                load(vm, f.read(), cmdline=w.cmdline(size))
            r = vm.run(timeout=timeout)
        finally:
            vm.close()
    return _checked(w, size, out.decode(errors="replace"), r.wall, f"unicorn/{name}")


def run_qemu(w, size: int, timeout: float) -> float:
    from nvmmpy.bench.runners import QemuRunner
    r = QemuRunner("tcg").run(w, size, timeout)
    return _checked(w, size, r.output, r.seconds, "qemu-tcg")


def _checked(w, size, output, seconds, who):
    if w.expect(size) not in output:
        raise RuntimeError(f"{who}: {w.name} at size {size} did not print {w.expect(size)!r}: {output[-300:]!r}")
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from nvmmpy.bench.workloads import BY_NAME
    names = [v for v in a.variants.split(",") if v]
    wls = [BY_NAME[n] for n in a.workloads.split(",") if n]
    slopes = {(w.name, who): [] for w in wls for who in ["qemu-tcg", *names]}
    failed = {}
    for rnd in range(a.rounds):
        for w in wls:
            lo, hi = SIZES[w.name]
            for who in ["qemu-tcg", *names]:
                if who in failed:
                    continue
                try:
                    if who == "qemu-tcg":
                        t = [run_qemu(w, s, a.timeout) for s in (lo, hi)]
                    else:
                        t = [run_unicorn(w, s, who, a.timeout) for s in (lo, hi)]
                except Exception as e:  # noqa: BLE001 - a study variant may not run the guest at all
                    failed[who] = str(e).splitlines()[0][:160]
                    continue
                slopes[(w.name, who)].append((t[1] - t[0]) / (hi - lo))
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    report = {"rounds": a.rounds, "failed": failed, "median_ms": {}, "ratio_to_qemu_tcg": {}}
    for w in wls:
        q = statistics.median(slopes[(w.name, "qemu-tcg")])
        print(f"\n{w.name} ({w.unit}; sizes {SIZES[w.name]}; median of {a.rounds} rounds, [min-max]):")
        for who in ["qemu-tcg", *names]:
            v = slopes[(w.name, who)]
            if not v:
                print(f"  {who:<14} failed: {failed.get(who, '?')}")
                continue
            m = statistics.median(v)
            report["median_ms"][f"{w.name}/{who}"] = m * 1e3
            report["ratio_to_qemu_tcg"][f"{w.name}/{who}"] = m / q
            print(f"  {who:<14} {m * 1e3:8.2f} ms [{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f}]  x{m / q:.2f} qemu-tcg")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
