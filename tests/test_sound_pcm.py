"""virtio-sound PCM: the command lifecycle (every state x every command against the spec's table),
SET_PARAMS validation, the paced data path of txq and rxq with a fake clock (completions exactly at
t0 + bytes / bytes_per_second, no drift, latency_bytes, hand-off times, capture content), xruns and
their events, STOP/START, RELEASE completing pending I/O first, MSG_POLLING, malformed I/O
messages, backend failures, device reset mid-stream, and one real-time run of the pacing thread.
"""
import struct
import time
import tracemalloc

import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio.mmio import VirtioMmio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.sound import constants as snd
from nvmmpy.devices.virtio.sound import formats
from nvmmpy.devices.virtio.sound import pcm
from nvmmpy.devices.virtio.sound.backends import ToneSource
from nvmmpy.devices.virtio.sound.device import VirtioSound
from nvmmpy.devices.virtio.sound.topology import Topology
from nvmmpy.devices.testing.driver import MmioDriver
from nvmmpy.devices.testing.sound import ALL_FEATURES, BAD, IOERR, NOTSUPP, OK, FakeClock, MemBackend, Rig, ev, u32

XF = snd.PCM_XFER.pack


def stream_rig(direction, want=ALL_FEATURES, **stream_kw):
    """A device with one stream of `direction` on a MemBackend (r.backend), on a fake clock."""
    clock = FakeClock()
    t = Topology()
    b = MemBackend(clock)
    t.add_stream(direction, b, **stream_kw)
    r = Rig(t, want=want, clock=clock)
    r.backend = b
    return r


def out_rig(want=ALL_FEATURES, **stream_kw):
    return stream_rig(snd.D_OUTPUT, want, **stream_kw)


def in_rig(want=ALL_FEATURES, **stream_kw):
    return stream_rig(snd.D_INPUT, want, **stream_kw)


def tx(r, data, sid=0, notify=True):
    h = r.drv.queues[2].add([(XF(sid), False), (data, False), (8, True)])
    if notify:
        r.drv.notify(2)
    return h


def rx(r, n, sid=0, notify=True):
    h = r.drv.queues[3].add([(XF(sid), False), (n, True), (8, True)])
    if notify:
        r.drv.notify(3)
    return h


def done(r, q=2):
    """[(head, used, status, latency)] completed since the last call."""
    dq = r.drv.queues[q]
    out = []
    for h, n in dq.used():
        w = dq.written(h)
        out.append((h, n, u32(w, len(w) - 8), u32(w, len(w) - 4)))
    return out


def at(r, t):
    """Move the fake clock to t and let the device catch up (as its thread would)."""
    r.clock.t = t
    return r.dev.poll()


def pattern(n, seed):
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


# --- lifecycle: every (state, command) pair against the spec's table ------------------------------------------
SPEC_NEXT = {           # VIRTIO 1.2 5.14.6.6.1, restated independently of pcm.ALLOWED
    "INITIAL": {"SET_PARAMS"},
    "SET_PARAMS": {"SET_PARAMS", "PREPARE"},
    "PREPARE": {"SET_PARAMS", "PREPARE", "START", "RELEASE"},
    "START": {"STOP"},
    "STOP": {"START", "RELEASE"},
    "RELEASE": {"SET_PARAMS", "PREPARE"},
}
CMD = {"SET_PARAMS": snd.R_PCM_SET_PARAMS, "PREPARE": snd.R_PCM_PREPARE, "START": snd.R_PCM_START,
       "STOP": snd.R_PCM_STOP, "RELEASE": snd.R_PCM_RELEASE}
PATH = {"INITIAL": [], "SET_PARAMS": ["SET_PARAMS"], "PREPARE": ["SET_PARAMS", "PREPARE"],
        "START": ["SET_PARAMS", "PREPARE", "START"], "STOP": ["SET_PARAMS", "PREPARE", "START", "STOP"],
        "RELEASE": ["SET_PARAMS", "PREPARE", "RELEASE"]}


def command(r, name, sid=0):
    if name == "SET_PARAMS":
        return r.set_params(sid)
    return r.pcm(CMD[name], sid)


@pytest.mark.parametrize("cmd", list(CMD))
@pytest.mark.parametrize("state", list(SPEC_NEXT))
def test_lifecycle_table(state, cmd):
    r = out_rig()
    for step in PATH[state]:
        assert command(r, step) == OK
    s = r.dev.streams[0]
    assert s.state == state
    allowed = cmd in SPEC_NEXT[state]
    assert command(r, cmd) == (OK if allowed else BAD)
    assert s.state == (cmd if allowed else state)
    # the backend is open exactly from PREPARE to RELEASE / new parameters
    assert r.backend.is_open == (s.state in ("PREPARE", "START", "STOP"))
    r.check()


def test_lifecycle_round_trips_reopen_the_backend():
    r = out_rig()
    for _ in range(3):
        for name in ("SET_PARAMS", "PREPARE", "START", "STOP", "START", "STOP", "RELEASE"):
            assert command(r, name) == OK, name
    assert len(r.backend.opens) == 3 and r.backend.closes == 3
    assert r.backend.opens[0] == (snd.D_OUTPUT, snd.FMT_S16, 2, 48000)
    # RELEASE -> PREPARE keeps the parameters; PREPARE -> PREPARE keeps the backend open
    assert command(r, "PREPARE") == OK and command(r, "PREPARE") == OK
    assert len(r.backend.opens) == 4
    # new parameters close it; the next PREPARE opens it with them
    assert r.set_params(channels=1, rate=snd.RATE_12000) == OK and not r.backend.is_open
    assert command(r, "PREPARE") == OK and r.backend.opens[-1] == (snd.D_OUTPUT, snd.FMT_S16, 1, 12000)
    r.check()


def test_streams_are_independent():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend())
    t.add_stream(snd.D_INPUT, MemBackend())
    r = Rig(t)
    assert r.set_params(0) == OK and r.pcm(snd.R_PCM_PREPARE, 0) == OK
    assert r.pcm(snd.R_PCM_START, 1) == BAD
    assert r.set_params(1) == OK and r.pcm(snd.R_PCM_PREPARE, 1) == OK and r.pcm(snd.R_PCM_START, 1) == OK
    assert [s.state for s in r.dev.streams] == ["PREPARE", "START"]
    assert r.pcm(snd.R_PCM_START, 2) == BAD and r.set_params(2) == BAD
    r.check()


# --- SET_PARAMS -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, status", [
    ({}, OK),
    ({"features": (1 << snd.PCM_F_MSG_POLLING) | (1 << snd.PCM_F_EVT_XRUNS)}, OK),
    ({"padding": 1}, BAD),
    ({"features": 1 << 5}, BAD),
    ({"features": 1 << 31}, BAD),
    ({"features": (1 << snd.PCM_F_SHMEM_HOST) | (1 << snd.PCM_F_SHMEM_GUEST)}, BAD),
    ({"features": 1 << snd.PCM_F_SHMEM_HOST}, NOTSUPP),
    ({"features": 1 << snd.PCM_F_SHMEM_GUEST}, NOTSUPP),
    ({"features": 1 << snd.PCM_F_EVT_SHMEM_PERIODS}, NOTSUPP),
    ({"fmt": 25}, BAD),
    ({"fmt": 255}, BAD),
    ({"rate": 16}, BAD),
    ({"channels": 0}, BAD),
    ({"buffer_bytes": 4096, "period_bytes": 1000}, BAD),
    ({"period_bytes": 0}, BAD),
    ({"buffer_bytes": 0}, BAD),
    ({"buffer_bytes": 3078, "period_bytes": 1026}, BAD),        # not whole 4-byte frames
    ({"fmt": snd.FMT_S32}, NOTSUPP),                              # not offered by this stream
    ({"fmt": snd.FMT_IMA_ADPCM}, NOTSUPP),
    ({"rate": snd.RATE_8000}, NOTSUPP),
    ({"channels": 3}, NOTSUPP),
    ({"buffer_bytes": 2 * pcm.MAX_BUFFER_BYTES, "period_bytes": 1 << 20}, NOTSUPP),
    ({"buffer_bytes": pcm.MAX_BUFFER_BYTES, "period_bytes": 1 << 20}, OK),
])
def test_set_params_validation(kw, status):
    r = out_rig(formats="s16+u8", rates=[44100, 48000, 12000])
    assert r.set_params(**kw) == status
    s = r.dev.streams[0]
    assert s.state == ("SET_PARAMS" if status == OK else "INITIAL")
    if status != OK:
        assert r.pcm(snd.R_PCM_PREPARE) == BAD                    # still no parameters
    r.check()


def test_set_params_short_request_and_unknown_stream():
    r = out_rig()
    req = snd.PCM_SET_PARAMS.pack(snd.R_PCM_SET_PARAMS, 0, 4096, 1024, 0, 2, snd.FMT_S16, snd.RATE_48000, 0)
    assert r.status(req[:23]) == BAD
    assert r.status(req[:4] + struct.pack("<I", 1) + req[8:]) == BAD
    assert r.status(req + b"extra") == OK                       # a longer request is read as far as needed
    r.check()


@pytest.mark.parametrize("fmt, channels, rate, hz, frame, bps", [
    (snd.FMT_S16, 2, snd.RATE_48000, 48000, 4, 192000.0),
    (snd.FMT_S24_3, 6, snd.RATE_12000, 12000, 18, 216000.0),
    (snd.FMT_IMA_ADPCM, 1, snd.RATE_11025, 11025, 1, 5512.5),       # half-byte frames: byte unit, exact rate
    (snd.FMT_IMA_ADPCM, 2, snd.RATE_5512, 5512, 1, 5512.0),
    (snd.FMT_FLOAT64, 18, snd.RATE_384000, 384000, 144, 55296000.0),
])
def test_params_derive_hz_frame_and_rate_once(fmt, channels, rate, hz, frame, bps):
    p = pcm.Params(4096, 1024, 0, channels, fmt, rate)
    assert (p.hz, p.frame, p.bps) == (hz, frame, bps)
    assert f"x{channels} @ {hz} Hz" in repr(p)


def test_set_params_drops_prefilled_messages():
    r = out_rig()
    assert r.set_params() == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    heads = [tx(r, bytes(1024)) for _ in range(2)]
    assert done(r) == []
    assert r.set_params(period_bytes=512) == OK
    assert [(h, n, s) for h, n, s, _ in done(r)] == [(heads[0], 8, IOERR), (heads[1], 8, IOERR)]
    r.check()


# --- playback pacing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate, fmt, channels, frames", [
    (snd.RATE_8000, snd.FMT_S16, 1, 80),
    (snd.RATE_44100, snd.FMT_S16, 2, 441),
    (snd.RATE_384000, snd.FMT_S32, 2, 3840),
    (snd.RATE_12000, snd.FMT_U8, 1, 120),
    (snd.RATE_24000, snd.FMT_FLOAT, 2, 240),
    (snd.RATE_48000, snd.FMT_S24_3, 6, 100),
])
def test_playback_completes_exactly_on_time(rate, fmt, channels, frames):
    r = out_rig(channels=(1, 6))
    hz = formats.RATES[rate]
    frame = formats.frame_bytes(fmt, channels)
    bps = frame * hz
    period = frames * frame
    assert r.set_params(buffer_bytes=4 * period, period_bytes=period, channels=channels, fmt=fmt, rate=rate) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    sent = [pattern(period, k) for k in range(200)]
    heads = {tx(r, sent[k]): k for k in range(4)}          # pre-filled before START
    t0 = r.clock.t
    assert r.pcm(snd.R_PCM_START) == OK
    assert r.backend.writes[0] == (t0, sent[0])             # the first period is handed over at START
    nxt = 4
    for k in range(1, 201):
        due = t0 + (k * period) / bps
        assert r.dev.poll(due - 1e-7) == due
        assert done(r) == []
        r.clock.t = due
        r.dev.poll()
        got = done(r)
        assert [(heads[h], n, s) for h, n, s, _ in got] == [(k - 1, 8, OK)]
        if nxt < 200:
            heads[tx(r, sent[nxt])] = nxt                   # the driver refills at once
            nxt += 1
    # every period was handed to the backend when the one before it had finished playing
    assert [t for t, _ in r.backend.writes] == [t0 + (k * period) / bps for k in range(200)]
    assert r.backend.played == b"".join(sent)
    s = r.dev.streams[0]
    assert s.bytes_played == 200 * period and s.completed == 200 and s.xruns == 1    # ran dry at the end
    r.check()


def test_late_polls_do_not_shift_the_timeline():
    """Completions are computed from totals: a poll that comes late completes everything due and
    the next completion is still at t0 + bytes / rate (no accumulated sleeps, no drift)."""
    r = out_rig()
    period, bps = 441 * 4, 44100 * 4
    assert r.set_params(buffer_bytes=64 * period, period_bytes=period, rate=snd.RATE_44100) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    for _ in range(60):
        tx(r, bytes(period))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.clock.t = t0 + 10.5 * period / bps
    assert r.dev.poll() == t0 + (11 * period) / bps
    assert len(done(r)) == 10
    r.clock.t = t0 + 0.5                            # very late: 50 periods due
    assert r.dev.poll() == t0 + (51 * period) / bps
    assert len(done(r)) == 40
    assert [t for t, _ in r.backend.writes][-1] == t0 + (50 * period) / bps
    r.check()


def test_latency_bytes():
    r = out_rig()
    p, bps = 1024, 192000
    assert r.set_params(buffer_bytes=8 * p, period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    for _ in range(4):
        tx(r, bytes(p))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.clock.t = t0 + p / bps
    r.dev.poll()
    tx(r, bytes(p // 2))                 # a short message (end of stream)
    r.clock.t = t0 + 4 * p / bps
    r.dev.poll()
    # queued behind each message when it finished: 3p, then (2p + p/2 after the short one came), ...
    assert [lat for _, _, _, lat in done(r)] == [3 * p, 2 * p + p // 2, p + p // 2, p // 2]
    r.clock.t = t0 + 4.5 * p / bps
    r.dev.poll()
    assert [lat for _, _, _, lat in done(r)] == [0]
    r.check()


def test_stop_pauses_mid_message_and_start_resumes():
    r = out_rig()
    p, bps = 1024, 192000
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    h0, h1 = tx(r, pattern(p, 0)), tx(r, pattern(p, 1))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.clock.t = t0 + 0.25 * p / bps
    assert r.pcm(snd.R_PCM_STOP) == OK
    r.clock.t = t0 + 100.0
    assert r.dev.poll() is None and done(r) == []      # stopped: nothing is due
    t1 = r.clock.t
    assert r.pcm(snd.R_PCM_START) == OK
    first = t1 + 0.75 * p / bps
    assert r.dev.poll() == pytest.approx(first, abs=1e-9)
    at(r, first - 1e-7)
    assert done(r) == []
    at(r, first + 1e-7)
    assert [h for h, *_ in done(r)] == [h0]
    at(r, first + p / bps + 1e-7)
    assert [h for h, *_ in done(r)] == [h1]
    # message 0 went to the backend once, at the first START; message 1 when message 0 ended
    assert [t for t, _ in r.backend.writes] == [t0, first + 1e-7]
    assert r.backend.played == pattern(p, 0) + pattern(p, 1)
    r.check()


def test_start_on_an_empty_queue_waits_for_data():
    r = out_rig()
    p, bps = 1024, 192000
    r.add_event_buffers(4)
    assert r.set_params(period_bytes=p, features=1 << snd.PCM_F_EVT_XRUNS) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    assert r.dev.poll(t0 + 1.0) is None
    r.clock.t = t0 + 1.0
    h = tx(r, bytes(p))                                 # starts when it arrives
    assert r.backend.writes == [(t0 + 1.0, bytes(p))]
    assert r.dev.poll() == t0 + 1.0 + p / bps
    assert r.dev.streams[0].xruns == 0 and r.events() == []
    r.dev.poll(t0 + 1.0 + p / bps)
    assert [x[0] for x in done(r)] == [h]
    r.check()


@pytest.mark.parametrize("xruns_negotiated", [True, False])
def test_underrun_counts_signals_and_reanchors(xruns_negotiated):
    r = out_rig()
    p, bps = 1024, 192000
    r.add_event_buffers(4)
    feats = (1 << snd.PCM_F_EVT_XRUNS) if xruns_negotiated else 0
    assert r.set_params(period_bytes=p, features=feats) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    tx(r, bytes(p))
    tx(r, bytes(p))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.clock.t = t0 + 2 * p / bps
    assert r.dev.poll() is None                      # both done; nothing left
    assert len(done(r)) == 2
    s = r.dev.streams[0]
    assert s.xruns == 1
    assert r.events() == ([ev(snd.EVT_PCM_XRUN, 0)] if xruns_negotiated else [])
    r.dev.poll(t0 + 1.0)
    assert s.xruns == 1 and r.events() == []         # once per episode
    ta = t0 + 1.0
    r.clock.t = ta
    tx(r, bytes(p))
    tx(r, bytes(p))
    assert r.dev.poll() == ta + p / bps              # a new timeline from the arrival
    r.dev.poll(ta + 2 * p / bps)
    assert len(done(r)) == 2 and s.xruns == 2
    assert len(r.events()) == (1 if xruns_negotiated else 0)
    r.check()


def test_two_streams_share_txq_with_their_own_clocks():
    clock = FakeClock()
    t = Topology()
    b0, b1 = MemBackend(clock), MemBackend(clock)
    t.add_stream(snd.D_OUTPUT, b0)
    t.add_stream(snd.D_OUTPUT, b1, fn=1)
    r = Rig(t, clock=clock)
    assert r.set_params(0, buffer_bytes=4 * 1920, period_bytes=480 * 4) == OK                        # 10 ms at 48 kHz
    assert r.set_params(1, buffer_bytes=640, period_bytes=80 * 2, channels=1, rate=snd.RATE_8000) == OK   # 10 ms at 8 kHz
    for sid in (0, 1):
        assert r.pcm(snd.R_PCM_PREPARE, sid) == OK
    heads = [(tx(r, bytes(1920), 0), 0) if k % 2 == 0 else (tx(r, bytes(160), 1), 1) for k in range(6)]
    t0 = clock.t
    r.pcm(snd.R_PCM_START, 0)
    clock.t = t0 + 0.005
    r.pcm(snd.R_PCM_START, 1)
    got = []
    for k in range(1, 4):
        r.dev.poll(t0 + 0.01 * k)
        got += [(h, "a") for h, *_ in done(r)]
        r.dev.poll(t0 + 0.005 + 0.01 * k)
        got += [(h, "b") for h, *_ in done(r)]
    owner = dict(heads)
    assert [owner[h] for h, _ in got] == [0, 1, 0, 1, 0, 1]
    r.check()


# --- capture ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate, channels", [(snd.RATE_48000, 2), (snd.RATE_384000, 1), (snd.RATE_24000, 2)])
def test_capture_pacing_and_content(rate, channels):
    r = in_rig()
    hz = formats.RATES[rate]
    bps = 2 * channels * hz
    p = 2 * channels * hz // 100                        # 10 ms
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p, channels=channels, rate=rate) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    for _ in range(4):
        rx(r, p)
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    expect = b""
    for k in range(1, 51):
        due = t0 + (k * p) / bps
        r.dev.poll(due - 1e-7)
        assert done(r, 3) == []
        r.clock.t = due
        r.dev.poll()
        (h, n, status, lat), = done(r, 3)
        assert (n, status, lat) == (p + 8, OK, 0)
        data = r.drv.queues[3].written(h)[:p]
        assert data == bytes((i & 0xFF) for i in range((k - 1) * p, k * p))
        expect += data
        rx(r, p)
    assert [t for t, _ in r.backend.reads] == [t0 + (k * p) / bps for k in range(1, 51)]
    assert r.dev.streams[0].bytes_captured == 50 * p and r.dev.streams[0].xruns == 0
    r.check()


def test_capture_overrun_drops_the_missed_frames():
    r = in_rig()
    p, bps = 1920, 192000
    r.add_event_buffers(4)
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p, features=1 << snd.PCM_F_EVT_XRUNS) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    rx(r, p)
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + p / bps)
    assert len(done(r, 3)) == 1
    assert r.events() == [ev(snd.EVT_PCM_XRUN, 0)]
    ta = t0 + p / bps + 0.01                        # the driver is 10 ms late
    r.clock.t = ta
    h = rx(r, p)
    s = r.dev.streams[0]
    assert s.bytes_lost == 1920 and s.xruns == 1
    r.dev.poll(ta + p / bps)
    (hh, n, status, _), = done(r, 3)
    assert (hh, n, status) == (h, p + 8, OK)
    first = r.drv.queues[3].written(h)[0]
    assert first == (p + 1920) & 0xFF                # the source moved on in real time
    r.check()


def _dry_capture(backend, channels, fmt, rate, frame, buffer_periods=4):
    """An input stream on `backend` that ran dry: one 64-frame period captured, then nothing queued."""
    clock = FakeClock()
    t = Topology()
    t.add_stream(snd.D_INPUT, backend, channels=(1, 18), formats=1 << fmt, rates=1 << rate)
    r = Rig(t, clock=clock)
    p = frame * 64
    assert r.set_params(buffer_bytes=buffer_periods * p, period_bytes=p, channels=channels, fmt=fmt,
                        rate=rate) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    rx(r, p)
    t0 = clock.t
    r.pcm(snd.R_PCM_START)
    at(r, t0 + 1)
    assert len(done(r, 3)) == 1 and r.dev.streams[0].xruns == 1
    return r, p


def test_capture_after_a_long_overrun_stays_small_in_memory():
    """The fuzz campaign's case: 18 x FLOAT64 at 384 kHz from tone:, dry for seconds, then one rx
    buffer. The second of lost input (55 MB) was read and thrown away, and remapped with a copy:
    ~108 MiB in one notify. Now it is skipped without being built."""
    tone = ToneSource(440)
    frame = 18 * 8
    r, p = _dry_capture(tone, 18, snd.FMT_FLOAT64, snd.RATE_384000, frame)
    r.clock.t += 3
    tracemalloc.start()
    try:
        h = rx(r, p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    s = r.dev.streams[0]
    assert s.bytes_lost == 384000 * frame                       # one second, MAX_LOST_SECONDS
    assert peak < 256 << 10, f"{peak} bytes allocated in one notify"
    r.dev.poll(r.clock.t + p / s.params.bps)
    (hh, n, status, _), = done(r, 3)
    assert (hh, n, status) == (h, p + 8, OK)
    start = 64 + 384000                                        # the source moved on by the lost second
    mono = formats.from_float(snd.FMT_FLOAT64, tone.samples(start, 64))
    assert r.drv.queues[3].written(h)[:p] == b"".join(mono[8 * i:8 * i + 8] * 18 for i in range(64))
    r.check()


def test_lost_input_and_long_messages_are_read_in_chunks():
    """A backend without skip() is read CAPTURE_CHUNK at a time, for lost input and for a message
    longer than a chunk; the data stays contiguous."""
    b = MemBackend()
    r, p = _dry_capture(b, 2, snd.FMT_S16, snd.RATE_48000, 4, buffer_periods=1024)
    r.clock.t += 2
    n = 3 * pcm.CAPTURE_CHUNK + 4 * 10                           # a message of 3 chunks and a bit
    assert n <= 1024 * p
    del b.reads[:]
    at_before = b.produced
    h = rx(r, n)
    lost = r.dev.streams[0].bytes_lost
    assert lost == 48000 * 4 and b.produced - at_before == lost
    assert all(k <= pcm.CAPTURE_CHUNK for _, k in b.reads)
    del b.reads[:]
    r.dev.poll(r.clock.t + n / 192000)
    (hh, used, status, _), = done(r, 3)
    assert (hh, used, status) == (h, n + 8, OK)
    assert [k for _, k in b.reads] == [pcm.CAPTURE_CHUNK] * 3 + [40]
    assert r.drv.queues[3].written(h)[:n] == bytes((at_before + lost + i) & 0xFF for i in range(n))
    r.check()


# --- RELEASE -------------------------------------------------------------------------------------------------
def _record_order(r):
    order = []
    orig_complete = r.dev.complete

    def complete(index, chain, used):
        order.append((index, chain.head))
        orig_complete(index, chain, used)

    r.dev.complete = complete
    cq = r.dev.queues[0]
    orig_push = cq.push

    def push(chain, used):
        order.append((0, chain.head))
        orig_push(chain, used)

    cq.push = push
    return order


def test_release_completes_pending_output_before_answering():
    r = out_rig()
    p, bps = 1024, 192000
    assert r.set_params(period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    heads = [tx(r, bytes(p)) for _ in range(3)]
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + p / bps)
    assert [x[:3] for x in done(r)] == [(heads[0], 8, OK)]
    r.clock.t = t0 + 1.5 * p / bps
    assert r.pcm(snd.R_PCM_STOP) == OK
    late = tx(r, bytes(p), notify=False)             # still in the ring: pending too
    order = _record_order(r)
    assert r.pcm(snd.R_PCM_RELEASE) == OK
    assert [x[:3] for x in done(r)] == [(heads[1], 8, IOERR), (heads[2], 8, IOERR), (late, 8, IOERR)]
    assert [q for q, _ in order] == [2, 2, 2, 0]     # every I/O message before the control answer
    assert r.backend.closes == 1 and not r.backend.is_open
    assert r.dev.streams[0].state == "RELEASE"
    r.check()


def test_release_returns_captured_input():
    r = in_rig()
    p, bps = 1920, 192000
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    heads = [rx(r, p) for _ in range(3)]
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + p / bps)
    assert [x[:3] for x in done(r, 3)] == [(heads[0], p + 8, OK)]
    r.clock.t = t0 + 1.25 * p / bps                 # a quarter of message 1 captured
    r.pcm(snd.R_PCM_STOP)
    assert r.pcm(snd.R_PCM_RELEASE) == OK
    got = done(r, 3)
    assert [x[:3] for x in got] == [(heads[1], p // 4 + 8, OK), (heads[2], 8, IOERR)]
    assert r.drv.queues[3].written(heads[1])[:p // 4] == bytes(i & 0xFF for i in range(p, p + p // 4))
    r.check()


def test_release_from_prepare_returns_prefill():
    r = out_rig()
    assert r.set_params() == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    h = tx(r, bytes(1024))
    assert r.pcm(snd.R_PCM_RELEASE) == OK
    assert [x[:3] for x in done(r)] == [(h, 8, IOERR)]
    assert r.backend.writes == []
    r.check()


# --- MSG_POLLING ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("event_idx", [False, True])
def test_msg_polling(event_idx):
    want = ALL_FEATURES if event_idx else ALL_FEATURES & ~(1 << virtio.F_EVENT_IDX)
    r = out_rig(want=want)
    p, bps = 1024, 192000
    txq = r.drv.queues[2]
    assert r.set_params(period_bytes=p, features=1 << snd.PCM_F_MSG_POLLING) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    if not event_idx:
        assert txq.used_flags() & virtio.USED_F_NO_NOTIFY            # the driver need not notify
    h0, h1 = tx(r, bytes(p), notify=False), tx(r, bytes(p), notify=False)
    assert r.dev.streams[0].pending == type(r.dev.streams[0].pending)()
    nxt = r.dev.poll()                                         # the device polls the ring itself
    assert len(r.dev.streams[0].pending) == 2
    assert nxt == pytest.approx(r.clock.t + (p / bps) / 4)      # a quarter period
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    h2 = tx(r, bytes(p), notify=False)
    r.dev.poll(t0 + p / bps)
    assert [x[0] for x in done(r)] == [h0]
    assert len(r.dev.streams[0].pending) == 2
    r.dev.poll(t0 + 3 * p / bps)
    assert [x[0] for x in done(r)] == [h1, h2]
    r.pcm(snd.R_PCM_STOP)
    r.pcm(snd.R_PCM_RELEASE)
    if not event_idx:
        assert not txq.used_flags() & virtio.USED_F_NO_NOTIFY       # notifications wanted again
    assert r.dev.poll() is None
    r.check()


# --- malformed I/O messages ----------------------------------------------------------------------------------
def _io_rig():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend())
    t.add_stream(snd.D_INPUT, MemBackend())
    t.add_stream(snd.D_OUTPUT, MemBackend())          # stays without parameters
    r = Rig(t)
    for sid in (0, 1):
        assert r.set_params(sid, buffer_bytes=4096, period_bytes=1024) == OK and r.pcm(snd.R_PCM_PREPARE, sid) == OK
    return r


@pytest.mark.parametrize("q, bufs, used", [
    (2, [(XF(7), False), (bytes(1024), False), (8, True)], 8),             # no such stream
    (2, [(XF(1), False), (bytes(1024), False), (8, True)], 8),             # an input stream on txq
    (2, [(XF(2), False), (bytes(1024), False), (8, True)], 8),             # stream without parameters
    (2, [(XF(0), False), (bytes(1023), False), (8, True)], 8),             # not whole frames
    (2, [(XF(0), False), (8, True)], 8),                                   # no data
    (2, [(XF(0), False), (bytes(4100), False), (8, True)], 8),             # more than buffer_bytes
    (2, [(XF(0), False), (bytes(1024), False), (16, True)], 8),            # writable data on txq
    (2, [(b"\0\0", False), (8, True)], 8),                                 # header short
    (2, [(8, True)], 8),                                                   # no header at all
    (2, [(XF(0), False), (bytes(1024), False)], 0),                        # no status: used 0
    (2, [(XF(0), False), (bytes(1024), False), (7, True)], 0),             # status short: used 0
    (3, [(XF(0), False), (1024, True), (8, True)], 8),                     # an output stream on rxq
    (3, [(XF(1), False), (b"data", False), (1024, True), (8, True)], 8),   # readable data on rxq
    (3, [(XF(1), False), (1022, True), (8, True)], 8),                     # not whole frames
    (3, [(XF(1) + b"\0", False), (1024, True), (8, True)], 8),             # header too long
])
def test_bad_io_messages_get_io_err(q, bufs, used):
    r = _io_rig()
    dq = r.drv.queues[q]
    h = dq.add(bufs)
    r.drv.notify(q)
    got = dq.used()
    assert got == [(h, used)]
    if used:
        w = dq.written(h)
        assert u32(w, len(w) - 8) == IOERR
    assert r.dev.bad_requests == 1
    assert all(not s.pending for s in r.dev.streams)
    # the device goes on: a good message on the same stream is taken
    h2 = tx(r, bytes(1024)) if q == 2 else rx(r, 1024, 1)
    assert dq.used() == [] and len(r.dev.streams[0 if q == 2 else 1].pending) == 1 and h2 is not None
    r.check()


def test_io_in_unprepared_states_gets_io_err():
    r = out_rig()
    for step in ([], ["SET_PARAMS"], ["PREPARE", "RELEASE"]):
        for name in step:
            assert command(r, name) == OK
        h = tx(r, bytes(1024))
        assert [x[:3] for x in done(r)] == [(h, 8, IOERR)]
    r.check()


def test_io_messages_split_any_way():
    r = out_rig()
    p = 1024
    assert r.set_params(period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    txq = r.drv.queues[2]
    data = pattern(p, 3)
    h0 = txq.add([(XF(0) + data[:10], False), (data[10:], False), (4, True), (4, True)])
    h1 = txq.add([(XF(0)[:1], False), (XF(0)[1:] + data, False), (8, True)], indirect=True)
    r.drv.notify(2)
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + 2 * p / 192000)
    assert [(h, n, s) for h, n, s, _ in done(r)] == [(h0, 8, OK), (h1, 8, OK)]
    assert r.backend.played == data + data
    r.check()


# --- backends that fail --------------------------------------------------------------------------------------
def test_backend_open_failure_is_io_err():
    clock = FakeClock()
    t = Topology()
    b = MemBackend(clock, fail_open=True)
    t.add_stream(snd.D_OUTPUT, b)
    r = Rig(t, clock=clock)
    assert r.set_params() == OK
    assert r.pcm(snd.R_PCM_PREPARE) == IOERR
    assert r.dev.streams[0].state == "SET_PARAMS" and r.pcm(snd.R_PCM_START) == BAD
    b.fail_open = False
    assert r.pcm(snd.R_PCM_PREPARE) == OK and r.pcm(snd.R_PCM_START) == OK
    r.check()


def test_backend_write_failure_fails_that_message():
    r = out_rig()
    p, bps = 1024, 192000
    assert r.set_params(period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    r.backend.fail_write = True
    h0 = tx(r, bytes(p))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.backend.fail_write = False
    h1 = tx(r, bytes(p))
    r.dev.poll(t0 + 2 * p / bps)
    assert [(h, s) for h, _, s, _ in done(r)] == [(h0, IOERR), (h1, OK)]
    assert r.dev.streams[0].io_errors == 1
    r.check()


def test_backend_short_reads_are_padded_with_silence():
    r = in_rig()
    r.backend.read = lambda n: b"\x11" * (n // 2)
    assert r.set_params(period_bytes=16, buffer_bytes=64, fmt=snd.FMT_U8, channels=1) == OK
    r.dev.streams[0].cfg.formats |= 1 << snd.FMT_U8
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    h = rx(r, 16)
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + 16 / 48000)
    assert done(r, 3)[0][:3] == (h, 24, OK)
    assert r.drv.queues[3].written(h)[:16] == b"\x11" * 8 + b"\x80" * 8
    assert r.dev.streams[0].short_reads == 1
    r.check()


# --- reset ------------------------------------------------------------------------------------------------------
def test_reset_mid_stream_then_play_again():
    r = out_rig()
    p, bps = 1024, 192000
    assert r.set_params(period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    for _ in range(3):
        tx(r, bytes(p))
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t0 + p / bps)
    r.drv.w32(virtio.MMIO_STATUS, 0)                       # reset with two messages in flight
    s = r.dev.streams[0]
    assert s.state == "INITIAL" and not s.pending and r.backend.closes == 1 and not r.backend.is_open
    assert r.dev.poll() is None
    r.drv.init(r.want)
    assert r.set_params(period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    h = tx(r, pattern(p, 9))
    t1 = r.clock.t
    r.pcm(snd.R_PCM_START)
    r.dev.poll(t1 + p / bps)
    assert [x[:3] for x in done(r)] == [(h, 8, OK)]
    assert r.backend.writes[-1] == (t1, pattern(p, 9))
    r.check()


def test_queue_reset_drops_held_messages():
    want = ALL_FEATURES | (1 << virtio.F_RING_RESET)
    r = out_rig(want=want)
    assert r.set_params() == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    tx(r, bytes(1024))
    r.drv.w32(virtio.MMIO_QUEUE_SEL, 2)
    r.drv.w32(virtio.MMIO_QUEUE_RESET, 1)
    assert not r.dev.streams[0].pending
    r.drv.setup_queue(2)
    h = tx(r, bytes(1024))
    assert len(r.dev.streams[0].pending) == 1 and h is not None
    r.check()


# --- the pacing thread, in real time ---------------------------------------------------------------------------
def test_thread_paces_in_real_time():
    t = Topology()
    b = MemBackend(time.monotonic)
    t.add_stream(snd.D_OUTPUT, b)
    dev = VirtioSound(t)                              # real clock: a pacing thread at DRIVER_OK
    mem = BytearrayMemory(4 << 20)
    drv = MmioDriver(VirtioMmio(dev, mem, RecordingIrq()), mem)
    drv.init(ALL_FEATURES)
    try:
        assert dev._thread is not None and dev._thread.daemon
        cq, txq = drv.queues[0], drv.queues[2]

        def ctl(req):
            h = cq.add([(req, False), (4, True)])
            drv.notify(0)
            (hh, _), = cq.used()
            return u32(cq.written(h))

        p = 480 * 4                                  # 10 ms at 48 kHz stereo S16
        assert ctl(snd.PCM_SET_PARAMS.pack(snd.R_PCM_SET_PARAMS, 0, 8 * p, p, 0, 2, snd.FMT_S16, snd.RATE_48000, 0)) == OK
        assert ctl(snd.PCM_HDR.pack(snd.R_PCM_PREPARE, 0)) == OK
        heads = [txq.add([(XF(0), False), (bytes(p), False), (8, True)]) for _ in range(5)]
        drv.notify(2)
        t0 = time.monotonic()
        assert ctl(snd.PCM_HDR.pack(snd.R_PCM_START, 0)) == OK
        got, times = [], []
        while len(got) < 5 and time.monotonic() - t0 < 5:
            with dev.lock:
                new = txq.used()
            got += [h for h, _ in new]
            times += [time.monotonic() - t0] * len(new)
            time.sleep(0.001)
        assert got == heads
        assert times[0] >= 0.0099 and times[-1] >= 0.0499    # never early
        assert times[-1] < 2.0
        assert len(b.writes) == 5
    finally:
        dev.close()
    assert dev._thread is None and not b.is_open


# --- a hostile driver on the data queues ----------------------------------------------------------------------------
def _fuzz_rig():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend(), channels=(1, 4))
    t.add_stream(snd.D_INPUT, MemBackend())
    r = Rig(t)
    for sid in (0, 1):
        r.set_params(sid, buffer_bytes=1024, period_bytes=256)
        r.pcm(snd.R_PCM_PREPARE, sid)
        r.pcm(snd.R_PCM_START, sid)
    return r


FUZZ = _fuzz_rig()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.sampled_from([2, 3]), sid=st.integers(0, 3), layout=st.lists(
    st.tuples(st.integers(0, 1100), st.booleans()), min_size=0, max_size=4), head=st.integers(0, 8),
    dt=st.floats(0, 0.01))
def test_random_io_messages_never_break_the_device(q, sid, layout, head, dt):
    r = FUZZ
    bufs = [(struct.pack("<I", sid)[:head] if head < 4 else struct.pack("<I", sid) + bytes(head - 4), False)]
    readable_done = False
    for n, w in layout:
        if w:
            readable_done = True
        bufs.append((n if w else bytes(n), w or readable_done))
    dq = r.drv.queues[q]
    if len(dq.free) < 8:
        r.clock.t += 1.0
        r.dev.poll()
        dq.used()
    dq.add(bufs)
    r.drv.notify(q)
    r.clock.t += dt
    r.dev.poll()
    dq.used()
    r.check()


# --- with the real backends (backends.py) ----------------------------------------------------------------
from nvmmpy.devices.virtio.sound import backends          # noqa: E402
from nvmmpy.devices.virtio.sound.wav import WavReader, WavWriter   # noqa: E402


def _play(r, sid, chunks, period, bps):
    t0 = r.clock.t
    for c in chunks[:2]:
        tx(r, c, sid)
    r.pcm(snd.R_PCM_START, sid)
    for k, c in enumerate(chunks[2:], start=1):
        at(r, t0 + (k * period) / bps)
        tx(r, c, sid)
    at(r, t0 + (len(chunks) * period) / bps)
    assert len(done(r)) == len(chunks)


def test_default_device_is_one_output_on_null():
    dev = VirtioSound(clock=FakeClock())
    assert len(dev.streams) == 1 and dev.streams[0].direction == snd.D_OUTPUT
    assert isinstance(dev.streams[0].backend, backends.NullBackend)
    assert dev.topology.ctls and dev.device_features == 1 << snd.F_CTLS
    assert "stream 0: output" in dev.describe()


def test_wav_sink_records_the_guest_samples_exactly(tmp_path):
    path = tmp_path / "play.wav"
    clock = FakeClock()
    r = Rig(Topology.parse(f"out=wav:{path},channels=1-6"), clock=clock)
    p, bps = 240 * 6 * 3, 48000 * 6 * 3                  # S24_3, 6 channels, 5 ms periods
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p, channels=6, fmt=snd.FMT_S24_3) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    chunks = [pattern(p, k) for k in range(8)]
    _play(r, 0, chunks, p, bps)
    r.pcm(snd.R_PCM_STOP)
    assert r.pcm(snd.R_PCM_RELEASE) == OK
    with WavReader(path) as w:
        assert (w.channels, w.rate, w.frames) == (6, 48000, 8 * 240)
        assert w.channel_mask == 0x3F                     # the 5.1 channel map of the group (FL FR FC LFE RL RR)
        assert formats.from_wav(snd.FMT_S24_3, w.read(w.frames)) == b"".join(chunks)
    r.check()


def test_tone_source_capture(tmp_path):
    r = Rig(Topology.parse("in=tone:1000,channels=1"))
    p, bps = 2 * 480, 2 * 48000
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p, channels=1) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    heads = [rx(r, p) for _ in range(3)]
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    at(r, t0 + 3 * p / bps)
    got = done(r, 3)
    assert [(h, n, s) for h, n, s, _ in got] == [(h, p + 8, OK) for h in heads]
    data = b"".join(r.drv.queues[3].written(h)[:p] for h in heads)
    ref = backends.ToneSource(1000)
    ref.open(snd.D_INPUT, snd.FMT_S16, 1, 48000)
    assert data == ref.read(3 * p)
    r.check()


def test_wav_source_offers_its_rate_only(tmp_path):
    path = tmp_path / "in.wav"
    w = WavWriter(path, 2, 44100, formats.wav_spec(snd.FMT_S16))
    w.write(pattern(4 * 441 * 3, 1))
    w.close()
    t = Topology.parse(f"in=wav:{path}")
    assert t.streams[0].rates == 1 << snd.RATE_44100
    with pytest.raises(ValueError, match="supports 44100 Hz"):
        Topology().add_stream(snd.D_INPUT, backends.WavSource(path), rates=[48000])
    with pytest.raises(ValueError, match="cannot be used for output"):
        Topology().add_stream(snd.D_OUTPUT, backends.WavSource(path))
    r = Rig(t)
    p, bps = 4 * 441, 4 * 44100
    assert r.set_params(rate=snd.RATE_48000) == NOTSUPP
    assert r.set_params(buffer_bytes=4 * p, period_bytes=p, rate=snd.RATE_44100) == OK
    assert r.pcm(snd.R_PCM_PREPARE) == OK
    heads = [rx(r, p) for _ in range(3)]
    t0 = r.clock.t
    r.pcm(snd.R_PCM_START)
    at(r, t0 + 3 * p / bps)
    assert len(done(r, 3)) == 3
    assert b"".join(r.drv.queues[3].written(h)[:p] for h in heads) == pattern(4 * 441 * 3, 1)
    r.check()


@pytest.mark.parametrize("spec, words", [
    ("out=tone:440", "tone is an input"),
    ("in=wav:/nonexistent/x.wav", "/nonexistent/x.wav"),
    ("out=bogus", "unknown audio backend"),
])
def test_parse_backend_errors(spec, words):
    with pytest.raises(ValueError) as e:
        Topology.parse(spec)
    assert words in str(e.value) and str(e.value).startswith("virtio-snd topology")


def test_parse_keeps_commas_inside_backend_specs(tmp_path):
    t = Topology.parse(f"in=tone:440,0.25,channels=1,out=wav:{tmp_path}/a,b.wav,fn,in")
    assert [s.backend.name for s in t.streams] == ["tone:440,0.25", f"wav:{tmp_path}/a,b.wav", "null"]
    assert t.streams[0].backend.amplitude == 0.25 and t.streams[0].channels_max == 1
    assert t.streams[2].hda_fn_nid == 1 and t.streams[2].direction == snd.D_INPUT


def test_jack_follows_backend_at_once():
    t = Topology()
    b = backends.NullBackend()
    t.add_stream(snd.D_OUTPUT, b)
    t.add_jack("line-out", stream=0)
    r = Rig(t)
    r.add_event_buffers(2)
    b.set_connected(False)                 # no poll needed: on_jack_change
    assert r.events() == [ev(snd.EVT_JACK_DISCONNECTED, 0)]
    b.set_connected(True)
    assert r.events() == [ev(snd.EVT_JACK_CONNECTED, 0)]
    r.check()


def test_packed_ring_playback_capture_and_release():
    clock = FakeClock()
    t = Topology()
    bo, bi = MemBackend(clock), MemBackend(clock)
    t.add_stream(snd.D_OUTPUT, bo)
    t.add_stream(snd.D_INPUT, bi)
    r = Rig(t, want=ALL_FEATURES | (1 << virtio.F_RING_PACKED), clock=clock)
    p, bps = 1024, 192000
    for sid in (0, 1):
        assert r.set_params(sid, period_bytes=p) == OK and r.pcm(snd.R_PCM_PREPARE, sid) == OK
    outs = [tx(r, pattern(p, k)) for k in range(3)]
    ins = [rx(r, p, 1) for _ in range(3)]
    t0 = clock.t
    r.pcm(snd.R_PCM_START, 0)
    r.pcm(snd.R_PCM_START, 1)
    at(r, t0 + 2 * p / bps)
    assert [(h, s) for h, _, s, _ in done(r)] == [(outs[0], OK), (outs[1], OK)]
    assert [(h, n) for h, n, _, _ in done(r, 3)] == [(ins[0], p + 8), (ins[1], p + 8)]
    for sid in (0, 1):
        r.pcm(snd.R_PCM_STOP, sid)
        assert r.pcm(snd.R_PCM_RELEASE, sid) == OK
    assert [(h, s) for h, _, s, _ in done(r)] == [(outs[2], IOERR)]
    assert [(h, s) for h, _, s, _ in done(r, 3)] == [(ins[2], IOERR)]     # stopped before it: empty
    assert bo.played == pattern(p, 0) + pattern(p, 1) + pattern(p, 2)
    r.check()
