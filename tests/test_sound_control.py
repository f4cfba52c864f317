"""virtio-sound: topology, configuration space, control queue (query-info, jacks, controls),
event queue, and the volume path, through the mmio transport and the Python test driver over
BytearrayMemory, with a fake clock (no thread, no sleeping).

The rig (Rig, FakeClock, MemBackend and the request builders) is nvmmpy.devices.testing.sound.
"""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.sound import constants as snd
from nvmmpy.devices.virtio.sound import formats
from nvmmpy.devices.virtio.sound import gain
from nvmmpy.devices.virtio.sound.backends import NullBackend
from nvmmpy.devices.virtio.sound.ctls import Control, tlv_pack
from nvmmpy.devices.virtio.sound.device import MAX_PENDING_EVENTS, VirtioSound
from nvmmpy.devices.virtio.sound.topology import DEFAULT_FORMATS, Topology, format_mask, rate_mask
from nvmmpy.devices.testing.sound import (ALL_FEATURES, BAD, IOERR, NOTSUPP, OK, FakeClock, MemBackend, Rig,
                                          ctl_ev, ev, u32)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.check()


# --- topology --------------------------------------------------------------------------------------------
def fake_factory(spec, direction):
    b = MemBackend(name=spec)
    b.direction = direction
    return b


def test_topology_defaults():
    t = Topology.parse("", backend_factory=fake_factory)
    assert len(t.streams) == 1 and t.streams[0].direction == snd.D_OUTPUT and t.streams[0].backend.name == "null"
    s = t.streams[0]
    assert s.formats == DEFAULT_FORMATS and s.rates == snd.RATES_DEFINED == 0xFFFF
    for r in (12000, 24000, 384000, 5512):
        assert s.rates >> formats.RATE_BY_HZ[r] & 1
    for f in (snd.FMT_IMA_ADPCM, snd.FMT_DSD_U8, snd.FMT_DSD_U16, snd.FMT_DSD_U32, snd.FMT_IEC958_SUBFRAME):
        assert not DEFAULT_FORMATS >> f & 1
    assert bin(DEFAULT_FORMATS).count("1") == 20
    assert (s.channels_min, s.channels_max) == (1, 2)
    assert [m.positions for m in t.chmaps] == [(snd.CHMAP_MONO,), (snd.CHMAP_FL, snd.CHMAP_FR)]
    assert t.ctls and not t.jacks


def test_topology_parse_full():
    t = Topology.parse("out=wav:play.wav,channels=1-8,rates=44100+48000,formats=s16+float,jack=headphone+remap,"
                       "in=tone:440,channels=1,jack=mic+unplugged,fn,out,channels=6,chmap=FL+FR+FC+LFE+RL+RR,"
                       "fn=7,in=null,ctls=off", backend_factory=fake_factory)
    assert [(s.direction, s.hda_fn_nid, s.backend.name) for s in t.streams] == [
        (snd.D_OUTPUT, 0, "wav:play.wav"), (snd.D_INPUT, 0, "tone:440"), (snd.D_OUTPUT, 1, "null"), (snd.D_INPUT, 7, "null")]
    assert t.streams[1].backend.direction == snd.D_INPUT
    s0 = t.streams[0]
    assert (s0.channels_min, s0.channels_max) == (1, 8)
    assert s0.rates == (1 << snd.RATE_44100) | (1 << snd.RATE_48000)
    assert s0.formats == (1 << snd.FMT_S16) | (1 << snd.FMT_FLOAT)
    assert (t.streams[2].channels_min, t.streams[2].channels_max) == (6, 6)
    assert [(j.kind, j.hda_fn_nid, j.remap, j.connected) for j in t.jacks] == [
        ("headphone", 0, True, True), ("mic", 0, False, False)]
    assert t.jacks[0].backend is s0.backend
    assert (t.jacks[0].defconf >> 20) & 0xF == snd.HDA_DEV_HP_OUT
    assert (t.jacks[1].defconf >> 20) & 0xF == snd.HDA_DEV_MIC_IN
    assert t.jacks[0].caps & snd.HDA_PINCAP_PRESENCE_DETECT and t.jacks[1].caps & snd.HDA_PINCAP_INPUT
    groups = {}
    for m in t.chmaps:
        groups.setdefault((m.hda_fn_nid, m.direction), []).append(len(m.positions))
    # derived: fn0 out 1..8 -> 1,2,4,6,8; fn0 in -> mono; explicit fn1 out; fn7 in 1-2 -> 1,2
    assert groups == {(1, snd.D_OUTPUT): [6], (0, snd.D_OUTPUT): [1, 2, 4, 6, 8], (0, snd.D_INPUT): [1],
                      (7, snd.D_INPUT): [1, 2]}
    assert not t.ctls


@pytest.mark.parametrize("spec, words", [
    ("channels=2", "put an out= or in= first"),
    ("out,channels=0", "channels"),
    ("out,channels=19", "channels"),
    ("out,channels=3-2", "channels"),
    ("out,channels=two", "channels takes"),
    ("out,rates=44000", "not a virtio-sound rate"),
    ("out,rates=fast", "not a number"),
    ("out,formats=s17", "unknown PCM format"),
    ("out,jack=kazoo", "unknown jack kind"),
    ("out,jack=mic", "cannot serve an output"),
    ("in,jack=headphone+loud", "unknown jack flag"),
    ("out,chmap=FL+XX", "unknown channel position"),
    ("out,chmap=" + "+".join(["FL"] * 19), "1..18 positions"),
    ("out,ctls=maybe", "ctls takes on or off"),
    ("fn=x", "function group number"),
    ("volume=11", "unknown key 'volume'"),
    ("out,formats=", "needs a value"),
])
def test_topology_parse_errors(spec, words):
    with pytest.raises(ValueError) as e:
        Topology.parse(spec, backend_factory=fake_factory)
    assert words in str(e.value)
    assert str(e.value).startswith("virtio-snd topology")


def test_topology_api_checks():
    t = Topology()
    with pytest.raises(ValueError, match="channels"):
        t.add_stream(snd.D_OUTPUT, channels=(0, 2))
    with pytest.raises(ValueError, match="formats"):
        t.add_stream(snd.D_OUTPUT, formats=0)
    with pytest.raises(ValueError, match="formats"):
        t.add_stream(snd.D_OUTPUT, formats=1 << 25)
    with pytest.raises(ValueError, match="rates"):
        t.add_stream(snd.D_OUTPUT, rates=1 << 16)
    with pytest.raises(ValueError, match="features"):
        t.add_stream(snd.D_OUTPUT, features=1 << snd.PCM_F_SHMEM_HOST)
    with pytest.raises(ValueError, match="direction"):
        t.add_stream("sideways")
    with pytest.raises(ValueError, match="jack for stream"):
        t.add_jack("mic", stream=3)
    assert format_mask("s16+F32+mu-law") == (1 << snd.FMT_S16) | (1 << snd.FMT_FLOAT) | (1 << snd.FMT_MU_LAW)
    assert rate_mask([12000, "24000hz"]) == (1 << 14) | (1 << 15)
    sid = t.add_stream("in", channels=18)
    assert t.streams[sid].channels_max == 18
    t.add_control(Control("PCM Capture Volume", snd.CTL_TYPE_INTEGER, index=sid))
    with pytest.raises(ValueError, match="two controls"):
        VirtioSound(t, clock=FakeClock())


# --- configuration space, features ------------------------------------------------------------------------
def test_config_space_and_features():
    topo = Topology()
    topo.add_stream(snd.D_OUTPUT, MemBackend())
    topo.add_stream(snd.D_INPUT, MemBackend())
    topo.add_jack("headphone", stream=0)
    r = Rig(topo)
    assert r.drv.r32(virtio.MMIO_DEVICE_ID) == 25
    assert r.drv.device_features() & (1 << snd.F_CTLS)
    assert r.config() == (1, 2, 4, 5)          # chmaps: mono + stereo per direction; 2 + 3 controls
    assert r.drv.read_config(4, 1) == b"\x02" and r.drv.read_config(0, 8) == struct.pack("<II", 1, 2)
    # without F_CTLS negotiated the controls field reads 0
    r2 = Rig(_two_stream_topo(), want=ALL_FEATURES & ~(1 << snd.F_CTLS))
    assert r2.config()[3] == 0
    assert r2.config()[:2] == (0, 2)
    r.check()


def _two_stream_topo():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend())
    t.add_stream(snd.D_INPUT, MemBackend())
    return t


def test_ctls_off_is_not_offered():
    t = Topology(ctls=False)
    t.add_stream(snd.D_OUTPUT, MemBackend())
    r = Rig(t, want=ALL_FEATURES & ~(1 << snd.F_CTLS))
    assert not r.drv.device_features() & (1 << snd.F_CTLS)
    assert r.status(snd.QUERY_INFO.pack(snd.R_CTL_INFO, 0, 1, 96), 100) == NOTSUPP
    r.check()


def test_config_counts_match(rig):
    jacks, streams, chmaps, controls = rig.config()
    assert (jacks, streams, chmaps, controls) == (0, 1, 2, 2)


# --- query-info ----------------------------------------------------------------------------------------
def _info_topo():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend(), fn=3, channels=(1, 6), rates=[44100, 384000], formats="s16+s32")
    t.add_stream(snd.D_INPUT, MemBackend(), fn=3, channels=(2, 2))
    t.add_jack("headphone", stream=0, remap=True)
    t.add_jack("mic", stream=1, connected=False)
    return t


def test_pcm_info_contents():
    r = Rig(_info_topo())
    st_, p = r.query(snd.R_PCM_INFO, 0, 2, 32)
    assert st_ == OK and len(p) == 64
    fn, feat, fmts, rates, d, cmin, cmax = snd.PCM_INFO.unpack_from(p, 0)
    assert (fn, d, cmin, cmax) == (3, snd.D_OUTPUT, 1, 6)
    assert feat == (1 << snd.PCM_F_MSG_POLLING) | (1 << snd.PCM_F_EVT_XRUNS)
    assert fmts == (1 << snd.FMT_S16) | (1 << snd.FMT_S32)
    assert rates == (1 << snd.RATE_44100) | (1 << snd.RATE_384000)
    assert p[27:32] == bytes(5)
    assert snd.PCM_INFO.unpack_from(p, 32)[4:] == (snd.D_INPUT, 2, 2)
    r.check()


def test_jack_info_and_remap():
    r = Rig(_info_topo())
    st_, p = r.query(snd.R_JACK_INFO, 0, 2, 24)
    assert st_ == OK
    fn, features, defconf, caps, connected = snd.JACK_INFO.unpack_from(p, 0)
    assert (fn, features, connected) == (3, 1, 1) and p[17:24] == bytes(7)
    assert snd.JACK_INFO.unpack_from(p, 24)[1] == 0 and snd.JACK_INFO.unpack_from(p, 24)[4] == 0
    # remap the jack that advertises it
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 0, 9, 4)) == OK
    assert snd.JACK_INFO.unpack_from(r.query(snd.R_JACK_INFO, 0, 1, 24)[1])[2] == (defconf & ~0xFF) | 0x94
    # errors
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 1, 1, 1)) == NOTSUPP    # no JACK_F_REMAP
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 2, 1, 1)) == BAD        # no such jack
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 0, 16, 1)) == BAD
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 0, 1, 16)) == BAD
    assert r.status(snd.JACK_REMAP.pack(snd.R_JACK_REMAP, 0, 1, 1)[:12]) == BAD   # short
    r.check()


def test_chmap_info():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend(), channels=(1, 18))
    t.add_chmap(snd.D_OUTPUT, list(range(3, 21)))
    r = Rig(t)
    assert r.config()[2] == 1
    st_, p = r.query(snd.R_CHMAP_INFO, 0, 1, 24)
    assert st_ == OK
    assert snd.CHMAP_INFO.unpack(p) == (0, snd.D_OUTPUT, 18, bytes(range(3, 21)))
    r.check()


def test_ctl_info_layouts():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend(), fn=2)
    t.add_stream(snd.D_INPUT, MemBackend(), fn=2)
    r = Rig(t)
    assert r.config()[3] == 5
    st_, p = r.query(snd.R_CTL_INFO, 0, 5, 96)
    assert st_ == OK
    rows = [snd.CTL_INFO_HEAD.unpack_from(p, 96 * i) for i in range(5)]
    names = [(row[6].rstrip(b"\0").decode(), row[5]) for row in rows]
    assert names == [("PCM Playback Volume", 0), ("PCM Playback Switch", 0), ("PCM Capture Volume", 1),
                     ("PCM Capture Switch", 1), ("Input Gain Capture Volume", 1)]
    assert [row[0] for row in rows] == [2] * 5
    assert [row[1] for row in rows] == [snd.CTL_ROLE_VOLUME << 1, snd.CTL_ROLE_MUTE << 1, snd.CTL_ROLE_VOLUME << 1 | 1,
                                        snd.CTL_ROLE_MUTE << 1 | 1, snd.CTL_ROLE_GAIN << 1 | 1]
    assert [row[2] for row in rows] == [snd.CTL_TYPE_INTEGER, snd.CTL_TYPE_BOOLEAN, snd.CTL_TYPE_INTEGER,
                                        snd.CTL_TYPE_BOOLEAN, snd.CTL_TYPE_INTEGER]
    rw = (1 << snd.CTL_ACCESS_READ) | (1 << snd.CTL_ACCESS_WRITE)
    tlv = (1 << snd.CTL_ACCESS_TLV_READ)
    assert [row[3] for row in rows] == [rw | tlv | (1 << snd.CTL_ACCESS_TLV_WRITE), rw,
                                        rw | tlv | (1 << snd.CTL_ACCESS_TLV_WRITE), rw, rw | tlv]
    assert [row[4] for row in rows] == [1] * 5
    assert struct.unpack_from("<iii", p, 72) == (0, 100, 1)          # natural layout: value at 72
    assert struct.unpack_from("<iii", p, 96 + 72) == (0, 1, 1)
    assert struct.unpack_from("<iii", p, 4 * 96 + 72) == (0, 48, 1)
    assert p[68:72] == bytes(4)
    # the 92-byte layout of a 32-bit guest: value union right after the name
    st_, p92 = r.query(snd.R_CTL_INFO, 0, 5, 92)
    assert st_ == OK and len(p92) == 5 * 92
    assert struct.unpack_from("<iii", p92, 68) == (0, 100, 1)
    assert snd.CTL_INFO_HEAD.unpack_from(p92, 92) == rows[1]
    r.check()


@pytest.mark.parametrize("code, size, total", [(snd.R_PCM_INFO, 32, 1), (snd.R_CHMAP_INFO, 24, 2),
                                               (snd.R_CTL_INFO, 96, 2), (snd.R_JACK_INFO, 24, 0)])
def test_query_info_edges(rig, code, size, total):
    # count 0: valid and empty
    assert rig.query(code, 0, 0, size) == (OK, b"")
    assert rig.query(code, total, 0, size) == (OK, b"")
    # start + count beyond the items, incl. values that wrap a 32-bit sum
    assert rig.query(code, 0, total + 1, size)[0] == BAD
    assert rig.query(code, total + 1, 0, size)[0] == BAD
    assert rig.query(code, 1, 0xFFFFFFFF, size, resp=64)[0] == BAD
    assert rig.query(code, 0xFFFFFFFF, 1, size, resp=64)[0] == BAD
    if total:
        # a larger per-item size: each item zero-padded to it (response room pre-filled with 0xAA)
        st_, p = rig.query(code, 0, total, size + 40, fill=b"\xaa")
        exact = rig.query(code, 0, total, size)[1]
        assert st_ == OK and len(p) == total * (size + 40)
        for i in range(total):
            assert p[i * (size + 40):i * (size + 40) + size] == exact[i * size:(i + 1) * size]
            assert p[i * (size + 40) + size:(i + 1) * (size + 40)] == bytes(40)
        # a smaller size, or a response buffer shorter than hdr + count * size
        assert rig.query(code, 0, 1, size - 5)[0] == BAD
        assert rig.query(code, 0, total, size, resp=4 + total * size - 1)[0] == BAD
    # short request
    assert rig.status(snd.QUERY_INFO.pack(code, 0, 0, size)[:15], 8) == BAD


def test_query_info_split_response_buffers(rig):
    """The response may be scattered over several writable descriptors."""
    st_, payload, n = rig.request(snd.QUERY_INFO.pack(snd.R_PCM_INFO, 0, 1, 32), [(2, True), (7, True), (27, True)])
    assert (st_, n) == (OK, 36)
    assert payload == rig.query(snd.R_PCM_INFO, 0, 1, 32)[1]


def test_malformed_control_messages(rig):
    assert rig.status(b"\x01\x00", 8) == BAD                          # shorter than a header
    assert rig.status(struct.pack("<I", 0x4242)) == NOTSUPP           # unknown code
    assert rig.status(struct.pack("<I", snd.R_PCM_PREPARE)) == BAD       # no stream id
    assert rig.status(snd.PCM_HDR.pack(snd.R_PCM_PREPARE, 5)) == BAD       # no such stream
    # no room for a status: used length 0, the device goes on
    before = rig.dev.bad_requests
    assert rig.request(snd.PCM_HDR.pack(snd.R_PCM_PREPARE, 0), 3)[2] == 0
    q = rig.drv.queues[0]
    h = q.add([(snd.PCM_HDR.pack(snd.R_PCM_PREPARE, 0), False)])
    rig.drv.notify(0)
    assert q.used() == [(h, 0)]
    assert rig.dev.bad_requests == before + 2
    assert rig.set_params() == OK


# --- controls ---------------------------------------------------------------------------------------------
def _ctl_rig(extra=(), **kw):
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend())
    t.add_stream(snd.D_INPUT, MemBackend())
    for c in extra:
        t.add_control(c)
    r = Rig(t, **kw)
    r.add_event_buffers(16)
    return r


def test_ctl_read_write_and_notify():
    r = _ctl_rig()
    vol = r.dev.control("PCM Playback Volume", 0)
    sw = r.dev.control("PCM Playback Switch", 0)
    st_, v = r.ctl_read(vol)
    assert st_ == OK and len(v) == 512 and u32(v) == 100 and v[4:] == bytes(508)
    assert r.ctl_write(vol, struct.pack("<i", 60)) == OK
    assert u32(r.ctl_read(vol)[1]) == 60
    assert r.ctl_write(vol, struct.pack("<i", 60)) == OK                 # unchanged: no event
    assert r.ctl_write(sw, struct.pack("<i", 0)) == OK
    assert r.events() == [ctl_ev(vol, 1), ctl_ev(sw, 1)]
    # invalid values
    assert r.ctl_write(vol, struct.pack("<i", 101)) == BAD
    assert r.ctl_write(vol, struct.pack("<i", -1)) == BAD
    assert r.ctl_write(sw, struct.pack("<i", 2)) == BAD
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_WRITE, vol) + bytes(511)) == BAD     # value short
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_READ, vol), 4 + 511) == BAD          # response short
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_READ, 99), 516) == BAD               # no such control
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_READ, vol)[:6], 516) == BAD          # header short
    assert r.events() == []
    assert u32(r.ctl_read(vol)[1]) == 60
    r.check()


def test_ctl_host_changes_notify_and_reset():
    r = _ctl_rig()
    gain_ctl = r.dev.control("Input Gain Capture Volume", 1)
    r.dev.set_control(gain_ctl, 12)
    r.dev.set_control(gain_ctl, 12)
    assert r.events() == [ctl_ev(gain_ctl, 1)]
    with pytest.raises(ValueError):
        r.dev.set_control(gain_ctl, 49)
    assert u32(r.ctl_read(gain_ctl)[1]) == 12
    # a device reset brings back the defaults
    r.drv.init(r.want)
    assert u32(r.ctl_read(gain_ctl)[1]) == 0
    r.check()


def test_ctl_requests_need_the_feature():
    t = _two_stream_topo()
    r = Rig(t, want=ALL_FEATURES & ~(1 << snd.F_CTLS))
    for code in (snd.R_CTL_ENUM_ITEMS, snd.R_CTL_READ, snd.R_CTL_WRITE, snd.R_CTL_TLV_READ, snd.R_CTL_TLV_WRITE,
                 snd.R_CTL_TLV_COMMAND):
        assert r.status(snd.CTL_HDR.pack(code, 0) + bytes(512), 600) == NOTSUPP, snd.REQUEST_NAMES[code]
    assert r.query(snd.R_CTL_INFO, 0, 1, 96)[0] == NOTSUPP
    r.dev.set_control(0, 10)            # host changes still apply, silently
    r.add_event_buffers(2)
    assert r.events() == []
    r.check()


def test_tlv_read_write_command():
    cmds = []

    def on_cmd(ctl, t, vals):
        cmds.append((t, vals))
        return True

    special = Control("Special", snd.CTL_TYPE_INTEGER, maximum=10,
                      access=(1 << snd.CTL_ACCESS_READ) | (1 << snd.CTL_ACCESS_TLV_COMMAND), tlv_command=on_cmd)
    r = _ctl_rig([special])
    vol = r.dev.control("PCM Playback Volume", 0)
    sw = r.dev.control("PCM Playback Switch", 0)
    sp = r.dev.control("Special")
    st_, tlv, _ = r.request(snd.CTL_HDR.pack(snd.R_CTL_TLV_READ, vol), 64)
    assert st_ == OK and tlv == tlv_pack(snd.TLVT_DB_SCALE, -5000, 50 | snd.TLV_DB_SCALE_MUTE)
    # short room: as much as fits, still OK
    st_, part, n = r.request(snd.CTL_HDR.pack(snd.R_CTL_TLV_READ, vol), 4 + 10)
    assert (st_, part, n) == (OK, tlv[:10], 14)
    assert r.request(snd.CTL_HDR.pack(snd.R_CTL_TLV_READ, sw), 64)[0] == NOTSUPP     # no metadata
    # write a new dB description: -30..+6 dB
    r.dev.set_control(vol, 50)
    r.events()
    before = r.dev.streams[0].amplitude()
    new = tlv_pack(snd.TLVT_DB_MINMAX, -3000, 600)
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_TLV_WRITE, vol) + new) == OK
    assert r.request(snd.CTL_HDR.pack(snd.R_CTL_TLV_READ, vol), 64)[1] == new
    assert r.events() == [ctl_ev(vol, 1 << snd.CTL_EVT_MASK_TLV)]
    assert r.dev.streams[0].amplitude() == pytest.approx(gain.db_to_gain(-1200)) != before
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_TLV_WRITE, vol) + new) == OK            # unchanged: no event
    assert r.events() == []
    # malformed / unsupported metadata
    hdr = snd.CTL_HDR.pack(snd.R_CTL_TLV_WRITE, vol)
    assert r.status(hdr + struct.pack("<II", snd.TLVT_DB_MINMAX, 6) + bytes(8)) == BAD       # length % 4
    assert r.status(hdr + struct.pack("<II", snd.TLVT_DB_MINMAX, 16) + bytes(8)) == BAD      # beyond data
    assert r.status(hdr + struct.pack("<II", snd.TLVT_DB_MINMAX, 65540) + bytes(8)) == BAD   # > 64 KiB
    assert r.status(hdr + struct.pack("<I", 1)) == BAD                                      # header short
    assert r.status(hdr + tlv_pack(snd.TLVT_DB_MINMAX, 600, -3000)) == BAD                    # min > max
    assert r.status(hdr + tlv_pack(snd.TLVT_DB_MINMAX, 1, 2, 3)) == BAD
    assert r.status(hdr + tlv_pack(snd.TLVT_DB_RANGE, 0, 0)) == NOTSUPP
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_TLV_WRITE, sw) + new) == NOTSUPP                 # no TLV_WRITE
    # commands: only where granted
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_TLV_COMMAND, vol) + new) == NOTSUPP
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_TLV_COMMAND, sp) + tlv_pack(77, 1, 2)) == OK
    assert cmds == [(77, [1, 2])]
    assert r.events() == [ctl_ev(sp, 1 << snd.CTL_EVT_MASK_TLV)]
    assert r.ctl_write(sp, struct.pack("<i", 3)) == NOTSUPP                                 # read-only
    r.check()


def test_other_control_types():
    iec = Control("IEC958 Playback Default", snd.CTL_TYPE_IEC958, default=bytes(range(176)))
    mode = Control("Mode", snd.CTL_TYPE_ENUMERATED, count=2, items=["Off", "Stereo", "Wide"], default=[1, 2])
    big = Control("Big", snd.CTL_TYPE_INTEGER64, minimum=-(1 << 40), maximum=1 << 40, step=1 << 20, count=3)
    raw = Control("Raw", snd.CTL_TYPE_BYTES, count=5)
    wo = Control("Write Only", snd.CTL_TYPE_BOOLEAN, access=1 << snd.CTL_ACCESS_WRITE)
    r = _ctl_rig([iec, mode, big, raw, wo])
    ids = [r.dev.control(n) for n in ("IEC958 Playback Default", "Mode", "Big", "Raw", "Write Only")]
    i_iec, i_mode, i_big, i_raw, i_wo = ids
    st_, p = r.query(snd.R_CTL_INFO, i_iec, 5, 96)
    assert st_ == OK
    assert struct.unpack_from("<I", p, 96 + 72)[0] == 3                       # enumerated: items
    assert struct.unpack_from("<qqq", p, 2 * 96 + 72) == (-(1 << 40), 1 << 40, 1 << 20)
    assert snd.CTL_INFO_HEAD.unpack_from(p, 2 * 96)[4] == 3                    # count
    # enum items
    st_, items, n = r.request(snd.CTL_HDR.pack(snd.R_CTL_ENUM_ITEMS, i_mode), 4 + 3 * 64)
    assert st_ == OK and n == 4 + 192
    assert [items[64 * k:64 * k + 64].rstrip(b"\0") for k in range(3)] == [b"Off", b"Stereo", b"Wide"]
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_ENUM_ITEMS, i_mode), 4 + 3 * 64 - 1) == BAD
    assert r.status(snd.CTL_HDR.pack(snd.R_CTL_ENUM_ITEMS, i_big), 4 + 3 * 64) == BAD
    # values of every type
    assert r.ctl_read(i_iec)[1][:176] == bytes(range(176))
    assert r.ctl_write(i_iec, bytes(176 * [7])) == OK and r.ctl_read(i_iec)[1][:176] == bytes(176 * [7])
    assert struct.unpack_from("<2I", r.ctl_read(i_mode)[1]) == (1, 2)
    assert r.ctl_write(i_mode, struct.pack("<2I", 0, 3)) == BAD
    assert r.ctl_write(i_mode, struct.pack("<2I", 2, 0)) == OK
    assert r.ctl_write(i_big, struct.pack("<3q", 1 << 20, -(1 << 40), 0)) == OK
    assert struct.unpack_from("<3q", r.ctl_read(i_big)[1]) == (1 << 20, -(1 << 40), 0)
    assert r.ctl_write(i_big, struct.pack("<3q", 1, 0, 0)) == BAD                # not on a step
    assert r.ctl_write(i_big, struct.pack("<3q", 1 << 41, 0, 0)) == BAD
    assert r.ctl_write(i_raw, b"\x01\x02\xff\x00\x05") == OK
    assert r.ctl_read(i_raw)[1][:6] == b"\x01\x02\xff\x00\x05\x00"
    assert r.ctl_read(i_wo)[0] == NOTSUPP
    assert r.ctl_write(i_wo, struct.pack("<i", 1)) == OK
    assert len(r.events()) == 5
    r.check()


def test_control_definition_checks():
    with pytest.raises(ValueError):
        Control("", snd.CTL_TYPE_BOOLEAN)
    with pytest.raises(ValueError):
        Control("x" * 44, snd.CTL_TYPE_BOOLEAN)
    with pytest.raises(ValueError):
        Control("E", snd.CTL_TYPE_ENUMERATED)
    with pytest.raises(ValueError):
        Control("C", snd.CTL_TYPE_INTEGER64, count=65)
    with pytest.raises(ValueError):
        Control("C", snd.CTL_TYPE_IEC958, count=2)
    with pytest.raises(ValueError):
        Control("R", snd.CTL_TYPE_INTEGER, role=4)


# --- events and jacks ---------------------------------------------------------------------------------------
def _jack_rig():
    t = Topology()
    b = MemBackend()
    t.add_stream(snd.D_OUTPUT, b)
    t.add_jack("headphone", stream=0)
    t.add_jack("speaker")
    r = Rig(t)
    return r, b


def test_jack_events_from_api_and_backend():
    r, b = _jack_rig()
    r.add_event_buffers(4)
    r.dev.set_jack(1, False)
    r.dev.set_jack(1, False)                 # no change, no event
    assert r.events() == [ev(snd.EVT_JACK_DISCONNECTED, 1)]
    b.connected = False
    assert r.dev.poll() is not None          # jacks following a backend are polled
    assert r.events() == [ev(snd.EVT_JACK_DISCONNECTED, 0)]
    assert snd.JACK_INFO.unpack_from(r.query(snd.R_JACK_INFO, 0, 1, 24)[1])[4] == 0
    b.connected = True
    r.dev.poll()
    r.dev.set_jack(1, True)
    assert r.events() == [ev(snd.EVT_JACK_CONNECTED, 0), ev(snd.EVT_JACK_CONNECTED, 1)]
    assert r.irq.level
    r.check()


def test_events_wait_for_buffers_bounded():
    r, _ = _jack_rig()
    for i in range(MAX_PENDING_EVENTS + 10):
        r.dev.set_jack(1, i % 2 == 1)
    assert r.dev.pending_events == MAX_PENDING_EVENTS and r.dev.events_dropped == 10
    assert r.events() == []
    r.add_event_buffers(5)
    got = r.events()
    assert got == [ev(snd.EVT_JACK_DISCONNECTED if i % 2 == 0 else snd.EVT_JACK_CONNECTED, 1) for i in range(10, 15)]
    r.add_event_buffers(MAX_PENDING_EVENTS)
    assert len(r.events()) == MAX_PENDING_EVENTS - 5 and r.dev.pending_events == 0
    r.check()


def test_bad_event_buffers_are_returned_and_skipped():
    r, _ = _jack_rig()
    q = r.drv.queues[1]
    small = q.add([(4, True)])
    readable = q.add([(b"12345678", False), (8, True)])
    good = q.add([(16, True)])
    r.drv.notify(1)
    r.dev.set_jack(1, False)
    used = q.used()
    assert used == [(small, 0), (readable, 0), (good, 8)]
    assert q.written(good, 8) == ev(snd.EVT_JACK_DISCONNECTED, 1)
    assert r.dev.bad_event_buffers == 2
    r.check()


def test_no_events_before_driver_ok():
    r, _ = _jack_rig()
    r.drv.negotiate(r.want)               # reset, driver not running
    r.dev.set_jack(1, False)
    assert r.dev.pending_events == 0
    assert snd.JACK_INFO.unpack_from(_query_after_init(r), 0)[4] == 1   # jack 0 still connected
    assert snd.JACK_INFO.unpack_from(_query_after_init(r, 1), 0)[4] == 0


def _query_after_init(r, jack=0):
    if not r.drv.status() & virtio.S_DRIVER_OK:
        r.drv.init(r.want)
    return r.query(snd.R_JACK_INFO, jack, 1, 24)[1]


def _fault_rig():
    """A driver without INDIRECT_DESC that made one INDIRECT event buffer available: the next event
    the device posts pops a malformed chain (the fuzz campaign's case)."""
    t = Topology()
    b = NullBackend()
    t.add_stream(snd.D_OUTPUT, b)
    t.add_jack("headphone", stream=0)          # follows b: b.set_connected() calls the device
    r = Rig(t, want=ALL_FEATURES & ~(1 << virtio.F_INDIRECT_DESC))
    r.drv.queues[1].add([(8, True)], indirect=True)
    r.drv.notify(1)                            # nothing to send yet: not popped
    r.check()
    return r, b


HOST_CALLS = {
    "set_control": lambda r, b: r.dev.set_control(r.dev.control("PCM Playback Switch"), 0),
    "set_jack": lambda r, b: r.dev.set_jack(0, False),
    "backend_jack_change": lambda r, b: b.set_connected(False),   # a backend thread, in real use
    "poll": lambda r, b: (setattr(b, "_connected", False), r.dev.poll()),
}


@pytest.mark.parametrize("call", sorted(HOST_CALLS))
def test_host_calls_contain_guest_faults(call):
    """A host-side entry point that meets a guest fault returns normally and leaves the device in
    NEEDS_RESET, as a notification would (set_control and set_jack raised QueueError here)."""
    r, b = _fault_rig()
    assert not r.irq.level
    HOST_CALLS[call](r, b)
    assert r.drv.status() & virtio.S_DEVICE_NEEDS_RESET
    assert "INDIRECT_DESC was not negotiated" in r.t.last_error and "virtio-sound" in r.t.last_error
    assert r.t.internal_errors == 0 and r.dev.internal_errors == 0
    assert r.irq.level                         # the configuration-change interrupt
    HOST_CALLS[call](r, b)                     # again, while it needs a reset: nothing is popped
    r.drv.init(r.want)
    r.check()
    r.add_event_buffers(1)
    plug = not r.dev.jacks[0].connected
    r.dev.set_jack(0, plug)
    assert r.events() == [ev(snd.EVT_JACK_CONNECTED if plug else snd.EVT_JACK_DISCONNECTED, 0)]


# --- volume on the data path ------------------------------------------------------------------------------
def test_volume_and_mute_applied_to_playback():
    r = Rig()
    b = r.backend
    vol = r.dev.control("PCM Playback Volume", 0)
    sw = r.dev.control("PCM Playback Switch", 0)
    assert r.set_params(buffer_bytes=64, period_bytes=16) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    samples = [1000, -1000, 20000, -32768, 0, 7, 32767, -5]
    data = struct.pack("<8h", *samples)
    tx = r.drv.queues[2]
    for _ in range(3):
        tx.add([(struct.pack("<I", 0), False), (data, False), (8, True)])
    r.drv.notify(2)
    assert r.ctl_write(vol, struct.pack("<i", 88)) == OK          # -6 dB
    t0 = r.clock.t
    assert r.pcm(snd.R_PCM_START) == OK                              # message 0 handed over now
    r.ctl_write(sw, struct.pack("<i", 0))
    r.dev.poll(t0 + 16 / 192000 + 1e-9)                            # message 1: muted
    r.ctl_write(sw, struct.pack("<i", 1))
    r.ctl_write(vol, struct.pack("<i", 100))
    r.dev.poll(t0 + 32 / 192000 + 1e-9)                            # message 2: untouched
    got = [struct.unpack("<8h", d) for _, d in b.writes]
    g = gain.db_to_gain(-600)
    assert all(abs(a - s * g) <= 1 for a, s in zip(got[0], samples)), got[0]
    assert got[1] == (0,) * 8
    assert got[2] == tuple(samples)
    r.check()


def test_capture_gain_volume_and_mute():
    t = Topology()
    src = MemBackend()
    t.add_stream(snd.D_INPUT, src)
    r = Rig(t)
    src.clock = r.clock
    src.read = lambda n: struct.pack(f"<{n // 2}h", *([1000] * (n // 2)))
    gain_ctl = r.dev.control("Input Gain Capture Volume", 0)
    vol = r.dev.control("PCM Capture Volume", 0)
    sw = r.dev.control("PCM Capture Switch", 0)
    r.dev.set_control(gain_ctl, 12)                   # +6 dB
    r.dev.set_control(vol, 96)                        # -2 dB
    assert r.set_params(buffer_bytes=32, period_bytes=8, channels=1) == OK and r.pcm(snd.R_PCM_PREPARE) == OK
    rx = r.drv.queues[3]
    heads = [rx.add([(struct.pack("<I", 0), False), (8, True), (8, True)]) for _ in range(2)]
    r.drv.notify(3)
    t0 = r.clock.t
    assert r.pcm(snd.R_PCM_START) == OK
    r.dev.poll(t0 + 8 / 96000 + 1e-9)
    r.dev.set_control(sw, 0)
    r.dev.poll(t0 + 16 / 96000 + 1e-9)
    used = rx.used()
    assert [(h, n) for h, n in used] == [(heads[0], 16), (heads[1], 16)]
    first = struct.unpack("<4h", rx.written(heads[0])[:8])
    assert all(abs(v - 1000 * gain.db_to_gain(400)) <= 1 for v in first), first
    assert rx.written(heads[1])[:8] == bytes(8)
    assert u32(rx.written(heads[1]), 8) == OK
    r.check()


# --- gain on every format ------------------------------------------------------------------------------------
def _enc(fmt, values):
    size, bits, signed = gain._INT[fmt]
    off = 0 if signed else 1 << (bits - 1)
    return b"".join(((v + off) & ((1 << (8 * size)) - 1)).to_bytes(size, "little") for v in values)


def _dec(fmt, data):
    size, bits, signed = gain._INT[fmt]
    off = 0 if signed else 1 << (bits - 1)
    out = []
    for i in range(0, len(data), size):
        v = int.from_bytes(data[i:i + size], "little") & ((1 << bits) - 1)
        if signed:
            v = v - (1 << bits) if v >> (bits - 1) else v
        else:
            v -= off
        out.append(v)
    return out


@pytest.mark.parametrize("fmt", sorted(gain._INT))
def test_gain_integer_formats(fmt):
    size, bits, signed = gain._INT[fmt]
    top = (1 << (bits - 1)) - 1
    values = [0, 1, -1, top // 3, -top // 3, top, -top - 1]
    data = _enc(fmt, values)
    half = _dec(fmt, gain.apply_gain(fmt, data, 0.5))
    assert all(abs(h - v / 2) <= 1 for h, v in zip(half, values)), (half, values)
    loud = _dec(fmt, gain.apply_gain(fmt, data, 4.0))
    assert loud == [0, 4, -4, top, -top - 1, top, -top - 1]
    assert gain.apply_gain(fmt, data, 1.0) == data
    assert _dec(fmt, gain.apply_gain(fmt, data, 0.0)) == [0] * len(values)
    assert gain.silence(fmt, size * 2) == _enc(fmt, [0, 0])


def test_gain_float_law_and_opaque_formats():
    f = struct.pack("<3f", 0.5, -1.0, 0.25)
    assert struct.unpack("<3f", gain.apply_gain(snd.FMT_FLOAT, f, 0.5)) == (0.25, -0.5, 0.125)
    d = struct.pack("<2d", 0.5, -1.0)
    assert struct.unpack("<2d", gain.apply_gain(snd.FMT_FLOAT64, d, 2.0)) == (1.0, -2.0)
    u = bytes([formats.mulaw_encode(8000), formats.mulaw_encode(-8000)])
    assert [formats.mulaw_decode(x) for x in gain.apply_gain(snd.FMT_MU_LAW, u, 0.5)] == pytest.approx([4000, -4000], rel=0.06)
    a = bytes([formats.alaw_encode(8000)])
    assert formats.alaw_decode(gain.apply_gain(snd.FMT_A_LAW, a, 0.25)[0]) == pytest.approx(2000, rel=0.06)
    assert gain.apply_gain(snd.FMT_A_LAW, a, 1.0) == a and gain.apply_gain(snd.FMT_A_LAW, a * 3, 0) == b"\xd5" * 3
    assert gain.apply_gain(snd.FMT_MU_LAW, u, 0) == b"\xff\xff"
    assert gain.apply_gain(snd.FMT_DSD_U8, b"\x12\x34", 0.5) == b"\x12\x34"
    assert gain.apply_gain(snd.FMT_DSD_U8, b"\x12\x34", 0) == b"\x69\x69"


# --- a hostile driver on the control queue ----------------------------------------------------------------------
CODES = [snd.R_JACK_INFO, snd.R_JACK_REMAP, snd.R_PCM_INFO, snd.R_PCM_SET_PARAMS, snd.R_PCM_PREPARE, snd.R_PCM_RELEASE,
         snd.R_PCM_START, snd.R_PCM_STOP, snd.R_CHMAP_INFO, snd.R_CTL_INFO, snd.R_CTL_ENUM_ITEMS, snd.R_CTL_READ,
         snd.R_CTL_WRITE, snd.R_CTL_TLV_READ, snd.R_CTL_TLV_WRITE, snd.R_CTL_TLV_COMMAND, 0, 0x8000, 0xFFFFFFFF]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.sampled_from(CODES), body=st.binary(max_size=600),
       small=st.lists(st.integers(0, 40), max_size=4), resp=st.integers(0, 700))
def test_random_control_requests_never_break_the_device(code, body, small, resp):
    r = FUZZ_RIG
    words = b"".join(struct.pack("<I", w) for w in small)
    req = struct.pack("<I", code) + words + body
    st_, _, n = r.request(req, resp if resp else [])
    assert st_ in (None, OK, BAD, NOTSUPP, IOERR)
    r.check()
    r.dev.poll()
    r.check()


def _fuzz_rig():
    t = Topology()
    t.add_stream(snd.D_OUTPUT, MemBackend(), channels=(1, 4))
    t.add_stream(snd.D_INPUT, MemBackend())
    t.add_jack("headphone", stream=0, remap=True)
    t.add_control(Control("Mode", snd.CTL_TYPE_ENUMERATED, items=["A", "B"]))
    r = Rig(t)
    r.add_event_buffers(64)
    return r


FUZZ_RIG = _fuzz_rig()
