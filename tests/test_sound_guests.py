"""The bundled virtio-sound guests (guests/virtio-sound-{play,record}.c) through `nvmmpy run --sound`
on kvm and on unicorn: what the guest plays reaches the WAV bit for bit (the test regenerates the
guest's signal), what a WAV source holds reaches the guest bit for bit (CRC-32, the first bytes and
a virtio-blk disk it writes them to), plus the command and I/O statuses, latency_bytes, the
catalogue's default topology and the CLI's errors for bad --sound specs.

The device paces completions in real time, so a run lasts at least its audio: the cases are
0.02-0.1 s of audio. kvm here may emulate CPL0 guest code at about 1 us an instruction, which a
guest generating samples can fall behind (harmless for playback: an underrun only delays the rest);
the recording guest does nothing but re-queue buffers while it captures, and the tests give it
8 periods of slack, so a capture has no overrun (which would skip frames, as a live source does)."""
import os
import random
import re
import struct
import zlib

import pytest

from harness import need, run_nvmmpy
from nvmmpy.vmm.guests import GUESTS, guest_path

from nvmmpy.devices.virtio.sound import formats
from nvmmpy.devices.virtio.sound.backends import INPUT, ToneSource, WavSource
from nvmmpy.devices.virtio.sound.wav import WavReader, WavWriter

DRIVERS = ["kvm", "unicorn"]
STATUSES = "sound: SET_PARAMS OK, PREPARE OK, START OK, STOP OK, RELEASE OK\n"


def fmt_value(name: str) -> int:
    return formats.FORMAT_BY_NAME[name.upper()].value


# --- the guest's signal, regenerated ------------------------------------------------------------------
def signal(fmt: int, channels: int, rate: int, frames: int, freq: int = 440) -> bytes:
    """What guests/virtio-sound-play.c sends (see its header): a sawtooth per channel."""
    f = formats.FORMATS[fmt]
    phase = [(c << 28) & 0xFFFFFFFF for c in range(channels)]
    step = [(((freq * (c + 2) // 2) << 32) // rate) & 0xFFFFFFFF for c in range(channels)]
    width = f.phys // 8
    out = bytearray()
    for _ in range(frames):
        for c in range(channels):
            ph = phase[c]
            x = (ph - (1 << 32) if ph & 0x80000000 else ph) >> 1
            phase[c] = (ph + step[c]) & 0xFFFFFFFF
            if f.kind == formats.KIND_INT:
                v = x >> (32 - f.bits)
                if not f.signed:
                    v = (v + (1 << (f.bits - 1))) & ((1 << f.bits) - 1)
                out += (v & ((1 << f.phys) - 1)).to_bytes(width, "little")
            elif fmt == formats.FLOAT:
                out += struct.pack("<f", (x & ~0xFF) / 2 ** 31)
            elif fmt == formats.FLOAT64:
                out += struct.pack("<d", x / 2 ** 31)
            elif fmt == formats.MU_LAW:
                out.append(formats.mulaw_encode(x >> 16))
            else:
                out.append(formats.alaw_encode(x >> 16))
    return bytes(out)


def wav_samples(path, fmt: int):
    """(channels, rate, the WAV's samples in guest format fmt) via WavReader and formats.from_wav."""
    with WavReader(path) as r:
        assert r.spec == formats.wav_spec(fmt), r.spec
        return r.channels, r.rate, formats.from_wav(fmt, r.read(r.frames))


def latency(out: str):
    m = re.search(r"latency_bytes first (\d+) min (\d+) max (\d+) last (\d+)\n", out)
    assert m, out
    return tuple(map(int, m.groups()))


def play(driver, tmp_path, rate, fmt, channels, frames, period, periods=4, irq=1, sound=None, extra=""):
    need(driver)
    wav = tmp_path / "play.wav"
    sound = sound or f"out=wav:{wav},channels=1-{max(2, channels)}"
    proc = run_nvmmpy("run", "virtio-sound-play", "--accel", driver, "--sound", sound, "--cmdline",
                  f"rate={rate} format={fmt} channels={channels} frames={frames} period={period} "
                  f"periods={periods} irq={irq} {extra}")
    return proc, wav


def check_played(proc, wav, rate, fmt, channels, frames, period, periods=4):
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    v = fmt_value(fmt)
    name = formats.FORMATS[v].name
    frame = formats.frame_bytes(v, channels)
    nbuf = -(-frames // period)
    assert STATUSES in out
    assert f"sound: play stream 0: {name} x{channels} at {rate} Hz, {frames} frames, period {period} frames " \
           f"({period * frame} bytes), {periods} periods\n" in out
    assert f"sound: {nbuf} buffers OK, 0 IO_ERR, 0 other;" in out
    assert f"sound: played {frames} frames ({frames * frame} bytes) of {name} x{channels} at {rate} Hz\n" in out
    # latency_bytes: the bytes queued behind a buffer when it finished playing (device/pcm.py);
    # the first buffer had the other pre-filled ones behind it, the last one nothing
    sizes = [min(period, frames - k * period) * frame for k in range(nbuf)]
    first, lo, hi, last = latency(out)
    assert first == sum(sizes[1:periods]) and last == 0 and lo == 0
    assert hi <= (periods - 1) * period * frame
    ch, wav_rate, data = wav_samples(wav, v)
    assert (ch, wav_rate) == (channels, rate)
    expect = signal(v, channels, rate, frames)
    assert len(data) == len(expect)
    assert data == expect, f"first difference at byte {next(i for i in range(len(expect)) if data[i] != expect[i])}"


def test_catalogue_entries():
    for name in ("virtio-sound-play", "virtio-sound-record"):
        g = GUESTS[name]
        assert g.devices == ("sound",) and g.mode == "cpl0" and g.expect_exit == 0
        assert "irq=1" in g.default_cmdline and g.expect_output
        assert os.path.isfile(guest_path(name))


def test_signal_model_matches_the_formats_module():
    """The model's integer encodings agree with formats.py's own conversions where they overlap."""
    s32 = signal(formats.S32, 2, 48000, 50)
    for fmt in (formats.S16, formats.S24_3, formats.S8, formats.FLOAT64):
        want = formats.from_float(fmt, formats.to_float(formats.S32, s32)) if fmt != formats.FLOAT64 else None
        got = signal(fmt, 2, 48000, 50)
        if fmt == formats.FLOAT64:
            assert list(formats.to_float(fmt, got)) == list(formats.to_float(formats.S32, s32))
        else:   # truncation (>>) vs rounding: equal where the dropped bits are zero, else 1 LSB apart
            a, b = formats.to_float(fmt, got), formats.to_float(fmt, want)
            lsb = 2.0 ** (1 - formats.FORMATS[fmt].bits)
            assert all(0 <= y - x <= lsb for x, y in zip(a, b))
    assert signal(formats.U8, 1, 8000, 4) == bytes((v >> 24) + 128 & 0xFF for v in struct.unpack("<4i", signal(formats.S32, 1, 8000, 4)))


# --- playback ------------------------------------------------------------------------------------
PLAY = [  # rate, format, channels, frames, period (frames), irq
    pytest.param(8000, "u8", 1, 800, 80, 1, id="8000-u8-mono"),
    pytest.param(44100, "s16", 2, 4410, 441, 0, id="44100-s16-stereo-poll"),
    pytest.param(48000, "s24_3", 6, 2400, 480, 1, id="48000-s24_3-6ch"),
    pytest.param(192000, "s32", 2, 9600, 1920, 1, id="192000-s32-stereo"),
    pytest.param(384000, "float", 2, 7680, 3840, 0, id="384000-float-stereo-poll"),
]


@pytest.mark.parametrize("rate,fmt,channels,frames,period,irq", PLAY)
@pytest.mark.parametrize("driver", DRIVERS)
def test_play_reaches_the_wav_bit_for_bit(tmp_path, driver, rate, fmt, channels, frames, period, irq):
    proc, wav = play(driver, tmp_path, rate, fmt, channels, frames, period, irq=irq)
    check_played(proc, wav, rate, fmt, channels, frames, period)
    if irq:
        assert re.search(r"virtio: sound: \d+ interrupts on irq 5\n", proc.stdout)
    else:
        assert ", polling\n" in proc.stdout and "interrupts on irq" not in proc.stdout


EVERY_FORMAT = [  # the formats PLAY leaves out, at the rates it leaves out, on both drivers in turn
    ("s8", 5512), ("u16", 11025), ("s18_3", 12000), ("u18_3", 16000), ("s20_3", 22050), ("u20_3", 24000),
    ("u24_3", 32000), ("s20", 64000), ("u20", 88200), ("s24", 96000), ("u24", 176400), ("u32", 8000),
    ("float64", 48000), ("mu_law", 8000), ("a_law", 8000),
]


@pytest.mark.parametrize("i", range(len(EVERY_FORMAT)), ids=[f"{f}-{r}" for f, r in EVERY_FORMAT])
def test_play_every_other_format(tmp_path, i):
    fmt, rate = EVERY_FORMAT[i]
    driver = DRIVERS[i % 2]
    frames = rate // 50                                     # 20 ms in 2 periods and a bit
    period = rate // 100 - 1
    proc, wav = play(driver, tmp_path, rate, fmt, 2, frames, period, periods=2, irq=i % 3 != 0)
    check_played(proc, wav, rate, fmt, 2, frames, period, periods=2)


@pytest.mark.parametrize("driver", DRIVERS)
def test_play_on_a_later_stream_with_jacks_and_xrun_events(tmp_path, driver):
    """stream=1 of a two-group topology; JACK_INFO shows the jack; xruns=1 negotiates EVT_XRUNS and the
    stream's end (its last buffer done, none behind it) is an underrun the guest hears of."""
    need(driver)
    wav = tmp_path / "second.wav"
    sound = f"out=null,jack=speaker,fn,out=wav:{wav},channels=6,formats=s16+s32,rates=48000,jack=headphone"
    proc, _ = play(driver, tmp_path, 48000, "s32", 6, 960, 480, periods=2, sound=sound, extra="stream=1 xruns=1")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "sound: 2 jacks, 2 streams, 3 chmaps\n" in out
    assert "sound: stream 1: output, fn 1, channels 6-6, formats 0x20020, rates 0x80, features 0x14\n" in out
    assert re.search(r"sound: jack 1: fn 1, defconf 0x\w+, caps 0x1c, features 0x0, connected\n", out), out
    assert "sound: chmap 2: output, fn 1, positions 3 4 7 8 5 6\n" in out          # FL FR FC LFE RL RR
    assert "sound: play stream 1: S32 x6 at 48000 Hz" in out
    m = re.search(r"sound: events: (\d+) xrun, 0 jack, 0 ctl, 0 other\n", out)
    assert m and int(m.group(1)) >= 1, out
    assert wav_samples(wav, formats.S32)[2] == signal(formats.S32, 6, 48000, 960)


@pytest.mark.parametrize("driver", DRIVERS)
def test_play_refused_parameters_are_reported(tmp_path, driver):
    """A rate the stream does not offer: SET_PARAMS NOT_SUPP, exit 1, and no WAV (opened at PREPARE)."""
    need(driver)
    wav = tmp_path / "never.wav"
    proc, _ = play(driver, tmp_path, 44100, "s16", 2, 441, 441, sound=f"out=wav:{wav},rates=48000")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sound: SET_PARAMS NOT_SUPP\n" in proc.stdout
    assert "sound: FAILED: the stream could not be set up\n" in proc.stdout
    assert not wav.exists()


def test_play_without_a_sound_device_says_so():
    proc = run_nvmmpy("run", guest_path("virtio-sound-play"), "--accel", "unicorn")   # a file: no catalogue devices
    assert proc.returncode == 1
    assert "virtio: no sound device (DeviceID 25) among the 0 virtio-mmio devices" in proc.stdout
    assert "(nvmmpy run --sound SPEC adds one)" in proc.stdout


def test_catalogue_default_topology(tmp_path):
    """Without --sound a catalogue guest gets DEFAULT_SOUND (said on stderr): playback lands in
    ./nvmmpy-sound.wav, capture comes from a 440 Hz tone."""
    proc = run_nvmmpy("run", "virtio-sound-play", "--accel", "unicorn", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for s in GUESTS["virtio-sound-play"].expect_output:
        assert s in proc.stdout
    assert "virtio-sound: no --sound given; using out=wav:nvmmpy-sound.wav,in=tone:440" in proc.stderr
    assert wav_samples(tmp_path / "nvmmpy-sound.wav", formats.S16) == (2, 48000, signal(formats.S16, 2, 48000, 4800))

    proc = run_nvmmpy("run", "virtio-sound-record", "--accel", "unicorn", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for s in GUESTS["virtio-sound-record"].expect_output:
        assert s in proc.stdout
    tone = ToneSource(440)                       # what the guest got: the backend's own samples
    tone.open(INPUT, formats.S16, 2, 48000)
    assert f"crc32 0x{zlib.crc32(tone.read(19200)):08x}\n" in proc.stdout


# --- recording -----------------------------------------------------------------------------------
def make_wav(path, fmt: int, channels: int, rate: int, frames: int, seed: int = 1, spec=None) -> bytes:
    """A WAV of random samples in the container of `fmt` (or `spec`); returns them in guest format."""
    rnd = random.Random(seed)
    spec = spec or formats.wav_spec(fmt)
    raw = rnd.randbytes(frames * channels * spec.sample_bytes)
    if spec == formats.wav_spec(fmt):
        guest = formats.from_wav(fmt, raw)                 # canonical padding bits
        raw = formats.to_wav(fmt, guest)[1]
    else:
        guest = None
    with WavWriter(path, channels, rate, spec) as w:
        w.write(raw)
    return guest


def record(driver, tmp_path, sound, rate, fmt, channels, frames, period, periods=8, irq=1, extra=""):
    need(driver)
    return run_nvmmpy("run", "virtio-sound-record", "--accel", driver, "--sound", sound, "--cmdline",
                  f"rate={rate} format={fmt} channels={channels} frames={frames} period={period} "
                  f"periods={periods} irq={irq} xruns=1 {extra}", *(("--virtio-blk", str(tmp_path / "disk.img"))
                                                                    if "disk=" in extra else ()))


def check_recorded(proc, expect: bytes, rate, fmt, channels, frames, period):
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    name = formats.FORMATS[fmt_value(fmt)].name
    nbuf = -(-frames // period)
    assert STATUSES in out
    assert f"sound: {nbuf} buffers OK, 0 IO_ERR, 0 other\n" in out
    # one underrun: the stream's end (more would mean the guest fell behind and frames were skipped)
    assert "sound: events: 1 xrun, 0 jack, 0 ctl, 0 other\n" in out, out
    assert f"sound: recorded {frames} frames ({len(expect)} bytes) of {name} x{channels} at {rate} Hz, " \
           f"crc32 0x{zlib.crc32(expect):08x}\n" in out
    assert f"sound: first 16 bytes: {expect[:16].hex(' ')}\n" in out


RECORD = [  # rate, format, channels, frames, period, irq
    pytest.param(48000, "s16", 2, 4800, 480, 1, id="48000-s16-stereo"),
    pytest.param(8000, "u8", 1, 800, 80, 0, id="8000-u8-mono-poll"),
    pytest.param(44100, "float", 6, 2205, 441, 1, id="44100-float-6ch"),
    pytest.param(384000, "s24_3", 1, 7680, 1920, 1, id="384000-s24_3-mono"),
]


@pytest.mark.parametrize("rate,fmt,channels,frames,period,irq", RECORD)
@pytest.mark.parametrize("driver", DRIVERS)
def test_record_returns_the_wav_bit_for_bit(tmp_path, driver, rate, fmt, channels, frames, period, irq):
    src = tmp_path / "voice.wav"
    expect = make_wav(src, fmt_value(fmt), channels, rate, frames)
    proc = record(driver, tmp_path, f"in=wav:{src},channels=1-6", rate, fmt, channels, frames, period, irq=irq)
    check_recorded(proc, expect, rate, fmt, channels, frames, period)


@pytest.mark.parametrize("driver", DRIVERS)
def test_record_to_a_disk(tmp_path, driver):
    """disk=1: the whole recording lands on the virtio-blk disk from sector 0, zero-padded."""
    rate, fmt, channels, frames, period = 32000, "s32", 2, 3200, 320
    src, img = tmp_path / "voice.wav", tmp_path / "disk.img"
    img.write_bytes(b"\xee" * (64 << 10))
    expect = make_wav(src, formats.S32, channels, rate, frames, seed=7)
    proc = record(driver, tmp_path, f"out=null,in=wav:{src}", rate, fmt, channels, frames, period, irq=1,
                  extra="disk=1")
    check_recorded(proc, expect, rate, fmt, channels, frames, period)
    assert "sound: record stream 1: S32 x2 at 32000 Hz" in proc.stdout
    sectors = -(-len(expect) // 512)
    assert f"sound: wrote {len(expect)} bytes to disk 1 ({sectors} sectors from 0), flushed\n" in proc.stdout
    data = img.read_bytes()
    assert data[:len(expect)] == expect
    assert data[len(expect):sectors * 512] == bytes(sectors * 512 - len(expect))
    assert data[sectors * 512:] == b"\xee" * (len(data) - sectors * 512)


def test_record_converts_another_wav_format_like_the_backend(tmp_path):
    """A 16-bit WAV into a FLOAT stream: what WavSource makes of it, exactly (the guest's CRC)."""
    src = tmp_path / "voice16.wav"
    make_wav(src, formats.S16, 2, 22050, 1102, seed=3)
    w = WavSource(src)
    w.open(INPUT, formats.FLOAT, 2, 22050)
    expect = w.read(1102 * 8)
    w.close()
    proc = record("unicorn", tmp_path, f"in=wav:{src}", 22050, "float", 2, 1102, 220)
    check_recorded(proc, expect, 22050, "float", 2, 1102, 220)


def test_record_refuses_a_rate_the_wav_does_not_have(tmp_path):
    src = tmp_path / "voice.wav"
    make_wav(src, formats.S16, 1, 16000, 160)
    proc = record("unicorn", tmp_path, f"in=wav:{src}", 48000, "s16", 1, 480, 480)
    assert proc.returncode == 1
    assert "sound: stream 0: input, fn 0, channels 1-2, formats 0x1ffffe, rates 0x8, features 0x14\n" in proc.stdout
    assert "sound: SET_PARAMS NOT_SUPP\n" in proc.stdout


def test_record_without_an_input_stream_says_so():
    proc = run_nvmmpy("run", "virtio-sound-record", "--accel", "unicorn", "--sound", "out=null")
    assert proc.returncode == 1
    assert "sound: FAILED: the device has no input stream (nvmmpy run --sound in=wav:FILE)\n" in proc.stdout


# --- the CLI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,words", [
    ("bogus=1", "unknown key 'bogus'"),
    ("out=nope:x", "unknown audio backend 'nope:x'"),
    ("out=tone:440", "tone is an input (capture) source"),
    ("in=wav:/no/such/voice.wav", "/no/such/voice.wav"),
    ("out=null,channels=0", "channels"),
    ("out=null,rates=44101", "44101 Hz is not a virtio-sound rate"),
    ("out=null,formats=s17", "unknown PCM format 's17'"),
    ("channels=2", "put an out= or in= first"),
    ("out=null,jack=trumpet", "unknown jack kind 'trumpet'"),
    ("out=wav:", "give a file name"),
])
def test_bad_sound_specs_are_one_line_usage_errors(spec, words):
    proc = run_nvmmpy("run", "virtio-sound-play", "--accel", "unicorn", "--sound", spec)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nvmmpy: Invalid value for --sound: {spec.split(',')[-1]!r}: "), lines[0]
    assert words in lines[0], lines[0]


def test_sound_option_is_in_the_help():
    proc = run_nvmmpy("run", "--help")
    assert proc.returncode == 0
    assert "--sound, --virtio-sound SPEC" in proc.stdout
