"""RIFF/WAVE files: a writer whose header is valid at every moment, and a careful reader.

WavWriter(path, channels, rate, spec, channel_map=None, extensible=None)
  Writes WAVE_FORMAT_PCM, IEEE_FLOAT, ALAW or MULAW samples (a formats.WavSpec). The header is
  WAVE_FORMAT_EXTENSIBLE whenever channels > 2, valid bits != container bits or the container
  is wider than 16 bits (Microsoft's rule; `extensible=False` forces the plain header where it
  can say the same thing, for old readers such as Python 3.11's `wave`). The channel mask comes
  from a virtio channel map when one is given and maps one-to-one, in order, onto WAVE speaker
  positions; otherwise it is 0 (unspecified). Non-PCM files get an 18-byte fmt and a fact chunk.

  Crash safety: the file is unbuffered and every write() appends the samples, then rewrites
  the sizes (fact, data, RIFF: small positioned writes) so the file on disk is a valid WAV of
  everything written so far the moment write() returns, whatever happens to the process next
  (Ctrl-C, a crash, SIGKILL). No signal handler is needed or installed; close() (also called
  from an atexit hook and by the garbage collector) only rewrites the sizes once more and
  closes. flush() exists for symmetry; sync() adds an fsync for power loss. RIFF sizes are 32
  bits: past 4 GiB further samples are dropped and counted in `dropped_bytes`.

WavReader(path)
  Parses PCM (8-32 bits, also plain headers with a non-byte bit count), IEEE float 32/64, A-law,
  mu-law and WAVE_FORMAT_EXTENSIBLE carrying any of them; refuses anything else with WavError,
  a one-line message naming the file and the format tag. Unknown chunks (LIST, fact, cue, JUNK,
  ...) are skipped, odd-sized chunks are padded as RIFF says, and no size in the file is
  trusted beyond the file's real size (a truncated or still-growing file reads what is there,
  in whole frames). read(nframes) returns raw container bytes; see formats.from_wav and
  formats.container_to_float to turn them into guest samples.
"""
from __future__ import annotations

import atexit
import os
import struct
import weakref

from ...host_paths import explain
from . import constants as snd
from .formats import (
    WAVE_FORMAT_ALAW,
    WAVE_FORMAT_EXTENSIBLE,
    WAVE_FORMAT_IEEE_FLOAT,
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    WAVE_TAG_NAMES,
    WavSpec,
)

__all__ = ["WavError", "WavWriter", "WavReader", "channel_mask", "KSDATAFORMAT_GUID_TAIL"]

# Bytes 2..15 of every KSDATAFORMAT_SUBTYPE_* GUID derived from a WAVE format tag
# (00000001-0000-0010-8000-00aa00389b71 = PCM): the tag is the first two bytes.
KSDATAFORMAT_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
MAX_RIFF = 0xFFFFFFFF

# Names for the tags we refuse, so that the error says what the file is.
_OTHER_TAGS = {
    0x0000: "UNKNOWN", 0x0002: "MS ADPCM", 0x0011: "IMA ADPCM", 0x0016: "ITU G.723 ADPCM",
    0x0031: "GSM 6.10", 0x0040: "G.721 ADPCM", 0x0050: "MPEG", 0x0055: "MPEG Layer 3",
    0x0092: "Dolby AC3 SPDIF", 0x0161: "WMA", 0x1610: "AAC", 0xF1AC: "FLAC",
    0xFFFF: "experimental",
}

# WAVE speaker bits (dwChannelMask) and the virtio channel positions that match them.
SPEAKER_BITS = {
    "FL": 0x1, "FR": 0x2, "FC": 0x4, "LFE": 0x8, "BL": 0x10, "BR": 0x20, "FLC": 0x40,
    "FRC": 0x80, "BC": 0x100, "SL": 0x200, "SR": 0x400, "TC": 0x800, "TFL": 0x1000,
    "TFC": 0x2000, "TFR": 0x4000, "TBL": 0x8000, "TBC": 0x10000, "TBR": 0x20000,
}
# virtio position value -> speaker bit (positions WAVE has no bit for are absent)
_VIRTIO_TO_SPEAKER = {
    snd.CHMAP_MONO: 0x4,                                        # front centre (KSAUDIO_SPEAKER_MONO)
    snd.CHMAP_FL: 0x1, snd.CHMAP_FR: 0x2,
    snd.CHMAP_RL: 0x10, snd.CHMAP_RR: 0x20,                       # back left / right
    snd.CHMAP_FC: 0x4, snd.CHMAP_LFE: 0x8,
    snd.CHMAP_SL: 0x200, snd.CHMAP_SR: 0x400,
    snd.CHMAP_RC: 0x100,                                        # back centre
    snd.CHMAP_FLC: 0x40, snd.CHMAP_FRC: 0x80,
    snd.CHMAP_FLH: 0x1000, snd.CHMAP_FCH: 0x2000, snd.CHMAP_FRH: 0x4000,   # top front
    snd.CHMAP_TC: 0x800,
    snd.CHMAP_TFL: 0x1000, snd.CHMAP_TFR: 0x4000, snd.CHMAP_TFC: 0x2000,
    snd.CHMAP_TRL: 0x8000, snd.CHMAP_TRR: 0x20000, snd.CHMAP_TRC: 0x10000,  # top back
    snd.CHMAP_BC: 0x100,
}


class WavError(ValueError):
    """A WAV file this module cannot read or write; the message is one line naming the file."""


def channel_mask(positions) -> int:
    """dwChannelMask for a virtio channel map (sequence of position values), or 0 when WAVE
    cannot describe it: WAVE needs each channel on a distinct speaker bit, in increasing bit
    order (so e.g. FL FR FC LFE RL RR = 0x3F works, while FR FL or any NONE/NA/wide/rear-centre
    position gives 0)."""
    mask, last = 0, 0
    for p in positions:
        bit = _VIRTIO_TO_SPEAKER.get(p)
        if bit is None or bit <= last:
            return 0
        mask |= bit
        last = bit
    return mask


def _tag_name(tag: int) -> str:
    return WAVE_TAG_NAMES.get(tag) or _OTHER_TAGS.get(tag) or "unknown"


# --------------------------------------------------------------------------- writer

_live_writers: weakref.WeakSet[WavWriter] = weakref.WeakSet()


def _close_all_writers() -> None:
    for w in list(_live_writers):
        try:
            w.close()
        except Exception:  # at exit there is nobody left to tell
            pass


atexit.register(_close_all_writers)


class WavWriter:
    """See the module doc. `path` is created or overwritten."""

    def __init__(self, path, channels: int, rate: int, spec: WavSpec, channel_map=None,
                 extensible: bool | None = None):
        if not isinstance(channels, int) or not 1 <= channels <= 0xFFFF:
            raise ValueError(f"{path}: channels must be 1..65535, not {channels!r}")
        if not isinstance(rate, int) or not 1 <= rate <= 0xFFFFFFFF:
            raise ValueError(f"{path}: rate must be a positive 32-bit int, not {rate!r}")
        if not isinstance(spec, WavSpec):
            raise TypeError(f"{path}: spec must be a formats.WavSpec, not {type(spec).__name__}")
        if channel_map is not None and len(channel_map) != channels:
            raise ValueError(f"{path}: channel map has {len(channel_map)} positions for "
                             f"{channels} channels")
        auto = channels > 2 or spec.valid_bits != spec.bits or spec.bits > 16
        if extensible is None:
            extensible = auto
        elif not extensible and spec.valid_bits != spec.bits:
            raise ValueError(f"{path}: {spec} needs WAVE_FORMAT_EXTENSIBLE "
                             "(a plain header cannot give the valid bits)")
        self.path = os.fspath(path)
        self.channels, self.rate, self.spec = channels, rate, spec
        self.extensible = bool(extensible)
        self.channel_mask = channel_mask(channel_map) if channel_map is not None else 0
        self.block_align = channels * spec.sample_bytes
        self.data_bytes = 0
        self.dropped_bytes = 0
        self._build_header()
        self._f = open(self.path, "wb", buffering=0)
        try:
            self._pwrite(0, self._header)
        except BaseException:
            self._f.close()
            raise
        _live_writers.add(self)

    def _build_header(self) -> None:
        s = self.spec
        common = struct.pack("<HIIHH", self.channels, self.rate, self.rate * self.block_align,
                             self.block_align, s.bits)
        if self.extensible:
            fmt = (struct.pack("<H", WAVE_FORMAT_EXTENSIBLE) + common
                   + struct.pack("<HHI", 22, s.valid_bits, self.channel_mask)
                   + struct.pack("<H", s.tag) + KSDATAFORMAT_GUID_TAIL)
        elif s.tag == WAVE_FORMAT_PCM:
            fmt = struct.pack("<H", s.tag) + common
        else:
            fmt = struct.pack("<H", s.tag) + common + struct.pack("<H", 0)
        self._has_fact = s.tag != WAVE_FORMAT_PCM
        head = b"RIFF\0\0\0\0WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        if self._has_fact:
            self._fact_off = len(head) + 8
            head += b"fact" + struct.pack("<I", 4) + b"\0\0\0\0"
        self._size_off = len(head) + 4
        head += b"data\0\0\0\0"
        self._header = head
        self._data_off = len(head)
        # Keep RIFF size (header - 8 + data + pad) within 32 bits, in whole frames.
        room = MAX_RIFF - (self._data_off - 8) - 1
        self.max_data_bytes = room - room % self.block_align

    @property
    def frames(self) -> int:
        return self.data_bytes // self.block_align

    @property
    def closed(self) -> bool:
        return self._f.closed

    def _pwrite(self, offset: int, data) -> None:
        fd = self._f.fileno()
        view = memoryview(data)
        while view:
            if hasattr(os, "pwrite"):
                n = os.pwrite(fd, view, offset)
            else:  # pragma: no cover - Windows
                self._f.seek(offset)
                n = self._f.write(view)
            view = view[n:]
            offset += n

    def _update_sizes(self) -> None:
        n = self.data_bytes
        pad = n & 1
        if pad:
            self._pwrite(self._data_off + n, b"\0")
        if self._has_fact:
            self._pwrite(self._fact_off, struct.pack("<I", self.frames))
        self._pwrite(self._size_off, struct.pack("<I", n))
        self._pwrite(4, struct.pack("<I", self._data_off - 8 + n + pad))

    def write(self, data) -> int:
        """Append whole frames of container samples; returns the bytes kept (fewer only past the
        4 GiB RIFF limit). The file is a valid WAV of all of it when this returns."""
        if self._f.closed:
            raise ValueError(f"{self.path}: write to a closed WavWriter")
        n = len(data)
        if n % self.block_align:
            raise ValueError(f"{self.path}: {n} bytes is not a whole number of "
                             f"{self.block_align}-byte frames")
        keep = min(n, self.max_data_bytes - self.data_bytes)
        if keep < n:
            self.dropped_bytes += n - keep
        if keep:
            self._pwrite(self._data_off + self.data_bytes, memoryview(data)[:keep])
            self.data_bytes += keep
            self._update_sizes()
        return keep

    def flush(self) -> None:
        """Nothing is buffered in this process: the header is current after every write()."""
        if not self._f.closed:
            self._update_sizes()

    def sync(self) -> None:
        """flush() and fsync: the file survives a power loss too."""
        if not self._f.closed:
            self._update_sizes()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is None or f.closed:
            return
        try:
            self._update_sizes()
        finally:
            f.close()
            _live_writers.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"WavWriter({self.path!r}, {self.channels} ch, {self.rate} Hz, {self.spec}, "
                f"{self.frames} frames)")


# --------------------------------------------------------------------------- reader

class WavReader:
    """See the module doc. Attributes: path, channels, rate, spec (formats.WavSpec),
    channel_mask, extensible, block_align, frames, data_offset, data_bytes."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise WavError(explain(self.path, e, writing=False)) from None
        try:
            self._parse()
        except BaseException:
            self._f.close()
            raise
        self._pos = 0  # frames read

    def _err(self, msg: str) -> WavError:
        return WavError(f"{self.path}: {msg}")

    def _parse(self) -> None:
        f = self._f
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX",
                                                                       b"RF64"):
            raise self._err("not a WAV file (no RIFF/WAVE header)")
        if head[:4] == b"RIFX":
            raise self._err("big-endian RIFX WAV files are not supported")
        if head[:4] == b"RF64":
            raise self._err("RF64 (64-bit) WAV files are not supported")
        fmt = None
        data = None
        pos = 12
        # Chunks are scanned up to the real end of file (the RIFF size is not trusted).
        while pos + 8 <= size and (fmt is None or data is None):
            f.seek(pos)
            ck = f.read(8)
            if len(ck) < 8:
                break
            cid, csize = ck[:4], struct.unpack("<I", ck[4:])[0]
            body = pos + 8
            if cid == b"fmt " and fmt is None:
                if csize < 16:
                    raise self._err(f"fmt chunk of {csize} bytes is too short")
                fmt = f.read(min(csize, 64))
                if len(fmt) < min(csize, 64):
                    raise self._err("file ends inside the fmt chunk")
            elif cid == b"data" and data is None:
                data = (body, min(csize, max(0, size - body)))
            pos = body + csize + (csize & 1)
        if fmt is None:
            raise self._err("no fmt chunk")
        if data is None:
            raise self._err("no data chunk")
        self._parse_fmt(fmt)
        self.data_offset = data[0]
        self.data_bytes = data[1] - data[1] % self.block_align
        self.frames = self.data_bytes // self.block_align

    def _parse_fmt(self, fmt: bytes) -> None:
        tag, channels, rate, _avg, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
        self.extensible = tag == WAVE_FORMAT_EXTENSIBLE
        self.channel_mask = 0
        valid = bits
        if self.extensible:
            if len(fmt) < 40 or struct.unpack("<H", fmt[16:18])[0] < 22:
                raise self._err("WAVE_FORMAT_EXTENSIBLE fmt chunk is too short")
            valid, self.channel_mask = struct.unpack("<HI", fmt[18:24])
            guid = fmt[24:40]
            sub = struct.unpack("<H", guid[:2])[0]
            if guid[2:] != KSDATAFORMAT_GUID_TAIL:
                raise self._err("unsupported WAV format: EXTENSIBLE with sub-format GUID "
                                f"{guid.hex()} (not a WAVE format tag)")
            if sub not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_ALAW,
                           WAVE_FORMAT_MULAW):
                raise self._err(f"unsupported WAV format: EXTENSIBLE with sub-format tag "
                                f"{sub:#06x} ({_tag_name(sub)})")
            tag = sub
            if valid == 0:
                valid = bits
        elif tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_ALAW,
                         WAVE_FORMAT_MULAW):
            raise self._err(f"unsupported WAV format tag {tag:#06x} ({_tag_name(tag)}); "
                            "supported: PCM, IEEE_FLOAT, ALAW, MULAW, EXTENSIBLE of those")
        if channels < 1:
            raise self._err("0 channels")
        if rate < 1:
            raise self._err("sample rate 0")
        container = bits
        if tag == WAVE_FORMAT_PCM and not self.extensible and bits % 8:
            # old-style PCM header with e.g. 12 or 20 bits: the container is the block's share
            container = (block_align // channels) * 8 if block_align % channels == 0 else 0
            valid = bits
        try:
            spec = WavSpec(tag, container, valid)
        except ValueError:
            raise self._err(f"unsupported WAV sample format: tag {tag:#06x} ({_tag_name(tag)}), "
                            f"{bits} bits per sample, {valid} valid") from None
        if block_align != channels * spec.sample_bytes:
            raise self._err(f"block align {block_align} does not match {channels} channels of "
                            f"{spec.bits}-bit samples")
        self.channels, self.rate, self.spec, self.block_align = channels, rate, spec, block_align

    # ------------------------------------------------------------------ reading

    @property
    def closed(self) -> bool:
        return self._f.closed

    def tell(self) -> int:
        """Frames read so far."""
        return self._pos

    def seek(self, frame: int) -> None:
        if not 0 <= frame <= self.frames:
            raise ValueError(f"{self.path}: frame {frame} outside 0..{self.frames}")
        self._pos = frame

    def rewind(self) -> None:
        self._pos = 0

    def read(self, nframes: int) -> bytes:
        """Up to `nframes` whole frames of raw container bytes (b'' at the end)."""
        if nframes < 0:
            raise ValueError("negative frame count")
        n = min(nframes, self.frames - self._pos)
        if n <= 0:
            return b""
        self._f.seek(self.data_offset + self._pos * self.block_align)
        want = n * self.block_align
        buf = self._f.read(want)
        if len(buf) < want:  # the file shrank under us: keep whole frames
            buf = buf[:len(buf) - len(buf) % self.block_align]
        self._pos += len(buf) // self.block_align
        return buf

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"WavReader({self.path!r}, {self.channels} ch, {self.rate} Hz, {self.spec}, "
                f"{self.frames} frames)")
