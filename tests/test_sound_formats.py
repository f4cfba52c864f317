"""virtio-sound format tables and conversions (devices/virtio/sound/formats.py).

The conversions are checked against per-sample reference implementations written here with
plain integer arithmetic, and G.711 against the segment tables of ITU-T G.711 (start value and
step of each of the 8 segments), not against the bit tricks formats.py uses.
"""
import bisect
import math
import os
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvmmpy.devices.virtio.sound import constants as snd
from nvmmpy.devices.virtio.sound import formats

CONVERTIBLE = sorted(formats.CONVERTIBLE)
INT_FORMATS = [f for f in CONVERTIBLE if formats.FORMATS[f].kind == formats.KIND_INT]


# --------------------------------------------------------------------------- tables

def test_format_table_matches_spec():
    expected = [
        ("IMA_ADPCM", 4, 4), ("MU_LAW", 8, 8), ("A_LAW", 8, 8), ("S8", 8, 8), ("U8", 8, 8),
        ("S16", 16, 16), ("U16", 16, 16), ("S18_3", 18, 24), ("U18_3", 18, 24),
        ("S20_3", 20, 24), ("U20_3", 20, 24), ("S24_3", 24, 24), ("U24_3", 24, 24),
        ("S20", 20, 32), ("U20", 20, 32), ("S24", 24, 32), ("U24", 24, 32), ("S32", 32, 32),
        ("U32", 32, 32), ("FLOAT", 32, 32), ("FLOAT64", 64, 64), ("DSD_U8", 8, 8),
        ("DSD_U16", 16, 16), ("DSD_U32", 32, 32), ("IEC958_SUBFRAME", 32, 32)]
    assert [(f.name, f.bits, f.phys) for f in formats.FORMATS] == expected
    for v, f in enumerate(formats.FORMATS):
        assert f.value == v and getattr(formats, f.name) == v and formats.format_info(v) is f
    kinds = {f.name: f.kind for f in formats.FORMATS}
    assert kinds["IMA_ADPCM"] == "adpcm" and kinds["MU_LAW"] == "mu-law"
    assert kinds["A_LAW"] == "a-law" and kinds["FLOAT64"] == "float"
    assert kinds["DSD_U16"] == "dsd" and kinds["IEC958_SUBFRAME"] == "iec958"
    assert [f.name for f in formats.FORMATS if f.kind == "int" and not f.signed] == [
        "U8", "U16", "U18_3", "U20_3", "U24_3", "U20", "U24", "U32"]


def test_convertible_set():
    names = {formats.FORMATS[v].name for v in formats.CONVERTIBLE}
    assert names == {"MU_LAW", "A_LAW", "S8", "U8", "S16", "U16", "S18_3", "U18_3", "S20_3",
                     "U20_3", "S24_3", "U24_3", "S20", "U20", "S24", "U24", "S32", "U32",
                     "FLOAT", "FLOAT64"}
    assert formats.CONVERTIBLE_MASK == sum(1 << v for v in formats.CONVERTIBLE)
    assert snd.FORMATS_DEFINED == (1 << 25) - 1
    for v in (formats.IMA_ADPCM, formats.DSD_U8, formats.DSD_U16, formats.DSD_U32, formats.IEC958_SUBFRAME):
        assert not formats.FORMATS[v].convertible
        with pytest.raises(formats.UnsupportedFormat, match=formats.FORMATS[v].name):
            formats.to_wav(v, b"\0" * 4)
        with pytest.raises(formats.UnsupportedFormat):
            formats.from_float(v, [0.0])


def test_rate_table():
    assert formats.RATES == (5512, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200,
                       96000, 176400, 192000, 384000, 12000, 24000)
    assert formats.rate_hz(14) == 12000 and formats.rate_hz(15) == 24000 and formats.rate_hz(13) == 384000
    assert formats.rate_value(12000) == snd.RATE_12000 == 14
    assert formats.rate_value(24000) == snd.RATE_24000 == 15
    assert snd.RATES_DEFINED == 0xFFFF
    assert formats.rates_mask([snd.RATE_44100, snd.RATE_48000]) == 0xC0
    with pytest.raises(ValueError, match="not a virtio-sound rate"):
        formats.rate_value(44000)
    with pytest.raises(ValueError):
        formats.rate_hz(16)
    with pytest.raises(ValueError):
        formats.formats_mask([25])


def test_frame_bytes_and_rate():
    assert formats.frame_bytes(formats.S16, 2) == 4
    assert formats.frame_bytes(formats.S24_3, 6) == 18
    assert formats.frame_bytes(formats.U20, 18) == 72
    assert formats.frame_bytes(formats.FLOAT64, 3) == 24
    assert formats.frame_bytes(formats.IMA_ADPCM, 2) == 1
    with pytest.raises(ValueError, match="not whole bytes"):
        formats.frame_bytes(formats.IMA_ADPCM, 1)
    with pytest.raises(ValueError):
        formats.frame_bytes(formats.S16, 0)
    assert formats.bytes_per_second(formats.S16, 2, 48000) == 192000
    assert formats.bytes_per_second(formats.S24_3, 1, 384000) == 1152000
    assert formats.bytes_per_second(formats.IMA_ADPCM, 1, 5512) == 2756
    assert formats.bytes_per_second(formats.U8, 1, 12000) == 12000
    with pytest.raises(ValueError, match="Hz"):
        formats.bytes_per_second(formats.S16, 2, snd.RATE_48000)


def test_chmap_positions():
    assert len(formats.CHMAP_POSITIONS) == snd.CHMAP_COUNT == 37 and snd.CHMAP_MAX_SIZE == 18
    assert snd.CHMAP_FL == 3 and snd.CHMAP_LFE == 8 and snd.CHMAP_BRC == 36
    assert formats.CHMAP_POSITIONS[snd.CHMAP_TFRC] == "TFRC" and formats.CHMAP_BY_NAME["TFRC"] == snd.CHMAP_TFRC


def test_wav_container_mapping():
    P, FL = formats.WAVE_FORMAT_PCM, formats.WAVE_FORMAT_IEEE_FLOAT
    expected = {
        "MU_LAW": (7, 8, 8), "A_LAW": (6, 8, 8), "S8": (P, 8, 8), "U8": (P, 8, 8),
        "S16": (P, 16, 16), "U16": (P, 16, 16), "S18_3": (P, 24, 18), "U18_3": (P, 24, 18),
        "S20_3": (P, 24, 20), "U20_3": (P, 24, 20), "S24_3": (P, 24, 24), "U24_3": (P, 24, 24),
        "S20": (P, 32, 20), "U20": (P, 32, 20), "S24": (P, 32, 24), "U24": (P, 32, 24),
        "S32": (P, 32, 32), "U32": (P, 32, 32), "FLOAT": (FL, 32, 32), "FLOAT64": (FL, 64, 64)}
    for v in CONVERTIBLE:
        s = formats.wav_spec(v)
        assert (s.tag, s.bits, s.valid_bits) == expected[formats.FORMATS[v].name]
        native = formats.native_format(s)
        assert native is not None and formats.wav_spec(native) == s
    assert formats.native_format(formats.WavSpec(P, 16, 12)) is None
    with pytest.raises(ValueError):
        formats.WavSpec(P, 20)
    with pytest.raises(ValueError):
        formats.WavSpec(2, 16)


# --------------------------------------------------------------------------- reference model

def ref_value(fmt, sample: bytes) -> int:
    """The signed sample value a guest sample means (valid bits only)."""
    f = formats.FORMATS[fmt]
    raw = int.from_bytes(sample, "little") & ((1 << f.bits) - 1)
    half = 1 << (f.bits - 1)
    if f.signed:
        return raw - (1 << f.bits) if raw >= half else raw
    return raw - half


def ref_guest(fmt, value: int) -> bytes:
    """Canonical guest bytes of a signed value: sign-extended (signed) / zero-padded (unsigned)."""
    f = formats.FORMATS[fmt]
    w = f.phys // 8
    if not f.signed:
        return (value + (1 << (f.bits - 1))).to_bytes(w, "little")
    return (value & ((1 << (8 * w)) - 1)).to_bytes(w, "little")


def ref_to_wav(fmt, data: bytes) -> bytes:
    f = formats.FORMATS[fmt]
    if f.kind != "int":
        return data
    w, spec = f.phys // 8, formats.wav_spec(fmt)
    out = bytearray()
    for i in range(0, len(data), w):
        v = ref_value(fmt, data[i:i + w])
        if spec.bits == 8:
            out.append(v + 128)
        else:
            out += struct.pack("<i", v << (32 - f.bits))[4 - spec.bits // 8:]
    return bytes(out)


def ref_from_wav(fmt, data: bytes) -> bytes:
    f = formats.FORMATS[fmt]
    if f.kind != "int":
        return data
    spec = formats.wav_spec(fmt)
    cw = spec.bits // 8
    out = bytearray()
    for i in range(0, len(data), cw):
        c = data[i:i + cw]
        if cw == 1:
            v = c[0] - 128
        else:
            v = int.from_bytes(c, "little", signed=True) >> (spec.bits - f.bits)
        out += ref_guest(fmt, v)
    return bytes(out)


def canonical(fmt, data: bytes) -> bytes:
    f = formats.FORMATS[fmt]
    if f.kind != "int":
        return data
    w = f.phys // 8
    return b"".join(ref_guest(fmt, ref_value(fmt, data[i:i + w])) for i in range(0, len(data), w))


@st.composite
def guest_buffers(draw, choices=CONVERTIBLE):
    fmt = draw(st.sampled_from(choices))
    channels = draw(st.integers(1, 18))
    frames = draw(st.integers(0, 12))
    n = formats.frame_bytes(fmt, channels) * frames
    return fmt, channels, draw(st.binary(min_size=n, max_size=n))


# --------------------------------------------------------------------------- guest <-> WAV

@settings(max_examples=400, deadline=None)
@given(guest_buffers())
def test_to_wav_from_wav_round_trip(buf):
    fmt, _channels, data = buf
    spec, wav = formats.to_wav(fmt, data)
    assert spec == formats.wav_spec(fmt) and len(wav) == len(data)
    assert wav == ref_to_wav(fmt, data)
    back = formats.from_wav(fmt, wav)
    # exact over the valid bits, canonical padding
    assert back == canonical(fmt, data)
    f = formats.FORMATS[fmt]
    w = f.phys // 8
    mask = (1 << f.bits) - 1
    for i in range(0, len(data), w):
        a = int.from_bytes(data[i:i + w], "little")
        b = int.from_bytes(back[i:i + w], "little")
        assert a & mask == b & mask
    # bit for bit for canonical input (all input of formats without padding bits)
    c = canonical(fmt, data)
    assert formats.from_wav(fmt, formats.to_wav(fmt, c)[1]) == c
    if f.bits == f.phys:
        assert back == data


@settings(max_examples=300, deadline=None)
@given(guest_buffers())
def test_from_wav_matches_reference(buf):
    fmt, _channels, wav = buf          # any container bytes, incl. non-zero padding bits
    assert formats.from_wav(fmt, wav) == ref_from_wav(fmt, wav)
    # and to_wav inverts it on WAV data whose padding (low) bits are zero
    spec = formats.wav_spec(fmt)
    if spec.tag == formats.WAVE_FORMAT_PCM and spec.valid_bits < spec.bits:
        cw, pad = spec.bits // 8, spec.bits - spec.valid_bits
        wav = b"".join((int.from_bytes(wav[i:i + cw], "little") >> pad << pad).to_bytes(
            cw, "little") for i in range(0, len(wav), cw))
    assert formats.to_wav(fmt, formats.from_wav(fmt, wav))[1] == wav


@pytest.mark.parametrize("fmt", CONVERTIBLE, ids=lambda v: formats.FORMATS[v].name)
def test_round_trip_one_second_each_format(fmt):
    """48 kHz stereo, random bytes: a large buffer through the whole-buffer paths."""
    data = os.urandom(formats.bytes_per_second(fmt, 2, 48000))
    back = formats.from_wav(fmt, formats.to_wav(fmt, data)[1])
    f = formats.FORMATS[fmt]
    if f.bits == f.phys:
        assert back == data
    else:
        c = canonical(fmt, data[:6000 * f.phys // 8])
        assert back[:len(c)] == c
        assert formats.from_wav(fmt, formats.to_wav(fmt, back)[1]) == back


def test_padding_bits_defined():
    # S20_3 -5 with garbage in the top 4 bits: WAV gets -5 << 4, the guest gets it sign-extended
    x = bytes([0xFB, 0xFF, 0xAF])
    assert formats.to_wav(formats.S20_3, x)[1] == bytes([0xB0, 0xFF, 0xFF])
    assert formats.from_wav(formats.S20_3, formats.to_wav(formats.S20_3, x)[1]) == bytes([0xFB, 0xFF, 0xFF])
    # U24 in 32 bits: top byte is padding, cleared
    assert formats.from_wav(formats.U24, formats.to_wav(formats.U24, bytes([1, 2, 0x83, 0x5A]))[1]) == bytes(
        [1, 2, 0x83, 0])
    # S24 (ALSA S24_LE): value in the low 3 bytes, WAV 32-bit left-justified
    assert formats.to_wav(formats.S24, (-2 & 0xFFFFFFFF).to_bytes(4, "little"))[1] == (
        (-2 << 8) & 0xFFFFFFFF).to_bytes(4, "little")
    assert formats.to_wav(formats.S8, b"\x00\x7f\x80\xff")[1] == b"\x80\xff\x00\x7f"
    assert formats.to_wav(formats.U16, b"\x00\x80\xff\xff")[1] == b"\x00\x00\xff\x7f"
    assert formats.to_wav(formats.U32, b"\0\0\0\0")[1] == b"\0\0\0\x80"


def test_partial_samples_refused():
    with pytest.raises(ValueError, match="whole number"):
        formats.to_wav(formats.S16, b"\0\0\0")
    with pytest.raises(ValueError, match="whole number"):
        formats.from_wav(formats.S20_3, b"\0" * 4)
    assert formats.to_wav(formats.S24_3, memoryview(b"\1\2\3"))[1] == b"\1\2\3"
    assert formats.to_wav(formats.U20_3, bytearray(3))[1] == bytes([0, 0, 0x80])


def test_silence():
    for v in CONVERTIBLE:
        s = formats.silence(v, formats.FORMATS[v].phys // 8 * 5)
        assert len(s) == formats.FORMATS[v].phys // 8 * 5
        peak = max(abs(x) for x in formats.to_float(v, s))
        assert peak == 0.0 or (v == formats.A_LAW and peak == 8 / 32768)  # A-law has no zero code
    assert formats.silence(formats.U8, 3) == b"\x80\x80\x80"
    assert formats.silence(formats.U20_3, 3) == b"\0\0\x08"
    assert formats.silence(formats.DSD_U8, 2) == b"\x69\x69"
    assert formats.silence(formats.S16, 5) == b"\0" * 5   # any length, a partial sample included


# --------------------------------------------------------------------------- floats

@settings(max_examples=200, deadline=None)
@given(guest_buffers(choices=INT_FORMATS + [formats.MU_LAW, formats.A_LAW]))
def test_float_values_exact(buf):
    fmt, _channels, data = buf
    f = formats.FORMATS[fmt]
    w = f.phys // 8
    got = formats.to_float(fmt, data)
    assert isinstance(got, array) and got.typecode == "d"
    if f.kind == "int":
        want = [ref_value(fmt, data[i:i + w]) / 2 ** (f.bits - 1) for i in range(0, len(data), w)]
    else:
        table = ref_mulaw_table() if fmt == formats.MU_LAW else ref_alaw_table()
        want = [table[b] / 32768 for b in data]
    assert list(got) == want
    assert all(-1.0 <= x < 1.0 for x in got)
    c = canonical(fmt, data)
    if fmt == formats.MU_LAW:   # 0x7F is mu-law's negative zero: it comes back as 0xFF
        c = c.replace(b"\x7f", b"\xff")
    assert formats.from_float(fmt, got) == c


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([formats.FLOAT, formats.FLOAT64]), st.integers(0, 40).flatmap(
    lambda n: st.binary(min_size=8 * n, max_size=8 * n)))
def test_float_formats(fmt, data):
    assert formats.to_wav(fmt, data)[1] == data and formats.from_wav(fmt, data) == data
    back = formats.from_float(fmt, formats.to_float(fmt, data))
    w = 4 if fmt == formats.FLOAT else 8
    tc = "<f" if fmt == formats.FLOAT else "<d"
    for i in range(0, len(data), w):
        if not math.isnan(struct.unpack(tc, data[i:i + w])[0]):
            assert back[i:i + w] == data[i:i + w]


def test_from_float_rounding_and_clamping():
    s = 1 / 32768
    assert formats.from_float(formats.S16, [0.5 * s, 1.5 * s, 2.5 * s, -0.5 * s, -1.5 * s]) == struct.pack(
        "<5h", 0, 2, 2, 0, -2)  # half to even
    assert formats.from_float(formats.S16, [1.0, -1.0, 2.0, -7.5, math.nan, math.inf, -math.inf]) == \
        struct.pack("<7h", 32767, -32768, 32767, -32768, 0, 32767, -32768)
    assert formats.from_float(formats.U8, [0.0, -1.0, 0.999]) == bytes([0x80, 0x00, 0xFF])
    assert formats.from_float(formats.S8, [0.0, -1.0, 1.0]) == bytes([0x00, 0x80, 0x7F])
    assert formats.from_float(formats.S24, [0.5]) == (1 << 22).to_bytes(4, "little")
    assert formats.from_float(formats.U20, [-1.0, 0.0]) == bytes(4) + (1 << 19).to_bytes(4, "little")
    assert formats.from_float(formats.S18_3, [-1.0]) == ((-(1 << 17)) & 0xFFFFFF).to_bytes(3, "little")
    assert formats.from_float(formats.S32, [1.0]) == struct.pack("<i", 2 ** 31 - 1)
    assert formats.from_float(formats.FLOAT, [0.25, 3.0]) == struct.pack("<2f", 0.25, 3.0)  # not clamped
    assert formats.from_float(formats.FLOAT64, [0.1]) == struct.pack("<d", 0.1)
    assert formats.from_float(formats.S16, array("d", [0.5])) == struct.pack("<h", 16384)
    assert formats.from_float(formats.S16, []) == b""


# --------------------------------------------------------------------------- G.711

# ITU-T G.711 table 2 (mu-law) and table 1 (A-law), per segment: the first reconstruction value
# and the step, in the standard's 14-bit (mu-law) and 13-bit (A-law) units.
MU_SEG_START = (0, 33, 99, 231, 495, 1023, 2079, 4191)
MU_SEG_STEP = (2, 4, 8, 16, 32, 64, 128, 256)
A_SEG_LOW = (0, 32, 64, 128, 256, 512, 1024, 2048)      # lower end of each segment
A_SEG_STEP = (2, 2, 4, 8, 16, 32, 64, 128)


def ref_mulaw_table():
    """Code -> 16-bit linear. Line codes: all 8 bits inverted; sign bit (after inversion)
    0 = positive."""
    table = {}
    for sign in (0, 1):
        for seg in range(8):
            for q in range(16):
                mag14 = MU_SEG_START[seg] + q * MU_SEG_STEP[seg]
                code = 0xFF - ((sign << 7) | (seg << 4) | q)
                table[code] = (-mag14 if sign else mag14) * 4
    return [table[c] for c in range(256)]


def ref_alaw_table():
    """Code -> 16-bit linear. Line codes: even bits inverted (xor 0x55); sign bit 1 = positive;
    each output is the middle of its decision interval."""
    table = {}
    for positive in (0, 1):
        for seg in range(8):
            for q in range(16):
                mag13 = A_SEG_LOW[seg] + q * A_SEG_STEP[seg] + A_SEG_STEP[seg] // 2
                code = ((positive << 7) | (seg << 4) | q) ^ 0x55
                table[code] = (mag13 if positive else -mag13) * 8
    return [table[c] for c in range(256)]


def test_g711_decode_tables():
    assert list(formats.MULAW_DECODE) == ref_mulaw_table()
    assert list(formats.ALAW_DECODE) == ref_alaw_table()
    # well-known anchors
    assert formats.MULAW_DECODE[0x00] == -32124 and formats.MULAW_DECODE[0x80] == 32124
    assert formats.MULAW_DECODE[0xFF] == 0 and formats.MULAW_DECODE[0x7F] == 0
    assert formats.ALAW_DECODE[0xD5] == 8 and formats.ALAW_DECODE[0x55] == -8
    assert formats.ALAW_DECODE[0xAA] == 32256 and formats.ALAW_DECODE[0x2A] == -32256
    assert len(set(formats.MULAW_DECODE)) == 255 and len(set(formats.ALAW_DECODE)) == 256


def ref_mulaw_encode_all():
    """ITU-T G.191 STL behaviour via the decision intervals of the reference table: the 14-bit
    magnitude (ones' complement for negatives) lies in [value - step/2, value + step/2)."""
    lows, codes = [], []
    for seg in range(8):
        for q in range(16):
            lows.append(MU_SEG_START[seg] + q * MU_SEG_STEP[seg] - MU_SEG_STEP[seg] // 2)
            codes.append((seg << 4) | q)
    out = []
    for x in range(-32768, 32768):
        m = (x if x >= 0 else -x - 1) >> 2
        i = bisect.bisect_right(lows, m) - 1
        out.append((0xFF if x >= 0 else 0x7F) - codes[max(i, 0)])
    return out


def ref_alaw_encode_all():
    lows, codes = [], []
    for seg in range(8):
        for q in range(16):
            lows.append(A_SEG_LOW[seg] + q * A_SEG_STEP[seg])
            codes.append((seg << 4) | q)
    out = []
    for x in range(-32768, 32768):
        m13 = ((x if x >= 0 else -x - 1) >> 4) * 2
        i = bisect.bisect_right(lows, m13) - 1
        out.append((codes[i] | (0x80 if x >= 0 else 0)) ^ 0x55)
    return out


def test_g711_encoders_match_reference():
    mine_mu = [formats.mulaw_encode(x) for x in range(-32768, 32768)]
    mine_a = [formats.alaw_encode(x) for x in range(-32768, 32768)]
    assert mine_mu == ref_mulaw_encode_all()
    assert mine_a == ref_alaw_encode_all()
    # encode(decode(c)) == c (but mu-law's negative zero) and decode(encode(x)) is monotonic
    for c in range(256):
        assert formats.mulaw_encode(formats.MULAW_DECODE[c]) == (0xFF if c == 0x7F else c)
        assert formats.alaw_encode(formats.ALAW_DECODE[c]) == c
    for dec, enc in ((formats.MULAW_DECODE, mine_mu), (formats.ALAW_DECODE, mine_a)):
        ys = [dec[c] for c in enc]
        assert all(a <= b for a, b in zip(ys, ys[1:]))
    # the float path uses the same encoder
    xs = [x / 32768 for x in range(-32768, 32768, 7)]
    assert formats.from_float(formats.MU_LAW, xs) == bytes(mine_mu[x + 32768] for x in range(-32768, 32768, 7))
    assert formats.from_float(formats.A_LAW, xs) == bytes(mine_a[x + 32768] for x in range(-32768, 32768, 7))


# --------------------------------------------------------------------------- speed

@pytest.mark.parametrize("fmt", [formats.S16, formats.U16, formats.S24_3, formats.S20_3, formats.S24, formats.S32, formats.FLOAT, formats.U8])
def test_one_second_conversions(fmt):
    """1 s of 48 kHz stereo through every path; efficiency by construction, no timing asserts
    (S16 and friends take well under a millisecond here, the float paths some tens of ms)."""
    data = formats.from_float(fmt, [math.sin(i / 50) * 0.8 for i in range(96000)])
    assert len(data) == formats.bytes_per_second(fmt, 2, 48000)
    _spec, wav = formats.to_wav(fmt, data)
    assert formats.from_wav(fmt, wav) == data
    assert formats.from_float(fmt, formats.to_float(fmt, data)) == data
