"""What a virtio-sound device exposes: function groups (hda_fn_nid), PCM streams in both directions
with their formats, rates, channels and host backends, jacks, channel maps and extra controls.

Built in Python:

    topo = Topology()
    out = topo.add_stream(D_OUTPUT, WavSink("play.wav"), channels=(1, 2))   # -> stream id 0
    topo.add_stream(D_INPUT, ToneSource(440), fn=0)                        # -> stream id 1
    topo.add_jack("headphone", stream=out)       # follows the stream backend's `connected`
    topo.add_chmap(D_OUTPUT, ["FL", "FR"])       # else standard maps are derived per function group
    dev = VirtioSound(topo)

or parsed from the command-line form (`Topology.parse`, grammar in its docstring):

    out=wav:play.wav,in=tone:440,jack=mic
    out=null,channels=1-8,rates=44100+48000,fn,out=wav:b.wav,ctls=off

IDs are the order of the add_* calls (the spec's jack/stream/chmap ids are global); each item carries
its function group's hda_fn_nid, which is what links jacks, streams and channel maps in the guest.
Every check is made when the topology is built (ValueError with the reason), never in the guest's
face.
"""
from dataclasses import dataclass, field

from . import constants as snd
from .formats import (CHMAP_BY_NAME, CHMAP_POSITIONS, CONVERTIBLE_MASK, FORMAT_BY_NAME, FORMATS, RATE_BY_HZ,
                      RATES)

MAX_STREAMS = 64
MAX_JACKS = 64
MAX_CHMAPS = 256
MAX_CONTROLS = 0xFFFF          # control ids travel as le16 in CTL_NOTIFY events
CHANNELS_MAX = snd.CHMAP_MAX_SIZE

# Formats the host path converts (formats.CONVERTIBLE: every linear PCM format, mu-law/A-law,
# float; not IMA ADPCM, DSD or IEC958 subframes, which carry no plain samples).
DEFAULT_FORMATS = CONVERTIBLE_MASK
DEFAULT_RATES = snd.RATES_DEFINED                      # every rate incl. 12k, 24k and 384k
STREAM_FEATURES = (1 << snd.PCM_F_MSG_POLLING) | (1 << snd.PCM_F_EVT_XRUNS)   # what a stream can negotiate


# --- masks from names ------------------------------------------------------------------------------
def format_mask(spec) -> int:
    """A formats bitmap from an int bitmap, or names/values ('s16', 'FLOAT', 5) as an iterable or a
    '+'-separated string."""
    if isinstance(spec, int):
        return spec
    items = spec.split("+") if isinstance(spec, str) else list(spec)
    mask = 0
    for it in items:
        if isinstance(it, int):
            f = it
        else:
            name = str(it).strip().upper().replace("-", "_")
            name = {"F32": "FLOAT", "F64": "FLOAT64", "MULAW": "MU_LAW", "ALAW": "A_LAW",
                    "FLOAT32": "FLOAT"}.get(name, name)
            if name not in FORMAT_BY_NAME:
                raise ValueError(f"unknown PCM format {it!r} (known: "
                                 f"{', '.join(f.name.lower() for f in FORMATS)})")
            f = FORMAT_BY_NAME[name].value
        if not 0 <= f < snd.FORMAT_COUNT:
            raise ValueError(f"PCM format {f} is not defined (0..{snd.FORMAT_COUNT - 1})")
        mask |= 1 << f
    return mask


def rate_mask(spec) -> int:
    """A rates bitmap from an int bitmap, or rates in Hz as an iterable or a '+'-separated string."""
    if isinstance(spec, int):
        return spec
    items = spec.split("+") if isinstance(spec, str) else list(spec)
    mask = 0
    for it in items:
        try:
            hz = int(str(it).strip().lower().removesuffix("hz"))
        except ValueError:
            raise ValueError(f"rate {it!r} is not a number of Hz") from None
        if hz not in RATE_BY_HZ:
            raise ValueError(f"rate {hz} Hz is not a virtio-sound rate (one of "
                             f"{', '.join(str(r) for r in sorted(RATES))})")
        mask |= 1 << RATE_BY_HZ[hz]
    return mask


def chmap_positions(spec) -> tuple:
    items = spec.split("+") if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        if isinstance(it, int):
            p = it
        else:
            name = str(it).strip().upper()
            if name not in CHMAP_BY_NAME:
                raise ValueError(f"unknown channel position {it!r} (known: {', '.join(CHMAP_POSITIONS)})")
            p = CHMAP_BY_NAME[name]
        if not 0 <= p < snd.CHMAP_COUNT:
            raise ValueError(f"channel position {p} is not defined (0..{snd.CHMAP_COUNT - 1})")
        out.append(p)
    return tuple(out)


# --- items ---------------------------------------------------------------------------------------------
@dataclass
class StreamConfig:
    direction: int
    backend: object = None
    hda_fn_nid: int = 0
    formats: int = DEFAULT_FORMATS
    rates: int = DEFAULT_RATES
    channels_min: int = 1
    channels_max: int = 2
    features: int = STREAM_FEATURES

    @property
    def name(self) -> str:
        b = getattr(self.backend, "name", None) or type(self.backend).__name__
        return f"{'output' if self.direction == snd.D_OUTPUT else 'input'} ({b})"


# Jack kinds: (direction, HDA port, location, default device, color, pin caps)
JACK_KINDS = {
    "headphone": (snd.D_OUTPUT, snd.HDA_PORT_JACK, snd.HDA_LOC_EXTERNAL_FRONT, snd.HDA_DEV_HP_OUT, snd.HDA_COLOR_GREEN,
                  snd.HDA_PINCAP_PRESENCE_DETECT | snd.HDA_PINCAP_OUTPUT | snd.HDA_PINCAP_HEADPHONE_DRIVE),
    "line-out": (snd.D_OUTPUT, snd.HDA_PORT_JACK, snd.HDA_LOC_EXTERNAL_REAR, snd.HDA_DEV_LINE_OUT, snd.HDA_COLOR_GREEN,
                 snd.HDA_PINCAP_PRESENCE_DETECT | snd.HDA_PINCAP_OUTPUT),
    "speaker": (snd.D_OUTPUT, snd.HDA_PORT_FIXED, snd.HDA_LOC_INTERNAL, snd.HDA_DEV_SPEAKER, snd.HDA_COLOR_UNKNOWN,
                snd.HDA_PINCAP_OUTPUT),
    "mic": (snd.D_INPUT, snd.HDA_PORT_JACK, snd.HDA_LOC_EXTERNAL_FRONT, snd.HDA_DEV_MIC_IN, snd.HDA_COLOR_PINK,
            snd.HDA_PINCAP_PRESENCE_DETECT | snd.HDA_PINCAP_INPUT),
    "line-in": (snd.D_INPUT, snd.HDA_PORT_JACK, snd.HDA_LOC_EXTERNAL_REAR, snd.HDA_DEV_LINE_IN, snd.HDA_COLOR_BLUE,
                snd.HDA_PINCAP_PRESENCE_DETECT | snd.HDA_PINCAP_INPUT),
}


@dataclass
class JackConfig:
    hda_fn_nid: int = 0
    defconf: int = 0
    caps: int = 0
    features: int = 0                # 1 << JACK_F_REMAP
    connected: bool = True
    backend: object = None           # when set, the jack follows getattr(backend, "connected")
    kind: str = "custom"

    @property
    def remap(self) -> bool:
        return bool(self.features >> snd.JACK_F_REMAP & 1)


@dataclass
class ChmapConfig:
    hda_fn_nid: int
    direction: int
    positions: tuple = field(default_factory=tuple)


# Standard layouts (ALSA order) offered when a function group gives no channel maps of its own.
STANDARD_CHMAPS = {
    1: (snd.CHMAP_MONO,),
    2: (snd.CHMAP_FL, snd.CHMAP_FR),
    4: (snd.CHMAP_FL, snd.CHMAP_FR, snd.CHMAP_RL, snd.CHMAP_RR),
    6: (snd.CHMAP_FL, snd.CHMAP_FR, snd.CHMAP_FC, snd.CHMAP_LFE, snd.CHMAP_RL, snd.CHMAP_RR),
    8: (snd.CHMAP_FL, snd.CHMAP_FR, snd.CHMAP_FC, snd.CHMAP_LFE, snd.CHMAP_RL, snd.CHMAP_RR, snd.CHMAP_SL, snd.CHMAP_SR),
}


def _direction(d) -> int:
    if d in (snd.D_OUTPUT, "out", "output", "playback"):
        return snd.D_OUTPUT
    if d in (snd.D_INPUT, "in", "input", "capture"):
        return snd.D_INPUT
    raise ValueError(f"direction {d!r} is not output/input")


class Topology:
    def __init__(self, ctls: bool = True):
        self.streams: list[StreamConfig] = []
        self.jacks: list[JackConfig] = []
        self.chmaps: list[ChmapConfig] = []
        self.controls: list = []      # extra ctls.Control objects, after the per-stream ones
        self.ctls = bool(ctls)        # offer VIRTIO_SND_F_CTLS

    def __repr__(self):
        return (f"Topology(streams={[s.name for s in self.streams]}, jacks={len(self.jacks)}, "
                f"chmaps={len(self.chmaps)}, ctls={self.ctls})")

    # --- building ------------------------------------------------------------------------------------
    def add_stream(self, direction, backend=None, *, fn: int = 0, formats=None, rates=None, channels=(1, 2),
                   features: int = STREAM_FEATURES) -> int:
        """A PCM stream; returns its id. channels: N or (min, max) in 1..18. formats/rates: bitmaps,
        names/Hz lists or '+'-strings (default: every host-convertible format, every rate)."""
        direction = _direction(direction)
        cmin, cmax = (channels, channels) if isinstance(channels, int) else tuple(channels)
        directions = getattr(backend, "directions", None)
        if directions is not None and direction not in directions:
            raise ValueError(f"backend {getattr(backend, 'name', backend)!r} cannot be used for "
                             f"{'output' if direction == snd.D_OUTPUT else 'input'}")
        mask = DEFAULT_RATES if rates is None else rate_mask(rates)
        supported = getattr(backend, "supported_rates", None)
        if supported is not None:           # e.g. a WAV source plays its file's rate only
            allowed = sum(1 << RATE_BY_HZ[hz] for hz in supported if hz in RATE_BY_HZ)
            if not mask & allowed:
                raise ValueError(f"backend {getattr(backend, 'name', backend)!r} supports "
                                 f"{', '.join(str(hz) for hz in sorted(supported)) or 'no'} Hz, none of "
                                 f"the stream's rates")
            mask &= allowed
        s = StreamConfig(direction, backend, int(fn), DEFAULT_FORMATS if formats is None else format_mask(formats),
                         mask, int(cmin), int(cmax), int(features))
        self._check_stream(s, len(self.streams))
        self.streams.append(s)
        return len(self.streams) - 1

    def add_output(self, backend=None, **kw) -> int:
        return self.add_stream(snd.D_OUTPUT, backend, **kw)

    def add_input(self, backend=None, **kw) -> int:
        return self.add_stream(snd.D_INPUT, backend, **kw)

    def add_jack(self, kind: str = "headphone", *, stream: int | None = None, fn: int | None = None,
                 connected: bool | None = None, remap: bool = False, backend=None, defconf: int | None = None,
                 caps: int | None = None) -> int:
        """A jack; returns its id. `kind` picks the HDA pin configuration (headphone, line-out,
        speaker, mic, line-in) unless defconf/caps are given. With `stream`, the jack joins that
        stream's function group and follows its backend's `connected` state; `backend` does the
        latter for any backend. `remap` advertises VIRTIO_SND_JACK_F_REMAP."""
        if kind not in JACK_KINDS and (defconf is None or caps is None):
            raise ValueError(f"unknown jack kind {kind!r} (known: {', '.join(JACK_KINDS)}; or give defconf and caps)")
        if stream is not None:
            if not 0 <= stream < len(self.streams):
                raise ValueError(f"jack for stream {stream}, but there are {len(self.streams)} streams")
            s = self.streams[stream]
            fn = s.hda_fn_nid if fn is None else fn
            backend = s.backend if backend is None else backend
            if kind in JACK_KINDS and JACK_KINDS[kind][0] != s.direction:
                raise ValueError(f"a {kind} jack cannot serve an "
                                 f"{'output' if s.direction == snd.D_OUTPUT else 'input'} stream")
        fn = 0 if fn is None else int(fn)
        if kind in JACK_KINDS:
            _, port, loc, dev, color, pincaps = JACK_KINDS[kind]
            if defconf is None:
                assoc = 1 + sorted({s.hda_fn_nid for s in self.streams} | {fn}).index(fn) % 15
                seq = sum(1 for j in self.jacks if j.hda_fn_nid == fn) & 0xF
                misc = 0 if pincaps & snd.HDA_PINCAP_PRESENCE_DETECT else snd.HDA_MISC_NO_PRESENCE_DETECT
                defconf = snd.hda_defconf(port, loc, dev, snd.HDA_CONN_1_8 if port == snd.HDA_PORT_JACK else 0,
                                        color, misc, assoc, seq)
            caps = pincaps if caps is None else caps
        if connected is None:
            connected = bool(getattr(backend, "connected", True)) if backend is not None else True
        j = JackConfig(fn, int(defconf) & 0xFFFFFFFF, int(caps) & 0xFFFFFFFF,
                       (1 << snd.JACK_F_REMAP) if remap else 0, bool(connected), backend, kind)
        if len(self.jacks) >= MAX_JACKS:
            raise ValueError(f"more than {MAX_JACKS} jacks")
        self.jacks.append(j)
        return len(self.jacks) - 1

    def add_chmap(self, direction, positions, *, fn: int = 0) -> int:
        """A channel map for the streams of `direction` in function group `fn`; returns its id.
        positions: names ('FL', 'FR') or values, 1..18 of them."""
        pos = chmap_positions(positions)
        if not 1 <= len(pos) <= snd.CHMAP_MAX_SIZE:
            raise ValueError(f"a channel map has 1..{snd.CHMAP_MAX_SIZE} positions, not {len(pos)}")
        if len(self.chmaps) >= MAX_CHMAPS:
            raise ValueError(f"more than {MAX_CHMAPS} channel maps")
        self.chmaps.append(ChmapConfig(int(fn), _direction(direction), pos))
        return len(self.chmaps) - 1

    def add_control(self, control) -> None:
        """An extra control element (a ctls.Control), after the per-stream volume/mute/gain ones."""
        self.controls.append(control)

    # --- checks ------------------------------------------------------------------------------------
    @staticmethod
    def _check_stream(s: StreamConfig, sid: int) -> None:
        where = f"stream {sid}"
        if not 1 <= s.channels_min <= s.channels_max <= CHANNELS_MAX:
            raise ValueError(f"{where}: channels {s.channels_min}-{s.channels_max} not within 1..{CHANNELS_MAX} "
                             "(min <= max)")
        if not s.formats or s.formats & ~snd.FORMATS_DEFINED:
            raise ValueError(f"{where}: formats bitmap {s.formats:#x} is empty or has undefined bits")
        if not s.rates or s.rates & ~snd.RATES_DEFINED:
            raise ValueError(f"{where}: rates bitmap {s.rates:#x} is empty or has undefined bits")
        if s.features & ~STREAM_FEATURES:
            raise ValueError(f"{where}: features {s.features:#x}: only MSG_POLLING and EVT_XRUNS are implemented")
        if not 0 <= s.hda_fn_nid <= 0xFFFFFFFF:
            raise ValueError(f"{where}: hda_fn_nid {s.hda_fn_nid} is not a le32")

    def validate(self) -> "Topology":
        """Check everything (ValueError) and derive the default channel maps; returns self."""
        if len(self.streams) > MAX_STREAMS:
            raise ValueError(f"{len(self.streams)} streams: at most {MAX_STREAMS}")
        for i, s in enumerate(self.streams):
            self._check_stream(s, i)
        for i, j in enumerate(self.jacks):
            if j.features & ~snd.JACK_FEATURES_DEFINED:
                raise ValueError(f"jack {i}: undefined features {j.features:#x}")
        for i, m in enumerate(self.chmaps):
            if not 1 <= len(m.positions) <= snd.CHMAP_MAX_SIZE:
                raise ValueError(f"channel map {i}: {len(m.positions)} positions")
        groups = {}
        for s in self.streams:
            groups.setdefault((s.hda_fn_nid, s.direction), []).append(s)
        have = {(m.hda_fn_nid, m.direction) for m in self.chmaps}
        for (fn, d), streams in groups.items():
            if (fn, d) in have:
                continue
            lo, hi = min(s.channels_min for s in streams), max(s.channels_max for s in streams)
            for n, pos in STANDARD_CHMAPS.items():
                if lo <= n <= hi:
                    self.chmaps.append(ChmapConfig(fn, d, pos))
            have.add((fn, d))
        if len(self.chmaps) > MAX_CHMAPS:
            raise ValueError(f"{len(self.chmaps)} channel maps: at most {MAX_CHMAPS}")
        return self

    # --- defaults and the command-line form -----------------------------------------------------------
    @classmethod
    def default(cls, backend_factory=None) -> "Topology":
        """One output stream on a null backend."""
        topo = cls()
        topo.add_stream(snd.D_OUTPUT, _make_backend("null", snd.D_OUTPUT, backend_factory))
        return topo.validate()

    @classmethod
    def parse(cls, spec: str | None, backend_factory=None) -> "Topology":
        """A topology from its command-line form: comma-separated items, applied left to right.

            out=BACKEND        a new output stream on BACKEND (backends.backend_from_spec: null,
                               wav:FILE, ...); `out` alone means out=null
            in=BACKEND         a new input stream (tone:440, wav:FILE, null, ...)
            fn[=NID]           streams and jacks after it go to a new function group (hda_fn_nid NID,
                               default: the last one + 1)
            channels=N|MIN-MAX the last stream's channel range (1..18; default 1-2)
            formats=F+F...     the last stream's formats (s16+s24+float...; default: all convertible)
            rates=HZ+HZ...     the last stream's rates (44100+48000...; default: all 16)
            jack=KIND[+remap][+unplugged]
                               a jack for the last stream (headphone, line-out, speaker, mic,
                               line-in); it follows the backend's `connected` state
            chmap=POS+POS...   a channel map (FL+FR...) for the last stream's direction and group
            ctls=on|off        offer VIRTIO_SND_F_CTLS (volume/mute/gain controls; default on)

        An empty spec (or one with no stream) gives one output stream on a null backend. A backend
        spec may contain commas (in=tone:440,0.25) as long as what follows a comma has no '='.
        ValueError says which item is wrong and why.
        """
        spec = (spec or "").strip()
        parser = _SpecParser(cls(), backend_factory)
        for raw in _spec_items(spec):
            item = raw.strip()
            key, eq, value = item.partition("=")
            try:
                parser.apply(key.strip().lower(), bool(eq), value.strip())
            except ValueError as e:
                raise ValueError(f"virtio-snd topology {spec!r}: {item!r}: {e}") from None
        return parser.finish()


def _spec_items(spec: str) -> list:
    """The comma-separated items of a topology spec. A comma inside a backend spec
    (tone:440,0.25): a fragment without '=' that is no bare key belongs to the out=/in= before it."""
    items = []
    for raw in (spec.split(",") if spec else []):
        if "=" not in raw and raw.strip().lower() not in ("out", "in", "fn") and items \
                and items[-1].split("=", 1)[0].strip().lower() in ("out", "in"):
            items[-1] += "," + raw
        else:
            items.append(raw)
    return items


_BOOL_WORDS = {"on": True, "1": True, "yes": True, "true": True, "off": False, "0": False, "no": False,
               "false": False}


class _SpecParser:
    """Topology.parse's state between items: the topology so far and the current function group.
    Each method parses one kind of item; a ValueError says what is wrong with it."""

    def __init__(self, topo: "Topology", backend_factory):
        self.topo = topo
        self.factory = backend_factory
        self.fn = 0
        self.fn_used = False     # a stream went to the current group (a bare fn starts the next)

    def apply(self, key: str, eq: bool, value: str) -> None:
        if key in ("out", "in"):
            self.stream(key, value)
        elif key == "fn":
            self.function_group(eq, value)
        elif key in ("channels", "formats", "rates", "jack", "chmap"):
            self.stream_option(key, value)
        elif key == "ctls":
            if value.lower() not in _BOOL_WORDS:
                raise ValueError("ctls takes on or off")
            self.topo.ctls = _BOOL_WORDS[value.lower()]
        else:
            raise ValueError(f"unknown key {key!r} (expected out, in, fn, channels, formats, rates, jack, "
                             "chmap, ctls)")

    def stream(self, key: str, value: str) -> None:
        """out=BACKEND / in=BACKEND: a new stream in the current function group."""
        d = snd.D_OUTPUT if key == "out" else snd.D_INPUT
        self.topo.add_stream(d, _make_backend(value or "null", d, self.factory), fn=self.fn)
        self.fn_used = True

    def function_group(self, eq: bool, value: str) -> None:
        """fn=NID, or fn alone: the next group (unless the current one has no stream yet)."""
        if eq:
            try:
                fn_new = int(value, 0)
            except ValueError:
                raise ValueError("fn takes a function group number (hda_fn_nid)") from None
            if not 0 <= fn_new <= 0xFFFFFFFF:
                raise ValueError("hda_fn_nid must fit in 32 bits")
            self.fn = fn_new
        elif self.fn_used:
            self.fn += 1
        self.fn_used = False

    def stream_option(self, key: str, value: str) -> None:
        """channels=, formats=, rates=, jack=, chmap=: about the last stream."""
        topo = self.topo
        if not topo.streams:
            raise ValueError(f"{key}= applies to the stream before it: put an out= or in= first")
        sid = len(topo.streams) - 1
        s = topo.streams[sid]
        if not value:
            raise ValueError(f"{key}= needs a value")
        if key == "channels":
            self.channels(s, sid, value)
        elif key == "formats":
            s.formats = format_mask(value)
        elif key == "rates":
            s.rates = rate_mask(value)
        elif key == "jack":
            kind, *flags = value.lower().split("+")
            unknown = set(flags) - {"remap", "unplugged"}
            if unknown:
                raise ValueError(f"unknown jack flag(s) {', '.join(sorted(unknown))} (remap, unplugged)")
            topo.add_jack(kind, stream=sid, remap="remap" in flags,
                          connected=False if "unplugged" in flags else None)
        else:
            topo.add_chmap(s.direction, value, fn=s.hda_fn_nid)

    def channels(self, s: "StreamConfig", sid: int, value: str) -> None:
        lo, _, hi = value.partition("-")
        try:
            s2 = StreamConfig(**{**s.__dict__, "channels_min": int(lo), "channels_max": int(hi or lo)})
        except ValueError:
            raise ValueError("channels takes N or MIN-MAX (1..18)") from None
        self.topo._check_stream(s2, sid)
        s.channels_min, s.channels_max = s2.channels_min, s2.channels_max

    def finish(self) -> "Topology":
        """No stream at all: one output on a null backend."""
        if not self.topo.streams:
            self.topo.add_stream(snd.D_OUTPUT, _make_backend("null", snd.D_OUTPUT, self.factory))
        return self.topo.validate()


def _make_backend(spec: str, direction: int, factory=None):
    """A backend from its spec through `factory(spec, direction)` or backends.backend_from_spec
    (null, tone[:HZ[,AMPLITUDE]], wav:FILE, wav+loop:FILE, host[:DEVICE]); any failure to make
    it (a bad spec, an unreadable WAV, no PortAudio) is a ValueError with the reason."""
    if factory is None:
        from .backends import backend_from_spec as factory
    try:
        return factory(spec, direction)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - BackendError, BackendUnavailable, OSError: say why
        why, arg = str(e), spec.partition(":")[2]
        raise ValueError(why if arg and arg in why else f"audio backend {spec!r}: {why}") from None
