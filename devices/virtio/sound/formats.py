"""virtio-sound PCM tables (VIRTIO 1.2/1.3 sec. 5.14.6.6) and lossless sample conversions.

Tables
  FORMATS[v]  the 25 PCM formats (value v = bit index in virtio_snd_pcm_info.formats) with their
              name, valid bits, physical bits, signedness and kind (int, float, mu-law, a-law, dsd,
              adpcm, iec958); FORMAT_BY_NAME finds a row by name. The values are constants.FMT_*,
              imported here as IMA_ADPCM .. IEC958_SUBFRAME.
  RATES[v]    the 16 frame rates in Hz (value v = bit index in .rates, constants.RATE_*), incl.
              14 = 12000 and 15 = 24000 (queued for VIRTIO 1.4) and 13 = 384000. The order is not
              monotonic in Hz. RATE_BY_HZ is the inverse.
  CHMAP_POSITIONS[p]  the names of the 37 channel positions (constants.CHMAP_*) of
              virtio_snd_chmap_info.positions; CHMAP_BY_NAME is the inverse.

These are the only copies of the tables: constants.py holds the wire values alone.

Conversions (all samples little-endian and interleaved, as the spec says)
  Only the CONVERTIBLE formats are converted; IMA_ADPCM, DSD_* and IEC958_SUBFRAME raise
  UnsupportedFormat. Every convertible guest format has one WAV container format (`wav_spec`):

    U8                  WAV 8-bit PCM (unsigned), as is
    S8                  WAV 8-bit PCM, sign bit flipped (xor 0x80)
    S16 / U16           WAV 16-bit PCM, as is / sign bit flipped
    S24_3 / U24_3       WAV 24-bit PCM, as is / sign bit flipped
    S18_3 U18_3         WAV 24-bit container, valid bits 18 / 20 (WAVE_FORMAT_EXTENSIBLE):
    S20_3 U20_3           the guest keeps the sample in the low bits of its 3 bytes (ALSA
                          S20_3LE), WAV wants it in the high bits: shifted left by 6 / 4
    S20 U20 S24 U24     WAV 32-bit container, valid bits 20 / 24: the guest keeps the sample in
                          the low bits of 4 bytes (ALSA S24_LE convention): shifted left by 12 / 8
    S32 / U32           WAV 32-bit PCM, as is / sign bit flipped
    FLOAT / FLOAT64     WAV IEEE float 32 / 64, as is (NaN payloads included)
    MU_LAW / A_LAW      WAV format tags 7 / 6, 8-bit codes as is

  to_wav(fmt, data) -> (WavSpec, bytes) and from_wav(fmt, data) -> bytes are exact inverses:
  from_wav(fmt, to_wav(fmt, x)[1]) == x for every x of whole samples, bit for bit, except for
  the padding bits of the formats whose valid bits are fewer than their physical bits (S18_3,
  U18_3, S20_3, U20_3, S20, U20, S24, U24). Those bits carry no sample and are not preserved:
  from_wav writes them as the sign extension of the sample for the signed formats and as zero
  for the unsigned ones (the canonical ALSA form), and to_wav ignores them. So the round trip is
  exact over the valid bits, and exact bit for bit for canonical input. In the other direction,
  to_wav(fmt, from_wav(fmt, w)) == w for every w whose low (WAV padding) bits are zero.

  to_float(fmt, data) -> array('d'): integer and G.711 samples as value / 2**(valid_bits - 1),
  i.e. in [-1, 1) and exact; float samples as stored (not clamped; NaN and inf stay).
  from_float(fmt, floats) -> bytes: integer formats take round(x * 2**(valid_bits - 1)) rounding
  half to even, clamped to the format's range (NaN -> 0, +-inf -> the limits), so
  from_float(fmt, to_float(fmt, x)) == x for canonical x; G.711 formats quantize to 16 bits the
  same way, then encode as ITU-T G.191 (STL) g711 does (so the float round trip is exact for
  every code but mu-law's negative zero 0x7F, which comes back as 0xFF); float formats store
  the value (FLOAT rounds to the nearest float32; a signalling NaN may come back quieted, which
  is why the bit-exact paths are to_wav/from_wav, never the float one). The G.711 decoders give the exact ITU-T G.711 reconstruction
  values scaled to 16 bits (mu-law: 4 x the 14-bit value, +-32124 at most; A-law: 8 x the 13-bit
  value, +-32256 at most).

Speed: whole-buffer work is done by bytes.translate, extended-slice copies, array and one big
Python int per buffer for the bit shifts, so 1 s of 48 kHz stereo converts in about a ms for the
WAV mappings and tens of ms for the float ones.
"""
from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass

from . import constants as snd
from .constants import (  # noqa: F401 - the format values under their table names, for callers too
    FMT_A_LAW as A_LAW, FMT_DSD_U8 as DSD_U8, FMT_DSD_U16 as DSD_U16, FMT_DSD_U32 as DSD_U32,
    FMT_FLOAT as FLOAT, FMT_FLOAT64 as FLOAT64, FMT_IEC958_SUBFRAME as IEC958_SUBFRAME,
    FMT_IMA_ADPCM as IMA_ADPCM, FMT_MU_LAW as MU_LAW, FMT_S8 as S8, FMT_S16 as S16,
    FMT_S18_3 as S18_3, FMT_S20 as S20, FMT_S20_3 as S20_3, FMT_S24 as S24, FMT_S24_3 as S24_3,
    FMT_S32 as S32, FMT_U8 as U8, FMT_U16 as U16, FMT_U18_3 as U18_3, FMT_U20 as U20,
    FMT_U20_3 as U20_3, FMT_U24 as U24, FMT_U24_3 as U24_3, FMT_U32 as U32)

__all__ = [
    "PcmFormat", "FORMATS", "FORMAT_BY_NAME", "RATES", "RATE_BY_HZ", "CHMAP_POSITIONS",
    "CHMAP_BY_NAME", "CONVERTIBLE", "CONVERTIBLE_MASK", "UnsupportedFormat", "WavSpec",
    "format_info", "frame_bits", "frame_bytes", "bytes_per_second", "rate_hz", "rate_value",
    "formats_mask", "rates_mask", "wav_spec",
    "to_wav", "from_wav", "to_float", "from_float", "container_to_float", "float_to_container",
    "silence", "container_silence", "mulaw_decode", "alaw_decode", "mulaw_encode", "alaw_encode",
    "MULAW_DECODE", "ALAW_DECODE", "native_format",
]

# --------------------------------------------------------------------------- the format table

KIND_INT = "int"
KIND_FLOAT = "float"
KIND_MULAW = "mu-law"
KIND_ALAW = "a-law"
KIND_DSD = "dsd"
KIND_ADPCM = "adpcm"
KIND_IEC958 = "iec958"


@dataclass(frozen=True)
class PcmFormat:
    """One row of the spec's format table. `bits` = valid bits of a sample, `phys` = bits it
    occupies in the stream. `signed` is the sign convention of integer samples (G.711 codes count
    as signed, DSD and IEC958 subframes as unsigned bit patterns)."""
    value: int
    name: str
    bits: int
    phys: int
    signed: bool
    kind: str

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample; ValueError for the 4-bit IMA_ADPCM."""
        if self.phys % 8:
            raise ValueError(f"{self.name}: a sample is {self.phys} bits, not whole bytes")
        return self.phys // 8

    @property
    def convertible(self) -> bool:
        return self.value in CONVERTIBLE

    def __str__(self) -> str:
        return self.name


FORMATS: tuple[PcmFormat, ...] = tuple(PcmFormat(*row) for row in (
    (IMA_ADPCM, "IMA_ADPCM", 4, 4, True, KIND_ADPCM),
    (MU_LAW, "MU_LAW", 8, 8, True, KIND_MULAW),
    (A_LAW, "A_LAW", 8, 8, True, KIND_ALAW),
    (S8, "S8", 8, 8, True, KIND_INT),
    (U8, "U8", 8, 8, False, KIND_INT),
    (S16, "S16", 16, 16, True, KIND_INT),
    (U16, "U16", 16, 16, False, KIND_INT),
    (S18_3, "S18_3", 18, 24, True, KIND_INT),
    (U18_3, "U18_3", 18, 24, False, KIND_INT),
    (S20_3, "S20_3", 20, 24, True, KIND_INT),
    (U20_3, "U20_3", 20, 24, False, KIND_INT),
    (S24_3, "S24_3", 24, 24, True, KIND_INT),
    (U24_3, "U24_3", 24, 24, False, KIND_INT),
    (S20, "S20", 20, 32, True, KIND_INT),
    (U20, "U20", 20, 32, False, KIND_INT),
    (S24, "S24", 24, 32, True, KIND_INT),
    (U24, "U24", 24, 32, False, KIND_INT),
    (S32, "S32", 32, 32, True, KIND_INT),
    (U32, "U32", 32, 32, False, KIND_INT),
    (FLOAT, "FLOAT", 32, 32, True, KIND_FLOAT),
    (FLOAT64, "FLOAT64", 64, 64, True, KIND_FLOAT),
    (DSD_U8, "DSD_U8", 8, 8, False, KIND_DSD),
    (DSD_U16, "DSD_U16", 16, 16, False, KIND_DSD),
    (DSD_U32, "DSD_U32", 32, 32, False, KIND_DSD),
    (IEC958_SUBFRAME, "IEC958_SUBFRAME", 32, 32, False, KIND_IEC958),
))
assert len(FORMATS) == snd.FORMAT_COUNT and all(f.value == v for v, f in enumerate(FORMATS))

FORMAT_BY_NAME = {f.name: f for f in FORMATS}

# The formats the host path converts (everything but ADPCM, DSD and IEC958 subframes).
CONVERTIBLE = frozenset((MU_LAW, A_LAW, S8, U8, S16, U16, S18_3, U18_3, S20_3, U20_3, S24_3,
                         U24_3, S20, U20, S24, U24, S32, U32, FLOAT, FLOAT64))

# --------------------------------------------------------------------------- the rate table

RATES: tuple[int, ...] = (5512, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200,
                          96000, 176400, 192000, 384000, 12000, 24000)
assert len(RATES) == snd.RATE_COUNT and RATES[snd.RATE_48000] == 48000 and RATES[snd.RATE_12000] == 12000
RATE_BY_HZ = {hz: v for v, hz in enumerate(RATES)}


def _mask(values, check) -> int:
    """A bit per value, each value checked first (`check` raises on one the spec does not have)."""
    m = 0
    for v in values:
        check(v)
        m |= 1 << int(v)
    return m


def formats_mask(values) -> int:
    """The le64 `formats` bitmap of virtio_snd_pcm_info for these format values."""
    return _mask(values, format_info)


def rates_mask(values) -> int:
    """The le64 `rates` bitmap of virtio_snd_pcm_info for these rate values (not Hz)."""
    return _mask(values, rate_hz)


def rate_hz(value: int) -> int:
    """Hz of a virtio rate value (0..15); ValueError for others."""
    if not isinstance(value, int) or not 0 <= value < len(RATES):
        raise ValueError(f"unknown virtio-sound rate value {value!r} (valid: 0..{len(RATES) - 1})")
    return RATES[value]


def rate_value(hz: int) -> int:
    """The virtio rate value of a rate in Hz; ValueError if the spec has no such rate."""
    try:
        return RATE_BY_HZ[hz]
    except (KeyError, TypeError):
        raise ValueError(f"{hz!r} Hz is not a virtio-sound rate "
                         f"(valid: {', '.join(map(str, sorted(RATES)))})") from None


def format_info(fmt) -> PcmFormat:
    """The table row of a format value (int) or PcmFormat; ValueError for unknown values."""
    if isinstance(fmt, PcmFormat):
        return fmt
    if isinstance(fmt, int) and 0 <= fmt < len(FORMATS):
        return FORMATS[fmt]
    raise ValueError(f"unknown virtio-sound format value {fmt!r} (valid: 0..{len(FORMATS) - 1})")


CONVERTIBLE_MASK = formats_mask(CONVERTIBLE)


def _check_channels(channels) -> int:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, not {channels!r}")
    return channels


def frame_bits(fmt, channels: int) -> int:
    """Bits of one frame (one sample per channel): not whole bytes for IMA_ADPCM with an odd
    channel count."""
    return format_info(fmt).phys * _check_channels(channels)


def frame_bytes(fmt, channels: int) -> int:
    """Bytes of one frame (one sample per channel). ValueError for IMA_ADPCM with an odd channel
    count (half a byte)."""
    bits = frame_bits(fmt, channels)
    if bits % 8:
        raise ValueError(f"{format_info(fmt).name} x {channels} channels: a frame is {bits} bits, "
                         "not whole bytes")
    return bits // 8


def bytes_per_second(fmt, channels: int, rate: int) -> int:
    """Bytes of one second of stream. `rate` is in Hz (not a virtio rate value)."""
    bits = frame_bits(fmt, channels)
    if not isinstance(rate, int) or rate < 16:
        raise ValueError(f"rate {rate!r}: pass Hz, not a virtio rate value "
                         "(use rate_hz(value))")
    return bits * rate // 8


# --------------------------------------------------------------------------- channel positions

CHMAP_POSITIONS: tuple[str, ...] = (
    "NONE", "NA", "MONO", "FL", "FR", "RL", "RR", "FC", "LFE", "SL", "SR", "RC", "FLC", "FRC",
    "RLC", "RRC", "FLW", "FRW", "FLH", "FCH", "FRH", "TC", "TFL", "TFR", "TFC", "TRL", "TRR",
    "TRC", "TFLC", "TFRC", "TSL", "TSR", "LLFE", "RLFE", "BC", "BLC", "BRC")
assert len(CHMAP_POSITIONS) == snd.CHMAP_COUNT and CHMAP_POSITIONS[snd.CHMAP_BRC] == "BRC"
CHMAP_BY_NAME = {n: p for p, n in enumerate(CHMAP_POSITIONS)}

# --------------------------------------------------------------------------- WAV container specs

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
WAVE_TAG_NAMES = {WAVE_FORMAT_PCM: "PCM", WAVE_FORMAT_IEEE_FLOAT: "IEEE_FLOAT",
                  WAVE_FORMAT_ALAW: "ALAW", WAVE_FORMAT_MULAW: "MULAW",
                  WAVE_FORMAT_EXTENSIBLE: "EXTENSIBLE"}


class UnsupportedFormat(ValueError):
    """A format the host path does not convert (IMA_ADPCM, DSD_*, IEC958_SUBFRAME)."""


@dataclass(frozen=True)
class WavSpec:
    """A WAV sample container: format tag (PCM, IEEE_FLOAT, ALAW or MULAW; EXTENSIBLE files
    report their sub-format's tag), container bits per sample and valid bits (high-justified).
    8-bit PCM is unsigned, wider PCM signed, as WAV defines."""
    tag: int
    bits: int
    valid_bits: int = 0  # 0 = same as bits

    def __post_init__(self):
        if self.valid_bits == 0:
            object.__setattr__(self, "valid_bits", self.bits)
        t, b, v = self.tag, self.bits, self.valid_bits
        if t == WAVE_FORMAT_PCM:
            ok = b in (8, 16, 24, 32) and 1 <= v <= b
        elif t == WAVE_FORMAT_IEEE_FLOAT:
            ok = b in (32, 64) and v == b
        elif t in (WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW):
            ok = b == 8 and v == 8
        else:
            ok = False
        if not ok:
            raise ValueError(f"unsupported WAV sample format: tag {t:#06x} "
                             f"({WAVE_TAG_NAMES.get(t, 'unknown')}), {b} bits, {v} valid")

    @property
    def sample_bytes(self) -> int:
        return self.bits // 8

    @property
    def tag_name(self) -> str:
        return WAVE_TAG_NAMES[self.tag]

    def __str__(self) -> str:
        s = f"{self.tag_name} {self.bits}-bit"
        return s if self.valid_bits == self.bits else f"{s} ({self.valid_bits} valid)"


_WAV_SPECS = {
    MU_LAW: WavSpec(WAVE_FORMAT_MULAW, 8), A_LAW: WavSpec(WAVE_FORMAT_ALAW, 8),
    S8: WavSpec(WAVE_FORMAT_PCM, 8), U8: WavSpec(WAVE_FORMAT_PCM, 8),
    S16: WavSpec(WAVE_FORMAT_PCM, 16), U16: WavSpec(WAVE_FORMAT_PCM, 16),
    S18_3: WavSpec(WAVE_FORMAT_PCM, 24, 18), U18_3: WavSpec(WAVE_FORMAT_PCM, 24, 18),
    S20_3: WavSpec(WAVE_FORMAT_PCM, 24, 20), U20_3: WavSpec(WAVE_FORMAT_PCM, 24, 20),
    S24_3: WavSpec(WAVE_FORMAT_PCM, 24), U24_3: WavSpec(WAVE_FORMAT_PCM, 24),
    S20: WavSpec(WAVE_FORMAT_PCM, 32, 20), U20: WavSpec(WAVE_FORMAT_PCM, 32, 20),
    S24: WavSpec(WAVE_FORMAT_PCM, 32, 24), U24: WavSpec(WAVE_FORMAT_PCM, 32, 24),
    S32: WavSpec(WAVE_FORMAT_PCM, 32), U32: WavSpec(WAVE_FORMAT_PCM, 32),
    FLOAT: WavSpec(WAVE_FORMAT_IEEE_FLOAT, 32), FLOAT64: WavSpec(WAVE_FORMAT_IEEE_FLOAT, 64),
}


def _convertible(fmt) -> PcmFormat:
    f = format_info(fmt)
    if f.value not in CONVERTIBLE:
        raise UnsupportedFormat(f"format {f.name} ({f.value}) is not converted by the host path")
    return f


def wav_spec(fmt) -> WavSpec:
    """The WAV container that holds `fmt` losslessly."""
    return _WAV_SPECS[_convertible(fmt).value]


# --------------------------------------------------------------------------- byte-level helpers

_BIG_ENDIAN = sys.byteorder == "big"
_I32 = "i" if array("i").itemsize == 4 else "l"
_XOR80 = bytes(b ^ 0x80 for b in range(256))


def _check_whole(f_or_bytes: int, data, what: str) -> int:
    n = len(data)
    if n % f_or_bytes:
        raise ValueError(f"{what}: {n} bytes is not a whole number of "
                         f"{f_or_bytes}-byte samples")
    return n


def _flip_msb(data, width: int) -> bytes:
    """Flip bit 7 of the last (most significant) byte of every `width`-byte sample."""
    if width == 1:
        return bytes(data).translate(_XOR80)
    b = bytearray(data)
    b[width - 1::width] = b[width - 1::width].translate(_XOR80)
    return bytes(b)


def _lanes(value: int, width: int, count: int) -> int:
    """A big int holding `value` in each of `count` little-endian `width`-byte lanes."""
    return int.from_bytes(value.to_bytes(width, "little") * count, "little")


def _left_justify(data, width: int, valid: int, unsigned: bool) -> bytes:
    """Guest LSB-justified samples -> WAV high-justified signed samples (padding bits dropped)."""
    n = len(data)
    count = n // width
    shift = width * 8 - valid
    x = int.from_bytes(data, "little") & _lanes((1 << valid) - 1, width, count)
    if unsigned:
        x ^= _lanes(1 << (valid - 1), width, count)
    return (x << shift).to_bytes(n, "little")


def _right_justify(data, width: int, valid: int, unsigned: bool) -> bytes:
    """WAV high-justified signed samples -> guest LSB-justified samples, padding canonical."""
    n = len(data)
    count = n // width
    shift = width * 8 - valid
    x = (int.from_bytes(data, "little") >> shift) & _lanes((1 << valid) - 1, width, count)
    sign = _lanes(1 << (valid - 1), width, count)
    if unsigned:
        x ^= sign
    else:  # copy each lane's sign bit into its `shift` padding bits (no carries between lanes)
        x |= ((x & sign) << 1) * ((1 << shift) - 1)
    return x.to_bytes(n, "little")


# --------------------------------------------------------------------------- guest <-> WAV

def to_wav(fmt, data) -> tuple[WavSpec, bytes]:
    """Guest samples (whole samples, any channel count) -> (their WAV container, WAV bytes)."""
    f = _convertible(fmt)
    spec = _WAV_SPECS[f.value]
    width = f.phys // 8
    _check_whole(width, data, f.name)
    v = f.value
    if v in (U8, S16, S24_3, S32, FLOAT, FLOAT64, MU_LAW, A_LAW):
        return spec, bytes(data)
    if v in (S8, U16, U24_3, U32):
        return spec, _flip_msb(data, width)
    return spec, _left_justify(data, width, f.bits, not f.signed)


def from_wav(fmt, data) -> bytes:
    """WAV bytes in wav_spec(fmt) -> guest samples; the inverse of to_wav (see module doc for the
    padding bits)."""
    f = _convertible(fmt)
    width = f.phys // 8
    _check_whole(width, data, f.name)
    v = f.value
    if v in (U8, S16, S24_3, S32, FLOAT, FLOAT64, MU_LAW, A_LAW):
        return bytes(data)
    if v in (S8, U16, U24_3, U32):
        return _flip_msb(data, width)
    return _right_justify(data, width, f.bits, not f.signed)


# --------------------------------------------------------------------------- silence

_SILENCE = {
    IMA_ADPCM: b"\x00", MU_LAW: b"\xff", A_LAW: b"\xd5", S8: b"\x00", U8: b"\x80",
    S16: b"\x00\x00", U16: b"\x00\x80", S18_3: b"\x00\x00\x00", U18_3: b"\x00\x00\x02",
    S20_3: b"\x00\x00\x00", U20_3: b"\x00\x00\x08", S24_3: b"\x00\x00\x00",
    U24_3: b"\x00\x00\x80", S20: b"\x00\x00\x00\x00", U20: b"\x00\x00\x08\x00",
    S24: b"\x00\x00\x00\x00", U24: b"\x00\x00\x80\x00", S32: b"\x00\x00\x00\x00",
    U32: b"\x00\x00\x00\x80", FLOAT: b"\x00\x00\x00\x00", FLOAT64: b"\x00" * 8,
    DSD_U8: b"\x69", DSD_U16: b"\x69\x69", DSD_U32: b"\x69\x69\x69\x69",
    IEC958_SUBFRAME: b"\x00\x00\x00\x00",
}


def _repeat(pattern: bytes, nbytes: int) -> bytes:
    if nbytes < 0:
        raise ValueError(f"negative length {nbytes}")
    reps = -(-nbytes // len(pattern))
    return (pattern * reps)[:nbytes]


def silence(fmt, nbytes: int) -> bytes:
    """`nbytes` of silence in a guest format (any of the 25: unsigned formats use their midpoint,
    mu-law 0xFF, A-law 0xD5, DSD the 0x69 idle pattern)."""
    return _repeat(_SILENCE[format_info(fmt).value], nbytes)


def container_silence(spec: WavSpec, nbytes: int) -> bytes:
    if spec.tag == WAVE_FORMAT_MULAW:
        pattern = b"\xff"
    elif spec.tag == WAVE_FORMAT_ALAW:
        pattern = b"\xd5"
    elif spec.tag == WAVE_FORMAT_PCM and spec.bits == 8:
        pattern = b"\x80"
    else:
        pattern = b"\x00"
    return _repeat(pattern, nbytes)


# --------------------------------------------------------------------------- G.711

def mulaw_decode(code: int) -> int:
    """ITU-T G.711 mu-law code -> linear value on the 16-bit scale (4 x the 14-bit value)."""
    c = ~code & 0xFF                       # transmitted codes are inverted
    seg = (c >> 4) & 7
    step = c & 0x0F
    mag = (((step << 3) + 0x84) << seg) - 0x84   # 4 * ((2*step + 33) * 2**seg - 33)
    return -mag if c & 0x80 else mag


def alaw_decode(code: int) -> int:
    """ITU-T G.711 A-law code -> linear value on the 16-bit scale (8 x the 13-bit value)."""
    c = code ^ 0x55                        # even bits are inverted on the line
    seg = (c >> 4) & 7
    step = c & 0x0F
    mag = ((step << 4) + 8) if seg == 0 else (((step << 4) + 0x108) << (seg - 1))
    return mag if c & 0x80 else -mag       # sign bit 1 = positive


def mulaw_encode(x: int) -> int:
    """16-bit linear -> G.711 mu-law code, as ITU-T G.191 STL g711 does (negative values are
    taken as their ones' complement before the 14-bit truncation)."""
    m = min(((x if x >= 0 else ~x) >> 2) + 33, 0x1FFF)
    seg = m.bit_length() - 6
    code = (seg << 4) | ((m >> (seg + 1)) & 0x0F)
    return (0xFF if x >= 0 else 0x7F) - code


def alaw_encode(x: int) -> int:
    """16-bit linear -> G.711 A-law code, as ITU-T G.191 STL g711 does."""
    m = (x if x >= 0 else ~x) >> 4
    if m > 15:
        seg = m.bit_length() - 4
        m = (seg << 4) | ((m >> (seg - 1)) & 0x0F)
    if x >= 0:
        m |= 0x80
    return m ^ 0x55


MULAW_DECODE: tuple[int, ...] = tuple(mulaw_decode(c) for c in range(256))
ALAW_DECODE: tuple[int, ...] = tuple(alaw_decode(c) for c in range(256))
_MULAW_FLOAT = tuple(v / 32768.0 for v in MULAW_DECODE)
_ALAW_FLOAT = tuple(v / 32768.0 for v in ALAW_DECODE)
_ENCODE_TABLES: dict[int, bytes] = {}


def _encode_table(tag: int) -> bytes:
    """65536-entry table: int16 value + 32768 -> G.711 code (built on first use)."""
    t = _ENCODE_TABLES.get(tag)
    if t is None:
        enc = mulaw_encode if tag == WAVE_FORMAT_MULAW else alaw_encode
        t = bytes(enc(i) for i in range(-32768, 32768))
        _ENCODE_TABLES[tag] = t
    return t


# --------------------------------------------------------------------------- float conversions

def _array(typecode: str, data) -> array:
    a = array(typecode)
    a.frombytes(data)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def _to_le(a: array) -> bytes:
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def container_to_float(spec: WavSpec, data) -> array:
    """WAV container samples -> array('d'): PCM and G.711 as value / full scale of the container
    (so valid-bit samples with zero padding come out exact), floats as stored."""
    _check_whole(spec.sample_bytes, data, str(spec))
    tag, bits = spec.tag, spec.bits
    if tag == WAVE_FORMAT_MULAW:
        return array("d", map(_MULAW_FLOAT.__getitem__, bytes(data)))
    if tag == WAVE_FORMAT_ALAW:
        return array("d", map(_ALAW_FLOAT.__getitem__, bytes(data)))
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        return array("d", _array("f", data)) if bits == 32 else _array("d", data)
    if bits == 8:
        ints = _array("b", bytes(data).translate(_XOR80))
    elif bits == 16:
        ints = _array("h", data)
    elif bits == 24:
        wide = bytearray(len(data) // 3 * 4)
        wide[1::4] = data[0::3]
        wide[2::4] = data[1::3]
        wide[3::4] = data[2::3]
        ints, bits = _array(_I32, wide), 32
    else:
        ints = _array(_I32, data)
    return array("d", map((1.0 / (1 << (bits - 1))).__mul__, ints))


def _quantize(floats, bits: int) -> list[int]:
    """round(x * 2**(bits-1)) half to even, clamped to the signed `bits` range; NaN -> 0."""
    scale = float(1 << (bits - 1))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    try:
        q = list(map(round, map(scale.__mul__, floats)))
    except (ValueError, OverflowError):  # NaN or inf somewhere: the slow path
        q = [0 if math.isnan(x) else (hi if x > 0 else lo) if math.isinf(x) else round(x * scale)
             for x in map(float, floats)]
    if q and (min(q) < lo or max(q) > hi):
        q = [lo if x < lo else hi if x > hi else x for x in q]
    return q


def float_to_container(spec: WavSpec, floats) -> bytes:
    """Floats -> WAV container samples (the inverse of container_to_float, with the rounding and
    clamping of `_quantize` at the spec's valid bits; floats stored as they are)."""
    tag, bits = spec.tag, spec.bits
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        return _to_le(array("f" if bits == 32 else "d", map(float, floats)))
    if tag in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        return bytes(map(_encode_table(tag).__getitem__,
                         map((32768).__add__, _quantize(floats, 16))))
    q = _quantize(floats, spec.valid_bits)
    shift = bits - spec.valid_bits
    if shift:
        q = [x << shift for x in q]
    if bits == 8:
        return array("b", q).tobytes().translate(_XOR80)
    if bits == 16:
        return _to_le(array("h", q))
    wide = _to_le(array(_I32, q))
    if bits == 32:
        return wide
    out = bytearray(len(wide) // 4 * 3)
    out[0::3] = wide[0::4]
    out[1::3] = wide[1::4]
    out[2::3] = wide[2::4]
    return bytes(out)


def to_float(fmt, data) -> array:
    """Guest samples -> array('d') (see module doc: ints exact in [-1, 1), floats as stored)."""
    spec, wav = to_wav(fmt, data)
    return container_to_float(spec, wav)


def from_float(fmt, floats) -> bytes:
    """Floats -> guest samples (round half to even at the valid bits, clamped; floats stored)."""
    f = _convertible(fmt)
    return from_wav(f, float_to_container(_WAV_SPECS[f.value], floats))


_NATIVE_ORDER = (S16, U8, S24_3, S32, FLOAT, FLOAT64, MU_LAW, A_LAW, S18_3, S20_3, S20, S24)


def native_format(spec: WavSpec) -> int | None:
    """The guest format whose WAV container is exactly `spec` (signed preferred), so that WAV
    data passes through unchanged; None when no format matches (e.g. 12 valid bits)."""
    for v in _NATIVE_ORDER:
        if _WAV_SPECS[v] == spec:
            return v
    return None
