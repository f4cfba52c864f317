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

from . import constants as snd
from . import pcm

MAX_REQUEST = snd.CTL_HDR.size + snd.CTL_TLV_HDR.size + snd.CTL_TLV_MAX_VALUE   # the largest valid request
_ZEROES = bytes(64 << 10)


def _need(req: bytes, size: int, what: str) -> None:
    if len(req) < size:
        raise BadRequest(snd.S_BAD_MSG, f"{what} request of {len(req)} bytes, shorter than {size}")


def _pad(chain, offset: int, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROES))
        chain.write(memoryview(_ZEROES)[:k], offset)
        offset += k
        n -= k


def _query(chain, req: bytes, items, item_size: int, what: str, alt_size: int | None = None) -> int:
    """A query-info answer: writes the items after the status, returns the payload length.
    `items` is a list; each entry is bytes or a callable(size) -> bytes."""
    _need(req, snd.QUERY_INFO.size, what)
    _, start, count, size = snd.QUERY_INFO.unpack_from(req)
    total = len(items)
    if start > total or count > total - start:
        raise BadRequest(snd.S_BAD_MSG, f"{what}: items {start}+{count} beyond the {total} there are")
    if size < item_size and size != alt_size:
        raise BadRequest(snd.S_BAD_MSG, f"{what}: item size {size} smaller than {item_size}")
    room = chain.writable_len - snd.HDR.size
    if room < count * size:
        raise BadRequest(snd.S_BAD_MSG, f"{what}: response room {room} < {count} x {size}")
    off = snd.HDR.size
    for it in items[start:start + count]:
        data = it(size) if callable(it) else it
        data = data[:size]
        chain.write(data, off)
        _pad(chain, off + len(data), size - len(data))
        off += size
    return count * size


def _stream(dev, req: bytes, size: int, what: str):
    _need(req, size, what)
    sid = snd.PCM_HDR.unpack_from(req)[1]
    if sid >= len(dev.streams):
        raise BadRequest(snd.S_BAD_MSG, f"{what}: stream {sid} of {len(dev.streams)}")
    return dev.streams[sid]


def _control(dev, req: bytes, what: str):
    if not dev.has_feature(snd.F_CTLS):
        raise BadRequest(snd.S_NOT_SUPP, f"{what} without VIRTIO_SND_F_CTLS negotiated")
    _need(req, snd.CTL_HDR.size, what)
    cid = snd.CTL_HDR.unpack_from(req)[1]
    if cid >= len(dev.controls):
        raise BadRequest(snd.S_BAD_MSG, f"{what}: control {cid} of {len(dev.controls)}")
    return cid, dev.controls[cid]


def _pcm_command(dev, code: int, req: bytes, now: float) -> None:
    name = snd.REQUEST_NAMES[code]
    s = _stream(dev, req, snd.PCM_SET_PARAMS.size if code == snd.R_PCM_SET_PARAMS else snd.PCM_HDR.size, name)
    target = pcm.REQUEST_STATE[code]
    if not s.check_transition(target):
        raise BadRequest(snd.S_BAD_MSG, f"{name} on stream {s.id} in state {s.state} (allowed: "
                                 f"{', '.join(sorted(pcm.ALLOWED[s.state]))})")
    if code == snd.R_PCM_SET_PARAMS:
        _, _, buf, period, features, channels, fmt, rate, padding = snd.PCM_SET_PARAMS.unpack_from(req)
        status, why = s.set_params(buf, period, features, channels, fmt, rate, padding)
    elif code == snd.R_PCM_PREPARE:
        status, why = s.prepare()
    elif code == snd.R_PCM_START:
        status, why = s.start(now)
    elif code == snd.R_PCM_STOP:
        status, why = s.stop(now)
    else:
        dev.take_io(s.queue, now)      # messages still in the ring are pending too
        status, why = s.release()
    if status != snd.S_OK:
        raise BadRequest(status, f"{name} on stream {s.id}: {why}")


def _dispatch(dev, chain, req: bytes, now: float) -> int:
    """Carry out one request; returns the payload length (after the status). BadRequest for errors."""
    _need(req, snd.HDR.size, "control")
    code = snd.HDR.unpack_from(req)[0]
    room = chain.writable_len - snd.HDR.size
    if code == snd.R_JACK_INFO:
        return _query(chain, req, [j.info() for j in dev.jacks], snd.JACK_INFO.size, "JACK_INFO")
    if code == snd.R_PCM_INFO:
        return _query(chain, req, [s.info() for s in dev.streams], snd.PCM_INFO.size, "PCM_INFO")
    if code == snd.R_CHMAP_INFO:
        return _query(chain, req, [m.info() for m in dev.chmaps], snd.CHMAP_INFO.size, "CHMAP_INFO")
    if code in pcm.REQUEST_STATE:
        _pcm_command(dev, code, req, now)
        return 0
    if code == snd.R_JACK_REMAP:
        _need(req, snd.JACK_REMAP.size, "JACK_REMAP")
        _, jid, association, sequence = snd.JACK_REMAP.unpack_from(req)
        if jid >= len(dev.jacks):
            raise BadRequest(snd.S_BAD_MSG, f"JACK_REMAP: jack {jid} of {len(dev.jacks)}")
        jack = dev.jacks[jid]
        if not jack.features >> snd.JACK_F_REMAP & 1:
            raise BadRequest(snd.S_NOT_SUPP, f"JACK_REMAP: jack {jid} does not advertise VIRTIO_SND_JACK_F_REMAP")
        if association > 0xF or sequence > 0xF:
            raise BadRequest(snd.S_BAD_MSG, f"JACK_REMAP: association {association} / sequence {sequence} beyond 15")
        jack.remap(association, sequence)
        return 0
    if code == snd.R_CTL_INFO:
        if not dev.has_feature(snd.F_CTLS):
            raise BadRequest(snd.S_NOT_SUPP, "CTL_INFO without VIRTIO_SND_F_CTLS negotiated")
        return _query(chain, req, [c.info for c in dev.controls], snd.CTL_INFO_SIZE, "CTL_INFO",
                      alt_size=snd.CTL_INFO_SIZE_PACKED)
    if code == snd.R_CTL_ENUM_ITEMS:
        cid, ctl = _control(dev, req, "CTL_ENUM_ITEMS")
        if ctl.type != snd.CTL_TYPE_ENUMERATED:
            raise BadRequest(snd.S_BAD_MSG, f"CTL_ENUM_ITEMS: control {cid} is not ENUMERATED")
        need = snd.CTL_ENUM_ITEM_SIZE * len(ctl.items)
        if room < need:
            raise BadRequest(snd.S_BAD_MSG, f"CTL_ENUM_ITEMS: response room {room} < {need}")
        chain.write(b"".join(it.ljust(snd.CTL_ENUM_ITEM_SIZE, b"\0") for it in ctl.items), snd.HDR.size)
        return need
    if code == snd.R_CTL_READ:
        cid, ctl = _control(dev, req, "CTL_READ")
        if not ctl.has(snd.CTL_ACCESS_READ):
            raise BadRequest(snd.S_NOT_SUPP, f"CTL_READ: control {cid} is not readable")
        if room < snd.CTL_VALUE_SIZE:
            raise BadRequest(snd.S_BAD_MSG, f"CTL_READ: response room {room} < {snd.CTL_VALUE_SIZE}")
        chain.write(ctl.value_bytes(), snd.HDR.size)
        return snd.CTL_VALUE_SIZE
    if code == snd.R_CTL_WRITE:
        cid, ctl = _control(dev, req, "CTL_WRITE")
        if not ctl.has(snd.CTL_ACCESS_WRITE):
            raise BadRequest(snd.S_NOT_SUPP, f"CTL_WRITE: control {cid} is not writable")
        _need(req, snd.CTL_HDR.size + snd.CTL_VALUE_SIZE, "CTL_WRITE")
        if ctl.set(ctl.parse_value(req[snd.CTL_HDR.size:snd.CTL_HDR.size + snd.CTL_VALUE_SIZE])):
            dev.ctl_notify(cid, 1 << snd.CTL_EVT_MASK_VALUE)
        return 0
    if code == snd.R_CTL_TLV_READ:
        cid, ctl = _control(dev, req, "CTL_TLV_READ")
        tlv = ctl.tlv_read()[:max(0, room)]    # short room: as much as fits, and OK (spec: SHOULD)
        chain.write(tlv, snd.HDR.size)
        return len(tlv)
    if code in (snd.R_CTL_TLV_WRITE, snd.R_CTL_TLV_COMMAND):
        what = snd.REQUEST_NAMES[code]
        cid, ctl = _control(dev, req, what)
        data = req[snd.CTL_HDR.size:]
        changed = ctl.tlv_write(data) if code == snd.R_CTL_TLV_WRITE else ctl.tlv_command(data)
        if changed:
            dev.ctl_notify(cid, 1 << snd.CTL_EVT_MASK_TLV)
        return 0
    raise BadRequest(snd.S_NOT_SUPP, f"unknown request code {code:#06x}")


def handle(dev, chain, now: float) -> int:
    """Answer one control message; returns the used length."""
    if chain.writable_len < snd.HDR.size:
        dev.bad_request(f"control message with {chain.writable_len} writable bytes: no room for a status")
        return 0
    req = chain.read(min(chain.readable_len, MAX_REQUEST))
    try:
        n = _dispatch(dev, chain, req, now)
        status = snd.S_OK
    except BadRequest as e:         # from here and from the control elements (ctls.py)
        status, n = e.status, 0
        dev.bad_request(str(e))
    except (QueueError, GuestMemoryError):
        raise                   # a broken ring (met while draining txq/rxq): DEVICE_NEEDS_RESET
    except Exception as e:  # noqa: BLE001 - a device bug must not reach the transport
        status, n = snd.S_IO_ERR, 0
        dev.internal_error(f"control request: {type(e).__name__}: {e}")
    chain.write(snd.HDR.pack(status), 0)
    dev.last_status = status
    return snd.HDR.size + n
