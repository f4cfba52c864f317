"""virtio-blk against VIRTIO 1.2 sec. 5.2, through the mmio transport and the Python test driver,
over a temporary raw image: data reaches the file byte for byte, and no request a hostile guest
can build raises out of the device, breaks the queue, or stops the device from working.

Every rig is checked when its test ends (unless the test broke the backend on purpose): the
transport is not in DEVICE_NEEDS_RESET, the device hit no internal error, and a fresh read still
returns what the file holds.
"""
import errno
import fcntl
import os
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvmmpy.devices import disk
from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio import blk
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.blk import VirtioBlk
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.testing.driver import MmioDriver

SECTOR = 512
OK, IOERR, UNSUPP = blk.S_OK, blk.S_IOERR, blk.S_UNSUPP


def hdr(rtype, sector=0, reserved=0):
    return struct.pack("<IIQ", rtype, reserved, sector)


def seg(sector, num, flags=0):
    return struct.pack("<QII", sector, num, flags)


def pattern(n, seed=1):
    """Bytes that differ from sector to sector and from byte to byte (a misplaced sector shows)."""
    return bytes((i * 7 + (i // SECTOR) * 13 + seed) & 0xFF for i in range(n))


class Rig:
    def __init__(self, path, mem_size, want, **kw):
        self.path = path
        self.dev = VirtioBlk(path, **kw)
        self.mem = BytearrayMemory(mem_size)
        self.irq = RecordingIrq()
        self.t = VirtioMmio(self.dev, self.mem, self.irq)
        self.drv = MmioDriver(self.t, self.mem)
        self.drv.init(want)
        self.check_at_end = True

    @property
    def q(self):
        return self.drv.queues[0]

    def submit(self, bufs, indirect=False):
        """One chain, one notify: (used length, device-writable bytes)."""
        head = self.q.add(bufs, indirect)
        self.drv.notify(0)
        used = self.q.used()
        assert [h for h, _ in used] == [head]
        return used[0][1], self.q.written(head)

    def request(self, bufs, indirect=False):
        """(status, used length) of a chain whose last writable byte is the status."""
        n, w = self.submit(bufs, indirect)
        return w[-1], n

    def read(self, sector, nbytes, indirect=False):
        n, w = self.submit([(hdr(blk.T_IN, sector), False), (nbytes + 1, True)], indirect)
        return w[-1], n, w[:-1]

    def write(self, sector, data, indirect=False):
        return self.request([(hdr(blk.T_OUT, sector), False), (data, False), (1, True)], indirect)

    def file(self):
        with open(self.path, "rb") as f:
            return f.read()

    def healthy(self):
        assert not self.drv.status() & virtio.S_DEVICE_NEEDS_RESET, self.t.last_error
        assert self.dev.internal_errors == 0, self.dev.last_error
        status, n, data = self.read(0, 2 * SECTOR)
        assert (status, n) == (OK, 2 * SECTOR + 1)
        assert data == self.file()[:2 * SECTOR]


@pytest.fixture
def make(tmp_path):
    """make(sectors=64, content=None, tail=0, mem=4 MiB, want=None, **VirtioBlk kwargs) -> Rig."""
    rigs = []

    def _make(sectors=64, content=None, tail=0, name="disk.img", mem=4 << 20, want=None, **kw):
        path = tmp_path / name
        if not path.exists() or content is not None:
            path.write_bytes(content if content is not None else pattern(sectors * SECTOR + tail))
        r = Rig(path, mem, want, **kw)
        rigs.append(r)
        return r

    yield _make
    for r in rigs:
        if r.check_at_end:
            r.healthy()
        r.dev.close()


def features(rig):
    return rig.drv.device_features()


# ---------------------------------------------------------------- identity and config space

def test_device_id_and_features(make):
    """Device ID 2; the features it can back (SEG_MAX, BLK_SIZE, FLUSH, CONFIG_WCE, DISCARD,
    WRITE_ZEROES), RO only when read-only, and nothing it cannot (MQ, SIZE_MAX, GEOMETRY)."""
    r = make()
    assert r.drv.r32(virtio.MMIO_DEVICE_ID) == virtio.ID_BLOCK == 2
    f = features(r)
    for bit in (blk.F_SEG_MAX, blk.F_BLK_SIZE, blk.F_FLUSH, blk.F_CONFIG_WCE, blk.F_DISCARD, blk.F_WRITE_ZEROES, virtio.F_VERSION_1):
        assert f >> bit & 1, bit
    for bit in (blk.F_RO, blk.F_MQ, blk.F_SIZE_MAX, blk.F_GEOMETRY):
        assert not f >> bit & 1, bit
    assert r.drv.r32(virtio.MMIO_QUEUE_NUM_MAX) == 256
    ro = make(name="ro.img", read_only=True)
    assert features(ro) >> blk.F_RO & 1


def test_config_space_fields(make):
    """struct virtio_blk_config, little-endian, at the offsets of 5.2.4."""
    r = make(sectors=100)
    rc = r.drv.read_config
    assert struct.unpack("<Q", rc(0, 8))[0] == 100                  # capacity
    assert struct.unpack("<I", rc(12, 4))[0] == blk.SEG_MAX == 254    # seg_max
    assert struct.unpack("<I", rc(20, 4))[0] == 512                 # blk_size
    assert rc(32, 1) == b"\x01"                                     # writeback (FLUSH negotiated)
    assert struct.unpack("<I", rc(36, 4))[0] == blk.MAX_DISCARD_SECTORS
    assert struct.unpack("<I", rc(40, 4))[0] == blk.MAX_SEG           # max_discard_seg
    assert struct.unpack("<I", rc(44, 4))[0] == 1                   # discard_sector_alignment
    assert struct.unpack("<I", rc(48, 4))[0] == blk.MAX_WRITE_ZEROES_SECTORS
    assert struct.unpack("<I", rc(52, 4))[0] == blk.MAX_SEG           # max_write_zeroes_seg
    assert rc(56, 1) == bytes((int(r.dev.may_unmap),))              # write_zeroes_may_unmap
    assert len(r.dev.config_space()) == 60
    # read piecewise, the capacity is the same as in one access
    assert rc(0, 4) + rc(4, 4) == rc(0, 8)
    # past the end: zeroes and a counted bad access, no exception
    bad = r.t.bad_accesses
    assert rc(60, 4) == bytes(4)
    assert r.t.bad_accesses == bad + 1


def test_config_read_only_except_writeback(make):
    """Writes to capacity and the other fields are ignored; writeback takes 0 and 1 (CONFIG_WCE)."""
    r = make(sectors=100)
    before = r.dev.config_space()
    r.drv.write_config(0, struct.pack("<Q", 1 << 40))
    r.drv.write_config(20, struct.pack("<I", 4096))
    r.drv.write_config(32, b"\x07")                  # not 0 or 1: ignored
    r.drv.write_config(32, struct.pack("<I", 0))     # 4 bytes over writeback and padding: ignored
    assert r.dev.config_space() == before
    r.drv.write_config(32, b"\x00")
    assert r.drv.read_config(32, 1) == b"\x00"
    r.drv.write_config(32, b"\x01")
    assert r.drv.read_config(32, 1) == b"\x01"
    assert r.dev.capacity == 100


def test_writeback_write_ignored_without_config_wce(make):
    """Without CONFIG_WCE negotiated the driver cannot change the cache mode."""
    r = make()
    want = features(r) & ~(1 << virtio.F_RING_PACKED) & ~(1 << blk.F_CONFIG_WCE)
    r.drv.init(want)
    r.drv.write_config(32, b"\x00")
    assert r.drv.read_config(32, 1) == b"\x01"


def test_capacity_hides_partial_tail(make):
    """An image of 10 sectors + 100 bytes has capacity 10: the tail is neither read nor written."""
    r = make(sectors=10, tail=100)
    assert r.dev.capacity == 10
    status, _, data = r.read(9, SECTOR)
    assert status == OK and data == r.file()[9 * SECTOR:10 * SECTOR]
    assert r.read(10, SECTOR)[0] == IOERR
    before = r.file()
    assert r.write(10, bytes(SECTOR))[0] == IOERR
    assert r.file() == before


# ---------------------------------------------------------------- opening the image

def test_missing_image_is_a_clear_error(tmp_path):
    """A missing image: ValueError naming the path, no traceback through os internals."""
    p = tmp_path / "nope.img"
    with pytest.raises(ValueError, match=r"^virtio-blk: cannot read .*nope\.img: no such disk image "
                                         r"\(make one with: truncate -s 64M .*nope\.img\)$"):
        VirtioBlk(p)
    with pytest.raises(ValueError, match=r"^virtio-blk: cannot read .*/x\.img: directory .*nope\.img does not exist$"):
        VirtioBlk(p / "x.img")


@pytest.mark.parametrize("size", [0, 511])
def test_empty_image_is_a_clear_error(tmp_path, size):
    """An image smaller than one sector has nothing to show: say so and how to size it."""
    p = tmp_path / "empty.img"
    p.write_bytes(bytes(size))
    with pytest.raises(ValueError, match=r"empty\.img.*less than one 512-byte sector.*truncate -s"):
        VirtioBlk(p)


def test_directory_is_a_clear_error(tmp_path):
    """A directory, read-write or read-only (where O_RDONLY would open it): named as a directory."""
    for ro in (False, True):
        with pytest.raises(ValueError, match=r"^virtio-blk: cannot read .*: it is a directory, not a disk image$"):
            VirtioBlk(tmp_path, read_only=ro)


def test_unwritable_image_suggests_read_only(tmp_path, monkeypatch):
    """A file we may not write (EACCES on O_RDWR; faked, since root may open anything): the
    message names the image and says to attach it read-only, which then works."""
    p = tmp_path / "ro.img"
    p.write_bytes(bytes(4096))
    real = os.open

    def no_write(path, flags, *a):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", no_write)
    with pytest.raises(ValueError, match=r"ro\.img.*Permission denied.*attach it read-only"):
        VirtioBlk(p)
    VirtioBlk(p, read_only=True).close()


def test_serial_too_long_is_refused(tmp_path):
    """GET_ID has 20 bytes: a longer explicit serial is a configuration error."""
    p = tmp_path / "d.img"
    p.write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="at most 20"):
        VirtioBlk(p, serial="x" * 21)


def test_failed_open_leaks_no_fd(tmp_path):
    """An empty image is refused after os.open: the descriptor is closed again."""
    p = tmp_path / "e.img"
    p.write_bytes(b"")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(ValueError):
            VirtioBlk(p)
    assert len(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------- reads and writes

def test_write_then_read_across_descriptors(make):
    """Header and data share a descriptor, data is split at odd offsets, data and status share
    one: the spec sets no framing, and the file gets the bytes exactly where the sector says."""
    r = make(sectors=64)
    orig = r.file()
    data = pattern(3 * SECTOR, seed=99)
    status, n = r.request([(hdr(blk.T_OUT, 5) + data[:300], False), (data[300:1000], False),
                           (data[1000:], False), (1, True)])
    assert (status, n) == (OK, 1)
    f = r.file()
    assert f[5 * SECTOR:8 * SECTOR] == data
    assert f[:5 * SECTOR] == orig[:5 * SECTOR] and f[8 * SECTOR:] == orig[8 * SECTOR:]
    assert len(f) == len(orig)
    n, w = r.submit([(hdr(blk.T_IN, 4), False), (7, True), (SECTOR, True), (4 * SECTOR - 7 - SECTOR + 1, True)])
    assert n == 4 * SECTOR + 1 and w[-1] == OK
    assert w[:-1] == f[4 * SECTOR:8 * SECTOR]
    assert (r.dev.reads, r.dev.writes, r.dev.bytes_read, r.dev.bytes_written) == (1, 1, 4 * SECTOR, 3 * SECTOR)


def test_round_trip_indirect(make):
    """The same through indirect descriptor tables."""
    r = make(sectors=64)
    data = pattern(8 * SECTOR, seed=5)
    status, n = r.request([(hdr(blk.T_OUT, 50), False)] + [(data[i:i + 1024], False) for i in range(0, len(data), 1024)]
                          + [(1, True)], indirect=True)
    assert (status, n) == (OK, 1)
    assert r.file()[50 * SECTOR:58 * SECTOR] == data
    status, n, back = r.read(50, 8 * SECTOR, indirect=True)
    assert (status, n, back) == (OK, 8 * SECTOR + 1, data)


def test_last_sector_and_empty_transfer(make):
    """The last sector is readable and writable; a transfer of 0 sectors at the end is fine."""
    r = make(sectors=16)
    assert r.write(15, b"\xAB" * SECTOR)[0] == OK
    assert r.read(15, SECTOR)[2] == b"\xAB" * SECTOR
    assert r.read(16, 0)[:2] == (OK, 1)
    assert r.read(17, 0)[0] == IOERR


def test_more_segments_than_iov_max(make):
    """1100 writable segments (indirect): preadv/pwritev take at most IOV_MAX buffers a call."""
    r = make(sectors=2048, mem=8 << 20)
    data = pattern(1100 * SECTOR, seed=3)
    bufs = [(hdr(blk.T_OUT, 100), False)] + [(data[i * SECTOR:(i + 1) * SECTOR], False) for i in range(1100)]
    assert r.request(bufs + [(1, True)], indirect=True) == (OK, 1)
    assert r.file()[100 * SECTOR:1200 * SECTOR] == data
    n, w = r.submit([(hdr(blk.T_IN, 100), False)] + [(SECTOR, True)] * 1100 + [(1, True)], indirect=True)
    assert (n, w[-1]) == (1100 * SECTOR + 1, OK) and w[:-1] == data


def test_short_transfers_are_continued(make, monkeypatch):
    """preadv/pwritev may move fewer bytes than asked: the device carries on from there, and
    never hands the OS more than IOV_MAX buffers."""
    r = make(sectors=32)
    real_preadv, real_pwritev = os.preadv, os.pwritev
    calls = []

    def preadv(fd, bufs, off):
        calls.append(len(bufs))
        return real_preadv(fd, [memoryview(bufs[0])[:100]], off)

    def pwritev(fd, bufs, off):
        calls.append(len(bufs))
        return real_pwritev(fd, [memoryview(bufs[0])[:77]], off)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(disk, "_IOV_MAX", 2)
    data = pattern(4 * SECTOR, seed=8)
    assert r.request([(hdr(blk.T_OUT, 3), False)] + [(data[i:i + 256], False) for i in range(0, len(data), 256)]
                     + [(1, True)]) == (OK, 1)
    status, n, back = r.read(3, 4 * SECTOR)
    assert (status, n, back) == (OK, 4 * SECTOR + 1, data)
    assert max(calls) <= 2
    monkeypatch.undo()
    assert r.file()[3 * SECTOR:7 * SECTOR] == data


class MemoryDisk:
    """Another disk backend (bytes in RAM): the device needs only the interface of devices/disk.py."""
    path, read_only, can_unmap = "mem", False, False

    def __init__(self, size):
        self.data = bytearray(size)
        self.size = size
        self.calls = []

    def read_at(self, offset, views, nbytes):
        for v in views:
            v[:] = self.data[offset:offset + len(v)]
            offset += len(v)

    def write_at(self, offset, views, nbytes):
        for v in views:
            self.data[offset:offset + len(v)] = v
            offset += len(v)

    def flush(self, data_only=False):
        self.calls.append(("flush", data_only))

    def discard(self, offset, length):
        self.calls.append(("discard", offset, length))

    def write_zeroes(self, offset, length, unmap=False):
        self.data[offset:offset + length] = bytes(length)

    def close(self):
        self.calls.append(("close",))


def test_other_disk_backend():
    """VirtioBlk(disk=...) runs the protocol over any backend with that interface."""
    ram_disk = MemoryDisk(16 * SECTOR)
    dev = VirtioBlk(disk=ram_disk)
    mem = BytearrayMemory(1 << 20)
    drv = MmioDriver(VirtioMmio(dev, mem, RecordingIrq()), mem)
    drv.init()
    q = drv.queues[0]
    data = pattern(2 * SECTOR, seed=5)
    for bufs in ([(hdr(blk.T_OUT, 3), False), (data, False), (1, True)], [(hdr(blk.T_FLUSH), False), (1, True)],
                 [(hdr(blk.T_DISCARD), False), (seg(8, 2), False), (1, True)]):
        q.add(bufs)
        drv.notify(0)
        assert [q.written(h)[-1] for h, _ in q.used()] == [OK]
    assert ram_disk.data[3 * SECTOR:5 * SECTOR] == data
    head = q.add([(hdr(blk.T_IN, 3), False), (2 * SECTOR + 1, True)])
    drv.notify(0)
    assert q.used() == [(head, 2 * SECTOR + 1)] and q.written(head) == data + bytes((OK,))
    assert dev.capacity == 16 and ram_disk.calls == [("flush", False), ("discard", 8 * SECTOR, 2 * SECTOR)]
    dev.close()
    assert ram_disk.calls[-1] == ("close",)


def test_image_shrunk_under_the_device(make):
    """The file was truncated after opening: a read past its new end is IOERR, not a hang."""
    r = make(sectors=32)
    os.truncate(r.path, 4 * SECTOR)
    assert r.read(10, SECTOR)[:2] == (IOERR, 1)
    assert r.dev.io_errors == 1


def test_one_interrupt_per_batch(make, monkeypatch):
    """Five chains made available before one notify: all answered in order, signal_used once."""
    r = make()
    signals = []
    real = r.dev.signal_used
    monkeypatch.setattr(r.dev, "signal_used", lambda i: (signals.append(i), real(i)))
    heads = [r.q.add([(hdr(blk.T_IN, s), False), (SECTOR + 1, True)]) for s in range(4)]
    heads.append(r.q.add([(hdr(99), False), (1, True)]))          # a bad one in the batch
    r.drv.notify(0)
    used = r.q.used()
    assert [h for h, _ in used] == heads
    assert [n for _, n in used] == [SECTOR + 1] * 4 + [1]
    assert signals == [0]
    assert r.drv.ack_interrupts() & virtio.INT_USED_BUFFER


# ---------------------------------------------------------------- flush, cache mode, GET_ID

def test_flush_calls_fsync(make, monkeypatch):
    """FLUSH reaches the disk: os.fsync on the image, status OK, used length 1."""
    r = make()
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    assert r.request([(hdr(blk.T_FLUSH), False), (1, True)]) == (OK, 1)
    assert synced == [r.dev.disk.fd] and r.dev.flushes == 1


def test_writeback_mode_does_not_sync_each_write(make, monkeypatch):
    """In writeback mode (the default with FLUSH) writes are not synced one by one."""
    r = make()
    syncs = []
    monkeypatch.setattr(os, "fdatasync", syncs.append)
    assert r.write(0, bytes(SECTOR))[0] == OK
    assert syncs == []


def test_writethrough_without_flush_feature(make, monkeypatch):
    """A driver that did not take FLUSH cannot flush: every write is synced before completion."""
    r = make()
    r.drv.init(features(r) & ~(1 << virtio.F_RING_PACKED) & ~(1 << blk.F_FLUSH) & ~(1 << blk.F_CONFIG_WCE))
    syncs = []
    monkeypatch.setattr(os, "fdatasync", syncs.append)
    assert r.drv.read_config(32, 1) == b"\x00"
    assert r.write(0, bytes(SECTOR))[0] == OK
    assert syncs == [r.dev.disk.fd]


def test_writethrough_chosen_by_driver_and_reset(make, monkeypatch):
    """writeback=0 through config space: writes are synced; a device reset brings writeback back."""
    r = make()
    syncs = []
    monkeypatch.setattr(os, "fdatasync", syncs.append)
    r.drv.write_config(32, b"\x00")
    assert r.write(1, bytes(SECTOR))[0] == OK
    assert len(syncs) == 1
    r.drv.init()
    assert r.drv.read_config(32, 1) == b"\x01"
    assert r.write(1, bytes(SECTOR))[0] == OK
    assert len(syncs) == 1


def test_get_id_default_serial(make):
    """GET_ID: the image's file name, NUL-padded to 20 bytes; used length 20 + status."""
    r = make(name="disk.img")
    n, w = r.submit([(hdr(blk.T_GET_ID), False), (20, True), (1, True)])
    assert (n, w[-1]) == (21, OK)
    assert w[:20] == b"disk.img".ljust(20, b"\0")


def test_get_id_explicit_long_and_short_buffers(make):
    """An explicit serial of exactly 20 bytes has no NUL; a long file name is cut to 20 bytes;
    a smaller buffer gets what fits."""
    r = make(serial="ABCDEFGHIJKLMNOPQRST")
    n, w = r.submit([(hdr(blk.T_GET_ID), False), (21, True)])
    assert (n, w) == (21, b"ABCDEFGHIJKLMNOPQRST" + bytes((OK,)))
    n, w = r.submit([(hdr(blk.T_GET_ID), False), (9, True)])
    assert (n, w) == (9, b"ABCDEFGH" + bytes((OK,)))
    long = make(name="a-really-long-image-file-name.img")
    n, w = long.submit([(hdr(blk.T_GET_ID), False), (21, True)])
    assert w[:20] == b"a-really-long-image-"


# ---------------------------------------------------------------- discard and write zeroes

def test_write_zeroes(make):
    """WRITE_ZEROES (two segments, without UNMAP): the ranges read back as zeroes, the rest
    of the file and its size are unchanged."""
    r = make(sectors=64)
    orig = r.file()
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(3, 2) + seg(40, 5), False), (1, True)]) == (OK, 1)
    f = r.file()
    assert len(f) == len(orig)
    assert f[3 * SECTOR:5 * SECTOR] == bytes(2 * SECTOR) and f[40 * SECTOR:45 * SECTOR] == bytes(5 * SECTOR)
    assert f[:3 * SECTOR] == orig[:3 * SECTOR] and f[5 * SECTOR:40 * SECTOR] == orig[5 * SECTOR:40 * SECTOR]
    assert f[45 * SECTOR:] == orig[45 * SECTOR:]
    assert r.read(3, 2 * SECTOR)[2] == bytes(2 * SECTOR)
    assert r.dev.write_zeroes == 1


def test_write_zeroes_unmap_punches_or_writes(make, monkeypatch):
    """With UNMAP the device may punch a hole: the range still reads as zeroes, size unchanged;
    where the punch worked the file really holds fewer blocks."""
    r = make(sectors=64)
    orig = r.file()
    os.fsync(r.dev.disk.fd)
    blocks = os.stat(r.path).st_blocks
    punched = []
    real = disk.punch_hole
    monkeypatch.setattr(disk, "punch_hole", lambda *a: (real(*a), punched.append(a[1:]))[0])
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(8, 16, blk.WRITE_ZEROES_F_UNMAP), False),
                      (1, True)]) == (OK, 1)
    f = r.file()
    assert len(f) == len(orig) and f[8 * SECTOR:24 * SECTOR] == bytes(16 * SECTOR)
    assert f[:8 * SECTOR] == orig[:8 * SECTOR] and f[24 * SECTOR:] == orig[24 * SECTOR:]
    if punched:
        assert punched == [(8 * SECTOR, 16 * SECTOR)]
        assert os.stat(r.path).st_blocks < blocks


def test_write_zeroes_falls_back_when_punch_fails(make, monkeypatch):
    """A file system without hole punching (EOPNOTSUPP): zeroes are written instead."""
    r = make(sectors=64)

    def no_punch(fd, off, length):
        raise OSError(errno.EOPNOTSUPP, "not here")

    monkeypatch.setattr(disk, "punch_hole", no_punch)
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(1, 3, blk.WRITE_ZEROES_F_UNMAP), False),
                      (1, True)]) == (OK, 1)
    assert r.file()[SECTOR:4 * SECTOR] == bytes(3 * SECTOR)


def test_write_zeroes_in_bounded_chunks(make, monkeypatch):
    """Zeroing 3 MiB + one sector allocates nothing per request: every pwritev gets at most 16
    views of the one shared 64 KiB block of zeroes."""
    r = make(sectors=(3 << 11) + 8, mem=1 << 20)
    real = os.pwritev
    seen = []

    def pwritev(fd, bufs, off):
        seen.append([(len(b), b.obj is disk._ZEROES.obj) for b in bufs])
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", pwritev)
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(2, (3 << 11) + 1), False), (1, True)]) == (OK, 1)
    monkeypatch.undo()
    assert all(len(call) <= 16 and all(same for _, same in call) for call in seen)
    assert sum(n for call in seen for n, _ in call) == (3 << 20) + SECTOR
    f = r.file()
    assert f[2 * SECTOR:(2 + (3 << 11) + 1) * SECTOR] == bytes((3 << 20) + SECTOR)
    assert f[:2 * SECTOR] == pattern(2 * SECTOR)


def test_discard(make):
    """DISCARD is a hint (a hole or nothing): status OK, the size and the data outside stay."""
    r = make(sectors=64)
    orig = r.file()
    assert r.request([(hdr(blk.T_DISCARD), False), (seg(10, 4) + seg(20, 1), False), (1, True)]) == (OK, 1)
    f = r.file()
    assert len(f) == len(orig)
    assert f[:10 * SECTOR] == orig[:10 * SECTOR] and f[21 * SECTOR:] == orig[21 * SECTOR:]
    assert r.dev.discards == 1


@pytest.mark.parametrize("rtype", [blk.T_DISCARD, blk.T_WRITE_ZEROES])
@pytest.mark.parametrize("payload,status", [
    (seg(60, 5), IOERR),                                       # runs past the capacity
    (seg(64, 1), IOERR),                                       # starts at the capacity
    (seg(2 ** 64 - 1, 1), IOERR),                              # sector * 512 overflows 64 bits
    (seg(0, 2 ** 32 - 1), IOERR),                              # more than max sectors
    (seg(0, 1) * (blk.MAX_SEG + 1), IOERR),                      # too many segments
    (seg(0, 1)[:15], IOERR),                                   # not a multiple of 16
    (seg(0, 1) + b"\0" * 8, IOERR),
    (b"", IOERR),                                              # no segment at all
    (seg(0, 1, 4), UNSUPP),                                    # an unknown flag
    (seg(0, 1) + seg(1, 1, 0x80000000), UNSUPP),               # ...in the second segment
])
def test_discard_write_zeroes_validation(make, rtype, payload, status):
    """Malformed DISCARD/WRITE_ZEROES: the error status, nothing done to the file, and counted."""
    r = make(sectors=64)
    orig = r.file()
    assert r.request([(hdr(rtype), False), (payload, False), (1, True)] if payload
                     else [(hdr(rtype), False), (1, True)]) == (status, 1)
    assert r.file() == orig
    assert r.dev.bad_requests == 1


def test_discard_with_unmap_flag_is_unsupp(make):
    """5.2.6.2: UNMAP is a WRITE_ZEROES flag; on DISCARD it is UNSUPP."""
    r = make()
    assert r.request([(hdr(blk.T_DISCARD), False), (seg(0, 1, blk.WRITE_ZEROES_F_UNMAP), False),
                      (1, True)]) == (UNSUPP, 1)


def test_max_segments_accepted(make):
    """Exactly max_write_zeroes_seg segments is fine."""
    r = make()
    segs = b"".join(seg(i * 2, 1) for i in range(blk.MAX_SEG))
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (segs, False), (1, True)]) == (OK, 1)
    f = r.file()
    assert all(f[i * 2 * SECTOR:(i * 2 + 1) * SECTOR] == bytes(SECTOR) for i in range(blk.MAX_SEG))


def test_discard_write_zeroes_need_their_feature(make):
    """A driver that did not negotiate DISCARD / WRITE_ZEROES gets UNSUPP for them."""
    r = make()
    r.drv.init(features(r) & ~(1 << virtio.F_RING_PACKED) & ~(1 << blk.F_DISCARD) & ~(1 << blk.F_WRITE_ZEROES))
    orig = r.file()
    for t in (blk.T_DISCARD, blk.T_WRITE_ZEROES):
        assert r.request([(hdr(t), False), (seg(0, 4), False), (1, True)]) == (UNSUPP, 1)
    assert r.file() == orig


# ---------------------------------------------------------------- read-only

def test_read_only_device(make):
    """Read-only: reads and FLUSH work; OUT, DISCARD and WRITE_ZEROES are IOERR and the file
    is untouched (it is opened O_RDONLY, so the host could not write it anyway)."""
    r = make(read_only=True)
    orig = r.file()
    assert r.read(2, SECTOR)[2] == orig[2 * SECTOR:3 * SECTOR]
    assert r.write(2, bytes(SECTOR)) == (IOERR, 1)
    for t in (blk.T_DISCARD, blk.T_WRITE_ZEROES):
        assert r.request([(hdr(t), False), (seg(0, 4), False), (1, True)]) == (IOERR, 1)
    assert r.request([(hdr(blk.T_FLUSH), False), (1, True)]) == (OK, 1)
    assert r.file() == orig
    assert r.dev.writes == 0 and r.dev.bad_requests == 3
    assert fcntl.fcntl(r.dev.disk.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY


# ---------------------------------------------------------------- hostile requests

def test_header_shorter_than_16_bytes(make):
    """A 15-byte header cannot be parsed: IOERR in the status byte, counted."""
    r = make()
    assert r.request([(hdr(blk.T_IN)[:15], False), (SECTOR + 1, True)]) == (IOERR, 1)
    assert r.request([(b"", False), (1, True)]) == (IOERR, 1)
    assert r.request([(1, True)]) == (IOERR, 1)                   # nothing readable at all
    assert r.dev.bad_requests == 3 and r.dev.reads == 0


def test_header_split_over_descriptors(make):
    """A 16-byte header in three descriptors is still a header."""
    r = make()
    h = hdr(blk.T_IN, 7)
    n, w = r.submit([(h[:3], False), (h[3:11], False), (h[11:], False), (SECTOR + 1, True)])
    assert (n, w[-1], w[:-1]) == (SECTOR + 1, OK, r.file()[7 * SECTOR:8 * SECTOR])


def test_no_status_byte(make):
    """No device-writable byte: nowhere to put a status, so used length 0; counted, and the
    request does nothing (an OUT without status does not write)."""
    r = make()
    orig = r.file()
    n, w = r.submit([(hdr(blk.T_OUT, 0), False), (bytes(SECTOR), False)])
    assert (n, w) == (0, b"")
    n, _ = r.submit([(hdr(blk.T_IN, 0), False), (0, True)])        # a zero-length writable descriptor
    assert n == 0
    n, _ = r.submit([(b"abc", False)])                           # short header and no status
    assert n == 0
    assert r.file() == orig
    assert r.dev.bad_requests == 3


@pytest.mark.parametrize("sector,nbytes", [
    (0, 511), (0, SECTOR + 1), (0, 100),                       # not whole sectors
    (63, 2 * SECTOR), (64, SECTOR), (1000, SECTOR),            # beyond the capacity of 64
    (2 ** 64 - 1, SECTOR), (2 ** 55, SECTOR), (2 ** 63, 0),    # sector * 512 overflows
])
def test_bad_read(make, sector, nbytes):
    """IN not in whole sectors or past the end: IOERR, used length 1, nothing read."""
    r = make(sectors=64)
    status, n, _ = r.read(sector, nbytes)
    assert (status, n) == (IOERR, 1)
    assert r.dev.reads == 0 and r.dev.bad_requests == 1


@pytest.mark.parametrize("sector,nbytes", [
    (0, 511), (0, SECTOR + 1), (0, 1),
    (63, 2 * SECTOR), (64, SECTOR), (2 ** 64 - 1, SECTOR), (2 ** 55, SECTOR),
])
def test_bad_write(make, sector, nbytes):
    """OUT not in whole sectors or past the end: IOERR; the file is neither changed nor grown."""
    r = make(sectors=64)
    orig = r.file()
    assert r.write(sector, b"\xEE" * nbytes) == (IOERR, 1)
    assert r.file() == orig
    assert r.dev.writes == 0 and r.dev.bad_requests == 1


@pytest.mark.parametrize("rtype", [2, 3, 5, 7, 9, 10, 12, 14, 0x10, 0x80000000, 0xFFFFFFFF])
def test_unknown_type(make, rtype):
    """An unknown type (including SCSI, zoned and secure erase ones we do not offer): UNSUPP."""
    r = make()
    orig = r.file()
    assert r.request([(hdr(rtype), False), (bytes(SECTOR), False), (SECTOR + 1, True)]) == (UNSUPP, 1)
    assert r.file() == orig and r.dev.bad_requests == 1


def test_extra_writable_bytes_on_out_and_flush(make):
    """Writable bytes before the status of an OUT or FLUSH are left alone: status is still the
    last byte, used length 1."""
    r = make()
    n, w = r.submit([(hdr(blk.T_OUT, 1), False), (b"\x11" * SECTOR, False), (10, True), (1, True)])
    assert (n, w[-1]) == (1, OK) and r.file()[SECTOR:2 * SECTOR] == b"\x11" * SECTOR
    n, w = r.submit([(hdr(blk.T_FLUSH), False), (10, True)])
    assert (n, w[-1]) == (1, OK)


@pytest.mark.parametrize("call,rtype", [("preadv", blk.T_IN), ("pwritev", blk.T_OUT), ("fsync", blk.T_FLUSH),
                                        ("pwritev", blk.T_WRITE_ZEROES)])
def test_host_io_error_is_ioerr(make, monkeypatch, call, rtype):
    """EIO from the host: IOERR to the guest, counted in io_errors, nothing raised."""
    r = make()

    def fail(*a):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, call, fail)
    bufs = {blk.T_IN: [(hdr(rtype, 1), False), (SECTOR + 1, True)],
            blk.T_OUT: [(hdr(rtype, 1), False), (bytes(SECTOR), False), (1, True)],
            blk.T_FLUSH: [(hdr(rtype), False), (1, True)],
            blk.T_WRITE_ZEROES: [(hdr(rtype), False), (seg(0, 1), False), (1, True)]}[rtype]
    assert r.request(bufs) == (IOERR, 1)
    assert r.dev.io_errors == 1 and "Input/output error" in r.dev.last_error
    assert r.dev.reads == r.dev.writes == r.dev.flushes == 0
    monkeypatch.undo()


def test_disk_full_is_ioerr(make, monkeypatch):
    """ENOSPC halfway through a write: IOERR."""
    r = make()
    monkeypatch.setattr(os, "pwritev", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    assert r.write(0, bytes(4 * SECTOR)) == (IOERR, 1)
    monkeypatch.undo()


def test_punch_hole_error_other_than_unsupported_is_ioerr(make, monkeypatch):
    """EIO from fallocate is an I/O error, not a reason to fall back to writing zeroes."""
    r = make()
    if not r.dev.may_unmap:
        pytest.skip("no fallocate here")
    monkeypatch.setattr(disk, "punch_hole", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    assert r.request([(hdr(blk.T_DISCARD), False), (seg(0, 1), False), (1, True)]) == (IOERR, 1)
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(0, 1, blk.WRITE_ZEROES_F_UNMAP), False),
                      (1, True)]) == (IOERR, 1)
    assert r.dev.io_errors == 2


def test_closed_image_is_ioerr_for_every_type(make):
    """The backend went away (fd closed): every I/O request is IOERR; GET_ID still answers."""
    r = make()
    r.check_at_end = False
    r.dev.close()
    assert r.read(0, SECTOR)[:2] == (IOERR, 1)
    assert r.write(0, bytes(SECTOR)) == (IOERR, 1)
    assert r.request([(hdr(blk.T_FLUSH), False), (1, True)]) == (IOERR, 1)
    assert r.request([(hdr(blk.T_WRITE_ZEROES), False), (seg(0, 1), False), (1, True)]) == (IOERR, 1)
    assert r.request([(hdr(blk.T_DISCARD), False), (seg(0, 1), False), (1, True)]) == (IOERR, 1)
    assert r.request([(hdr(blk.T_GET_ID), False), (21, True)]) == (OK, 21)
    assert not r.drv.status() & virtio.S_DEVICE_NEEDS_RESET
    assert r.dev.io_errors == 5 and r.dev.internal_errors == 0


def test_device_bug_becomes_ioerr_not_an_exception(make, monkeypatch):
    """A bug inside the device (here: a RuntimeError) is answered with IOERR and recorded;
    the VMM never sees it."""
    r = make()

    def boom(*a):
        raise RuntimeError("bug")

    monkeypatch.setattr(r.dev, "_read", boom)
    assert r.read(0, SECTOR)[:2] == (IOERR, 1)
    assert r.dev.internal_errors == 1 and "bug" in r.dev.last_error
    monkeypatch.undo()
    r.dev.internal_errors = 0


def test_broken_queue_needs_reset_then_recovers(make):
    """A head outside the table is a QueueError: DEVICE_NEEDS_RESET, no exception; after a reset
    and re-initialisation the device works again."""
    r = make()
    r.q.publish(999)
    r.drv.notify(0)
    assert r.drv.status() & virtio.S_DEVICE_NEEDS_RESET
    r.drv.init()
    assert r.write(3, b"\x42" * SECTOR) == (OK, 1)
    assert r.read(3, SECTOR)[2] == b"\x42" * SECTOR


_types = st.sampled_from([blk.T_IN, blk.T_OUT, blk.T_FLUSH, blk.T_GET_ID, blk.T_DISCARD, blk.T_WRITE_ZEROES]) | st.integers(0, 2**32 - 1)
_sectors = st.integers(0, 40) | st.sampled_from([2**64 - 1, 2**55, 2**63]) | st.integers(0, 2**64 - 1)
_buf = st.tuples(st.integers(0, 1500), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(st.tuples(_types, _sectors, st.integers(0, 20),
                               st.lists(_buf, max_size=5), st.binary(max_size=80), st.booleans()),
                     min_size=1, max_size=6))
def test_fuzz_requests_never_break_the_device(reqs):
    """Random headers, sectors and buffer layouts, several per notify: every chain comes back
    (length 0, or status + data), nothing raises, the queue stays usable, the file keeps its size
    and the device still reads correctly afterwards."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.img")
        with open(path, "wb") as f:
            f.write(pattern(32 * SECTOR))
        r = Rig(path, 4 << 20, None)
        try:
            heads = []
            for rtype, sector, hlen, bufs, payload, indirect in reqs:
                chain = [((hdr(rtype, sector) + payload)[:hlen if hlen < 16 else 16 + len(payload)], False)]
                chain += [(n if w else bytes(n), w) for n, w in sorted(bufs, key=lambda b: b[1])]
                heads.append(r.q.add(chain, indirect))
            r.drv.notify(0)
            used = r.q.used()
            assert [h for h, _ in used] == heads
            for (h, n), (_, _, _, bufs, _, _) in zip(used, reqs):
                wlen = sum(n for n, w in bufs if w)
                assert n <= wlen and (n == 0) == (wlen == 0)
            assert os.path.getsize(path) == 32 * SECTOR
            r.healthy()
        finally:
            r.dev.close()
