"""`nvmmpy identify` states only figures measured on this machine: from the profile `nvmmpy bench`
saved, else it says they are unmeasured and how to measure them (no typed-in costs)."""
import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nvmmpy.bench import learn
from harness import kvm_usable
from nvmmpy.drivers import profile
from nvmmpy.cli.main import cli

FIGURE = re.compile(r"\d+(\.\d+)?\s*(us|µs|ms)\b|\d+(\.\d+)?x\b")


def _identify(*args, env=None):
    result = CliRunner().invoke(cli, ["identify", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _res(median, lo, hi):
    return {"status": "ok", "summary": {"median": median, "min": lo, "max": hi, "n": 3}}


def _report():
    """A bench report shaped like bench.suite's, with figures no driver note could have typed in."""
    def w(name, results, baseline, ratios):
        return {"name": name, "results": results, "baseline": baseline, "ratios": ratios}
    return {"mode": "quick", "started": "2026-11-21T10:00:00",
            "runners": {n: {"available": True, "reason": ""} for n in ("nvmmpy-kvm", "nvmmpy-unicorn", "native")},
            "workloads": [
                w("compute", {"nvmmpy-kvm": _res(0.0108, 0.0105, 0.011), "nvmmpy-unicorn": _res(0.137, 0.13, 0.14),
                              "native": _res(0.00925, 0.009, 0.0095)},
                  "native", {"nvmmpy-kvm": 1.1676, "nvmmpy-unicorn": 14.81, "native": 1.0}),
                w("pio-cpl0", {"nvmmpy-kvm": _res(12.6e-6, 12e-6, 13e-6), "nvmmpy-unicorn": _res(20.3e-6, 19e-6, 22e-6),
                               "native": {"status": "unsupported", "summary": None}},
                  "nvmmpy-kvm", {"nvmmpy-kvm": 1.0, "nvmmpy-unicorn": 1.61}),
                w("pio-cpl3", {"nvmmpy-kvm": _res(33.1e-6, 32e-6, 35e-6), "nvmmpy-unicorn": {"status": "failed",
                                                                                           "summary": None}},
                  "nvmmpy-kvm", {"nvmmpy-kvm": 1.0, "nvmmpy-unicorn": None}),
                w("startup", {"nvmmpy-kvm": _res(0.256, 0.25, 0.26), "nvmmpy-unicorn": _res(0.284, 0.28, 0.29)},
                  "nvmmpy-kvm", {"nvmmpy-kvm": 1.0, "nvmmpy-unicorn": 1.11}),
            ]}


def test_without_a_profile_identify_says_the_figures_are_unmeasured(tmp_path):
    out = _identify(env={"NVMMPY_PROFILE": str(tmp_path / "none.json")})
    assert "not measured on this machine" in out and "nvmmpy bench" in out
    assert not FIGURE.search(out), FIGURE.search(out)
    report = json.loads(_identify("--json", env={"NVMMPY_PROFILE": str(tmp_path / "none.json")}))
    for entry in report:
        if entry["available"]:
            assert entry["measured"] == {}
            assert not FIGURE.search(entry["capability"]["speed_note"]), entry["capability"]["speed_note"]


def test_identify_states_what_the_bench_measured_here(tmp_path):
    where = str(tmp_path / "platform.json")
    report = _report()
    figures = learn.measured(report)
    assert set(figures["drivers"]) == {"kvm", "unicorn"}
    assert "startup" not in figures["drivers"]["kvm"] and "pio-cpl3" not in figures["drivers"]["unicorn"]
    profile.save(learn.preferences(report), report["started"], where=where, measured=figures)

    rows = profile.measured_here("kvm", where)
    assert rows["measured here"] == "by nvmmpy bench (quick) on 2026-11-21T10:00:00"
    assert rows["exit cost"].startswith("port I/O 12.6 µs at CPL0, 33.1 µs at CPL3 (")
    assert rows["guest code"] == "compute kernel 1.17x native time at CPL3"
    assert profile.measured_here("unicorn", where)["exit cost"].startswith("port I/O 20.3 µs at CPL0 (")
    assert profile.measured_here("nvmm", where) == {}

    out = _identify(env={"NVMMPY_PROFILE": where})
    if "driver unicorn" in out:  # the unicorn driver is there wherever the package installed
        assert "port I/O 20.3 µs at CPL0" in out and "14.8x native time at CPL3" in out

    # another machine's profile states nothing about this one
    data = json.loads(open(where).read())
    data["fingerprint"]["release"] = "0.0-elsewhere"
    open(where, "w").write(json.dumps(data))
    assert profile.measured_here("kvm", where) == {}


def test_a_malformed_measured_section_is_ignored(tmp_path):
    where = str(tmp_path / "platform.json")
    profile.save({}, "2026-11-21T10:00:00", where=where,
                 measured={"mode": "quick", "drivers": {"kvm": {"pio-cpl0": {"median": "fast"}, "compute": 3}}})
    assert profile.measured_here("kvm", where) == {}
    profile.save({}, "2026-11-21T10:00:00", where=where, measured={"drivers": ["kvm"]})
    assert profile.measured_here("kvm", where) == {}


@pytest.mark.slow
@pytest.mark.kvm
def test_bench_saves_what_identify_then_states(tmp_path):
    """End to end: a bench run on both drivers records its figures; identify states those numbers."""
    if not kvm_usable()[0]:
        pytest.skip(f"needs /dev/kvm: {kvm_usable()[1]}")
    env = {**os.environ, "NVMMPY_PROFILE": str(tmp_path / "platform.json")}
    p = subprocess.run([sys.executable, "-m", "nvmmpy.cli", "bench", "--quick", "--reps", "1", "--workloads",
                        "compute,pio-cpl3", "--runners", "nvmmpy-kvm,nvmmpy-unicorn", "--json", str(tmp_path / "b.json")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    saved = json.loads((tmp_path / "platform.json").read_text())["measured"]["drivers"]
    report = json.loads((tmp_path / "b.json").read_text())
    pio = next(w for w in report["workloads"] if w["name"] == "pio-cpl3")
    for driver in ("kvm", "unicorn"):
        median = pio["results"][f"nvmmpy-{driver}"]["summary"]["median"]
        assert saved[driver]["pio-cpl3"]["median"] == median
        out = _identify("--json", env={"NVMMPY_PROFILE": str(tmp_path / "platform.json")})
        entry = next(e for e in json.loads(out) if e["driver"] == driver)
        assert f"port I/O {median * 1e6:.3g} µs at CPL3" in entry["measured"]["exit cost"]
