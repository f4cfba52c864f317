"""virtio-sound (VIRTIO 1.2/1.3 sec. 5.14, device ID 25): the device.

    dev = VirtioSound(Topology.parse("out=wav:play.wav,in=tone:440"))   # or VirtioSound() / a Topology
    transport = vm.add_virtio_device(dev)

Queues: 0 controlq (controlq.py), 1 eventq, 2 txq and 3 rxq (pcm.py). Offers VIRTIO_SND_F_CTLS
unless the topology says ctls=False; the config space is 16 bytes {jacks, streams, chmaps,
controls}, `controls` reading 0 unless F_CTLS was negotiated.

Time: `clock` (default time.monotonic) is the only time source. With the real clock one daemon
thread (started at DRIVER_OK) paces the streams: it sleeps until the next due completion (or poll
time), takes self.lock, completes what is due, pushes, signals. With any other clock no thread is
started (unless thread=True): the caller drives time by calling poll(now) (alias tick), which does
exactly what the thread does at `now`. Tests use that with a fake clock.

Events (eventq): the driver pre-fills device-writable buffers of >= 8 bytes; the device sends
JACK_CONNECTED/DISCONNECTED (set_jack(), or a jack whose backend's `connected` changed: through the
backend's on_jack_change callback when it has one, else seen on every poll), PCM_XRUN (streams that
negotiated EVT_XRUNS) and CTL_NOTIFY (F_CTLS negotiated: on a value/metadata change by the driver or
by set_control()). An event that finds no buffer waits in a queue of MAX_PENDING_EVENTS; beyond that
the oldest is dropped (counted in events_dropped). Events are only generated while the driver is
running (DRIVER_OK): a driver reads the jack and control state when it starts.

Host API (all take self.lock): set_jack(jack_id, connected), set_control(control_id, values),
control(name, index) -> control id, poll(now=None), close(). A bad argument raises; a guest fault
met on the way (posting an event pops the eventq, poll takes I/O) sets NEEDS_RESET, as a
notification would, and the call returns normally. Counters: bad_requests (malformed
control/I-O messages answered with an error), internal_errors, events_sent, events_dropped,
bad_event_buffers, per stream in dev.streams[i] (xruns, completed, bytes_played, ...).
"""
import threading
import time
from collections import deque

from nvmmpy.devices.interfaces import GuestMemoryError
from nvmmpy.devices.virtio.device import VirtioDevice
from nvmmpy.devices.virtio.errors import QueueError

from . import constants as snd
from . import controlq
from . import formats
from .ctls import check_unique, stream_controls
from .pcm import PcmStream
from .topology import Topology

MAX_PENDING_EVENTS = 64
JACK_POLL_INTERVAL = 0.1              # seconds between checks of backends' `connected` (thread)
POLL_INTERVAL_MIN, POLL_INTERVAL_MAX = 0.001, 0.02   # MSG_POLLING: a quarter period, within these


class Jack:
    """A jack's live state: connection and (with JACK_F_REMAP) association/sequence."""

    def __init__(self, jack_id: int, cfg):
        self.id, self.cfg = jack_id, cfg
        self.hda_fn_nid, self.features, self.caps = cfg.hda_fn_nid, cfg.features, cfg.caps
        self.backend = cfg.backend
        self.connected = cfg.connected
        self.defconf = cfg.defconf

    def reset(self) -> None:
        self.defconf = self.cfg.defconf

    def remap(self, association: int, sequence: int) -> None:
        self.defconf = (self.defconf & ~0xFF) | (association & 0xF) << 4 | (sequence & 0xF)

    def info(self) -> bytes:
        return snd.JACK_INFO.pack(self.hda_fn_nid, self.features, self.defconf, self.caps, int(self.connected))


class Chmap:
    def __init__(self, cfg):
        self.cfg = cfg

    def info(self) -> bytes:
        c = self.cfg
        return snd.CHMAP_INFO.pack(c.hda_fn_nid, c.direction, len(c.positions), bytes(c.positions))


class VirtioSound(VirtioDevice):
    device_id = snd.DEVICE_ID
    queue_sizes = (64, 64, 256, 256)
    name = "virtio-sound"

    def __init__(self, topology: Topology | None = None, clock=time.monotonic, *, thread: bool | None = None):
        super().__init__()
        topo = Topology.default() if topology is None else topology.validate()
        self.topology = topo
        self.clock = clock
        self.device_features = (1 << snd.F_CTLS) if topo.ctls else 0
        self.streams = [PcmStream(i, cfg, self) for i, cfg in enumerate(topo.streams)]
        self.jacks = [Jack(i, cfg) for i, cfg in enumerate(topo.jacks)]
        self.chmaps = [Chmap(m) for m in topo.chmaps]
        for s in self.streams:
            s.chmaps = [m.positions for m in topo.chmaps
                        if m.hda_fn_nid == s.cfg.hda_fn_nid and m.direction == s.direction]
        self.controls = []
        for s in self.streams:
            s.controls = stream_controls(s.id, s.direction, s.cfg.hda_fn_nid)
            self.controls.extend(s.controls.values())
        self.controls.extend(topo.controls)
        check_unique(self.controls)
        if len(self.controls) > 0xFFFF:
            raise ValueError(f"{len(self.controls)} controls: at most 65535 (ids are le16 in events)")
        self._events = deque()
        self._pushed = set()
        for b in {id(j.backend): j.backend for j in self.jacks if j.backend is not None}.values():
            if hasattr(b, "on_jack_change") and b.on_jack_change is None:
                b.on_jack_change = self._backend_jack_changed   # at once, not only on the next poll
        self._cond = threading.Condition(self.lock)
        self._threaded = (clock is time.monotonic) if thread is None else bool(thread)
        self._thread = None
        self._stopping = False
        self.last_status = None
        self.events_sent = 0
        self.events_dropped = 0
        self.bad_event_buffers = 0

    def __repr__(self):
        return f"VirtioSound({self.topology!r})"

    def describe(self) -> str:
        """A one-line-per-item summary of what the guest will see."""
        lines = []
        for s in self.streams:
            c = s.cfg
            rates = "+".join(str(hz) for i, hz in enumerate(formats.RATES) if c.rates >> i & 1)
            lines.append(f"stream {s.id}: {'output' if c.direction == snd.D_OUTPUT else 'input'} fn {c.hda_fn_nid}, "
                         f"{c.channels_min}-{c.channels_max} ch, {bin(c.formats).count('1')} formats, rates {rates}, "
                         f"backend {getattr(c.backend, 'name', None) or type(c.backend).__name__}")
        for j in self.jacks:
            lines.append(f"jack {j.id}: {j.cfg.kind} fn {j.hda_fn_nid}, "
                         f"{'connected' if j.connected else 'disconnected'}{', remap' if j.features else ''}")
        for i, m in enumerate(self.chmaps):
            c = m.cfg
            lines.append(f"chmap {i}: {'output' if c.direction == snd.D_OUTPUT else 'input'} fn {c.hda_fn_nid}, "
                         f"{' '.join(formats.CHMAP_POSITIONS[p] for p in c.positions)}")
        lines.append(f"controls: {len(self.controls)}" + ("" if self.topology.ctls else " (VIRTIO_SND_F_CTLS off)"))
        return "\n".join(lines)

    # --- configuration ----------------------------------------------------------------------------
    def config_space(self) -> bytes:
        return snd.CONFIG.pack(len(self.jacks), len(self.streams), len(self.chmaps),
                             len(self.controls) if self.has_feature(snd.F_CTLS) else 0)

    # --- lifecycle --------------------------------------------------------------------------------------
    def activate(self) -> None:
        self._update_polling()
        if self._threaded and self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="virtio-sound", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def reset(self) -> None:
        for s in self.streams:
            s.reset()
        for j in self.jacks:
            j.reset()
        for c in self.controls:
            c.reset()
        self._events.clear()
        self._pushed.clear()
        self._cond.notify_all()

    def queue_stopped(self, index: int) -> None:
        if index in (snd.TXQ, snd.RXQ):
            for s in self.streams:
                if s.queue == index:
                    s.drop_pending()
        self._pushed.discard(index)

    def close(self) -> None:
        """Stop the pacing thread and close every backend (the device is unusable afterwards)."""
        with self.lock:
            self._stopping = True
            for s in self.streams:
                s.reset()
                shutdown = getattr(s.backend, "shutdown", None)
                if shutdown is not None:
                    shutdown()   # files are closed for good (a WAV sink appends across RELEASE/PREPARE)
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2)
        self._thread = None

    # --- queues -------------------------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        q = self.queues[index] if index < len(self.queues) else None
        if q is None:
            return
        now = self.clock()
        try:
            if index == snd.CONTROLQ:
                while (chain := q.pop()) is not None:
                    q.push(chain, controlq.handle(self, chain, now))
                    self._pushed.add(snd.CONTROLQ)
            elif index == snd.EVENTQ:
                self._flush_events()
            elif index in (snd.TXQ, snd.RXQ):
                self._advance(now)
                self.take_io(index, now)
        finally:
            self._update_polling()
            self._signal()
            self._cond.notify_all()

    def take_io(self, index: int, now: float) -> None:
        """Pop every available I/O message of txq/rxq and hand it to its stream (or answer it)."""
        q = self.queues[index] if index < len(self.queues) else None
        if q is None:
            return
        while (chain := q.pop()) is not None:
            self._io(index, chain, now)

    def _io(self, index: int, chain, now: float) -> None:
        wlen = chain.writable_len
        if wlen < snd.PCM_STATUS.size:
            self.bad_request(f"I/O message with {wlen} writable bytes: no room for a status")
            self.complete(index, chain.detach(), 0)
            return
        try:
            why, stream, size = self._check_io(index, chain)
            if not why:
                stream.enqueue(chain.detach(), size, now)
                return
            if stream is not None:
                stream.rejected += 1
            self.bad_request(why)
        except (QueueError, GuestMemoryError):
            raise
        except Exception as e:  # noqa: BLE001
            self.internal_error(f"I/O message: {type(e).__name__}: {e}")
        chain.write(snd.PCM_STATUS.pack(snd.S_IO_ERR, 0), wlen - snd.PCM_STATUS.size)
        self.complete(index, chain.detach(), snd.PCM_STATUS.size)

    def _check_io(self, index: int, chain):
        """(why it is refused or '', stream or None, data bytes)."""
        if chain.readable_len < snd.PCM_XFER.size:
            return f"I/O message with a {chain.readable_len}-byte header", None, 0
        sid = snd.PCM_XFER.unpack(chain.read(snd.PCM_XFER.size))[0]
        if sid >= len(self.streams):
            return f"I/O message for stream {sid} of {len(self.streams)}", None, 0
        s = self.streams[sid]
        if index == snd.TXQ:
            if s.direction != snd.D_OUTPUT:
                return f"txq message for input stream {sid}", s, 0
            if chain.writable_len != snd.PCM_STATUS.size:
                return f"txq message with {chain.writable_len - snd.PCM_STATUS.size} device-writable data bytes", s, 0
            size = chain.readable_len - snd.PCM_XFER.size
        else:
            if s.direction != snd.D_INPUT:
                return f"rxq message for output stream {sid}", s, 0
            if chain.readable_len != snd.PCM_XFER.size:
                return f"rxq message with {chain.readable_len - snd.PCM_XFER.size} device-readable data bytes", s, 0
            size = chain.writable_len - snd.PCM_STATUS.size
        why = s.reject_reason(size)
        return (f"stream {sid}: {why}" if why else ""), s, size

    def complete(self, index: int, chain, used: int) -> None:
        """Return a held chain to the driver (pcm.py calls this); signalled at the end of the pass."""
        q = self.queues[index] if index < len(self.queues) else None
        if q is not None:
            q.push(chain, used)
            self._pushed.add(index)

    def _signal(self) -> None:
        for i in sorted(self._pushed, reverse=True):    # data queues before controlq
            self.signal_used(i)
        self._pushed.clear()

    # --- events ----------------------------------------------------------------------------------------
    def event(self, code: int, data: int) -> None:
        self._post(snd.EVENT.pack(code, data))

    def ctl_notify(self, control_id: int, mask: int) -> None:
        if self.has_feature(snd.F_CTLS):
            self._post(snd.CTL_EVENT.pack(snd.EVT_CTL_NOTIFY, control_id, mask))

    def _post(self, ev: bytes) -> None:
        if not self.active:
            return
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(ev)
        self._flush_events()

    def _flush_events(self) -> None:
        q = self.queues[snd.EVENTQ] if len(self.queues) > snd.EVENTQ else None
        if q is None or not self.active:
            return
        while self._events and (chain := q.pop()) is not None:
            if chain.readable_len or chain.writable_len < snd.EVENT.size:
                self.bad_event_buffers += 1
                self.bad_request(f"event buffer with {chain.readable_len} readable and {chain.writable_len} "
                                 "writable bytes")
                q.push(chain, 0)
            else:
                chain.write(self._events.popleft(), 0)
                q.push(chain, snd.EVENT.size)
                self.events_sent += 1
            self._pushed.add(snd.EVENTQ)

    @property
    def pending_events(self) -> int:
        return len(self._events)

    # --- host API ----------------------------------------------------------------------------------------
    def set_jack(self, jack_id: int, connected: bool) -> None:
        """Plug or unplug a jack (JACK_CONNECTED/DISCONNECTED if it changed)."""
        with self.lock:
            jack, connected = self.jacks[jack_id], bool(connected)
            self._host_call("set_jack", self._set_jack, jack, connected)

    def _set_jack(self, jack: Jack, connected: bool) -> None:
        if jack.connected != connected:
            jack.connected = connected
            self.event(snd.EVT_JACK_CONNECTED if connected else snd.EVT_JACK_DISCONNECTED, jack.id)

    def _backend_jack_changed(self, backend, connected) -> None:
        """backends.Backend.on_jack_change: a backend was plugged/unplugged (any thread)."""
        with self.lock:
            connected = bool(connected)
            for j in self.jacks:
                if j.backend is backend:
                    self._host_call("backend jack change", self._set_jack, j, connected)

    def control(self, name: str, index: int = 0) -> int:
        """The id of control (name, index); KeyError if there is none."""
        for i, c in enumerate(self.controls):
            if c.name == name and c.index == index:
                return i
        raise KeyError(f"no control {name!r} index {index}")

    def set_control(self, control_id: int, values) -> None:
        """Change a control from the host (CTL_NOTIFY if it changed); ValueError if invalid."""
        with self.lock:
            c = self.controls[control_id]
            if not isinstance(values, (list, tuple, bytes)):
                values = [values] * c.count
            try:
                changed = c.set(values)
            except Exception as e:
                raise ValueError(f"control {c.name!r}: {e}") from None
            if changed:
                self._host_call("set_control", self.ctl_notify, control_id, 1 << snd.CTL_EVT_MASK_VALUE)

    def _host_call(self, where: str, fn, *args) -> None:
        """fn(*args) for a host-side entry point (its arguments already checked): posting an event
        pops the eventq, so a guest fault met there sets NEEDS_RESET (VirtioDevice.contain) instead
        of reaching the host caller; then signal what was pushed."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            self.contain(where, e)
        finally:
            self._signal()

    # --- time -----------------------------------------------------------------------------------------------
    def poll(self, now: float | None = None):
        """Do everything due by `now` (default: the clock): complete I/O, hand output to backends,
        detect xruns, poll MSG_POLLING queues, follow backends' jack state. Returns the next time
        something will be due (None: nothing scheduled)."""
        with self.lock:
            return self._poll_locked(self.clock() if now is None else now)

    tick = poll

    def _advance(self, now: float) -> None:
        for s in self.streams:
            s.advance(now)

    def _poll_locked(self, now: float):
        if not self.active:
            return None
        try:
            self._advance(now)
            for qi in (snd.TXQ, snd.RXQ):
                if any(s.polling for s in self.streams if s.queue == qi):
                    self.take_io(qi, now)
            for j in self.jacks:
                if j.backend is not None:
                    c = getattr(j.backend, "connected", None)
                    if c is not None:
                        self._set_jack(j, bool(c))
        except Exception as e:  # noqa: BLE001 - a host thread or the VMM called: contain, as a notify would
            self.contain("poll", e)
        finally:
            self._update_polling()
            self._signal()
        deadlines = [d for s in self.streams if (d := s.next_deadline()) is not None]
        interval = self._poll_interval()
        if interval is not None:
            deadlines.append(now + interval)
        if any(j.backend is not None for j in self.jacks):
            deadlines.append(now + JACK_POLL_INTERVAL)
        return min(deadlines) if deadlines else None

    def _poll_interval(self):
        periods = [s.params.period_bytes / s.params.bps for s in self.streams if s.polling]
        if not periods:
            return None
        return min(max(min(periods) / 4, POLL_INTERVAL_MIN), POLL_INTERVAL_MAX)

    def _update_polling(self) -> None:
        """With MSG_POLLING negotiated the driver need not notify tx/rx: ask it not to."""
        for qi in (snd.TXQ, snd.RXQ):
            q = self.queues[qi] if len(self.queues) > qi else None
            if q is not None:
                q.set_notification(not any(s.polling for s in self.streams if s.queue == qi))

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                try:
                    deadline = self._poll_locked(self.clock())
                except Exception as e:  # noqa: BLE001 - the pacing thread must not die
                    self.internal_error(f"pacing thread: {type(e).__name__}: {e}")
                    deadline = self.clock() + 0.1
                if self._stopping:
                    break
                self._cond.wait(None if deadline is None else max(0.0, deadline - self.clock()))
