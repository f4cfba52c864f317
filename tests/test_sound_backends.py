"""WAV files (devices/virtio/sound/wav.py) and host audio backends (backends.py)."""
import math
import os
import struct
import subprocess
import sys
import tracemalloc
import types
import wave

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvmmpy.devices.virtio.sound import backends
from nvmmpy.devices.virtio.sound import constants as snd
from nvmmpy.devices.virtio.sound import formats
from nvmmpy.devices.virtio.sound.wav import WavError, WavReader, WavWriter, channel_mask

CONVERTIBLE = sorted(formats.CONVERTIBLE)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canonical(fmt, data):
    return formats.from_wav(fmt, formats.to_wav(fmt, data)[1])


def chunks(path):
    """[(id, size, offset of body)] of a RIFF file, walked independently of WavReader."""
    raw = open(path, "rb").read()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    assert struct.unpack("<I", raw[4:8])[0] == len(raw) - 8, "RIFF size must match the file"
    out, pos = [], 12
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        out.append((cid, size, pos + 8))
        pos += 8 + size + (size & 1)
    assert pos == len(raw), "chunks must tile the file exactly"
    return raw, out


def write_wav(path, fmt, channels, rate, data, **kw):
    spec, wav = formats.to_wav(fmt, data)
    with WavWriter(path, channels, rate, spec, **kw) as w:
        w.write(wav)
    return spec, wav


# --------------------------------------------------------------------------- WAV writer/reader

@pytest.mark.parametrize("fmt", CONVERTIBLE, ids=lambda v: formats.FORMATS[v].name)
@pytest.mark.parametrize("channels", [1, 2, 3, 6, 18])
def test_wav_round_trip_every_format(tmp_path, fmt, channels):
    data = os.urandom(formats.frame_bytes(fmt, channels) * 37)
    p = tmp_path / "x.wav"
    spec, wav = write_wav(p, fmt, channels, 44100, data)
    with WavReader(p) as r:
        assert (r.channels, r.rate, r.spec, r.frames) == (channels, 44100, spec, 37)
        assert r.read(10) + r.read(100) == wav
        assert r.read(5) == b""
        assert formats.from_wav(fmt, wav) == canonical(fmt, data)
    raw, cks = chunks(p)
    fmt_ck = next(c for c in cks if c[0] == b"fmt ")
    tag = struct.unpack("<H", raw[fmt_ck[2]:fmt_ck[2] + 2])[0]
    ext = channels > 2 or spec.valid_bits != spec.bits or spec.bits > 16
    assert tag == (formats.WAVE_FORMAT_EXTENSIBLE if ext else spec.tag)
    assert fmt_ck[1] == (40 if ext else 16 if spec.tag == formats.WAVE_FORMAT_PCM else 18)
    assert (b"fact" in [c[0] for c in cks]) == (spec.tag != formats.WAVE_FORMAT_PCM)


@pytest.mark.parametrize("fmt,channels,extensible", [
    (formats.U8, 1, None), (formats.U8, 2, None), (formats.S16, 1, None), (formats.S16, 2, None),
    (formats.S24_3, 2, False), (formats.S32, 2, False), (formats.S16, 5, False), (formats.S8, 2, None)])
def test_python_wave_reads_pcm(tmp_path, fmt, channels, extensible):
    data = canonical(fmt, os.urandom(formats.frame_bytes(fmt, channels) * 101))
    p = tmp_path / "w.wav"
    spec, wav = write_wav(p, fmt, channels, 22050, data, extensible=extensible)
    with wave.open(str(p), "rb") as w:
        assert w.getnchannels() == channels and w.getframerate() == 22050
        assert w.getsampwidth() == spec.bits // 8 and w.getnframes() == 101
        assert w.readframes(1000) == wav
    # and what the stdlib wrote, we read
    q = tmp_path / "stdlib.wav"
    with wave.open(str(q), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(spec.bits // 8)
        w.setframerate(8000)
        w.writeframes(wav)
    with WavReader(q) as r:
        assert (r.channels, r.rate, r.spec, r.read(1000)) == (channels, 8000, spec, wav)


def test_python_wave_reads_extensible_where_it_can(tmp_path):
    p = tmp_path / "ext.wav"
    data = canonical(formats.S24, os.urandom(4 * 2 * 50))
    _spec, wav = write_wav(p, formats.S24, 2, 48000, data)
    if sys.version_info < (3, 12):
        with pytest.raises(wave.Error):  # 3.11's wave knows only WAVE_FORMAT_PCM
            wave.open(str(p), "rb")
        return
    with wave.open(str(p), "rb") as w:
        assert w.getsampwidth() == 4 and w.readframes(100) == wav


def test_extensible_header_fields(tmp_path):
    p = tmp_path / "51.wav"
    chmap = [snd.CHMAP_FL, snd.CHMAP_FR, snd.CHMAP_FC, snd.CHMAP_LFE, snd.CHMAP_RL, snd.CHMAP_RR]
    spec = formats.wav_spec(formats.S20_3)
    with WavWriter(p, 6, 96000, spec, channel_map=chmap) as w:
        w.write(bytes(18 * 4))
    raw, cks = chunks(p)
    off = next(c for c in cks if c[0] == b"fmt ")[2]
    tag, ch, rate, avg, align, bits, cb, valid, mask = struct.unpack("<HHIIHHHHI",
                                                                     raw[off:off + 24])
    assert (tag, ch, rate, avg, align, bits, cb, valid, mask) == (
        0xFFFE, 6, 96000, 96000 * 18, 18, 24, 22, 20, 0x3F)
    assert raw[off + 24:off + 40] == bytes.fromhex("0100000000001000800000aa00389b71")
    with WavReader(p) as r:
        assert r.channel_mask == 0x3F and r.extensible and r.spec == spec
    with pytest.raises(ValueError, match="positions"):
        WavWriter(tmp_path / "bad.wav", 2, 48000, spec, channel_map=[snd.CHMAP_FL])
    with pytest.raises(ValueError, match="EXTENSIBLE"):
        WavWriter(tmp_path / "bad.wav", 2, 48000, spec, extensible=False)


def test_channel_mask():
    assert channel_mask([snd.CHMAP_MONO]) == 0x4
    assert channel_mask([snd.CHMAP_FL, snd.CHMAP_FR]) == 0x3
    assert channel_mask([snd.CHMAP_FR, snd.CHMAP_FL]) == 0          # WAVE needs increasing order
    assert channel_mask([snd.CHMAP_FL, snd.CHMAP_NA]) == 0          # no speaker for NA
    assert channel_mask([snd.CHMAP_FL, snd.CHMAP_FR, snd.CHMAP_SL, snd.CHMAP_SR]) == 0x603
    assert channel_mask([snd.CHMAP_FL, snd.CHMAP_FL]) == 0


def test_header_valid_after_every_write_without_close(tmp_path):
    """A writer never closed (a crash): the file is a complete WAV after each write."""
    p = tmp_path / "crash.wav"
    w = WavWriter(p, 1, 8000, formats.wav_spec(formats.U8))
    total = b""
    for piece in (b"\x01\x02\x03", b"\x04", b"", b"\x05\x06"):   # odd sizes: pad byte dance
        w.write(piece)
        total += piece
        w.flush()
        _raw, cks = chunks(p)   # RIFF size == file size - 8, chunks tile the file
        data_ck = next(c for c in cks if c[0] == b"data")
        assert data_ck[1] == len(total)
        with wave.open(str(p), "rb") as wv:
            assert wv.readframes(100) == total
        with WavReader(p) as r:
            assert r.read(100) == total
    w.close()
    w.close()  # idempotent


def test_header_valid_after_killed_process(tmp_path):
    """Write in a child that dies by os._exit (no atexit, no close): still a valid WAV."""
    p = tmp_path / "killed.wav"
    code = (
        "import os\n"
        "from nvmmpy.devices.virtio.sound import formats\n"
        "from nvmmpy.devices.virtio.sound.wav import WavWriter\n"
        f"w = WavWriter({str(p)!r}, 2, 48000, formats.wav_spec(formats.S16))\n"
        "for i in range(10):\n"
        "    w.write(bytes([i]) * 400)\n"
        "os._exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert r.returncode == 3, r.stderr.decode()
    with wave.open(str(p), "rb") as wv:
        assert wv.getnframes() == 1000
        assert wv.readframes(1000) == b"".join(bytes([i]) * 400 for i in range(10))


def test_atexit_closes_writers(tmp_path):
    p = tmp_path / "atexit.wav"
    code = (
        "from nvmmpy.devices.virtio.sound import formats\n"
        "from nvmmpy.devices.virtio.sound.wav import WavWriter, _live_writers\n"
        f"w = WavWriter({str(p)!r}, 1, 8000, formats.wav_spec(formats.FLOAT))\n"
        "w.write(b'\\0' * 40)\n"
        "import builtins; builtins.keep = w\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    with WavReader(p) as r:
        assert r.frames == 10 and r.spec == formats.wav_spec(formats.FLOAT)


def test_writer_refuses_partial_frames_and_caps_size(tmp_path):
    w = WavWriter(tmp_path / "cap.wav", 2, 8000, formats.wav_spec(formats.S16))
    with pytest.raises(ValueError, match="whole number"):
        w.write(b"\0" * 6)
    assert w.max_data_bytes % 4 == 0 and w.max_data_bytes > 0xFFFF0000
    w.max_data_bytes = 8                      # pretend we are at the 4 GiB limit
    assert w.write(b"\1" * 12) == 8 and w.dropped_bytes == 4
    assert w.write(b"\1" * 4) == 0 and w.dropped_bytes == 8
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(b"\0" * 4)
    with WavReader(tmp_path / "cap.wav") as r:
        assert r.frames == 2


def test_writer_overwrites(tmp_path):
    p = tmp_path / "o.wav"
    write_wav(p, formats.S16, 1, 8000, b"\1\0" * 100)
    write_wav(p, formats.S16, 1, 8000, b"\2\0" * 3)
    with WavReader(p) as r:
        assert r.read(1000) == b"\2\0" * 3
    assert os.path.getsize(p) == 44 + 6


def riff(*chunks_, form=b"WAVE", head=b"RIFF", riff_size=None):
    body = form + b"".join(cid + struct.pack("<I", len(b) if sz is None else sz) + b
                           + (b"\0" if len(b) & 1 else b"") for cid, b, sz in chunks_)
    return head + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def fmt_pcm(ch=2, rate=8000, bits=16, tag=1):
    align = ch * ((bits + 7) // 8)
    return (b"fmt ", struct.pack("<HHIIHH", tag, ch, rate, rate * align, align, bits), None)


def test_reader_skips_unknown_chunks_and_pads(tmp_path):
    p = tmp_path / "chunks.wav"
    data = bytes(range(12))
    p.write_bytes(riff((b"JUNK", b"abc", None), fmt_pcm(),
                       (b"LIST", b"INFOISFT\x05\0\0\0odd!\0", None), (b"data", data, None),
                       (b"LIST", b"x" * 7, None)))
    with WavReader(p) as r:
        assert (r.channels, r.rate, r.frames) == (2, 8000, 3)
        assert r.read(10) == data
    # data before fmt is found too
    q = tmp_path / "late_fmt.wav"
    q.write_bytes(riff((b"data", data, None), fmt_pcm(ch=1)))
    with WavReader(q) as r:
        assert r.channels == 1 and r.read(100) == data


def test_reader_never_trusts_sizes_beyond_file(tmp_path):
    p = tmp_path / "trunc.wav"
    p.write_bytes(riff(fmt_pcm(), (b"data", bytes(range(14)), 0x7FFFFFF0),
                       riff_size=0xFFFFFFF0))
    with WavReader(p) as r:
        assert r.frames == 3 and r.read(1 << 30) == bytes(range(12))  # whole frames only
    # an absurd chunk size before data: no data chunk, said clearly
    q = tmp_path / "huge.wav"
    q.write_bytes(riff(fmt_pcm(), (b"LIST", b"xx", 0xFFFFFFF0), (b"data", b"\0" * 4, None)))
    with pytest.raises(WavError, match="huge.wav: no data chunk"):
        WavReader(q)


def test_reader_old_style_odd_bit_pcm(tmp_path):
    p = tmp_path / "12bit.wav"
    p.write_bytes(riff(fmt_pcm(ch=1, bits=12), (b"data", b"\x10\x00\xf0\xff", None)))
    with WavReader(p) as r:
        assert r.spec == formats.WavSpec(formats.WAVE_FORMAT_PCM, 16, 12)
        assert list(formats.container_to_float(r.spec, r.read(2))) == [16 / 32768, -16 / 32768]


@pytest.mark.parametrize("content,message", [
    (riff(fmt_pcm(tag=2), (b"data", b"", None)), r"bad\.wav: unsupported WAV format tag 0x0002 "
                                                 r"\(MS ADPCM\)"),
    (riff(fmt_pcm(tag=0x55), (b"data", b"", None)), r"tag 0x0055 \(MPEG Layer 3\)"),
    (riff(fmt_pcm(tag=0x1234), (b"data", b"", None)), r"tag 0x1234 \(unknown\)"),
    (riff((b"fmt ", struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 16000, 2, 16, 22, 16, 4)
           + struct.pack("<H", 2) + bytes.fromhex("000000001000800000aa00389b71"), None),
          (b"data", b"", None)), r"EXTENSIBLE with sub-format tag 0x0002"),
    (riff(fmt_pcm(bits=16, tag=3), (b"data", b"", None)), r"tag 0x0003 \(IEEE_FLOAT\), 16 bits"),
    (riff(fmt_pcm(), (b"data", b"", None), head=b"RIFX"), "big-endian RIFX"),
    (riff(fmt_pcm(), (b"data", b"", None), head=b"RF64"), "RF64"),
    (riff(fmt_pcm(), form=b"AVI "), "not a WAV file"),
    (b"", "not a WAV file"),
    (riff(fmt_pcm()), "no data chunk"),
    (riff((b"data", b"", None)), "no fmt chunk"),
    (riff((b"fmt ", b"\1\0" * 4, None), (b"data", b"", None)), "too short"),
    (riff(fmt_pcm(ch=0), (b"data", b"", None)), "0 channels"),
])
def test_reader_refuses_with_one_line(tmp_path, content, message):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(WavError, match=message) as e:
        WavReader(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_reader_missing_file(tmp_path):
    with pytest.raises(WavError, match=r"^cannot read .*nope\.wav: no such file$"):
        WavReader(tmp_path / "nope.wav")
    with pytest.raises(WavError, match=r"^cannot read .*: it is a directory, not a file$"):
        WavReader(tmp_path)


def test_reader_seek_and_rewind(tmp_path):
    p = tmp_path / "s.wav"
    write_wav(p, formats.S16, 1, 8000, struct.pack("<10h", *range(10)))
    with WavReader(p) as r:
        r.seek(7)
        assert r.read(10) == struct.pack("<3h", 7, 8, 9) and r.tell() == 10
        r.rewind()
        assert r.read(1) == struct.pack("<h", 0)
        with pytest.raises(ValueError):
            r.seek(11)


# --------------------------------------------------------------------------- backend basics

def test_backend_parameter_checks():
    b = backends.NullBackend()
    with pytest.raises(backends.BackendError, match="virtio rate value: 48000 Hz"):
        b.open(backends.OUTPUT, formats.S16, 2, snd.RATE_48000)
    with pytest.raises(backends.BackendError, match="44000 Hz is not a virtio-sound rate"):
        b.open(backends.OUTPUT, formats.S16, 2, 44000)
    with pytest.raises(backends.BackendError, match="DSD_U8 is not supported"):
        b.open(backends.OUTPUT, formats.DSD_U8, 2, 48000)
    with pytest.raises(backends.BackendError, match="unknown virtio-sound format"):
        b.open(backends.OUTPUT, 99, 2, 48000)
    with pytest.raises(backends.BackendError, match="channels"):
        b.open(backends.OUTPUT, formats.S16, 0, 48000)
    with pytest.raises(backends.BackendError, match="direction"):
        b.open(2, formats.S16, 2, 48000)
    b.open(backends.OUTPUT, formats.S16, 2, 12000)
    with pytest.raises(backends.BackendError, match="already open"):
        b.open(backends.OUTPUT, formats.S16, 2, 48000)
    with pytest.raises(backends.BackendError, match="input"):
        b.read(4)
    b.write(b"\0" * 7)
    assert b.bytes_written == 7
    b.close()
    b.close()
    with pytest.raises(backends.BackendError, match="output"):
        b.write(b"\0" * 4)


def test_null_backend_gives_silence_in_guest_format():
    with backends.NullBackend() as b:
        b.open(backends.INPUT, formats.U8, 2, 8000)
        assert b.read(5) == b"\x80" * 5
        b.close()
        b.open(backends.INPUT, formats.U16, 1, 384000)
        assert b.read(6) == b"\0\x80" * 3 and not b.ended


def test_jack_state_events():
    seen = []
    b = backends.NullBackend()
    assert b.connected
    b.on_jack_change = lambda backend, state: seen.append((backend, state))
    b.set_connected(False)
    b.set_connected(False)
    b.set_connected(True)
    assert seen == [(b, False), (b, True)] and b.connected


# --------------------------------------------------------------------------- WavSink

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CONVERTIBLE), st.integers(1, 18), st.data())
def test_wav_sink_is_lossless(tmp_path_factory, fmt, channels, data):
    p = tmp_path_factory.mktemp("sink") / "play.wav"
    fb = formats.frame_bytes(fmt, channels)
    frames = data.draw(st.integers(0, 20))
    samples = canonical(fmt, data.draw(st.binary(min_size=fb * frames, max_size=fb * frames)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(samples)), max_size=5)))
    sink = backends.WavSink(p)
    sink.open(backends.OUTPUT, fmt, channels, 44100)
    prev = 0
    for c in cuts + [len(samples)]:        # arbitrary pieces, partial frames included
        sink.write(memoryview(samples)[prev:c])
        prev = c
    sink.close()
    with WavReader(p) as r:
        assert (r.channels, r.rate, r.spec) == (channels, 44100, formats.wav_spec(fmt))
        assert formats.from_wav(fmt, r.read(frames)) == samples


def test_wav_sink_reopen_with_new_parameters_goes_to_a_new_file(tmp_path):
    p = tmp_path / "out.wav"
    sink = backends.WavSink(p)
    with pytest.raises(backends.BackendError, match="cannot be used for input"):
        sink.open(backends.INPUT, formats.S16, 2, 48000)
    sink.open(backends.OUTPUT, formats.S16, 2, 48000, chmap=[snd.CHMAP_FL, snd.CHMAP_FR])
    sink.write(b"\1" * 400)
    sink.write(b"\1" * 3)                  # a partial frame: dropped at close
    sink.close()
    with WavReader(p) as r:
        assert r.frames == 100
    sink.open(backends.OUTPUT, formats.FLOAT, 1, 8000)
    sink.write(struct.pack("<f", 0.5))
    sink.close()
    sink.shutdown()
    with WavReader(p) as r:
        assert r.frames == 100                 # the first session is kept
    with WavReader(tmp_path / "out-2.wav") as r:
        assert r.frames == 1 and r.spec.tag == formats.WAVE_FORMAT_IEEE_FLOAT
    assert sink.files == [str(p), str(tmp_path / "out-2.wav")]
    # an unwritable path is found when the sink is made, not when the guest opens the stream
    with pytest.raises(backends.BackendError, match=r"^cannot write .*dir\.wav: directory .*/no/such does not exist$"):
        backends.WavSink(tmp_path / "no" / "such" / "dir.wav")
    with pytest.raises(backends.BackendError, match=r"^cannot write .*: it is a directory$"):
        backends.WavSink(tmp_path)


# --------------------------------------------------------------------------- WavSource

@pytest.mark.parametrize("fmt", CONVERTIBLE, ids=lambda v: formats.FORMATS[v].name)
def test_wav_source_passthrough_is_exact(tmp_path, fmt):
    p = tmp_path / "in.wav"
    data = canonical(fmt, os.urandom(formats.frame_bytes(fmt, 3) * 500))
    write_wav(p, fmt, 3, 32000, data)
    src = backends.WavSource(p)
    assert src.supported_rates == {32000} and formats.wav_spec(src.native_format) == formats.wav_spec(fmt)
    src.open(backends.INPUT, fmt, 3, 32000)
    got = b"".join(src.read(n) for n in (1, 17, 1000, 333, 10000, 9000))
    assert got[:len(data)] == data
    assert got[len(data):] == formats.silence(fmt, len(got) - len(data))
    assert src.ended
    src.close()


def test_wav_source_signedness_passthrough(tmp_path):
    """An S16 WAV into a U16 stream is the same container: exact, sign bit flipped."""
    p = tmp_path / "s16.wav"
    data = struct.pack("<4h", -32768, -1, 0, 32767)
    write_wav(p, formats.S16, 1, 8000, data)
    src = backends.WavSource(p)
    src.open(backends.INPUT, formats.U16, 1, 8000)
    assert src.read(8) == struct.pack("<4H", 0, 32767, 32768, 65535)


def test_wav_source_converts_via_float(tmp_path):
    p = tmp_path / "s16.wav"
    vals = [-32768, -129, -128, -127, 0, 127, 128, 32767]
    write_wav(p, formats.S16, 1, 48000, struct.pack(f"<{len(vals)}h", *vals))
    src = backends.WavSource(p)
    src.open(backends.INPUT, formats.S32, 1, 48000)       # widening is exact
    assert struct.unpack("<8i", src.read(32)) == tuple(v << 16 for v in vals)
    src.close()
    src.open(backends.INPUT, formats.S8, 1, 48000)        # narrowing rounds half to even, then clamps
    assert struct.unpack("<8b", src.read(8)) == (-128, -1, -0, -0, 0, 0, 0, 127)
    src.close()
    src.open(backends.INPUT, formats.FLOAT, 1, 48000)
    assert struct.unpack("<8f", src.read(32)) == tuple(v / 32768 for v in vals)
    src.close()
    src.open(backends.INPUT, formats.MU_LAW, 1, 48000)
    assert src.read(8) == bytes(formats.mulaw_encode(v) for v in vals)


def test_wav_source_channel_mapping(tmp_path):
    mono = tmp_path / "mono.wav"
    write_wav(mono, formats.S16, 1, 8000, struct.pack("<3h", 1, 2, 3))
    src = backends.WavSource(mono)
    src.open(backends.INPUT, formats.S16, 3, 8000)
    assert struct.unpack("<9h", src.read(18)) == (1, 1, 1, 2, 2, 2, 3, 3, 3)
    src.close()
    quad = tmp_path / "quad.wav"
    write_wav(quad, formats.U8, 4, 8000, bytes([1, 2, 3, 4, 5, 6, 7, 8]))
    src = backends.WavSource(quad)
    src.open(backends.INPUT, formats.U8, 2, 8000)          # first N
    assert src.read(4) == bytes([1, 2, 5, 6])
    src.close()
    src.open(backends.INPUT, formats.U8, 6, 8000)          # more than the file: silence in the rest
    assert src.read(12) == bytes([1, 2, 3, 4, 0x80, 0x80, 5, 6, 7, 8, 0x80, 0x80])
    src.close()
    src.open(backends.INPUT, formats.S16, 6, 8000)         # and through the float path
    assert struct.unpack("<12h", src.read(24)) == tuple(
        (x - 128) << 8 if x else 0 for x in (1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 0))


def test_wav_source_rate_mismatch_refused(tmp_path):
    p = tmp_path / "r.wav"
    write_wav(p, formats.S16, 2, 44100, b"\0" * 40)
    src = backends.WavSource(p)
    with pytest.raises(backends.BackendError, match=r"r\.wav: the WAV is 44100 Hz, the stream 48000 Hz; "
                                             r"WavSource does not resample"):
        src.open(backends.INPUT, formats.S16, 2, 48000)
    with pytest.raises(backends.BackendError, match="cannot be used for output"):
        src.open(backends.OUTPUT, formats.S16, 2, 44100)
    odd = tmp_path / "odd.wav"
    write_wav(odd, formats.S16, 1, 37800, b"\0" * 4)
    src = backends.WavSource(odd)
    assert src.supported_rates == frozenset()
    with pytest.raises(backends.BackendError, match="no virtio-sound rate"):
        src.open(backends.INPUT, formats.S16, 1, 48000)


def test_wav_source_loop_and_partial_reads(tmp_path):
    p = tmp_path / "loop.wav"
    data = struct.pack("<5h", 1, 2, 3, 4, 5)
    write_wav(p, formats.S16, 1, 8000, data)
    src = backends.WavSource(p, loop=True)
    src.open(backends.INPUT, formats.S16, 1, 8000)
    got = b"".join(src.read(n) for n in (3, 1, 7, 12, 1))   # not frame multiples
    assert got == (data * 3)[:24] and not src.ended
    src.close()
    src.open(backends.INPUT, formats.S16, 1, 8000)                       # each open starts over
    assert src.read(4) == data[:4]
    empty = tmp_path / "empty.wav"
    write_wav(empty, formats.S16, 1, 8000, b"")
    src = backends.WavSource(empty, loop=True)
    src.open(backends.INPUT, formats.S16, 1, 8000)
    assert src.read(6) == b"\0" * 6 and src.ended


def test_wav_source_bad_file(tmp_path):
    with pytest.raises(backends.BackendError, match=r"cannot read .*missing\.wav: no such file"):
        backends.WavSource(tmp_path / "missing.wav")
    p = tmp_path / "adpcm.wav"
    p.write_bytes(riff(fmt_pcm(tag=0x11), (b"data", b"", None)))
    with pytest.raises(backends.BackendError, match="0x0011"):
        backends.WavSource(p)


def test_wav_file_dispatches_on_direction(tmp_path):
    p = tmp_path / "both.wav"
    b = backends.backend_from_spec(f"wav:{p}")
    assert isinstance(b, backends.WavFile)
    b.open(backends.OUTPUT, formats.S24_3, 2, 96000)
    b.write(b"\1\2\3" * 2 * 10)
    b.close()
    b.open(backends.INPUT, formats.S24_3, 2, 96000)
    assert b.read(60) == b"\1\2\3" * 20 and not b.ended
    assert b.read(6) == b"\0" * 6 and b.ended
    b.close()


# --------------------------------------------------------------------------- ToneSource

def test_tone_is_phase_continuous_across_reads():
    t = backends.ToneSource(1000, 0.5)
    t.open(backends.INPUT, formats.S16, 2, 48000)
    whole = t.read(4 * 4800)
    t.close()
    t.open(backends.INPUT, formats.S16, 2, 48000)
    sizes = [1, 3, 4, 100, 7, 1000, 2, 6000]
    parts = []
    while sum(map(len, parts)) < len(whole):
        parts.append(t.read(sizes[len(parts) % len(sizes)]))
    assert b"".join(parts)[:len(whole)] == whole
    vals = struct.unpack(f"<{len(whole) // 2}h", whole)
    left, right = vals[0::2], vals[1::2]
    assert left == right
    assert left[:48] == tuple(round(0.5 * math.sin(2 * math.pi * 1000 * i / 48000) * 32768)
                              for i in range(48))
    assert max(left) == 16384 and min(left) == -16384
    # no jump anywhere: neighbours differ by at most the sine's steepest step
    step = 0.5 * 2 * math.pi * 1000 / 48000 * 32768
    assert max(abs(a - b) for a, b in zip(left, left[1:])) <= step + 1


@pytest.mark.parametrize("fmt", [formats.U8, formats.S24, formats.FLOAT64, formats.A_LAW, formats.U20_3])
def test_tone_in_any_format(fmt):
    t = backends.ToneSource(440, 0.25)
    t.open(backends.INPUT, fmt, 5, 24000)
    data = t.read(formats.frame_bytes(fmt, 5) * 2400)
    f = formats.to_float(fmt, data)
    assert max(f) == pytest.approx(0.25, abs=0.02) and min(f) == pytest.approx(-0.25, abs=0.02)
    assert list(f[0::5]) == list(f[4::5])


def test_tone_checks():
    with pytest.raises(backends.BackendError, match="cannot be used for output"):
        backends.ToneSource().open(backends.OUTPUT, formats.S16, 2, 48000)
    with pytest.raises(backends.BackendError, match="frequency"):
        backends.ToneSource(0)
    with pytest.raises(backends.BackendError, match="amplitude"):
        backends.ToneSource(440, 1.5)


def _skip_pair(kind, tmp_path):
    """Two backends of `kind` opened alike for input (S16, 3 channels, 8 kHz)."""
    out = []
    for _ in range(2):
        if kind == "tone":
            b = backends.ToneSource(700)
        elif kind == "null":
            b = backends.NullBackend()
        else:
            p = tmp_path / "src.wav"
            if not p.exists():
                write_wav(p, formats.S16, 3, 8000, bytes(range(256)) * 3 * 7)   # 896 frames
            b = backends.WavSource(p, loop=True) if kind == "wav" else backends.WavFile(p, loop=True)
        b.open(backends.INPUT, formats.S16, 3, 8000)
        out.append(b)
    return out


@pytest.mark.parametrize("kind", ["tone", "null", "wav", "wavfile"])
def test_skip_is_a_read_thrown_away(kind, tmp_path):
    """skip(n) leaves a source where read(n) would (partial frames and carries included)."""
    a, b = _skip_pair(kind, tmp_path)
    steps = [("r", 5), ("s", 7), ("r", 6), ("s", 6 * 1000 + 1), ("r", 13), ("s", 0), ("s", 2), ("r", 600)]
    for op, n in steps:
        ref = b.read(n)
        if op == "r":
            assert a.read(n) == ref
        else:
            a.skip(n)
    assert a.bytes_read == b.bytes_read
    with pytest.raises(ValueError):
        a.skip(-1)
    a.close()
    with pytest.raises(backends.BackendError, match="skip"):
        a.skip(6)


def test_tone_skip_builds_nothing():
    """A second of 18 x FLOAT64 at 384 kHz (55 MB) is skipped in constant memory."""
    t = backends.ToneSource(440)
    t.open(backends.INPUT, formats.FLOAT64, 18, 384000)
    tracemalloc.start()
    try:
        t.skip(384000 * 18 * 8 + 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, peak
    assert t.frame == 384001


# --------------------------------------------------------------------------- PortAudio

def test_portaudio_unavailable_without_sounddevice(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(backends.BackendUnavailable, match="pip install sounddevice") as e:
        backends.PortAudioBackend()
    assert "\n" not in str(e.value)
    with pytest.raises(backends.BackendUnavailable):
        backends.backend_from_spec("host")


class FakeStream:
    def __init__(self, log, kind, **kw):
        self.log, self.kind, self.kw = log, kind, kw
        self.latency = 0.02
        log.append(("open", kind, kw))

    def start(self):
        self.log.append(("start",))

    def write(self, data):
        self.log.append(("write", bytes(data)))

    def read(self, frames):
        width = {"int16": 2, "float32": 4, "uint8": 1, "int24": 3, "int32": 4}[self.kw["dtype"]]
        return bytes(range(frames * self.kw["channels"] * width)), False

    def stop(self):
        self.log.append(("stop",))

    def close(self):
        self.log.append(("close",))


def fake_sounddevice(devices=("dev",)):
    log = []
    m = types.ModuleType("sounddevice")
    m.log = log

    def query_devices(device=None, kind=None):
        if kind is not None and not devices:
            raise ValueError(f"no default {kind} device")
        return list(devices) if kind is None else {"name": "dev"}
    m.query_devices = query_devices
    m.RawOutputStream = lambda **kw: FakeStream(log, "out", **kw)
    m.RawInputStream = lambda **kw: FakeStream(log, "in", **kw)
    return m


def test_portaudio_no_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(devices=()))
    with pytest.raises(backends.BackendUnavailable, match="no host audio device exists"):
        backends.PortAudioBackend()


def test_portaudio_conversions_with_a_fake_host(monkeypatch):
    sd = fake_sounddevice()
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    b = backends.backend_from_spec("host:3", backends.OUTPUT)
    assert isinstance(b, backends.PortAudioBackend) and b.device == 3 and b.connected
    b.open(backends.OUTPUT, formats.S16, 2, 48000)
    assert sd.log[0] == ("open", "out", dict(samplerate=48000, channels=2, dtype="int16",
                                             device=3))
    assert b.latency == 0.02
    b.write(b"\1\2\3\4")
    assert sd.log[-1] == ("write", b"\1\2\3\4")
    b.close()
    assert sd.log[-2:] == [("stop",), ("close",)]
    b.open(backends.OUTPUT, formats.FLOAT64, 1, 44100)
    b.write(struct.pack("<2d", 0.5, -0.25))
    assert sd.log[-1] == ("write", struct.pack("<2f", 0.5, -0.25))
    b.close()
    b.open(backends.OUTPUT, formats.MU_LAW, 1, 8000)
    b.write(b"\x00\xff\x80")
    assert sd.log[-1] == ("write", struct.pack("<3h", -32124, 0, 32124))
    b.close()
    b.open(backends.OUTPUT, formats.U20_3, 1, 8000)     # 24-bit container, left-justified
    b.write(bytes([0, 0, 0x08]))
    assert sd.log[-1] == ("write", b"\0\0\0") and sd.log[-3][2]["dtype"] == "int24"
    b.close()
    b.open(backends.INPUT, formats.U16, 1, 16000)
    assert b.read(4) == bytes([0, 0x81, 2, 0x83])
    b.close()


# --------------------------------------------------------------------------- specs

def test_backend_from_spec(tmp_path):
    assert isinstance(backends.backend_from_spec("null"), backends.NullBackend)
    assert isinstance(backends.backend_from_spec(" NULL ", backends.INPUT), backends.NullBackend)
    t = backends.backend_from_spec("tone")
    assert (t.freq, t.amplitude) == (440.0, 0.5)
    t = backends.backend_from_spec("tone:1000.5,0.1", backends.INPUT)
    assert (t.freq, t.amplitude, t.name) == (1000.5, 0.1, "tone:1000.5,0.1")
    sink = backends.backend_from_spec(f"wav:{tmp_path}/play.wav", backends.OUTPUT)
    assert isinstance(sink, backends.WavSink) and sink.name == f"wav:{tmp_path}/play.wav"
    write_wav(tmp_path / "in.wav", formats.S16, 2, 48000, b"\0" * 8)
    src = backends.backend_from_spec(f"wav+loop:{tmp_path}/in.wav", backends.INPUT)
    assert isinstance(src, backends.WavSource) and src.loop
    assert isinstance(backends.backend_from_spec("wav:C:\\x.wav"), backends.WavFile)  # ':' in the path


@pytest.mark.parametrize("spec,direction,message", [
    ("", None, "empty audio backend spec"),
    ("bogus", None, "unknown audio backend 'bogus'"),
    ("pulse:default", None, "expected null, tone"),
    ("null:1", None, "null takes no argument"),
    ("tone:", None, "give a frequency"),
    ("tone:abc", None, "must be numbers"),
    ("tone:0", None, "frequency"),
    ("tone:440,2", None, "amplitude"),
    ("tone:1,2,3", None, "expected tone:HZ"),
    ("tone:440", backends.OUTPUT, "input"),
    ("wav:", None, "give a file name"),
    ("wav+loop:x.wav", backends.OUTPUT, "loop applies to input only"),
    ("null", 5, "direction"),
])
def test_backend_spec_errors(spec, direction, message):
    with pytest.raises(backends.BackendSpecError, match=message) as e:
        backends.backend_from_spec(spec, direction)
    assert isinstance(e.value, ValueError) and isinstance(e.value, backends.BackendError)


def test_backend_spec_missing_input_file(tmp_path):
    with pytest.raises(backends.BackendError, match=r"cannot read .*missing\.wav: no such file"):
        backends.backend_from_spec(f"wav:{tmp_path}/missing.wav", backends.INPUT)


def test_portaudio_open_failures(monkeypatch):
    sd = fake_sounddevice()

    def refuse(**kw):
        raise ValueError("Invalid number of channels\nsecond line")
    sd.RawOutputStream = refuse
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    b = backends.PortAudioBackend("USB")
    assert b.name == "host:USB"
    with pytest.raises(backends.BackendError, match="18-channel int32 output stream at 192000 Hz: "
                                             "Invalid number of channels$"):
        b.open(backends.OUTPUT, formats.S32, 18, 192000)
    assert not b.is_open

    def no_default(device=None, kind=None):
        if kind:
            raise ValueError("Error querying device -1")
        return ["dev"]
    sd.query_devices = no_default
    with pytest.raises(backends.BackendUnavailable, match="no host audio input device"):
        b.open(backends.INPUT, formats.S16, 2, 48000)


def test_wav_output_survives_release_and_prepare(tmp_path):
    """Linux recovers from an xrun with STOP, RELEASE, PREPARE: the WAV keeps every session
    with the same parameters, and new parameters go to a numbered sibling file."""
    from nvmmpy.devices.testing.sound import Rig
    from nvmmpy.devices.virtio.sound.topology import Topology
    path = tmp_path / "p.wav"
    topo = Topology()
    topo.add_stream(snd.D_OUTPUT, backends.backend_from_spec(f"wav:{path}", snd.D_OUTPUT))
    r = Rig(topo=topo)

    def session(fill, fmt=snd.FMT_S16):
        assert r.set_params(fmt=fmt) == snd.S_OK and r.pcm(snd.R_PCM_PREPARE) == snd.S_OK
        q = r.drv.queues[2]
        q.add([(b"\0\0\0\0", False), (bytes([fill]) * 1024, False), (8, True)])
        r.drv.notify(2)
        assert r.pcm(snd.R_PCM_START) == snd.S_OK
        r.clock.t += 1
        r.dev.poll(r.clock.t)
        assert r.pcm(snd.R_PCM_STOP) == snd.S_OK and r.pcm(snd.R_PCM_RELEASE) == snd.S_OK

    session(1)
    session(2)
    session(3, snd.FMT_S32)
    r.dev.close()
    with WavReader(str(path)) as w:
        assert w.read(w.frames) == b"\x01" * 1024 + b"\x02" * 1024
    with WavReader(str(tmp_path / "p-2.wav")) as w:
        assert w.read(w.frames) == b"\x03" * 1024
