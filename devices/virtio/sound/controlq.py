"""The control queue (0): every request of VIRTIO 1.3 sec. 5.14.6, answered synchronously.

A control message is a device-readable request (header + payload) followed by a device-writable
response (virtio_snd_hdr status + payload). `handle(dev, chain, now)` answers one and returns the
used length; it never raises for anything the driver sends (a device bug becomes IO_ERR and is
counted in dev.internal_errors). A chain without room for the 4-byte status is returned with used
length 0 (counted in dev.bad_requests).

Status rules:
  BAD_MSG   malformed or invalid: request shorter than its structure, unknown stream/jack/chmap/
            control id, start_id + count beyond the item count, a query `size` smaller than the
            device's structure, a response buffer shorter than hdr + count * size (or than the
            value/items it must carry), a PCM command out of lifecycle order, bad SET_PARAMS fields
            (padding, undefined values, period_bytes not dividing buffer_bytes or not whole frames,
            both SHMEM bits), an out-of-range control value or a malformed TLV.
  NOT_SUPP  well-formed but not available: an unknown request code, CTL_* without
            VIRTIO_SND_F_CTLS negotiated, JACK_REMAP on a jack without VIRTIO_SND_JACK_F_REMAP,
            SET_PARAMS asking for a feature/format/rate/channel count the stream does not offer or
            buffer_bytes above pcm.MAX_BUFFER_BYTES, an element access the control does not grant.
  IO_ERR    the host failed (a backend that cannot open).

Query-info: items are written at hdr + i * size, each zero-padded to the driver's `size` (a newer
driver's larger structure). CTL_INFO answers the 96-byte natural layout for size >= 96 and the
92-byte packed layout (value union right after name, as a 32-bit x86 guest lays it out) for
size == 92. count == 0 is a valid, empty answer.
"""
from nvmmpy.devices.interfaces import GuestMemoryError
from nvmmpy.devices.virtio.errors import BadRequest, QueueError

from . import constants as C
from . import pcm as P

MAX_REQUEST = C.CTL_HDR.size + C.CTL_TLV_HDR.size + C.CTL_TLV_MAX_VALUE   # the largest valid request
_ZEROES = bytes(64 << 10)


def _need(req: bytes, size: int, what: str) -> None:
    if len(req) < size:
        raise BadRequest(C.S_BAD_MSG, f"{what} request of {len(req)} bytes, shorter than {size}")


def _pad(chain, offset: int, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROES))
        chain.write(memoryview(_ZEROES)[:k], offset)
        offset += k
        n -= k


def _query(chain, req: bytes, items, item_size: int, what: str, alt_size: int | None = None) -> int:
    """A query-info answer: writes the items after the status, returns the payload length.
    `items` is a list; each entry is bytes or a callable(size) -> bytes."""
    _need(req, C.QUERY_INFO.size, what)
    _, start, count, size = C.QUERY_INFO.unpack_from(req)
    total = len(items)
    if start > total or count > total - start:
        raise BadRequest(C.S_BAD_MSG, f"{what}: items {start}+{count} beyond the {total} there are")
    if size < item_size and size != alt_size:
        raise BadRequest(C.S_BAD_MSG, f"{what}: item size {size} smaller than {item_size}")
    room = chain.writable_len - C.HDR.size
    if room < count * size:
        raise BadRequest(C.S_BAD_MSG, f"{what}: response room {room} < {count} x {size}")
    off = C.HDR.size
    for it in items[start:start + count]:
        data = it(size) if callable(it) else it
        data = data[:size]
        chain.write(data, off)
        _pad(chain, off + len(data), size - len(data))
        off += size
    return count * size


def _stream(dev, req: bytes, size: int, what: str):
    _need(req, size, what)
    sid = C.PCM_HDR.unpack_from(req)[1]
    if sid >= len(dev.streams):
        raise BadRequest(C.S_BAD_MSG, f"{what}: stream {sid} of {len(dev.streams)}")
    return dev.streams[sid]


def _control(dev, req: bytes, what: str):
    if not dev.has_feature(C.F_CTLS):
        raise BadRequest(C.S_NOT_SUPP, f"{what} without VIRTIO_SND_F_CTLS negotiated")
    _need(req, C.CTL_HDR.size, what)
    cid = C.CTL_HDR.unpack_from(req)[1]
    if cid >= len(dev.controls):
        raise BadRequest(C.S_BAD_MSG, f"{what}: control {cid} of {len(dev.controls)}")
    return cid, dev.controls[cid]


def _pcm_command(dev, code: int, req: bytes, now: float) -> None:
    name = C.REQUEST_NAMES[code]
    s = _stream(dev, req, C.PCM_SET_PARAMS.size if code == C.R_PCM_SET_PARAMS else C.PCM_HDR.size, name)
    target = P.REQUEST_STATE[code]
    if not s.check_transition(target):
        raise BadRequest(C.S_BAD_MSG, f"{name} on stream {s.id} in state {s.state} (allowed: "
                                 f"{', '.join(sorted(P.ALLOWED[s.state]))})")
    if code == C.R_PCM_SET_PARAMS:
        _, _, buf, period, features, channels, fmt, rate, padding = C.PCM_SET_PARAMS.unpack_from(req)
        status, why = s.set_params(buf, period, features, channels, fmt, rate, padding)
    elif code == C.R_PCM_PREPARE:
        status, why = s.prepare()
    elif code == C.R_PCM_START:
        status, why = s.start(now)
    elif code == C.R_PCM_STOP:
        status, why = s.stop(now)
    else:
        dev.take_io(s.queue, now)      # messages still in the ring are pending too
        status, why = s.release()
    if status != C.S_OK:
        raise BadRequest(status, f"{name} on stream {s.id}: {why}")


def _dispatch(dev, chain, req: bytes, now: float) -> int:
    """Carry out one request; returns the payload length (after the status). BadRequest for errors."""
    _need(req, C.HDR.size, "control")
    code = C.HDR.unpack_from(req)[0]
    room = chain.writable_len - C.HDR.size
    if code == C.R_JACK_INFO:
        return _query(chain, req, [j.info() for j in dev.jacks], C.JACK_INFO.size, "JACK_INFO")
    if code == C.R_PCM_INFO:
        return _query(chain, req, [s.info() for s in dev.streams], C.PCM_INFO.size, "PCM_INFO")
    if code == C.R_CHMAP_INFO:
        return _query(chain, req, [m.info() for m in dev.chmaps], C.CHMAP_INFO.size, "CHMAP_INFO")
    if code in P.REQUEST_STATE:
        _pcm_command(dev, code, req, now)
        return 0
    if code == C.R_JACK_REMAP:
        _need(req, C.JACK_REMAP.size, "JACK_REMAP")
        _, jid, association, sequence = C.JACK_REMAP.unpack_from(req)
        if jid >= len(dev.jacks):
            raise BadRequest(C.S_BAD_MSG, f"JACK_REMAP: jack {jid} of {len(dev.jacks)}")
        jack = dev.jacks[jid]
        if not jack.features >> C.JACK_F_REMAP & 1:
            raise BadRequest(C.S_NOT_SUPP, f"JACK_REMAP: jack {jid} does not advertise VIRTIO_SND_JACK_F_REMAP")
        if association > 0xF or sequence > 0xF:
            raise BadRequest(C.S_BAD_MSG, f"JACK_REMAP: association {association} / sequence {sequence} beyond 15")
        jack.remap(association, sequence)
        return 0
    if code == C.R_CTL_INFO:
        if not dev.has_feature(C.F_CTLS):
            raise BadRequest(C.S_NOT_SUPP, "CTL_INFO without VIRTIO_SND_F_CTLS negotiated")
        return _query(chain, req, [c.info for c in dev.controls], C.CTL_INFO_SIZE, "CTL_INFO",
                      alt_size=C.CTL_INFO_SIZE_PACKED)
    if code == C.R_CTL_ENUM_ITEMS:
        cid, ctl = _control(dev, req, "CTL_ENUM_ITEMS")
        if ctl.type != C.CTL_TYPE_ENUMERATED:
            raise BadRequest(C.S_BAD_MSG, f"CTL_ENUM_ITEMS: control {cid} is not ENUMERATED")
        need = C.CTL_ENUM_ITEM_SIZE * len(ctl.items)
        if room < need:
            raise BadRequest(C.S_BAD_MSG, f"CTL_ENUM_ITEMS: response room {room} < {need}")
        chain.write(b"".join(it.ljust(C.CTL_ENUM_ITEM_SIZE, b"\0") for it in ctl.items), C.HDR.size)
        return need
    if code == C.R_CTL_READ:
        cid, ctl = _control(dev, req, "CTL_READ")
        if not ctl.has(C.CTL_ACCESS_READ):
            raise BadRequest(C.S_NOT_SUPP, f"CTL_READ: control {cid} is not readable")
        if room < C.CTL_VALUE_SIZE:
            raise BadRequest(C.S_BAD_MSG, f"CTL_READ: response room {room} < {C.CTL_VALUE_SIZE}")
        chain.write(ctl.value_bytes(), C.HDR.size)
        return C.CTL_VALUE_SIZE
    if code == C.R_CTL_WRITE:
        cid, ctl = _control(dev, req, "CTL_WRITE")
        if not ctl.has(C.CTL_ACCESS_WRITE):
            raise BadRequest(C.S_NOT_SUPP, f"CTL_WRITE: control {cid} is not writable")
        _need(req, C.CTL_HDR.size + C.CTL_VALUE_SIZE, "CTL_WRITE")
        if ctl.set(ctl.parse_value(req[C.CTL_HDR.size:C.CTL_HDR.size + C.CTL_VALUE_SIZE])):
            dev.ctl_notify(cid, 1 << C.CTL_EVT_MASK_VALUE)
        return 0
    if code == C.R_CTL_TLV_READ:
        cid, ctl = _control(dev, req, "CTL_TLV_READ")
        tlv = ctl.tlv_read()[:max(0, room)]    # short room: as much as fits, and OK (spec: SHOULD)
        chain.write(tlv, C.HDR.size)
        return len(tlv)
    if code in (C.R_CTL_TLV_WRITE, C.R_CTL_TLV_COMMAND):
        what = C.REQUEST_NAMES[code]
        cid, ctl = _control(dev, req, what)
        data = req[C.CTL_HDR.size:]
        changed = ctl.tlv_write(data) if code == C.R_CTL_TLV_WRITE else ctl.tlv_command(data)
        if changed:
            dev.ctl_notify(cid, 1 << C.CTL_EVT_MASK_TLV)
        return 0
    raise BadRequest(C.S_NOT_SUPP, f"unknown request code {code:#06x}")


def handle(dev, chain, now: float) -> int:
    """Answer one control message; returns the used length."""
    if chain.writable_len < C.HDR.size:
        dev.bad_request(f"control message with {chain.writable_len} writable bytes: no room for a status")
        return 0
    req = chain.read(min(chain.readable_len, MAX_REQUEST))
    try:
        n = _dispatch(dev, chain, req, now)
        status = C.S_OK
    except BadRequest as e:         # from here and from the control elements (ctls.py)
        status, n = e.status, 0
        dev.bad_request(str(e))
    except (QueueError, GuestMemoryError):
        raise                   # a broken ring (met while draining txq/rxq): DEVICE_NEEDS_RESET
    except Exception as e:  # noqa: BLE001 - a device bug must not reach the transport
        status, n = C.S_IO_ERR, 0
        dev.internal_error(f"control request: {type(e).__name__}: {e}")
    chain.write(C.HDR.pack(status), 0)
    dev.last_status = status
    return C.HDR.size + n
