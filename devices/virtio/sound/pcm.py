"""PCM streams: the command state machine and the paced data path of txq (2) and rxq (3).

State machine (VIRTIO 1.2 sec. 5.14.6.6.1): a stream is named after the last command it accepted;
anything else is BAD_MSG and changes nothing.

    (initial)   -> SET_PARAMS
    SET_PARAMS  -> SET_PARAMS, PREPARE
    PREPARE     -> SET_PARAMS, PREPARE, START, RELEASE    (output may be pre-filled)
    START       -> STOP
    STOP        -> START, RELEASE
    RELEASE     -> SET_PARAMS, PREPARE

I/O messages: [pcm_xfer stream_id (readable, 4)] [data] [pcm_status (writable, 8)]; the status is
the last 8 writable bytes. A message that cannot be taken (bad stream id, wrong direction, data
that is not whole frames, empty or larger than buffer_bytes, a stream without parameters, or one
released) is answered at once with IO_ERR; one with no room for a status is returned with used
length 0. Accepted messages are held (views of guest RAM, no copy) in stream order, in one FIFO
per stream: the virtqueue bounds how many there can be.

Pacing: one timeline per stream, anchored at START at (t0, p0): the byte at stream position p is
played (output) or captured (input) at t0 + (p - p0) / bytes_per_second. A message covering
positions [start, end) completes at exactly t0 + (end - p0) / bytes_per_second, computed from
totals each time, so nothing drifts however long the stream runs. Output data is handed to the
backend (with volume/mute applied) when it becomes due to play, i.e. when the message before it
completes; input messages are filled from backend.read() when they complete, CAPTURE_CHUNK at a
time. The timeline is re-anchored when it would otherwise run ahead of the data:
  - START with an empty queue: the first message starts when it arrives;
  - underrun/overrun: a RUNNING stream whose last message completed with none queued behind it
    has run dry: counted in `xruns`, and a PCM_XRUN event if the stream negotiated EVT_XRUNS
    (once per episode). The next message starts when it arrives; for input the frames missed in
    between are skipped in the backend (at most one second's worth, never built in memory), so a
    source stays in step with the wall clock;
  - STOP freezes the position (mid-message if need be) and START resumes from it.

latency_bytes: for an output message, the bytes of the messages the driver had queued behind it at
the moment it finished playing, plus what the host backend itself holds (backend.latency seconds, 0
for files and null): what must still be played before a frame sent now is heard. This is the
definition crosvm uses and virtio-spec issue #198 proposes ("how many bytes need to be consumed
before the current buffer is played"), here evaluated at completion. (A Linux guest adds it to the
bytes it has in flight, so it reports a delay up to twice the real one; the completion times
themselves are exact.) Input messages report 0: a buffer is handed back the moment its last frame is
captured, nothing waits inside the device.

RELEASE first completes every pending message of the stream, then answers: output data that has
not been played in full gets IO_ERR (the spec's status for an operation that did not succeed);
input messages come back OK with the whole frames captured up to the STOP (the spec's end-of-
stream exception to "full buffers only"), IO_ERR when they hold nothing.
"""
import inspect
from collections import deque

from . import constants as snd
from . import formats
from .gain import apply_gain, silence

INITIAL, SET_PARAMS, PREPARE, START, STOP, RELEASE = "INITIAL", "SET_PARAMS", "PREPARE", "START", "STOP", "RELEASE"
STATES = (INITIAL, SET_PARAMS, PREPARE, START, STOP, RELEASE)
REQUEST_STATE = {snd.R_PCM_SET_PARAMS: SET_PARAMS, snd.R_PCM_PREPARE: PREPARE, snd.R_PCM_START: START,
                 snd.R_PCM_STOP: STOP, snd.R_PCM_RELEASE: RELEASE}
ALLOWED = {
    INITIAL: {SET_PARAMS},
    SET_PARAMS: {SET_PARAMS, PREPARE},
    PREPARE: {SET_PARAMS, PREPARE, START, RELEASE},
    START: {STOP},
    STOP: {START, RELEASE},
    RELEASE: {SET_PARAMS, PREPARE},
}
ACCEPTS_IO = (PREPARE, START, STOP)

MAX_BUFFER_BYTES = 16 << 20     # SET_PARAMS beyond: NOT_SUPP (Linux's largest: 18 ch x 8 B x 384 kHz x 160 ms)
MAX_LOST_SECONDS = 1.0          # input frames skipped after an overrun, at most
CAPTURE_CHUNK = 16 << 10        # bytes asked of an input backend at a time: host memory per call stays small


class Params:
    """Accepted SET_PARAMS values (format and rate as the spec's values), with what the data path
    derives from them once: `hz`, `frame` (the unit every message must be a multiple of: a frame,
    or a byte for sub-byte frames) and `bps` (exact bytes per second, a float: IMA_ADPCM mono at
    11025 Hz is 5512.5)."""
    __slots__ = ("buffer_bytes", "period_bytes", "features", "channels", "format", "rate", "hz", "frame", "bps")

    def __init__(self, buffer_bytes, period_bytes, features, channels, fmt, rate):
        self.buffer_bytes, self.period_bytes, self.features = buffer_bytes, period_bytes, features
        self.channels, self.format, self.rate = channels, fmt, rate
        self.hz = formats.rate_hz(rate)
        bits = formats.frame_bits(fmt, channels)
        self.frame = bits // 8 if bits % 8 == 0 else 1
        self.bps = bits * self.hz / 8

    def key(self):
        return self.channels, self.format, self.rate

    def has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    def __repr__(self):
        return (f"Params({formats.FORMATS[self.format].name} x{self.channels} @ {self.hz} Hz, "
                f"buffer {self.buffer_bytes}, period {self.period_bytes}, features {self.features:#x})")


class Message:
    __slots__ = ("chain", "size", "start", "end", "arrived", "started", "status")

    def __init__(self, chain, size: int, start: int, arrived: float):
        self.chain, self.size, self.start, self.end = chain, size, start, start + size
        self.arrived = arrived
        self.started = False      # output: handed to the backend
        self.status = snd.S_OK


class PcmStream:
    """One PCM stream: configuration (topology.StreamConfig), state, parameters, held messages and
    the timeline. `dev` gives complete(queue, chain, used), event(code, data), clock-free helpers."""

    def __init__(self, stream_id: int, cfg, dev):
        self.id = stream_id
        self.cfg = cfg
        self.dev = dev
        self.direction = cfg.direction
        self.queue = snd.TXQ if cfg.direction == snd.D_OUTPUT else snd.RXQ
        self.backend = cfg.backend
        self.controls = {}        # 'volume', 'switch'[, 'gain'], set by the device
        self.chmaps = []          # positions of the channel maps of this stream's group and direction
        try:
            self._open_takes_chmap = "chmap" in inspect.signature(cfg.backend.open).parameters
        except (AttributeError, TypeError, ValueError):
            self._open_takes_chmap = False
        self.xruns = 0
        self.completed = 0        # messages completed OK
        self.bytes_played = 0
        self.bytes_captured = 0
        self.bytes_lost = 0       # input frames dropped after overruns
        self.io_errors = 0        # backend failures
        self.short_reads = 0      # backend reads that came back short (padded with silence)
        self.rejected = 0         # I/O messages answered IO_ERR at once
        self.last_error = ""
        self._open_key = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.state = INITIAL
        self.params = None
        self.pending = deque()
        self.position = 0         # stream position after the last queued message
        self.anchored = False
        self.anchor_t = 0.0
        self.anchor_pos = 0.0
        self.resume_pos = None
        self.starved = False
        self.starved_at = 0.0

    def __repr__(self):
        return f"PcmStream({self.id}, {self.state}, {self.params}, pending={len(self.pending)})"

    # --- information --------------------------------------------------------------------------------
    def info(self) -> bytes:
        c = self.cfg
        return snd.PCM_INFO.pack(c.hda_fn_nid, c.features, c.formats, c.rates, c.direction, c.channels_min,
                               c.channels_max)

    @property
    def polling(self) -> bool:
        return self.params is not None and self.state in ACCEPTS_IO and self.params.has(snd.PCM_F_MSG_POLLING)

    def amplitude(self) -> float:
        """Linear factor the data gets: volume x switch (x input gain)."""
        c = self.controls
        if not c:
            return 1.0
        a = c["volume"].amplitude() * (1.0 if c["switch"].values[0] else 0.0)
        if "gain" in c:
            a *= c["gain"].amplitude()
        return a

    # --- commands (each returns a status; errors never raise) -----------------------------------------
    def check_transition(self, target: str) -> bool:
        return target in ALLOWED[self.state]

    def set_params(self, buffer_bytes, period_bytes, features, channels, fmt, rate, padding) -> tuple:
        """(status, why). Validation order: malformed (BAD_MSG) before unsupported (NOT_SUPP)."""
        c = self.cfg
        if padding:
            return snd.S_BAD_MSG, "nonzero padding"
        if features & ~snd.PCM_FEATURES_DEFINED:
            return snd.S_BAD_MSG, f"undefined feature bits {features:#x}"
        if features & snd.PCM_FEATURES_SHMEM == snd.PCM_FEATURES_SHMEM:
            return snd.S_BAD_MSG, "both SHMEM_HOST and SHMEM_GUEST"
        if fmt >= snd.FORMAT_COUNT:
            return snd.S_BAD_MSG, f"undefined format {fmt}"
        if rate >= snd.RATE_COUNT:
            return snd.S_BAD_MSG, f"undefined rate {rate}"
        if channels == 0:
            return snd.S_BAD_MSG, "0 channels"
        if buffer_bytes == 0 or period_bytes == 0 or buffer_bytes % period_bytes:
            return snd.S_BAD_MSG, f"period_bytes {period_bytes} does not divide buffer_bytes {buffer_bytes}"
        if features & ~c.features:
            return snd.S_NOT_SUPP, f"features {features:#x} not offered ({c.features:#x})"
        if not c.formats >> fmt & 1:
            return snd.S_NOT_SUPP, f"format {formats.FORMATS[fmt].name} not offered"
        if not c.rates >> rate & 1:
            return snd.S_NOT_SUPP, f"rate {formats.RATES[rate]} not offered"
        if not c.channels_min <= channels <= c.channels_max:
            return snd.S_NOT_SUPP, f"{channels} channels, not {c.channels_min}..{c.channels_max}"
        if buffer_bytes > MAX_BUFFER_BYTES:
            return snd.S_NOT_SUPP, f"buffer_bytes {buffer_bytes} > {MAX_BUFFER_BYTES}"
        p = Params(buffer_bytes, period_bytes, features, channels, fmt, rate)
        if period_bytes % p.frame:
            return snd.S_BAD_MSG, f"period_bytes {period_bytes} is not whole frames of {p.frame} bytes"
        self._flush(snd.S_IO_ERR)           # messages pre-filled for the old parameters
        self._close_backend()
        self.params = p
        self.state = SET_PARAMS
        return snd.S_OK, ""

    def prepare(self) -> tuple:
        if self.params is None:
            return snd.S_BAD_MSG, "no parameters"
        key = self.params.key()
        if self._open_key != key:
            self._close_backend()
            if self.backend is not None:
                kw = {}
                chmap = next((m for m in self.chmaps if len(m) == self.params.channels), None)
                if chmap is not None and self._open_takes_chmap:
                    kw["chmap"] = chmap     # the guest's layout (e.g. a WAV channel mask)
                try:
                    self.backend.open(self.direction, self.params.format, self.params.channels,
                                      self.params.hz, **kw)
                except Exception as e:  # noqa: BLE001 - a host failure is the guest's IO_ERR
                    self.io_errors += 1
                    self.last_error = f"backend open: {type(e).__name__}: {e}"
                    return snd.S_IO_ERR, self.last_error
            self._open_key = key
        if not self.pending:
            self.position = 0
        self.resume_pos = None
        self.state = PREPARE
        return snd.S_OK, ""

    def start(self, now: float) -> tuple:
        self.state = START
        self.starved = False
        if self.pending:
            self._anchor(now, self.resume_pos if self.resume_pos is not None else self.pending[0].start)
        else:
            self.anchored = False
        self.resume_pos = None
        self.advance(now)
        return snd.S_OK, ""

    def stop(self, now: float) -> tuple:
        self.advance(now)
        if self.pending and self.anchored:
            m = self.pending[0]
            pos = self.anchor_pos + (now - self.anchor_t) * self.params.bps
            self.resume_pos = min(max(pos, m.start), m.end)
        else:
            self.resume_pos = None
        self.anchored = False
        self.state = STOP
        return snd.S_OK, ""

    def release(self) -> tuple:
        """Complete every pending message, close the backend (the caller answers afterwards)."""
        self._flush(None)
        self._close_backend()
        self.position = 0
        self.resume_pos = None
        self.anchored = False
        self.state = RELEASE
        return snd.S_OK, ""

    def reset(self) -> None:
        """Device reset: drop held messages (their queue is gone), close the backend, forget all."""
        self._close_backend()
        self._reset_state()

    def drop_pending(self) -> None:
        """The queue went away (QueueReady=0 / QueueReset): held messages cannot be returned."""
        self.pending.clear()
        self.anchored = False

    # --- I/O --------------------------------------------------------------------------------------------
    def reject_reason(self, size: int) -> str:
        if self.state not in ACCEPTS_IO:
            return f"stream {self.id} is in state {self.state}, not prepared/running/stopped"
        p = self.params
        if size == 0:
            return "no data"
        if size % p.frame:
            return f"{size} bytes are not whole frames of {p.frame} bytes"
        if size > p.buffer_bytes:
            return f"{size} bytes, more than buffer_bytes {p.buffer_bytes}"
        return ""

    def enqueue(self, chain, size: int, now: float) -> None:
        """Hold an accepted message (reject_reason() was empty)."""
        self.advance(now)
        m = Message(chain, size, self.position, now)
        self.position = m.end
        was_empty = not self.pending
        self.pending.append(m)
        if self.state == START and was_empty:
            # nothing was playing: this message starts now (after an xrun, or a START on an empty queue)
            if self.starved and self.direction == snd.D_INPUT:
                self._drop_lost_input(now - self.starved_at)
            self.starved = False
            self._anchor(now, m.start)
            self.advance(now)

    def _anchor(self, t: float, pos: float) -> None:
        self.anchor_t, self.anchor_pos, self.anchored = t, pos, True

    def due(self, m: Message) -> float:
        """When `m` completes on the current timeline."""
        return self.anchor_t + (m.end - self.anchor_pos) / self.params.bps

    def next_deadline(self):
        if self.state == START and self.anchored and self.pending:
            return self.due(self.pending[0])
        return None

    def advance(self, now: float) -> None:
        """Complete what is due by `now`, hand output to the backend as it becomes due."""
        if self.state != START or not self.anchored:
            return
        last = None
        while self.pending:
            m = self.pending[0]
            if not m.started and self.direction == snd.D_OUTPUT:
                self._play(m)
            t = self.due(m)
            if t > now:
                break
            self.pending.popleft()
            self._finish(m, t)
            last = t
        if last is not None and not self.pending and not self.starved:
            self.starved, self.starved_at = True, last
            self.anchored = False
            self.xruns += 1
            if self.params.has(snd.PCM_F_EVT_XRUNS):
                self.dev.event(snd.EVT_PCM_XRUN, self.id)

    def _play(self, m: Message) -> None:
        m.started = True
        data = apply_gain(self.params.format, m.chain.read(m.size, 4), self.amplitude())
        if self.backend is not None:
            try:
                self.backend.write(data)
            except Exception as e:  # noqa: BLE001
                self.io_errors += 1
                self.last_error = f"backend write: {type(e).__name__}: {e}"
                m.status = snd.S_IO_ERR

    def _host_latency(self) -> int:
        """Bytes the host adds after hand-off (backend.latency seconds; 0 for files), whole frames."""
        sec = getattr(self.backend, "latency", 0) or 0
        try:
            return int(float(sec) * self.params.bps) // self.params.frame * self.params.frame
        except (TypeError, ValueError, OverflowError):
            return 0

    def _chunk(self) -> int:
        """CAPTURE_CHUNK in whole frames (one frame at least)."""
        f = self.params.frame
        return max(f, CAPTURE_CHUNK // f * f)

    def _capture_into(self, chain, n: int) -> bool:
        """Fill the first n writable bytes of `chain` from the backend (gain applied), a chunk at a
        time: a message may be buffer_bytes long. Silence after a failed or short read; whether
        the backend worked."""
        fmt, amp, step, ok, short = self.params.format, self.amplitude(), self._chunk(), True, False
        for off in range(0, n, step):
            k = min(step, n - off)
            data = b""
            if self.backend is None:
                data = silence(fmt, k)
            elif ok:
                try:
                    data = bytes(self.backend.read(k) or b"")[:k]
                except Exception as e:  # noqa: BLE001
                    self.io_errors += 1
                    self.last_error = f"backend read: {type(e).__name__}: {e}"
                    data, ok = b"", False
                short = short or (ok and len(data) < k)
            if len(data) < k:
                data += silence(fmt, k - len(data))
            chain.write(apply_gain(fmt, data, amp), off)
        if short:
            self.short_reads += 1
        return ok

    def _drop_lost_input(self, seconds: float) -> None:
        """Move the source on by the frames missed while the stream was dry, without building them
        (backend.skip() when it has one, else reads of one chunk at a time, thrown away)."""
        p = self.params
        n = round(min(seconds, MAX_LOST_SECONDS) * p.bps / p.frame) * p.frame   # nearest whole frame
        if n > 0 and self.backend is not None:
            try:
                skip = getattr(self.backend, "skip", None)
                if skip is not None:
                    skip(n)
                else:
                    step = self._chunk()
                    for off in range(0, n, step):
                        self.backend.read(min(step, n - off))
            except Exception as e:  # noqa: BLE001
                self.io_errors += 1
                self.last_error = f"backend read: {type(e).__name__}: {e}"
            self.bytes_lost += n

    def _finish(self, m: Message, t: float) -> None:
        """Complete `m` on schedule (at ideal time t)."""
        chain = m.chain
        status_off = chain.writable_len - snd.PCM_STATUS.size
        if self.direction == snd.D_OUTPUT:
            latency = sum(x.size for x in self.pending if x.arrived <= t) + self._host_latency()
            chain.write(snd.PCM_STATUS.pack(m.status, min(latency, 0xFFFFFFFF)), status_off)
            used = snd.PCM_STATUS.size
            if m.status == snd.S_OK:
                self.bytes_played += m.size
        else:
            ok = self._capture_into(chain, m.size)
            m.status = snd.S_OK if ok else snd.S_IO_ERR
            chain.write(snd.PCM_STATUS.pack(m.status, 0), status_off)
            used = m.size + snd.PCM_STATUS.size
            self.bytes_captured += m.size
        if m.status == snd.S_OK:
            self.completed += 1
        self.dev.complete(self.queue, chain, used)

    def _flush(self, status) -> None:
        """Complete every pending message now: with `status`, or (None: RELEASE) per the rules above."""
        while self.pending:
            m = self.pending.popleft()
            chain = m.chain
            status_off = chain.writable_len - snd.PCM_STATUS.size
            used = snd.PCM_STATUS.size
            st = snd.S_IO_ERR if status is None else status
            if status is None and self.direction == snd.D_INPUT and self.resume_pos is not None \
                    and m.start < self.resume_pos:
                p = self.params
                n = int(min(self.resume_pos, m.end) - m.start) // p.frame * p.frame
                if n:
                    ok = self._capture_into(chain, n)
                    st = snd.S_OK if ok else snd.S_IO_ERR
                    used += n
                    self.bytes_captured += n
            chain.write(snd.PCM_STATUS.pack(st, 0), status_off)
            self.dev.complete(self.queue, chain, used)
        self.anchored = False

    def _close_backend(self) -> None:
        if self._open_key is not None and self.backend is not None:
            try:
                self.backend.close()
            except Exception as e:  # noqa: BLE001
                self.io_errors += 1
                self.last_error = f"backend close: {type(e).__name__}: {e}"
        self._open_key = None
