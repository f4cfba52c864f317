"""Control elements (VIRTIO 1.3 sec. 5.14.6.10, VIRTIO_SND_F_CTLS): ALSA-style mixer controls.

Every stream gets, in stream order (index = stream id, so (name, index) is unique):

    output: "PCM Playback Volume"   INTEGER 0..100, TLV dB scale -50 dB..0 dB in 0.5 dB steps, 0 mutes
            "PCM Playback Switch"   BOOLEAN, 1 = sound on, 0 = muted (ALSA's "Switch" convention)
    input:  "PCM Capture Volume"    as the playback volume
            "PCM Capture Switch"    as the playback switch
            "Input Gain Capture Volume"  INTEGER 0..48, TLV dB scale 0..+24 dB in 0.5 dB steps

role = (VOLUME|MUTE|GAIN << 1) | direction, hda_fn_nid = the stream's. The volume controls take
TLV_WRITE too: a new DB_SCALE / DB_MINMAX / DB_MINMAX_MUTE / DB_LINEAR description changes how
their value maps to amplitude (and sends a TLV notification). The amplitude the data path applies
is volume x switch (x gain for inputs), see PcmStream.amplitude().

`Control` is generic: a topology can add elements of any type (BOOLEAN, INTEGER, INTEGER64,
ENUMERATED, BYTES, IEC958), with optional TLV and TLV-command handlers. Errors are BadRequest with
the status to answer (BAD_MSG for malformed values, NOT_SUPP for operations the element does not
allow); nothing a driver sends raises anything else.
"""
import struct

from nvmmpy.devices.virtio.errors import BadRequest

from . import constants as snd
from .gain import db_to_gain

_TYPE_FMT = {snd.CTL_TYPE_BOOLEAN: "i", snd.CTL_TYPE_INTEGER: "i", snd.CTL_TYPE_INTEGER64: "q",
             snd.CTL_TYPE_ENUMERATED: "I", snd.CTL_TYPE_BYTES: "B"}
A_RW = (1 << snd.CTL_ACCESS_READ) | (1 << snd.CTL_ACCESS_WRITE)


def _ascii(s: str, limit: int, what: str) -> bytes:
    b = s.encode("ascii")
    if not b or len(b) >= limit or b"\0" in b:
        raise ValueError(f"{what} {s!r} must be 1..{limit - 1} ASCII characters")
    return b


def tlv_pack(tlv_type: int, *values: int) -> bytes:
    return snd.CTL_TLV_HDR.pack(tlv_type, 4 * len(values)) + struct.pack(f"<{len(values)}i", *values)


def tlv_unpack(data: bytes):
    """(type, [le32 values]) of a TLV, BadRequest(BAD_MSG) when malformed."""
    if len(data) < 8:
        raise BadRequest(snd.S_BAD_MSG, f"TLV of {len(data)} bytes, shorter than its 8-byte header")
    t, length = snd.CTL_TLV_HDR.unpack_from(data)
    if length % 4 or length > snd.CTL_TLV_MAX_VALUE:
        raise BadRequest(snd.S_BAD_MSG, f"TLV length {length} is not a multiple of 4 up to {snd.CTL_TLV_MAX_VALUE}")
    if len(data) < 8 + length:
        raise BadRequest(snd.S_BAD_MSG, f"TLV length {length} but only {len(data) - 8} value bytes")
    return t, list(struct.unpack_from(f"<{length // 4}i", data, 8))


class Control:
    """One control element. `values` is a list of `count` members (IEC958: one 176-byte bytes)."""

    def __init__(self, name: str, ctype: int, *, count: int = 1, index: int = 0, role: int = snd.CTL_ROLE_UNDEFINED,
                 direction: int = snd.D_OUTPUT, access: int = A_RW, hda_fn_nid: int = 0, minimum: int = 0,
                 maximum: int = 1, step: int = 1, items=(), default=None, tlv: bytes | None = None,
                 tlv_command=None):
        if ctype not in range(6):
            raise ValueError(f"control type {ctype} is not defined")
        if not 1 <= count <= snd.CTL_COUNT_MAX[ctype]:
            raise ValueError(f"control {name!r}: count {count} not in 1..{snd.CTL_COUNT_MAX[ctype]} "
                             f"for {snd.CTL_TYPE_NAMES[ctype]}")
        if access & ~snd.CTL_ACCESS_DEFINED or role not in range(4):
            raise ValueError(f"control {name!r}: undefined access or role")
        self.name = name
        self.name_bytes = _ascii(name, snd.CTL_NAME_MAX, "control name")
        self.type, self.count, self.index = ctype, count, index
        self.role_value = snd.ctl_role(role, direction)
        self.access, self.hda_fn_nid = access, hda_fn_nid
        if ctype == snd.CTL_TYPE_BOOLEAN:
            minimum, maximum, step = 0, 1, 1
        self.min, self.max, self.step = minimum, maximum, step
        if ctype in (snd.CTL_TYPE_INTEGER, snd.CTL_TYPE_INTEGER64):
            lim = 1 << (31 if ctype == snd.CTL_TYPE_INTEGER else 63)
            if not -lim <= minimum <= maximum < lim or not 0 <= step < lim:
                raise ValueError(f"control {name!r}: range {minimum}..{maximum} step {step} does not fit")
        self.items = [_ascii(it, snd.CTL_ITEM_MAX, "enumerated item") for it in items]
        if ctype == snd.CTL_TYPE_ENUMERATED and not self.items:
            raise ValueError(f"control {name!r}: an ENUMERATED control needs items")
        if default is None:
            default = (bytes(snd.CTL_IEC958_SIZE) if ctype == snd.CTL_TYPE_IEC958
                       else [self.min if ctype in (snd.CTL_TYPE_INTEGER, snd.CTL_TYPE_INTEGER64) else 0] * count)
        elif not isinstance(default, (list, tuple, bytes)):
            default = [default] * count
        self.default = list(default) if ctype != snd.CTL_TYPE_IEC958 else bytes(default)
        self.check(self.default)
        self.values = list(self.default) if ctype != snd.CTL_TYPE_IEC958 else self.default
        self.default_tlv = self.tlv = tlv
        self._tlv_command = tlv_command

    def __repr__(self):
        return f"Control({self.name!r}, index={self.index}, values={self.values!r})"

    def has(self, access_bit: int) -> bool:
        return bool(self.access >> access_bit & 1)

    def reset(self) -> None:
        self.values = list(self.default) if self.type != snd.CTL_TYPE_IEC958 else self.default
        self.tlv = self.default_tlv

    # --- information ----------------------------------------------------------------------------------
    def info(self, size: int = snd.CTL_INFO_SIZE) -> bytes:
        """virtio_snd_ctl_info: 96 bytes (natural alignment), or the 92-byte packed form (32-bit x86)."""
        head = snd.CTL_INFO_HEAD.pack(self.hda_fn_nid, self.role_value, self.type, self.access, self.count,
                                    self.index, self.name_bytes)
        if self.type in (snd.CTL_TYPE_BOOLEAN, snd.CTL_TYPE_INTEGER):
            value = snd.CTL_INFO_INT.pack(self.min, self.max, self.step)
        elif self.type == snd.CTL_TYPE_INTEGER64:
            value = snd.CTL_INFO_INT64.pack(self.min, self.max, self.step)
        elif self.type == snd.CTL_TYPE_ENUMERATED:
            value = snd.CTL_INFO_ENUM.pack(len(self.items))
        else:
            value = b""
        off = snd.CTL_INFO_VALUE_OFFSET_PACKED if size == snd.CTL_INFO_SIZE_PACKED else snd.CTL_INFO_VALUE_OFFSET
        out = bytearray(off + 24)
        out[:len(head)] = head
        out[off:off + len(value)] = value
        return bytes(out)

    # --- value -------------------------------------------------------------------------------------
    def check(self, values) -> None:
        """BadRequest(BAD_MSG) unless `values` is a valid value of this element."""
        t = self.type
        if t == snd.CTL_TYPE_IEC958:
            if len(values) != snd.CTL_IEC958_SIZE:
                raise BadRequest(snd.S_BAD_MSG, "an IEC958 value is 176 bytes")
            return
        if len(values) != self.count:
            raise BadRequest(snd.S_BAD_MSG, f"{len(values)} members, not {self.count}")
        for v in values:
            if t == snd.CTL_TYPE_BOOLEAN and v not in (0, 1):
                raise BadRequest(snd.S_BAD_MSG, f"boolean member {v} is not 0 or 1")
            if t in (snd.CTL_TYPE_INTEGER, snd.CTL_TYPE_INTEGER64):
                if not self.min <= v <= self.max:
                    raise BadRequest(snd.S_BAD_MSG, f"member {v} outside {self.min}..{self.max}")
                if self.step and (v - self.min) % self.step:
                    raise BadRequest(snd.S_BAD_MSG, f"member {v} is not min + a multiple of step {self.step}")
            if t == snd.CTL_TYPE_ENUMERATED and not 0 <= v < len(self.items):
                raise BadRequest(snd.S_BAD_MSG, f"item {v} outside 0..{len(self.items) - 1}")
            if t == snd.CTL_TYPE_BYTES and not 0 <= v <= 255:
                raise BadRequest(snd.S_BAD_MSG, f"byte member {v}")

    def value_bytes(self) -> bytes:
        """virtio_snd_ctl_value (512 bytes) holding the current value."""
        if self.type == snd.CTL_TYPE_IEC958:
            raw = bytes(self.values)
        else:
            raw = struct.pack(f"<{self.count}{_TYPE_FMT[self.type]}", *self.values)
        return raw + bytes(snd.CTL_VALUE_SIZE - len(raw))

    def parse_value(self, data: bytes) -> list:
        """The members a virtio_snd_ctl_value carries for this element (checked)."""
        if len(data) < snd.CTL_VALUE_SIZE:
            raise BadRequest(snd.S_BAD_MSG, f"value of {len(data)} bytes, not {snd.CTL_VALUE_SIZE}")
        if self.type == snd.CTL_TYPE_IEC958:
            values = bytes(data[:snd.CTL_IEC958_SIZE])
        else:
            values = list(struct.unpack_from(f"<{self.count}{_TYPE_FMT[self.type]}", data))
        self.check(values)
        return values

    def set(self, values) -> bool:
        """Set the value (checked); True if it changed."""
        values = bytes(values) if self.type == snd.CTL_TYPE_IEC958 else list(values)
        self.check(values)
        changed = values != self.values
        self.values = values
        return changed

    # --- metadata ------------------------------------------------------------------------------------
    def tlv_read(self) -> bytes:
        if self.tlv is None or not self.has(snd.CTL_ACCESS_TLV_READ):
            raise BadRequest(snd.S_NOT_SUPP, f"control {self.name!r} has no readable metadata")
        return self.tlv

    def tlv_write(self, data: bytes) -> bool:
        """Replace the metadata (TLV_WRITE); True if it changed."""
        if not self.has(snd.CTL_ACCESS_TLV_WRITE):
            raise BadRequest(snd.S_NOT_SUPP, f"control {self.name!r} does not take metadata writes")
        t, vals = tlv_unpack(data)
        new = tlv_pack(t, *vals)
        self.accept_tlv(t, vals)
        changed = new != self.tlv
        self.tlv = new
        return changed

    def accept_tlv(self, tlv_type: int, values: list) -> None:
        """A subclass refuses metadata it cannot use (BadRequest)."""

    def tlv_command(self, data: bytes) -> bool:
        """Run a metadata command (TLV_COMMAND); True if the metadata changed."""
        if not self.has(snd.CTL_ACCESS_TLV_COMMAND) or self._tlv_command is None:
            raise BadRequest(snd.S_NOT_SUPP, f"control {self.name!r} takes no metadata commands")
        t, vals = tlv_unpack(data)
        return bool(self._tlv_command(self, t, vals))


class LevelControl(Control):
    """An INTEGER level whose metadata is an ALSA dB description that also sets the amplitude."""

    def __init__(self, name: str, *, role: int, direction: int, index: int, hda_fn_nid: int, maximum: int,
                 default: int, db_min: int, db_step: int, mute_at_min: bool, tlv_write: bool):
        access = A_RW | (1 << snd.CTL_ACCESS_TLV_READ) | ((1 << snd.CTL_ACCESS_TLV_WRITE) if tlv_write else 0)
        super().__init__(name, snd.CTL_TYPE_INTEGER, index=index, role=role, direction=direction, access=access,
                         hda_fn_nid=hda_fn_nid, minimum=0, maximum=maximum, step=1, default=default,
                         tlv=tlv_pack(snd.TLVT_DB_SCALE, db_min, db_step | (snd.TLV_DB_SCALE_MUTE if mute_at_min else 0)))

    def accept_tlv(self, tlv_type: int, values: list) -> None:
        if tlv_type not in (snd.TLVT_DB_SCALE, snd.TLVT_DB_MINMAX, snd.TLVT_DB_MINMAX_MUTE, snd.TLVT_DB_LINEAR):
            raise BadRequest(snd.S_NOT_SUPP, f"TLV type {tlv_type}: a level takes DB_SCALE, DB_MINMAX(_MUTE) "
                                         "or DB_LINEAR")
        if len(values) != 2:
            raise BadRequest(snd.S_BAD_MSG, f"a dB TLV holds 2 values, not {len(values)}")
        lo, hi = values
        if tlv_type == snd.TLVT_DB_SCALE:
            step = hi & 0xFFFF
            if hi & ~0x1FFFF or not -14400 <= lo <= 14400 or not -14400 <= lo + step * self.max <= 14400:
                raise BadRequest(snd.S_BAD_MSG, "DB_SCALE out of -144..+144 dB or with unknown flags")
        else:
            if tlv_type == snd.TLVT_DB_LINEAR and lo == snd.TLV_DB_GAIN_MUTE:
                lo = -14400
            if not -14400 <= lo <= hi <= 14400:
                raise BadRequest(snd.S_BAD_MSG, f"dB range {lo}..{hi} (0.01 dB) not ordered within -144..+144 dB")

    def amplitude(self) -> float:
        """Linear amplitude factor for the current value under the current dB description."""
        v = self.values[0]
        t, (lo, hi) = tlv_unpack(self.tlv)
        span = self.max - self.min
        frac = (v - self.min) / span if span else 1.0
        if t == snd.TLVT_DB_SCALE:
            if hi & snd.TLV_DB_SCALE_MUTE and v == self.min:
                return 0.0
            return db_to_gain(lo + (v - self.min) * (hi & 0xFFFF))
        if t in (snd.TLVT_DB_MINMAX, snd.TLVT_DB_MINMAX_MUTE):
            if t == snd.TLVT_DB_MINMAX_MUTE and v == self.min:
                return 0.0
            return db_to_gain(lo + (hi - lo) * frac)
        a_lo = 0.0 if lo == snd.TLV_DB_GAIN_MUTE else db_to_gain(lo)
        return a_lo + (db_to_gain(hi) - a_lo) * frac


VOLUME_MAX, VOLUME_DB_MIN, VOLUME_DB_STEP = 100, -5000, 50      # -50 dB .. 0 dB, 0.5 dB steps
GAIN_MAX, GAIN_DB_MIN, GAIN_DB_STEP = 48, 0, 50                 # 0 dB .. +24 dB, 0.5 dB steps


def stream_controls(stream_id: int, direction: int, hda_fn_nid: int) -> dict:
    """The standard controls of one stream: {'volume': ..., 'switch': ..., ['gain': ...]}."""
    what = "Playback" if direction == snd.D_OUTPUT else "Capture"
    out = {
        "volume": LevelControl(f"PCM {what} Volume", role=snd.CTL_ROLE_VOLUME, direction=direction,
                               index=stream_id, hda_fn_nid=hda_fn_nid, maximum=VOLUME_MAX, default=VOLUME_MAX,
                               db_min=VOLUME_DB_MIN, db_step=VOLUME_DB_STEP, mute_at_min=True, tlv_write=True),
        "switch": Control(f"PCM {what} Switch", snd.CTL_TYPE_BOOLEAN, index=stream_id, role=snd.CTL_ROLE_MUTE,
                          direction=direction, hda_fn_nid=hda_fn_nid, default=1),
    }
    if direction == snd.D_INPUT:
        out["gain"] = LevelControl("Input Gain Capture Volume", role=snd.CTL_ROLE_GAIN, direction=direction,
                                   index=stream_id, hda_fn_nid=hda_fn_nid, maximum=GAIN_MAX, default=0,
                                   db_min=GAIN_DB_MIN, db_step=GAIN_DB_STEP, mute_at_min=False, tlv_write=False)
    return out


def check_unique(controls) -> None:
    seen = set()
    for c in controls:
        key = (c.name, c.index)
        if key in seen:
            raise ValueError(f"two controls named {c.name!r} with index {c.index}")
        seen.add(key)
