"""The CLI answers identify and bad input cleanly, prints whole lines into pipes, and its hot path
allocates nothing per exit. (The README's examples are run by test_readme.py.)"""
import json
import os
import re
import subprocess
import sys
import tracemalloc

import pytest
from click.testing import CliRunner

from nvmmpy import constants as nvmm
from nvmmpy.cli.main import cli
from nvmmpy.vmm.cpu_modes import set_real_mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_identify_json():
    result = CliRunner().invoke(cli, ["identify", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    kvm = next(e for e in report if e["driver"] == "kvm")
    if kvm["available"]:
        cap = kvm["capability"]
        assert cap["state_size"] == 1008 and cap["version"] == 2
        assert cap["backend"] in ("vmx", "svm", "pvm", "unknown")
        assert cap["speed_note"]
    else:
        assert kvm["reason"]


def test_identify_table():
    result = CliRunner().invoke(cli, ["identify"])
    assert result.exit_code == 0
    assert "kvm" in result.output and ("backend" in result.output or "not available" in result.output)


@pytest.mark.parametrize("argv,words", [(["frobnicate"], "No such command"),
                                        (["identify", "--jsn"], "No such option")])
def test_bad_input_is_one_line_and_nonzero(argv, words):
    proc = subprocess.run([sys.executable, "-m", "nvmmpy.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.kvm
def test_run_loop_keeps_no_per_exit_allocations(kvm_vm):
    """The hot path (run, dispatch, assist, callback) retains nothing and has no per-exit buffers."""
    vm = kvm_vm
    # mov $0xffff,%ax; mov %ax,%ds; 1: out %al,$0x10; mov %al,(0x10) [MMIO at 0x100000]; jmp 1b
    vm.load(bytes.fromhex("b8ffff8ed8" "e610" "a21000" "ebf9"), 0x1000)
    set_real_mode(vm.vcpu, 0, 0x1000)
    sink = bytearray(1)

    def on_io(io):
        sink[0] = io.data[0]

    def on_mem(mem):
        sink[0] = mem.data[0]

    vm.vcpu.configure_callbacks(io=on_io, mem=on_mem)
    vcpu = vm.vcpu
    run, aio, amem = vcpu.run, vcpu.assist_io, vcpu.assist_mem

    def loop(n):
        for _ in range(n):
            r = run().reason
            if r == nvmm.VCPU_EXIT_IO:
                aio()
            elif r == nvmm.VCPU_EXIT_MEMORY:
                amem()
            else:
                raise AssertionError(r)

    tracemalloc.start()
    try:
        loop(200)      # warm up under tracing, so values replaced in place net to zero
        tracemalloc.reset_peak()
        before = tracemalloc.take_snapshot()
        blocks = sys.getallocatedblocks()
        loop(4000)
        grown = sys.getallocatedblocks() - blocks
        after = tracemalloc.take_snapshot()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = [s for s in after.compare_to(before, "filename") if "nvmmpy" in str(s.traceback) and s.size_diff > 0]
    assert not stats, stats
    assert grown < 20, f"{grown} blocks retained over 4000 exits"
    assert peak < 64 * 1024, f"peak traced memory {peak} bytes during the loop"


def _piped(*argv):
    """Run nvmmpy with stdout and stderr to pipes (not terminals), as `nvmmpy ... | less` would."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "nvmmpy.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, timeout=120)


def test_piped_tables_are_not_cut():
    """Redirected output is read by programs and later by people: no 80-column cut, no wrapping."""
    from nvmmpy.vmm.guests import GUESTS
    p = _piped("guests")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for name, g in GUESTS.items():
        row = [line for line in lines if line.startswith(f"│ {name} ")]
        assert len(row) == 1 and g.description in row[0], (name, row)
    assert "…" not in p.stdout


def test_piped_run_account_is_whole_lines(tmp_path):
    import shutil
    image = tmp_path / ("a-guest-image-with-a-name-long-enough-to-pass-80-columns-" + "x" * 40 + ".elf")
    shutil.copy(os.path.join(ROOT, "vmm", "guests", "hello.elf"), image)
    p = _piped("run", str(image), "--accel", "unicorn")
    assert p.returncode == 0, p.stderr
    account = p.stderr.splitlines()
    assert account[0] == f"{image}: exit (exit status 0) - guest wrote 0 to the debug-exit port", account
    assert re.fullmatch(r"  driver unicorn \(software\); wall [\d.]+ ms: guest [\d.]+ ms, VMM [\d.]+ ms; \d+ exits",
                        account[1]), account


def test_bench_table_into_a_pipe_keeps_names_and_ranges():
    """The bench table rendered by the CLI's console into a file: workload names and min-max ranges whole."""
    import io
    from nvmmpy.bench.report import notes, table
    from nvmmpy.cli.console import FullWidthConsole
    runners = ["nvmmpy-kvm", "nvmmpy-unicorn", "qemu-kvm", "qemu-tcg", "native"]

    def res(m):
        return {"status": "ok", "summary": {"median": m, "min": m * 0.93, "max": m * 1.21, "n": 5}}
    report = {"mode": "quick", "repetitions": 3, "duration_s": 77.0, "warnings": ["w" * 200],
              "machine": {"cpu_model": "Some CPU", "cores": 2, "loadavg": [0.5], "kernel": "6.18",
                          "kvm": {"backend": "pvm", "detail": "kvm_pvm"}},
              "runners": {n: {"available": True, "reason": ""} for n in runners},
              "workloads": [{"name": name, "unit": "exit", "display": "us", "baseline": "nvmmpy-kvm",
                             "results": {n: res(12.6e-6 * (i + 1)) for i, n in enumerate(runners)},
                             "ratios": {n: float(i + 1) for i, n in enumerate(runners)}}
                            for name in ("pio-cpl0", "pio-cpl3", "mmio-cpl0", "mmio-cpl3", "cpuid-cpl3")]}
    out = io.StringIO()
    console = FullWidthConsole(file=out)
    console.print(table(report))
    console.print(notes(report))
    text = out.getvalue()
    assert "…" not in text
    for name in ("pio-cpl0", "pio-cpl3", "mmio-cpl0", "mmio-cpl3", "cpuid-cpl3"):
        assert f"│ {name} " in text
    assert "11.7 µs-15.2 µs" in text and "58.6 µs-76.2 µs" in text
    assert "warning: " + "w" * 200 in text
