"""The vhost-user wire format: a 12-byte header {u32 request, u32 flags, u32 size}, then `size`
bytes of payload, native byte order (x86: little-endian), file descriptors in SCM_RIGHTS.

read_message() returns one Message or raises ProtocolError for anything malformed (short read,
wrong version, oversized payload, more fds than a message may carry); the payload parsers below
check exact sizes. Received fds belong to the Message until a handler takes them (take_fd);
Message.close() closes whatever is left, so no fd leaks on any error path.
"""
import os
import socket
import struct


class ProtocolError(Exception):
    """The front-end broke the protocol: log it and close the connection."""


# Requests (front-end -> back-end)
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_LOG_BASE, SET_LOG_FD = 6, 7
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG = 24, 25
RESET_DEVICE = 34
GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 36, 37, 38
SET_STATUS, GET_STATUS = 39, 40

NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int) and 0 < v < 64}

# Header flags
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3

# Virtio feature bit 30, reused by vhost-user: the back-end speaks protocol features
F_PROTOCOL_FEATURES = 30

# Protocol features
PF_MQ, PF_REPLY_ACK, PF_CONFIG, PF_RESET_DEVICE = 0, 3, 9, 13
PF_CONFIGURE_MEM_SLOTS, PF_STATUS = 15, 16

# SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring, bit 8 "no fd" (poll instead)
VRING_IDX_MASK = 0xFF
VRING_NOFD = 1 << 8

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")                 # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")              # index, flags, desc, used, avail, log (user addresses)
MEM_TABLE_HEAD = struct.Struct("<II")              # nregions, padding
MEM_REGION = struct.Struct("<QQQQ")                # guest address, size, user address, mmap offset
MEM_REG_MSG = struct.Struct("<Q32s")               # padding, one region
CONFIG_HEAD = struct.Struct("<III")                # offset, size, flags

MAX_FDS = 8                                        # per message (the spec's bound for SET_MEM_TABLE too)
MAX_MEM_TABLE_REGIONS = 8
MAX_CONFIG_SIZE = 256                              # a virtio config space is at most 256 bytes (PCI)
MEM_TABLE_FULL = MEM_TABLE_HEAD.size + MAX_MEM_TABLE_REGIONS * MEM_REGION.size
MAX_PAYLOAD = max(MEM_TABLE_FULL, CONFIG_HEAD.size + MAX_CONFIG_SIZE)   # the largest request we take
MESSAGE_TIMEOUT = 10.0                             # seconds a started message may take to arrive whole
VRING_F_LOG = 1


def name(request: int) -> str:
    return NAMES.get(request, f"request {request}")


class Message:
    __slots__ = ("request", "flags", "payload", "fds")

    def __init__(self, request: int, flags: int, payload: bytes, fds: list):
        self.request, self.flags, self.payload, self.fds = request, flags, payload, fds

    @property
    def name(self) -> str:
        return name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def expect_fds(self, n: int) -> None:
        if len(self.fds) != n:
            raise ProtocolError(f"{self.name} came with {len(self.fds)} file descriptors, not {n}")

    def take_fd(self) -> int:
        """The first fd, now owned by the caller."""
        return self.fds.pop(0)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def expect_size(self, n: int) -> None:
        if len(self.payload) != n:
            raise ProtocolError(f"{self.name} payload of {len(self.payload)} bytes, not {n}")

    def u64(self) -> int:
        self.expect_size(U64.size)
        return U64.unpack(self.payload)[0]

    def vring_state(self) -> tuple:
        self.expect_size(VRING_STATE.size)
        return VRING_STATE.unpack(self.payload)

    def vring_addr(self) -> tuple:
        self.expect_size(VRING_ADDR.size)
        return VRING_ADDR.unpack(self.payload)

    def mem_table(self) -> list:
        """[(gpa, size, uva, mmap_offset)] of SET_MEM_TABLE."""
        if len(self.payload) < MEM_TABLE_HEAD.size:
            raise ProtocolError(f"{self.name} payload of {len(self.payload)} bytes: no region count")
        n, _ = MEM_TABLE_HEAD.unpack_from(self.payload)
        if n > MAX_MEM_TABLE_REGIONS:
            raise ProtocolError(f"{self.name} with {n} regions, more than {MAX_MEM_TABLE_REGIONS}")
        # QEMU sends exactly n regions; older front-ends send all eight slots. Either is fine.
        if len(self.payload) not in (MEM_TABLE_HEAD.size + n * MEM_REGION.size, MEM_TABLE_FULL):
            raise ProtocolError(f"{self.name} payload of {len(self.payload)} bytes for {n} regions")
        return [MEM_REGION.unpack_from(self.payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size) for i in range(n)]

    def mem_region(self) -> tuple:
        """(gpa, size, uva, mmap_offset) of ADD_MEM_REG / REM_MEM_REG."""
        self.expect_size(MEM_REG_MSG.size)
        return MEM_REGION.unpack_from(self.payload, 8)

    def config(self) -> tuple:
        """(offset, size, flags, data) of GET_CONFIG / SET_CONFIG."""
        if len(self.payload) < CONFIG_HEAD.size:
            raise ProtocolError(f"{self.name} payload of {len(self.payload)} bytes: no config header")
        offset, size, flags = CONFIG_HEAD.unpack_from(self.payload)
        if size > MAX_CONFIG_SIZE or len(self.payload) != CONFIG_HEAD.size + size:
            raise ProtocolError(f"{self.name} of {size} bytes in a {len(self.payload)}-byte payload")
        return offset, size, flags, self.payload[CONFIG_HEAD.size:]

    def __repr__(self):
        return f"Message({self.name}, flags={self.flags:#x}, {len(self.payload)} bytes, fds={self.fds})"


def _recv_exact(sock: socket.socket, n: int, fds: list) -> bytes:
    """n bytes from sock (fds that come along appended to `fds`); ProtocolError if it closes first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            data, got, flags, _ = socket.recv_fds(sock, n - len(buf), MAX_FDS)
        except socket.timeout:
            raise ProtocolError(f"message cut short: {len(buf)} of {n} bytes within {MESSAGE_TIMEOUT:g} s") from None
        fds.extend(got)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError(f"more than {MAX_FDS} file descriptors with one message")
        if not data:
            if buf:
                raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes of a message")
            raise EOFError
        buf += data
    return bytes(buf)


def read_message(sock: socket.socket):
    """The next message (the socket is readable), None when the front-end closed the connection
    between messages; ProtocolError for anything malformed."""
    fds: list = []
    sock.settimeout(MESSAGE_TIMEOUT)
    try:
        try:
            head = _recv_exact(sock, HEADER.size, fds)
        except EOFError:
            return None
        request, flags, size = HEADER.unpack(head)
        if flags & VERSION_MASK != VERSION:
            raise ProtocolError(f"{name(request)} with protocol version {flags & VERSION_MASK}, not {VERSION}")
        if flags & FLAG_REPLY:
            raise ProtocolError(f"{name(request)} has the reply flag set: a front-end sends requests only")
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"{name(request)} payload of {size} bytes, more than {MAX_PAYLOAD}")
        try:
            payload = _recv_exact(sock, size, fds) if size else b""
        except EOFError:
            raise ProtocolError(f"connection closed before the {size}-byte payload of {name(request)}") from None
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"{len(fds)} file descriptors with {name(request)}, more than {MAX_FDS}")
        return Message(request, flags, payload, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        sock.settimeout(None)


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def reply(msg: Message, payload: bytes) -> bytes:
    return encode(msg.request, payload, VERSION | FLAG_REPLY)
