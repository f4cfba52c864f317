"""virtio-blk (VIRTIO 1.2 sec. 5.2) over a raw image file: one request queue.

    dev = VirtioBlk("disk.img", read_only=False, serial=None)

A request is a device-readable header {le32 type, le32 reserved, le64 sector}, then data
(device-readable for OUT, DISCARD and WRITE_ZEROES; device-writable for IN and GET_ID), then one
device-writable status byte: the last writable byte of the chain. The spec sets no framing, so
header, data and status may share or split descriptors in any way.

The image is a disk backend (devices/disk.py, RawImage by default): this module is the protocol
only (parsing, checks, status, config, features) and hands the backend the chain's memoryviews,
so data goes straight between the image and guest RAM; whatever the guest asks, the host
allocates a bounded amount per request (the header and at most MAX_SEG discard segments).

A request the device cannot make sense of gets IOERR (UNSUPP for an unknown type or flag); a chain
with no status byte at all cannot be answered and is returned with used length 0. Either way it
is counted in `bad_requests` and the device goes on. A host I/O error (EIO, ENOSPC, ...) is
IOERR too: nothing a request does raises out of process_queue but the queue's own QueueError.
"""
import os
import struct

from ..disk import RawImage
from . import constants as virtio
from .device import VirtioDevice
from .errors import BadRequest

SECTOR = 512

# Feature bits (5.2.3)
F_SIZE_MAX, F_SEG_MAX, F_GEOMETRY, F_RO, F_BLK_SIZE = 1, 2, 4, 5, 6
F_FLUSH, F_TOPOLOGY, F_CONFIG_WCE, F_MQ, F_DISCARD, F_WRITE_ZEROES = 9, 10, 11, 12, 13, 14

# Request types and status values (5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
WRITE_ZEROES_F_UNMAP = 1
ID_BYTES = 20

QUEUE_SIZE = 256
# Data segments per request: the chain holds the header and status too (the queue size bounds a
# chain without indirect descriptors).
SEG_MAX = QUEUE_SIZE - 2
# Per DISCARD / WRITE_ZEROES request: segments, and sectors per segment (Linux splits to fit).
MAX_SEG = 16
MAX_DISCARD_SECTORS = MAX_WRITE_ZEROES_SECTORS = 1 << 20   # 512 MiB

# struct virtio_blk_config (5.2.4), up to and including write_zeroes_may_unmap and its padding.
CONFIG = struct.Struct("<QII HBB I BBHI BBH IIIII B3x")
CONFIG_WRITEBACK_OFFSET = 32
HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")


class VirtioBlk(VirtioDevice):
    """A block device over a raw image file (or a host block device), or over any disk backend.

    capacity is the image size // 512: the tail of an image whose size is not a multiple of 512 is
    not visible to the guest (and never written). The image is opened once (devices/disk.py's
    RawImage), O_RDONLY when `read_only` (the device then offers VIRTIO_BLK_F_RO and fails writes
    with IOERR), else O_RDWR. `disk` is an open backend to use instead of `path` (its own
    read_only counts). `serial` (str or bytes, at most 20 bytes) answers GET_ID; by default the
    image's file name, cut to 20 bytes.
    """
    device_id = virtio.ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)
    name = "virtio-blk"

    def __init__(self, path=None, read_only: bool = False, serial=None, *, disk=None):
        super().__init__()
        self.path = disk.path if disk is not None else os.fspath(path)
        if serial is None:
            serial = os.path.basename(self.path.rstrip("/")).encode("utf-8", "replace")[:ID_BYTES]
        elif isinstance(serial, str):
            serial = serial.encode("utf-8")
        serial = bytes(serial)
        if len(serial) > ID_BYTES:
            raise ValueError(f"virtio-blk serial {serial!r} is {len(serial)} bytes: at most {ID_BYTES}")
        self.serial = serial
        self.disk = disk if disk is not None else RawImage(self.path, read_only, device=self.name)
        self.read_only = self.disk.read_only
        size = self.disk.size
        self.capacity = size // SECTOR
        if self.capacity == 0:
            self.disk.close()
            raise ValueError(f"virtio-blk image {self.path!r} is {size} bytes, less than one 512-byte sector: "
                             f"give it a size first (e.g. truncate -s 64M {self.path})")
        self.device_features = ((1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH) | (1 << F_CONFIG_WCE)
                                | (1 << F_DISCARD) | (1 << F_WRITE_ZEROES) | (int(self.read_only) << F_RO))
        self.may_unmap = self.disk.can_unmap
        self._writeback = True      # the cache mode the driver chose (CONFIG_WCE); reset: writeback
        self.reads = self.writes = self.flushes = 0
        self.discards = self.write_zeroes = self.get_ids = 0
        self.bytes_read = self.bytes_written = 0
        self.io_errors = 0          # host errors turned into IOERR (bad_requests, internal_errors: VirtioDevice)

    def close(self) -> None:
        """Close the image; requests after this fail with IOERR."""
        self.disk.close()

    # --- configuration ------------------------------------------------------------------------
    @property
    def writeback(self) -> bool:
        """Whether completed writes may sit in the host cache until FLUSH (5.2.5): only when the
        driver negotiated FLUSH, and (with CONFIG_WCE) has not switched to writethrough."""
        return self.has_feature(F_FLUSH) and self._writeback

    def config_space(self) -> bytes:
        return CONFIG.pack(
            self.capacity, 0, SEG_MAX,
            0, 0, 0,                                   # geometry (not offered)
            SECTOR,                                    # blk_size
            0, 0, 0, 0,                                # topology (not offered)
            int(self._config_writeback()), 0, 0,       # writeback, unused0, num_queues (no MQ)
            MAX_DISCARD_SECTORS, MAX_SEG, 1,           # discard: sectors, segments, alignment
            MAX_WRITE_ZEROES_SECTORS, MAX_SEG,
            int(self.may_unmap))

    def _config_writeback(self) -> bool:
        """The cache mode in config: before any features are negotiated the default (a vhost-user
        front-end reads and caches config then, and its driver must learn it may flush)."""
        return self.writeback if self.driver_features else self._writeback

    def write_config(self, offset: int, data: bytes) -> None:
        """Only `writeback` is writable, and only with CONFIG_WCE: 0 writethrough, 1 writeback."""
        if offset == CONFIG_WRITEBACK_OFFSET and len(data) == 1 and self.has_feature(F_CONFIG_WCE) \
                and data[0] in (0, 1):
            self._writeback = bool(data[0])

    def reset(self) -> None:
        self._writeback = True  # a new driver starts from the default, not the last one's choice

    # --- requests -----------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        q = self.queues[index] if index < len(self.queues) else None
        if q is None:
            return
        pushed = False
        try:
            while (chain := q.pop()) is not None:   # QueueError goes to the transport
                q.push(chain, self._handle(chain))
                pushed = True
        finally:
            if pushed:
                self.signal_used(index)

    def _handle(self, chain) -> int:
        """Carry out one request; returns the used length (bytes written incl. the status byte)."""
        if chain.writable_len == 0:
            self.bad_request("no device-writable status byte")
            return 0
        status_off = chain.writable_len - 1
        written = 0
        try:
            if chain.readable_len < HEADER.size:
                raise BadRequest(S_IOERR, f"header of {chain.readable_len} bytes, not {HEADER.size}")
            rtype, _, sector = HEADER.unpack(chain.read(HEADER.size))
            if rtype == T_IN:
                written = self._read(chain, sector, status_off)
            elif rtype == T_OUT:
                self._write(chain, sector)
            elif rtype == T_FLUSH:
                self.disk.flush()
                self.flushes += 1
            elif rtype == T_GET_ID:
                written = chain.write(self.serial.ljust(ID_BYTES, b"\0")[:min(ID_BYTES, status_off)])
                self.get_ids += 1
            elif rtype in (T_DISCARD, T_WRITE_ZEROES):
                self._discard_write_zeroes(chain, rtype)
            else:
                raise BadRequest(S_UNSUPP, f"unknown request type {rtype}")
            status = S_OK
        except BadRequest as e:
            self.bad_request(str(e))
            status, written = e.status, 0
        except OSError as e:
            self.io_errors += 1
            self.last_error = f"{self.path}: {e.strerror or e}"
            status, written = S_IOERR, 0
        except Exception as e:  # noqa: BLE001 - a device bug must not take the vCPU down
            self.internal_error(f"internal error: {e!r}")
            status, written = S_IOERR, 0
        chain.write(bytes((status,)), status_off)
        return written + 1

    def _check_range(self, sector: int, nbytes: int) -> None:
        if nbytes % SECTOR:
            raise BadRequest(S_IOERR, f"data of {nbytes} bytes is not a multiple of {SECTOR}")
        n = nbytes // SECTOR
        if sector > self.capacity or n > self.capacity - sector:
            raise BadRequest(S_IOERR, f"sectors {sector}+{n} beyond the capacity of {self.capacity}")

    def _sync_if_writethrough(self) -> None:
        if not self.writeback:
            self.disk.flush(data_only=True)

    def _read(self, chain, sector: int, size: int) -> int:
        self._check_range(sector, size)
        self.disk.read_at(sector * SECTOR, chain.writable_views(0, size), size)
        self.reads += 1
        self.bytes_read += size
        return size

    def _write(self, chain, sector: int) -> None:
        if self.read_only:
            raise BadRequest(S_IOERR, "a write to a read-only device")
        size = chain.readable_len - HEADER.size
        self._check_range(sector, size)
        self.disk.write_at(sector * SECTOR, chain.readable_views(HEADER.size, size), size)
        self._sync_if_writethrough()
        self.writes += 1
        self.bytes_written += size

    def _discard_write_zeroes(self, chain, rtype: int) -> None:
        zeroes = rtype == T_WRITE_ZEROES
        what = "write zeroes" if zeroes else "discard"
        if not self.has_feature(F_WRITE_ZEROES if zeroes else F_DISCARD):
            raise BadRequest(S_UNSUPP, f"{what} without its feature negotiated")
        if self.read_only:
            raise BadRequest(S_IOERR, f"{what} on a read-only device")
        size = chain.readable_len - HEADER.size
        if size == 0 or size % SEGMENT.size:
            raise BadRequest(S_IOERR, f"{what} segments of {size} bytes, not a positive multiple of {SEGMENT.size}")
        if size // SEGMENT.size > MAX_SEG:
            raise BadRequest(S_IOERR, f"{what} with {size // SEGMENT.size} segments, more than {MAX_SEG}")
        limit = MAX_WRITE_ZEROES_SECTORS if zeroes else MAX_DISCARD_SECTORS
        allowed = WRITE_ZEROES_F_UNMAP if zeroes else 0
        segs = list(SEGMENT.iter_unpack(chain.read(size, HEADER.size)))
        for sector, num, flags in segs:   # all of them first: a bad one means nothing is done
            if flags & ~allowed:
                raise BadRequest(S_UNSUPP, f"{what} flags {flags:#x}")
            if num > limit:
                raise BadRequest(S_IOERR, f"{what} of {num} sectors, more than {limit}")
            self._check_range(sector, num * SECTOR)
        for sector, num, flags in segs:
            if zeroes:
                self.disk.write_zeroes(sector * SECTOR, num * SECTOR, bool(flags & WRITE_ZEROES_F_UNMAP))
            else:
                self.disk.discard(sector * SECTOR, num * SECTOR)
        self._sync_if_writethrough()
        if zeroes:
            self.write_zeroes += 1
        else:
            self.discards += 1
