"""Host audio for virtio-sound streams: one small interface, pacing left to the device.

Backend
  open(direction, fmt, channels, rate, chmap=None)   direction 0 = output, 1 = input (virtio's
        VIRTIO_SND_D_*); fmt a virtio format value (formats.CONVERTIBLE); channels 1..255; rate in
        Hz and one of the spec's rates (not the virtio rate value); chmap optional positions.
  write(data)       output: raw guest-format bytes; the backend converts. A partial trailing
                    frame is kept and completed by the next write (dropped at close).
  read(nbytes)      input: exactly nbytes of guest-format samples, any length (a partial frame
                    is finished on the next read). A source that ran out gives silence in the
                    guest format and sets `ended`.
  skip(nbytes)      input: what read(nbytes) would, thrown away without being built (the device
                    drops the input a guest missed; memory stays bounded however much).
  close()           idempotent; a backend can be opened again after it.
  connected         jack state (True unless set_connected(False); on_jack_change(backend, state)
                    is called when it changes), `name`, `directions`, `supported_rates` (Hz, or
                    None for every spec rate), `latency` (seconds the host adds, 0 for files).

Backends never sleep: the device paces them. The exception is PortAudioBackend, whose blocking
host stream paces itself. None are thread-safe: one stream, one thread at a time.

Implementations
  WavSink(path)          one WAV per open(), the guest's samples stored losslessly (formats.to_wav);
                         a new open() of the same path overwrites it. The file is valid after
                         every write() (see wav.WavWriter), so Ctrl-C or a crash loses nothing.
                         A path that cannot be written (missing directory, a directory, no
                         permission) is a BackendError at construction, before any guest runs.
  WavSource(path, loop)  reads a WAV and gives it in the stream's format. If the WAV container is
                         the stream format's own (formats.wav_spec(fmt)), the samples go through
                         bit-exact (formats.from_wav); otherwise through floats, rounding half to
                         even at the stream's valid bits and clamping (formats.from_float).
                         Channels: a mono WAV is copied to every channel; a WAV with more
                         channels gives its first N; one with fewer (not mono) fills the rest
                         with silence. Rates: NO resampling: open() at another rate than the
                         WAV's raises BackendError naming both (`supported_rates` tells the
                         device which rate to offer). Each open() starts at the file's start;
                         with loop=True the file repeats, else it ends in silence (`ended`).
  ToneSource(freq, amplitude)  a sine, the same value on every channel, computed from the
                         absolute frame number so it is phase-continuous and identical whatever
                         the read sizes; restarts at phase 0 on open().
  NullBackend()          output discarded (counted), input silence.
  PortAudioBackend(device=None)  the host's audio through the optional `sounddevice` package;
                         BackendUnavailable with a one-line reason if it or a device is missing.

backend_from_spec(spec, direction=None) parses "null", "tone[:HZ[,AMPLITUDE]]", "wav:FILE",
"wav+loop:FILE" and "host[:DEVICE]"; "wav:" becomes a WavSink for output, a WavSource for input
and a WavFile (either, decided at open()) when direction is None.
"""
from __future__ import annotations

import math
import os

from ...host_paths import explain, output_problem
from . import formats
from .wav import WavError, WavReader, WavWriter

__all__ = [
    "OUTPUT", "INPUT", "Backend", "BackendError", "BackendUnavailable", "BackendSpecError",
    "WavSink", "WavSource", "WavFile", "ToneSource", "NullBackend", "PortAudioBackend",
    "backend_from_spec",
]

OUTPUT, INPUT = 0, 1
SKIP_CHUNK = 64 << 10      # bytes a default skip() builds at a time
_DIR_NAMES = {OUTPUT: "output", INPUT: "input"}
MAX_CHANNELS = 255


class BackendError(Exception):
    """A backend cannot do what was asked (bad parameters, unreadable file, host error)."""


class BackendUnavailable(BackendError):
    """The host lacks what a backend needs (a package, a library, an audio device)."""


class BackendSpecError(BackendError, ValueError):
    """A backend spec string that does not parse."""


def _remap_channels(data: bytes, width: int, ch_in: int, ch_out: int, fill: bytes) -> bytes:
    """Interleaved samples of `width` bytes from ch_in to ch_out channels: mono is copied to
    every channel, extra channels are dropped, missing ones filled with the `fill` sample
    (zero bytes if `fill` is empty)."""
    if ch_in == ch_out:
        return data
    frames = len(data) // (width * ch_in)
    out = bytearray(fill * (frames * ch_out) if fill else frames * ch_out * width)
    step_in, step_out = width * ch_in, width * ch_out
    for c in range(ch_out):
        src = 0 if ch_in == 1 else c
        if src >= ch_in:
            continue
        for k in range(width):
            out[c * width + k::step_out] = data[src * width + k::step_in]
    return bytes(out)


class Backend:
    """Base class: parameter checks, partial-frame carry, jack state. Subclasses implement
    _open(), _write(whole frames), _read_frames(n) -> exactly n frames, _close()."""

    name = "backend"
    directions = frozenset((OUTPUT, INPUT))
    supported_rates: frozenset | None = None
    latency = 0.0

    def __init__(self):
        self._connected = True
        self.on_jack_change = None
        self.direction = None
        self.fmt = None
        self.channels = 0
        self.rate = 0
        self.chmap = None
        self.frame_bytes = 0
        self.ended = False
        self.bytes_written = 0
        self.bytes_read = 0
        self._wcarry = b""
        self._rcarry = b""

    # ---------------------------------------------------------------- jack state

    @property
    def connected(self) -> bool:
        return self._connected

    def set_connected(self, state: bool) -> None:
        """Plug (True) or unplug (False) the jack; tells on_jack_change when it changes."""
        state = bool(state)
        if state != self._connected:
            self._connected = state
            if self.on_jack_change is not None:
                self.on_jack_change(self, state)

    # ---------------------------------------------------------------- lifecycle

    @property
    def is_open(self) -> bool:
        return self.direction is not None

    def check_params(self, direction, fmt, channels, rate) -> None:
        """BackendError unless open() would accept these (no side effects)."""
        if direction not in _DIR_NAMES:
            raise BackendError(f"{self.name}: direction must be 0 (output) or 1 (input), "
                               f"not {direction!r}")
        if direction not in self.directions:
            raise BackendError(f"{self.name}: cannot be used for {_DIR_NAMES[direction]}")
        try:
            f = formats.format_info(fmt)
        except ValueError as e:
            raise BackendError(f"{self.name}: {e}") from None
        if f.value not in formats.CONVERTIBLE:
            raise BackendError(f"{self.name}: format {f.name} is not supported by host backends")
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise BackendError(f"{self.name}: channels must be 1..{MAX_CHANNELS}, "
                               f"not {channels!r}")
        if rate not in formats.RATES:
            hint = (f" (that is a virtio rate value: {formats.RATES[rate]} Hz?)"
                    if isinstance(rate, int) and 0 <= rate < len(formats.RATES) else "")
            raise BackendError(f"{self.name}: rate {rate!r} Hz is not a virtio-sound rate{hint}")
        if self.supported_rates is not None and rate not in self.supported_rates:
            raise BackendError(f"{self.name}: rate {rate} Hz not supported (supported: "
                               f"{', '.join(map(str, sorted(self.supported_rates))) or 'none'})")

    def open(self, direction: int, fmt: int, channels: int, rate: int, chmap=None) -> None:
        if self.is_open:
            raise BackendError(f"{self.name}: already open; close() it first")
        self.check_params(direction, fmt, channels, rate)
        self.direction, self.fmt, self.channels, self.rate = direction, fmt, channels, rate
        self.chmap = tuple(chmap) if chmap is not None else None
        self.frame_bytes = formats.frame_bytes(fmt, channels)
        self.ended = False
        self._wcarry = self._rcarry = b""
        try:
            self._open()
        except BaseException:
            self.direction = None
            raise

    def write(self, data) -> None:
        """Output: raw guest-format bytes, converted and passed on."""
        if self.direction != OUTPUT:
            raise BackendError(f"{self.name}: write() needs a stream opened for output")
        self.bytes_written += len(data)
        if self._wcarry:
            data = self._wcarry + bytes(data)
        n = len(data)
        whole = n - n % self.frame_bytes
        self._wcarry = bytes(data[whole:])
        if whole:
            self._write(bytes(data[:whole]))

    def read(self, nbytes: int) -> bytes:
        """Input: exactly `nbytes` of guest-format samples."""
        if self.direction != INPUT:
            raise BackendError(f"{self.name}: read() needs a stream opened for input")
        if nbytes < 0:
            raise ValueError("negative read size")
        out = self._rcarry[:nbytes]
        self._rcarry = self._rcarry[len(out):]
        need = nbytes - len(out)
        if need:
            nframes = -(-need // self.frame_bytes)
            chunk = self._read_frames(nframes)
            out += chunk[:need]
            self._rcarry = chunk[need:]
        self.bytes_read += nbytes
        return out

    def skip(self, nbytes: int) -> None:
        """Input: move on by `nbytes` as read(nbytes) would (partial frames included)."""
        if self.direction != INPUT:
            raise BackendError(f"{self.name}: skip() needs a stream opened for input")
        if nbytes < 0:
            raise ValueError("negative skip size")
        k = min(nbytes, len(self._rcarry))
        self._rcarry = self._rcarry[k:]
        need = nbytes - k
        whole, part = divmod(need, self.frame_bytes)
        if whole:
            self._skip_frames(whole)
        if part:
            self._rcarry = self._read_frames(1)[part:]
        self.bytes_read += nbytes

    def close(self) -> None:
        if not self.is_open:
            return
        try:
            self._close()
        finally:
            self.direction = None
            self._wcarry = self._rcarry = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- subclass hooks

    def _open(self) -> None:
        pass

    def _write(self, data: bytes) -> None:
        pass

    def _read_frames(self, nframes: int) -> bytes:
        return formats.silence(self.fmt, nframes * self.frame_bytes)

    def _skip_frames(self, nframes: int) -> None:
        """Drop nframes; by default read and thrown away SKIP_CHUNK bytes at a time."""
        step = max(1, SKIP_CHUNK // self.frame_bytes)
        while nframes > 0:
            k = min(step, nframes)
            self._read_frames(k)
            nframes -= k

    def _close(self) -> None:
        pass

    def __repr__(self) -> str:
        state = (f"open {_DIR_NAMES[self.direction]} {formats.FORMATS[self.fmt].name} "
                 f"{self.channels}ch {self.rate}Hz" if self.is_open else "closed")
        return f"<{type(self).__name__} {self.name} {state}>"


# --------------------------------------------------------------------------- null

class NullBackend(Backend):
    """Output discarded (bytes counted in bytes_written), input silence."""

    name = "null"

    def _skip_frames(self, nframes: int) -> None:
        pass


# --------------------------------------------------------------------------- WAV sink

class WavSink(Backend):
    """Output to a WAV file, bit-exact (see module doc).

    One file holds one stream session after another: a guest that RELEASEs and PREPAREs again
    with the same parameters (Linux does so on every xrun recovery) keeps appending to it. New
    parameters cannot share a WAV header, so they go to the next numbered file (play.wav,
    play-2.wav, ...); `files` lists them. The file is valid after every write; shutdown() closes it.
    """

    directions = frozenset((OUTPUT,))

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self.name = f"wav:{self.path}"
        problem = output_problem(self.path)
        if problem:     # found now, not as the guest's PREPARE failing with IO_ERR
            raise BackendError(problem)
        self.writer: WavWriter | None = None
        self.files: list = []
        self._kept = None          # (parameters, writer) between a close() and the next open()

    def _open(self) -> None:
        cm = self.chmap if self.chmap is not None and len(self.chmap) == self.channels else None
        key = (self.channels, self.rate, formats.wav_spec(self.fmt), cm)
        if self._kept is not None and self._kept[0] == key:
            self.writer, self._kept = self._kept[1], None
            return
        self.shutdown()
        stem, ext = os.path.splitext(self.path)
        path = self.path if not self.files else f"{stem}-{len(self.files) + 1}{ext or '.wav'}"
        try:
            self.writer = WavWriter(path, self.channels, self.rate, key[2], channel_map=cm)
        except OSError as e:
            raise BackendError(explain(path, e, writing=True)) from None
        self.files.append(path)

    def _write(self, data: bytes) -> None:
        self.writer.write(formats.to_wav(self.fmt, data)[1])

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _close(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            w.flush()
            cm = self.chmap if self.chmap is not None and len(self.chmap) == self.channels else None
            self._kept = ((self.channels, self.rate, formats.wav_spec(self.fmt), cm), w)

    def shutdown(self) -> None:
        """Close the file for good (the device is closing)."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept[1].close()
        if self.writer is not None and not self.is_open:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- WAV source

class WavSource(Backend):
    """Input from a WAV file (see module doc). The file is checked at construction; its
    parameters are in wav_channels, wav_rate, wav_spec and native_format (the guest format that
    passes through bit-exact, or None)."""

    directions = frozenset((INPUT,))

    def __init__(self, path, loop: bool = False):
        super().__init__()
        self.path = os.fspath(path)
        self.loop = bool(loop)
        self.name = f"wav{'+loop' if self.loop else ''}:{self.path}"
        try:
            with WavReader(self.path) as r:
                self.wav_channels, self.wav_rate, self.wav_spec = r.channels, r.rate, r.spec
                self.wav_frames = r.frames
        except WavError as e:
            raise BackendError(str(e)) from None
        self.native_format = formats.native_format(self.wav_spec)
        self.supported_rates = frozenset((self.wav_rate,)) & frozenset(formats.RATES)
        self.reader: WavReader | None = None

    def check_params(self, direction, fmt, channels, rate) -> None:
        if direction == INPUT and rate in formats.RATES and rate != self.wav_rate:
            advice = (f"use {self.wav_rate} Hz" if self.wav_rate in formats.RATES else
                      f"{self.wav_rate} Hz is no virtio-sound rate, so resample the file")
            raise BackendError(f"{self.name}: the WAV is {self.wav_rate} Hz, the stream "
                               f"{rate} Hz; WavSource does not resample ({advice})")
        super().check_params(direction, fmt, channels, rate)

    def _open(self) -> None:
        try:
            self.reader = WavReader(self.path)
        except WavError as e:
            raise BackendError(str(e)) from None
        r = self.reader
        if (r.channels, r.rate, r.spec) != (self.wav_channels, self.wav_rate, self.wav_spec):
            r.close()
            self.reader = None
            raise BackendError(f"{self.name}: the file changed format since it was opened")
        self.passthrough = r.spec == formats.wav_spec(self.fmt)
        self._fill = formats.container_silence(r.spec, r.spec.sample_bytes)

    def _read_frames(self, nframes: int) -> bytes:
        r = self.reader
        parts, got = [], 0
        while got < nframes and not self.ended:
            chunk = r.read(nframes - got)
            if not chunk:
                if self.loop and r.frames:
                    r.rewind()
                    continue
                self.ended = True
                break
            parts.append(chunk)
            got += len(chunk) // r.block_align
        out = b""
        if got:
            data = _remap_channels(b"".join(parts), r.spec.sample_bytes, r.channels,
                                   self.channels, self._fill)
            if self.passthrough:
                out = formats.from_wav(self.fmt, data)
            else:
                out = formats.from_float(self.fmt, formats.container_to_float(r.spec, data))
        if got < nframes:
            out += formats.silence(self.fmt, (nframes - got) * self.frame_bytes)
        return out

    def _close(self) -> None:
        r, self.reader = self.reader, None
        if r is not None:
            r.close()


class WavFile(Backend):
    """`wav:FILE` before the direction is known: a WavSink when opened for output, a WavSource
    (checked at that moment) when opened for input."""

    def __init__(self, path, loop: bool = False):
        super().__init__()
        self.path = os.fspath(path)
        self.loop = bool(loop)
        self.name = f"wav{'+loop' if self.loop else ''}:{self.path}"
        self.inner: Backend | None = None

    def _open(self) -> None:
        if self.direction == OUTPUT:
            inner = getattr(self, "_sink", None) or WavSink(self.path)
        else:
            inner = WavSource(self.path, self.loop)
        inner.open(self.direction, self.fmt, self.channels, self.rate, self.chmap)
        self.inner = inner

    @property
    def ended(self) -> bool:
        return self.inner is not None and self.inner.ended

    @ended.setter
    def ended(self, value) -> None:  # the base class resets it on open()
        pass

    def _write(self, data: bytes) -> None:
        self.inner.write(data)

    def _read_frames(self, nframes: int) -> bytes:
        return self.inner.read(nframes * self.frame_bytes)

    def _skip_frames(self, nframes: int) -> None:
        self.inner.skip(nframes * self.frame_bytes)

    def _close(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.close()
            if isinstance(inner, WavSink):
                self._sink = inner   # reopened for output: the same sink appends

    def shutdown(self) -> None:
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.shutdown()


# --------------------------------------------------------------------------- tone

class ToneSource(Backend):
    """A sine of `freq` Hz at `amplitude` (0..1 of full scale) on every channel."""

    directions = frozenset((INPUT,))

    def __init__(self, freq: float = 440.0, amplitude: float = 0.5):
        super().__init__()
        freq, amplitude = float(freq), float(amplitude)
        if not (math.isfinite(freq) and 0 < freq < 1e6):
            raise BackendError(f"tone: frequency {freq!r} Hz must be > 0 and < 1 MHz")
        if not (math.isfinite(amplitude) and 0 <= amplitude <= 1):
            raise BackendError(f"tone: amplitude {amplitude!r} must be within 0..1")
        self.freq, self.amplitude = freq, amplitude
        self.name = f"tone:{freq:g}" + ("" if amplitude == 0.5 else f",{amplitude:g}")
        self.frame = 0

    def _open(self) -> None:
        self.frame = 0

    def samples(self, start: int, count: int) -> list[float]:
        """The tone's values for frames start .. start+count-1 (one channel)."""
        f, rate, a, tau = self.freq, float(self.rate), self.amplitude, 2 * math.pi
        fmod, sin = math.fmod, math.sin
        return [a * sin(tau * (fmod(i * f, rate) / rate)) for i in range(start, start + count)]

    def _skip_frames(self, nframes: int) -> None:
        self.frame += nframes      # the tone is a function of the frame number

    def _read_frames(self, nframes: int) -> bytes:
        mono = formats.from_float(self.fmt, self.samples(self.frame, nframes))
        self.frame += nframes
        width = formats.FORMATS[self.fmt].phys // 8
        return _remap_channels(mono, width, 1, self.channels, b"")


# --------------------------------------------------------------------------- PortAudio

_INSTALL_HINT = ("host audio needs the optional 'sounddevice' package and the PortAudio "
                 "library: pip install sounddevice (on Debian/Ubuntu also: apt install "
                 "libportaudio2)")


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _import_sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as e:
        raise BackendUnavailable(f"{_INSTALL_HINT} ({_one_line(e)})") from None
    return sounddevice


class PortAudioBackend(Backend):
    """The host's sound card through PortAudio (python-sounddevice). Output converts the guest
    format to the nearest sample type PortAudio takes (8/16/24/32-bit PCM and float32 as they
    are; FLOAT64 via float32; mu-law/A-law decoded to 16-bit) and writes with a blocking stream,
    which paces the device; input reads that way and converts back."""

    def __init__(self, device=None):
        super().__init__()
        self.sd = _import_sounddevice()
        self.device = device
        self.name = "host" if device is None else f"host:{device}"
        try:
            devices = self.sd.query_devices()
        except Exception as e:
            raise BackendUnavailable(f"{self.name}: PortAudio cannot list audio devices: "
                                     f"{_one_line(e)}") from None
        if not len(devices):
            raise BackendUnavailable(f"{self.name}: no host audio device exists "
                                     "(PortAudio finds none)")
        self.stream = None

    def _plan(self):
        """(PortAudio dtype, guest->host, host->guest) for the stream's format."""
        fmt = self.fmt
        spec = formats.wav_spec(fmt)
        if spec.tag == formats.WAVE_FORMAT_PCM:
            dtype = {8: "uint8", 16: "int16", 24: "int24", 32: "int32"}[spec.bits]
            return dtype, (lambda d: formats.to_wav(fmt, d)[1]), (lambda d: formats.from_wav(fmt, d))
        if fmt == formats.FLOAT:
            return "float32", bytes, bytes
        host = (formats.WavSpec(formats.WAVE_FORMAT_IEEE_FLOAT, 32) if fmt == formats.FLOAT64
                else formats.WavSpec(formats.WAVE_FORMAT_PCM, 16))
        return ("float32" if fmt == formats.FLOAT64 else "int16",
                lambda d: formats.float_to_container(host, formats.to_float(fmt, d)),
                lambda d: formats.from_float(fmt, formats.container_to_float(host, d)))

    def _open(self) -> None:
        sd = self.sd
        kind = "output" if self.direction == OUTPUT else "input"
        try:
            sd.query_devices(self.device, kind=kind)
        except Exception as e:
            raise BackendUnavailable(f"{self.name}: no host audio {kind} device "
                                     f"({_one_line(e)})") from None
        dtype, self._to_host, self._from_host = self._plan()
        cls = sd.RawOutputStream if self.direction == OUTPUT else sd.RawInputStream
        try:
            self.stream = cls(samplerate=self.rate, channels=self.channels, dtype=dtype,
                              device=self.device)
            self.stream.start()
        except Exception as e:
            self.stream = None
            raise BackendError(f"{self.name}: cannot open a {self.channels}-channel {dtype} "
                               f"{kind} stream at {self.rate} Hz: {_one_line(e)}") from None
        self.latency = float(getattr(self.stream, "latency", 0.0) or 0.0)

    def _write(self, data: bytes) -> None:
        self.stream.write(self._to_host(data))

    def _read_frames(self, nframes: int) -> bytes:
        buf, _overflowed = self.stream.read(nframes)
        return self._from_host(bytes(buf))

    def _close(self) -> None:
        s, self.stream = self.stream, None
        if s is not None:
            try:
                s.stop()
            finally:
                s.close()


# --------------------------------------------------------------------------- specs

_SPEC_FORMS = "null, tone[:HZ[,AMPLITUDE]], wav:FILE, wav+loop:FILE or host[:DEVICE]"


def backend_from_spec(spec: str, direction: int | None = None) -> Backend:
    """A backend from a spec string (see module doc). `direction` (0 output, 1 input, None not
    yet known) picks WavSink/WavSource and rejects tone for output."""
    if not isinstance(spec, str) or not spec.strip():
        raise BackendSpecError(f"empty audio backend spec (expected {_SPEC_FORMS})")
    if direction not in (None, OUTPUT, INPUT):
        raise BackendSpecError(f"direction must be 0 (output), 1 (input) or None, "
                               f"not {direction!r}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "null":
        if arg:
            raise BackendSpecError(f"audio backend {spec!r}: null takes no argument")
        return NullBackend()
    if kind == "tone":
        if direction == OUTPUT:
            raise BackendSpecError(f"audio backend {spec!r}: tone is an input (capture) source")
        if sep and not arg:
            raise BackendSpecError(f"audio backend {spec!r}: give a frequency, e.g. tone:440")
        parts = arg.split(",") if arg else []
        if len(parts) > 2:
            raise BackendSpecError(f"audio backend {spec!r}: expected tone:HZ[,AMPLITUDE]")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise BackendSpecError(f"audio backend {spec!r}: frequency and amplitude must be "
                                   "numbers (tone:440 or tone:440,0.25)") from None
        try:
            return ToneSource(*nums)
        except BackendError as e:
            raise BackendSpecError(f"audio backend {spec!r}: {e}") from None
    if kind in ("wav", "wav+loop"):
        if not arg:
            raise BackendSpecError(f"audio backend {spec!r}: give a file name, e.g. wav:out.wav")
        loop = kind == "wav+loop"
        if direction == OUTPUT:
            if loop:
                raise BackendSpecError(f"audio backend {spec!r}: loop applies to input only")
            return WavSink(arg)
        if direction == INPUT:
            return WavSource(arg, loop=loop)
        return WavFile(arg, loop=loop)
    if kind == "host":
        device = None
        if arg:
            device = int(arg) if arg.isdigit() else arg
        return PortAudioBackend(device)
    raise BackendSpecError(f"unknown audio backend {spec!r} (expected {_SPEC_FORMS})")
