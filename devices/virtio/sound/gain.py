"""Volume on PCM data in the guest's format: `apply_gain(fmt, data, gain)` scales every sample by a
linear amplitude factor (0 = silence), `silence(fmt, n)` is n bytes of digital silence.

All linear formats of the spec are scaled (8/16/32-bit, 18/20/24-bit in 3-byte containers, 20/24-bit
LSB-justified in 32-bit containers, signed and unsigned, FLOAT, FLOAT64) and so are mu-law and A-law
(256-entry tables from formats.py's G.711 codec: one bytes.translate per buffer). Integers are
rounded and clipped to their width; floats are scaled as they are. Gain 1 returns the data untouched
and gain 0 returns silence, so the common cases cost nothing. Formats that carry no linear samples
(IMA ADPCM, DSD, IEC958 subframes) can only be muted: any other gain leaves them unchanged. Samples
are little-endian whatever the host (the spec's rule).
"""
import sys
from array import array
from functools import lru_cache

from . import constants as snd
from . import formats

_LE = sys.byteorder == "little"
_I32 = "i" if array("i").itemsize == 4 else "l"
_U32 = _I32.upper()

# fmt -> (container bytes, significant bits, signed) for the integer formats
_INT = {
    snd.FMT_S8: (1, 8, True), snd.FMT_U8: (1, 8, False), snd.FMT_S16: (2, 16, True), snd.FMT_U16: (2, 16, False),
    snd.FMT_S18_3: (3, 18, True), snd.FMT_U18_3: (3, 18, False), snd.FMT_S20_3: (3, 20, True),
    snd.FMT_U20_3: (3, 20, False), snd.FMT_S24_3: (3, 24, True), snd.FMT_U24_3: (3, 24, False),
    snd.FMT_S20: (4, 20, True), snd.FMT_U20: (4, 20, False), snd.FMT_S24: (4, 24, True), snd.FMT_U24: (4, 24, False),
    snd.FMT_S32: (4, 32, True), snd.FMT_U32: (4, 32, False),
}
SCALABLE = frozenset(_INT) | {snd.FMT_FLOAT, snd.FMT_FLOAT64, snd.FMT_MU_LAW, snd.FMT_A_LAW}


def silence(fmt: int, nbytes: int) -> bytes:
    """nbytes of digital silence in a guest format (formats.silence)."""
    return formats.silence(fmt, nbytes)


# --- scaling -----------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _table8(fmt: int, gain: float) -> bytes:
    if fmt == snd.FMT_MU_LAW:
        return bytes(formats.mulaw_encode(_clip(round(formats.mulaw_decode(b) * gain), 16)) for b in range(256))
    if fmt == snd.FMT_A_LAW:
        return bytes(formats.alaw_encode(_clip(round(formats.alaw_decode(b) * gain), 16)) for b in range(256))
    signed = fmt == snd.FMT_S8
    out = bytearray(256)
    for b in range(256):
        v = (b - 256 if b >= 128 else b) if signed else b - 128
        v = _clip(round(v * gain), 8)
        out[b] = v & 0xFF if signed else v + 128
    return bytes(out)


def _clip(v: int, bits: int) -> int:
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    return lo if v < lo else hi if v > hi else v


def _scale_ints(values, gain: float, bits: int) -> list:
    """Signed ints * gain, rounded, clipped to `bits` (fixed point: exact enough for audio)."""
    q = round(gain * 65536)
    if gain <= 1.0:
        return [(v * q + 32768) >> 16 for v in values]
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    return [lo if x < lo else hi if x > hi else x for x in ((v * q + 32768) >> 16 for v in values)]


def _swap(a: array) -> array:
    if not _LE:
        a.byteswap()
    return a


def apply_gain(fmt: int, data, gain: float) -> bytes:
    """`data` with every sample scaled by `gain` (a whole number of samples is expected; a partial
    trailing sample is left as it is)."""
    data = bytes(data)
    if gain == 1.0 or not data:
        return data
    if gain <= 0.0:
        return silence(fmt, len(data))
    if fmt not in SCALABLE:
        return data
    if fmt in (snd.FMT_S8, snd.FMT_U8, snd.FMT_MU_LAW, snd.FMT_A_LAW):
        return data.translate(_table8(fmt, gain))
    if fmt in (snd.FMT_FLOAT, snd.FMT_FLOAT64):
        size = 4 if fmt == snd.FMT_FLOAT else 8
        n = len(data) - len(data) % size
        a = _swap(array("f" if size == 4 else "d", data[:n]))
        return _swap(array(a.typecode, [v * gain for v in a])).tobytes() + data[n:]
    size, bits, signed = _INT[fmt]
    n = len(data) - len(data) % size
    body, tail = data[:n], data[n:]
    off = 0 if signed else 1 << (bits - 1)
    if size == 2:
        a = _swap(array("h" if signed else "H", body))
        vals = _scale_ints((v - off for v in a), gain, bits)
        return _swap(array(a.typecode, [v + off for v in vals])).tobytes() + tail
    if size == 4:
        a = _swap(array(_I32 if signed else _U32, body))
        if bits == 32:
            vals = _scale_ints((v - off for v in a), gain, bits)
        else:
            mask, sign = (1 << bits) - 1, 1 << (bits - 1)
            if signed:
                vals = _scale_ints((((v & mask) ^ sign) - sign for v in a), gain, bits)
            else:
                vals = _scale_ints(((v & mask) - off for v in a), gain, bits)
        return _swap(array(a.typecode, [v + off for v in vals])).tobytes() + tail
    # 3-byte containers: widen to 4 bytes with slicing, scale, narrow again
    count = n // 3
    wide = bytearray(4 * count)
    for k in range(3):
        wide[k::4] = body[k::3]
    a = _swap(array(_U32, bytes(wide)))
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    if signed:
        vals = _scale_ints((((v & mask) ^ sign) - sign for v in a), gain, bits)
    else:
        vals = _scale_ints(((v & mask) - off for v in a), gain, bits)
    b = _swap(array(_U32, [(v + off) & 0xFFFFFF for v in vals])).tobytes()
    out = bytearray(n)
    for k in range(3):
        out[k::3] = b[k::4]
    return bytes(out) + tail


def db_to_gain(centi_db: float) -> float:
    """Amplitude factor for a level in 0.01 dB."""
    return 10.0 ** (centi_db / 2000.0)
