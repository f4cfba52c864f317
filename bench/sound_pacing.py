"""virtio-sound pacing and capacity on the real clock, with a Python driver playing the guest.

  pacing   : one output stream for --seconds; a feeder thread keeps 4 periods queued (as a guest
             does). Each tx completion time is compared with the ideal sample clock
             t0 + k * period: drift (slope of the error over the run, ms per minute) and jitter
             (spread of the error: median, p99, max lateness in ms).
  capacity : streams of growing size (rate x channels x width) for 2 s each; the largest that
             runs without an xrun is what the device + pacing thread sustain on this host.
  cpu      : process CPU time per second of audio for each stream size (host cost of the device).

    python bench/sound_pacing.py [--seconds 20] [--json out.json]
"""
import argparse
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from nvmmpy.devices.virtio.sound import constants as snd  # noqa: E402
from nvmmpy.devices.virtio.sound.backends import NullBackend  # noqa: E402
from nvmmpy.devices.virtio.sound.formats import FORMATS, bytes_per_second, rate_value  # noqa: E402
from nvmmpy.devices.virtio.sound.topology import Topology  # noqa: E402
from nvmmpy.bench.stats import timing_figures  # noqa: E402

PERIODS_QUEUED = 4


def play(rate: int, channels: int, fmt: int, seconds: float, period_ms: float = 10.0) -> dict:
    from nvmmpy.devices.testing.sound import Rig
    topo = Topology()
    topo.add_stream(snd.D_OUTPUT, NullBackend(), channels=(1, 18))
    rig = Rig(topo=topo, clock=time.monotonic, ram=64 << 20)
    bps = bytes_per_second(fmt, channels, rate)
    frame = bps // rate
    period = max(frame, int(rate * period_ms / 1000) * frame)
    assert rig.set_params(buffer_bytes=period * PERIODS_QUEUED, period_bytes=period, channels=channels, fmt=fmt,
                          rate=rate_value(rate)) == snd.S_OK
    assert rig.pcm(snd.R_PCM_PREPARE) == snd.S_OK
    times = []
    dev = rig.dev
    orig = dev.complete

    def complete(index, chain, used):
        if index == 2:
            times.append(time.monotonic())
        orig(index, chain, used)
    dev.complete = complete
    q = rig.drv.queues[2]
    data = bytes(period)
    for _ in range(PERIODS_QUEUED):
        q.add([(b"\0\0\0\0", False), (data, False), (8, True)], indirect=True)
    rig.drv.notify(2)
    total = int(seconds * 1000 / period_ms)
    cpu0, t_start = time.process_time(), time.monotonic()
    assert rig.pcm(snd.R_PCM_START) == snd.S_OK
    sent = PERIODS_QUEUED
    while len(times) < total:   # the guest: put each completed buffer back at once
        done = q.used()
        for h, _ in done:   # keep feeding past `total`: the end of the measurement is not an underrun
            q.publish(h)
            sent += 1
        if done:
            rig.drv.notify(2)
        time.sleep(0.0005)
    wall, cpu = time.monotonic() - t_start, time.process_time() - cpu0
    xruns = dev.streams[0].xruns
    rig.pcm(snd.R_PCM_STOP)
    dev.close()
    p = period / bps
    err = [(t - times[0]) - k * p for k, t in enumerate(times)]
    fig = timing_figures([k * p for k in range(len(err))], err)
    return dict(rate=rate, channels=channels, format=FORMATS[fmt].name,
                bytes_per_s=bps, periods=fig["points"], drift_ms_per_min=fig["drift_ms_per_min"],
                jitter_median_ms=fig["jitter_median_ms"], jitter_p99_ms=fig["jitter_p99_ms"],
                late_max_ms=fig["late_max_ms"],
                xruns=xruns, cpu_per_audio_s=cpu / wall)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows = []
    print(f"pacing: 48 kHz stereo S16, 10 ms periods, {a.seconds:g} s")
    r = play(48000, 2, snd.FMT_S16, a.seconds)
    rows.append(dict(kind="pacing", **r))
    print(f"  drift {r['drift_ms_per_min']:+.3f} ms/min   jitter median {r['jitter_median_ms']:.3f} ms  "
          f"p99 {r['jitter_p99_ms']:.3f} ms  max late {r['late_max_ms']:.3f} ms  xruns {r['xruns']}  "
          f"cpu {r['cpu_per_audio_s'] * 100:.1f}%")
    print("capacity: 2 s per stream size, 10 ms periods")
    for rate, ch, fmt in ((48000, 2, snd.FMT_S16), (96000, 8, snd.FMT_S32), (192000, 8, snd.FMT_S32),
                          (384000, 8, snd.FMT_FLOAT), (384000, 18, snd.FMT_FLOAT), (384000, 18, snd.FMT_FLOAT64)):
        r = play(rate, ch, fmt, 2.0)
        rows.append(dict(kind="capacity", **r))
        print(f"  {rate:6} Hz x {ch:2} ch x {r['bytes_per_s'] // rate // ch} B = {r['bytes_per_s'] / 1e6:6.2f} MB/s: "
              f"xruns {r['xruns']}, max late {r['late_max_ms']:.2f} ms, cpu {r['cpu_per_audio_s'] * 100:.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
