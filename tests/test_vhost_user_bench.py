"""The vhost-user section of `nvmmpy bench` (bench/vhost_user.py): frames delivered are the clip's
frames found at the start of the sink WAV byte for byte, each guest job's figure comes with the line
that proves it ran in full, the sink's timing is measured from its growth, the section reaches the
bench's JSON report and its check; and, with QEMU 10 here, one quick run against QEMU's devices."""
import os
import struct

import pytest

from nvmmpy.bench import vhost_user
from nvmmpy.bench.sink_clock import FileGrowth, audio_points, sink_timing
from nvmmpy.bench.stats import timing_figures
from nvmmpy.bench.vhost_user_report import section_table, validate_section


def _wav(data: bytes) -> bytes:
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 2, 48000,
                       192000, 4, 16, b"data", len(data)) + data


def test_frames_delivered_counts_the_exact_prefix(tmp_path):
    wav, clip = vhost_user.clip(2.0)
    assert wav[44:] == clip and len(clip) == 4 * 96000
    p = tmp_path / "s.wav"
    p.write_bytes(_wav(clip + bytes(400)))                 # all of it, then aplay's silence padding
    assert vhost_user.frames_delivered(str(p), clip) == len(clip) // 4
    p.write_bytes(_wav(clip[:-300 * 4]))                   # the last 300 frames dropped
    assert vhost_user.frames_delivered(str(p), clip) == len(clip) // 4 - 300
    bad = bytearray(clip)
    bad[4000] ^= 1                                         # one wrong sample in frame 1000
    p.write_bytes(_wav(bytes(bad)))
    assert vhost_user.frames_delivered(str(p), clip) == 1000
    assert vhost_user.frames_delivered(str(tmp_path / "missing.wav"), clip) == 0


GUEST_OUT = """init: up\r
== job blk-write-4k\r
512+0 records in\r
512+0 records out\r
real\t0m 0.25s\r
user\t0m 0.00s\r
== job blk-read-4k\r
500+0 records in\r
500+0 records out\r
real\t0m 0.20s\r
== job blk-write-64k\r
dd: /dev/vda: Input/output error\r
== job blk-read-64k\r
256+0 records out\r
real\t0m 0.00s\r
"""


def test_a_job_counts_only_with_its_proof_line():
    jobs = vhost_user.blk_jobs(512, 256)
    runs = {k: vhost_user.throughput(v) for k, v in vhost_user.parse_jobs(GUEST_OUT, jobs).items()}
    ok = runs["blk-write-4k"]
    assert ok["proof"] == "512+0 records out" and ok["bytes"] == 512 * 4096
    assert ok["MB/s"] == pytest.approx(512 * 4096 / 0.25 / 1e6) and ok["req/s"] == pytest.approx(2048)
    assert "512+0 records out" in runs["blk-read-4k"]["error"]           # 500 of 512 blocks is not the job
    assert "error" in runs["blk-write-64k"]
    assert "no measurable time" in runs["blk-read-64k"]["error"]


def test_drift_and_jitter_from_the_sinks_growth():
    # 1 ms/s fast, then a write 100 ms late that the next catches up: a drift of 60 ms/min, not more
    rate = 192000
    points = [(1000 + k * 0.125 * 1.001 + (0.1 if k == 5 else 0), 44 + 24000 * (k + 1)) for k in range(40)]
    figs = sink_timing(audio_points(points, 24000 * 40), rate)
    assert figs["drift_ms_per_min"] == pytest.approx(60, abs=1) and figs["points"] == 40
    assert figs["late_max_ms"] == pytest.approx(100 + 0.125 * 4 * 1, abs=1)
    assert figs["jitter_median_ms"] < 0.5 and figs["jitter_p99_ms"] < 100
    assert audio_points([(0, 0), (1, 44), (2, 44 + 8), (3, 44 + 16)], 8) == [(2, 8)]     # the clip only
    assert timing_figures([0, 1, 2], [0, 0, 0])["drift_ms_per_min"] == 0


def test_file_growth_records_each_growth(tmp_path):
    path = tmp_path / "sink.wav"
    g = FileGrowth(str(path))
    with open(path, "wb") as f:
        for k in range(5):
            f.write(bytes(100))
            f.flush()
            os.fsync(f.fileno())
    import time
    time.sleep(0.2)       # let the watcher read the last event (no wall-clock assert)
    points = g.stop()
    sizes = [s for _, s in points]
    assert sizes == sorted(set(sizes)) and sizes[-1] == 500
    assert all(b >= a for (a, _), (b, _) in zip(points, points[1:]))


def _section(**row_changes):
    runs = [{"rep": r, "seconds": 0.5, "bytes": 1 << 20, "requests": 256, "proof": "256+0 records out",
             "MB/s": s, "req/s": 512, "bytes/s": s * 1e6} for r, s in enumerate((2.0, 2.2, 2.1))]
    rows = []
    for setup, peer in (("nvmmpy vhost-user-rng", False), ("QEMU virtio-rng-pci", True)):
        row = {"job": "rng", "kind": "rng", "setup": setup, "peer": peer, "runs": [dict(r) for r in runs]}
        row.update(vhost_user.summarize_row(row))
        rows.append(row)
    rows[0].update(row_changes)
    return {"status": "ok", "reason": "", "repetitions": 3, "mode": "quick", "clip": {"rate": 48000, "channels": 2,
            "format": "S16_LE", "seconds": 2.0, "frames": 96000}, "rows": rows, "ratios": vhost_user.ratios(rows)}


def test_the_section_check_wants_proof_and_medians_of_the_runs():
    good = _section()
    assert good["rows"][0]["median"]["MB/s"] == 2.1 and good["ratios"] == {"rng": 1.0}
    assert validate_section(good) == []
    unproven = _section()
    del unproven["rows"][0]["runs"][1]["proof"]
    assert any("no proof line" in p for p in validate_section(unproven))
    assert any("not the median" in p for p in validate_section(_section(median={"MB/s": 3.0})))
    assert validate_section({"status": "unavailable", "reason": "no QEMU 10"}) == []


def test_nvmmpy_bench_carries_the_section(tmp_path, monkeypatch):
    """`nvmmpy bench --workloads vhost-user`: the section alone, in the JSON report and the table;
    a quick run without it named does not start it."""
    from harness import bench_carries_section
    bench_carries_section(monkeypatch, tmp_path, vhost_user, "vhost-user", "vhost_user", _section(),
                          ["vhost-user rng", "256+0 records out"])


@pytest.mark.slow
@pytest.mark.skipif(vhost_user.unavailable() is not None, reason=str(vhost_user.unavailable()))
def test_quick_section_against_qemus_own_devices():
    """rng and sound, one repetition each, for real: every run proved its work, ours delivered every
    frame of the clip, and the tables render."""
    section = vhost_user.measure(reps=1, quick=True, timeout=300, kinds=("rng", "sound"))
    assert section["status"] == "ok", section["reason"]
    assert validate_section(section) == []
    rows = {(r["job"], r["setup"]): r for r in section["rows"]}
    assert set(rows) == {("rng", "nvmmpy vhost-user-rng"), ("rng", "QEMU virtio-rng-pci"),
                         ("sound", "nvmmpy vhost-user-snd"), ("sound", "QEMU virtio-sound-pci")}
    ours = rows[("sound", "nvmmpy vhost-user-snd")]
    assert ours["fewest_frames_delivered"] == section["clip"]["frames"]
    assert {"drift_ms_per_min", "jitter_median_ms", "backend_cpu_pct"} <= set(ours["median"])
    assert "drift_ms_per_min" in rows[("sound", "QEMU virtio-sound-pci")]["median"]
    assert set(section["ratios"]) == {"rng", "sound"}
    from rich.console import Console
    Console(file=open(os.devnull, "w"), width=200).print(section_table(section))
