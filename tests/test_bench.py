"""`nvmmpy bench`: the quick mode end to end (JSON schema, every figure recomputed from the runs
it came from, the chart), the report checker, and what --accel auto learns from a run."""
import json
import os
import struct
import subprocess
import sys

import pytest

from nvmmpy.bench import learn
from nvmmpy.bench.runners import NativeRunner, NvmmpyRunner
from nvmmpy.bench.suite import Suite, validate
from nvmmpy.bench.workloads import BY_NAME
from harness import kvm_usable
from nvmmpy.drivers import choose, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVMMPY = [sys.executable, "-m", "nvmmpy.cli"]


def _cli(args, env=None, timeout=300):
    return subprocess.run(NVMMPY + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _check_figures(report):
    """Independently of bench.suite.validate: each figure is the slope of its own two runs."""
    checked = 0
    for w in report["workloads"]:
        for runner, res in w["results"].items():
            if res["status"] != "ok":
                assert res["figures"] == [] and res["summary"] is None and res["reason"], (w["name"], runner)
                continue
            assert len(res["figures"]) == report["repetitions"]
            # calibration may only grow the large size, within the workload's limit
            assert res["sizes"][0] == w["sizes"][0] and res["sizes"][-1] >= w["sizes"][-1]
            assert res["sizes"][-1] <= max(BY_NAME[w["name"]].limit, w["sizes"][-1])
            for rep, fig in enumerate(res["figures"]):
                runs = sorted((r for r in res["runs"] if r["rep"] == rep), key=lambda r: r["size"])
                assert [r["size"] for r in runs] == res["sizes"]
                assert all(r["exit_code"] == 0 and r["seconds"] > 0 for r in runs)
                if w["kind"] == "single":
                    want = runs[0]["seconds"]
                else:
                    want = (runs[1]["seconds"] - runs[0]["seconds"]) / (
                        (runs[1]["size"] - runs[0]["size"]) * w["exits_per_unit"])
                assert fig == pytest.approx(want, rel=1e-12)
                checked += 1
            s = res["summary"]
            assert s["min"] == min(res["figures"]) and s["max"] == max(res["figures"]) and s["n"] == len(res["figures"])
    return checked


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path):
    """The quick mode on a small selection: table printed, JSON valid, chart drawn, no profile written."""
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    runners = "nvmmpy-unicorn,native" + (",nvmmpy-kvm" if kvm_usable()[0] else "")
    p = _cli(["bench", "--quick", "--reps", "2", "--workloads", "compute,virtio-rng", "--runners", runners,
              "--json", str(out), "--chart", str(png), "--no-save-profile"],
             env={"NVMMPY_PROFILE": str(tmp_path / "profile.json"), "COLUMNS": "160"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nvmmpy bench (quick, 2 repetitions" in p.stdout and "compute" in p.stdout
    report = json.loads(out.read_text())
    assert validate(report) == []
    assert _check_figures(report) >= 2 * 3
    compute = next(w for w in report["workloads"] if w["name"] == "compute")
    assert compute["baseline"] == "native" and compute["results"]["native"]["status"] == "ok"
    rng = next(w for w in report["workloads"] if w["name"] == "virtio-rng")
    assert rng["results"]["native"]["status"] == "unsupported"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png.read_bytes()[16:24])
    assert w > 300 and h > 200
    assert not (tmp_path / "profile.json").exists()


def test_validate_catches_a_figure_that_does_not_follow_from_its_runs():
    suite = Suite(workloads=[BY_NAME["compute"]], runners=[NativeRunner(_tmpdir())], quick=True, reps=2)
    try:
        report = suite.run()
    finally:
        suite.close()
    assert validate(report) == []
    _check_figures(report)
    bad = json.loads(json.dumps(report))
    bad["workloads"][0]["results"]["native"]["figures"][1] *= 1.5
    assert any("does not follow from its runs" in p for p in validate(bad))
    bad = json.loads(json.dumps(report))
    bad["workloads"][0]["results"]["native"]["runs"].pop()
    assert validate(bad)
    bad = json.loads(json.dumps(report))
    del bad["machine"]["kvm"]
    assert any("kvm" in p for p in validate(bad))


def _tmpdir():
    import tempfile
    return tempfile.mkdtemp(prefix="nvmmpy-bench-test-")


def test_a_wrong_guest_output_is_a_failed_cell_not_a_figure():
    """A run whose output lacks the expected line (here: a size the guest was not asked for) fails the cell."""
    w = BY_NAME["compute"]
    runner = NvmmpyRunner("unicorn", _tmpdir())

    class Lying:
        kind, name = "nvmmpy", "nvmmpy-unicorn"

        def available(self):
            return True, ""

        def supports(self, w):
            return True, ""

        def run(self, w, size, timeout):
            r = runner.run(w, size, timeout)
            r.exit_code = 1
            return r

    suite = Suite(workloads=[w], runners=[Lying()], quick=True, reps=1)
    try:
        report = suite.run()
    finally:
        suite.close()
    res = report["workloads"][0]["results"]["nvmmpy-unicorn"]
    assert res["status"] == "failed" and "exit code 1" in res["reason"] and res["figures"] == []
    assert validate(report) == []


def test_native_baseline_runs_the_guest_kernels():
    """The native build of the compute kernels prints what the compute guest prints."""
    w = BY_NAME["compute"]
    nat = NativeRunner(_tmpdir())
    assert nat.available() == (True, "")
    native = nat.run(w, 1, 60).output
    guest = NvmmpyRunner("unicorn", _tmpdir()).run(w, 1, 120).output
    lines = [line for line in native.splitlines() if "=" in line and not line.startswith("compute")]
    assert len(lines) == 4
    for line in lines:
        assert line in guest


def _report_with(medians: dict):
    """A minimal report: {workload: {runner: median}} for learn.preferences."""
    runners = sorted({r for m in medians.values() for r in m})
    return {"runners": {r: {"available": True, "reason": ""} for r in runners},
            "workloads": [{"name": w, "results": {r: {"summary": {"median": v}} for r, v in m.items()}}
                          for w, m in medians.items()]}


def test_learn_prefers_the_faster_driver_per_mode():
    rep = _report_with({"startup": {"nvmmpy-kvm": 0.3, "nvmmpy-unicorn": 0.2},
                        "pio-cpl0": {"nvmmpy-kvm": 40e-6, "nvmmpy-unicorn": 10e-6},
                        "mmio-cpl0": {"nvmmpy-kvm": 50e-6, "nvmmpy-unicorn": 45e-6},
                        "compute": {"nvmmpy-kvm": 0.009, "nvmmpy-unicorn": 0.13, "native": 0.007}})
    prefs = learn.preferences(rep)
    assert prefs["cpl0"]["driver"] == "unicorn" and prefs["cpl0"]["speedup"] > 1
    assert prefs["cpl3"]["driver"] == "kvm" and prefs["cpl3"]["speedup"] == pytest.approx(0.13 / 0.009, rel=1e-3)
    assert "real" not in prefs
    # one driver alone teaches nothing
    assert learn.preferences(_report_with({"compute": {"nvmmpy-unicorn": 0.1}})) == {}


def test_profile_is_only_trusted_on_the_machine_it_was_measured_on(tmp_path, monkeypatch):
    where = tmp_path / "platform.json"
    monkeypatch.setenv("NVMMPY_PROFILE", str(where))
    assert profile.preference("cpl0") is None                       # none yet
    profile.save({"cpl0": {"driver": "unicorn", "speedup": 3.0, "basis": "test"}}, "2026-11-21T10:00:00")
    drv, why = profile.preference("cpl0")
    assert drv == "unicorn" and "3.0x faster for cpl0 guests" in why
    assert profile.preference("cpl3") is None
    data = json.loads(where.read_text())
    data["fingerprint"]["cpu_model"] = "some other CPU"
    where.write_text(json.dumps(data))
    assert profile.preference("cpl0") is None                       # another machine's profile
    where.write_text("{not json")
    assert profile.preference("cpl0") is None


def test_auto_follows_the_measured_profile(tmp_path, monkeypatch):
    """choose('auto') takes the bench's measured preference when there is one, else its built-in rule."""
    monkeypatch.setenv("NVMMPY_PROFILE", str(tmp_path / "platform.json"))
    builtin_cls, builtin_why = choose("auto", "cpl3")
    assert "nvmmpy bench" not in builtin_why
    profile.save({"cpl3": {"driver": "unicorn", "speedup": 1.5, "basis": "compute vs kvm"}}, "2026-11-21T10:00:00")
    cls, why = choose("auto", "cpl3")
    assert cls.name == "unicorn" and "auto chose unicorn: nvmmpy bench measured unicorn 1.5x faster" in why
    # an unknown driver in the profile (e.g. written by a newer nvmmpy) is ignored
    profile.save({"cpl3": {"driver": "warpdrive", "speedup": 9, "basis": "?"}}, "2026-11-21T10:00:00")
    assert choose("auto", "cpl3")[0] is builtin_cls


@pytest.mark.kvm
def test_run_accel_auto_uses_the_profile(tmp_path):
    if not kvm_usable()[0]:
        pytest.skip(f"needs /dev/kvm: {kvm_usable()[1]}")
    where = tmp_path / "platform.json"
    env = {"NVMMPY_PROFILE": str(where)}
    p = _cli(["run", "hello", "--json"], env=env)
    assert p.returncode == 0, p.stderr
    before = json.loads(p.stdout)
    other = "kvm" if before["driver"] == "unicorn" else "unicorn"
    os.environ["NVMMPY_PROFILE"], saved = str(where), os.environ["NVMMPY_PROFILE"]
    try:
        profile.save({"cpl0": {"driver": other, "speedup": 2.0, "basis": "test"}}, "2026-11-21T10:00:00")
    finally:
        os.environ["NVMMPY_PROFILE"] = saved
    p = _cli(["run", "hello", "--json"], env=env)
    assert p.returncode == 0, p.stderr
    after = json.loads(p.stdout)
    assert after["driver"] == other and "nvmmpy bench measured" in after["driver_reason"]


@pytest.mark.parametrize("args, message", [
    (["--runners", "qemu-warp"], "unknown runner qemu-warp"),
    (["--workloads", "compute,nope"], "unknown workload nope"),
    (["--json", "/nonexistent-dir/x.json"], "cannot write /nonexistent-dir/x.json: directory /nonexistent-dir does not exist"),
    (["--reps", "0"], "--reps"),
])
def test_bench_bad_options_are_one_line_errors(args, message):
    p = _cli(["bench", "--quick", *args])
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_compute_at_cpl0_gives_the_same_results():
    """compute-cpl0 runs the same kernels at CPL0: same results, only the privilege level differs."""
    runner = NvmmpyRunner("unicorn", _tmpdir())
    at3 = runner.run(BY_NAME["compute"], 1, 120)
    at0 = runner.run(BY_NAME["compute-cpl0"], 100, 120)     # 100 hundredths of a step = one step
    assert at3.exit_code == 0 and at0.exit_code == 0
    assert "compute at CPL3" in at3.output and "compute at CPL0" in at0.output
    results = lambda out: [line for line in out.splitlines() if "=" in line and not line.startswith("compute")]
    r0, r3 = results(at0.output), results(at3.output)
    assert len(r0) == len(r3) == 4
    assert r0[0] == r3[0] and r0[2] == r3[2]     # primes up to 1e6 and the matmul; the CRC covers 524300 vs 524288 bytes


def test_bench_eventfd_counts_exits_per_request(tmp_path):
    """`nvmmpy bench --eventfd`: every mode of this kvm, both guests, both waits; the notification exit
    goes with ioeventfd, the interrupt's EOI exit too with the in-kernel PIC (counts, not times)."""
    if not kvm_usable()[0]:
        pytest.skip("needs /dev/kvm")
    out = tmp_path / "e.json"
    p = _cli(["bench", "--eventfd", "--quick", "--reps", "1", "--json", str(out)], env={"COLUMNS": "160"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "exits/req" in p.stdout
    rows = json.loads(out.read_text())
    modes = sorted({r["eventfd"] for r in rows})
    assert "off" in modes and {(r["guest"], r["wait"]) for r in rows} == {
        (g, w) for g in ("virtio-rng", "virtio-blk") for w in ("irq", "poll")}
    by = {(r["guest"], r["wait"], r["eventfd"]): r for r in rows}
    for g in ("virtio-rng", "virtio-blk"):
        assert by[g, "irq", "off"]["exits_per_request"] == pytest.approx(4, abs=0.2)  # notify, status, ack, EOI
        assert by[g, "poll", "off"]["exits_per_request"] == pytest.approx(1, abs=0.2)  # notify
        if "irqchip" in modes:
            assert by[g, "irq", "irqchip"]["exits_per_request"] == pytest.approx(2, abs=0.2)  # status, ack
        for r in rows:
            assert r["requests_per_s"]["median"] > 0
