"""A vhost-user front-end in Python for the tests: it plays QEMU against the back-end over a
socket, with guest RAM in a memfd and split rings driven by SplitDriverQueue.

    fe = Frontend(sock)
    fe.negotiate()                     # features + protocol features, SET_OWNER
    fe.add_memory()                    # one memfd region (SET_MEM_TABLE)
    q = fe.setup_ring(0, 8)            # NUM, BASE, ADDR, CALL, KICK, ENABLE
    q.add([(64, True)]); fe.kick(0); fe.wait_call(0); q.used()

Every message can also be sent raw (send()), with any payload and fds: the hostile tests do.
"""
import mmap
import os
import select
import socket
import struct

from nvmmpy.devices.interfaces import BytearrayMemory
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.vhost_user import messages

from .driver import Allocator, SplitDriverQueue

GPA = 0x100000            # guest-physical base of the test RAM (not 0: translation must matter)
UVA = 0x7F1234560000      # the front-end's "user address" of it (never dereferenced by anyone)
RAM = 1 << 20


class Frontend:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(10)
        self.fd = None
        self.map = None
        self.mem = None
        self.alloc = None
        self.kicks = {}
        self.calls = {}
        self.features = 0

    # --- raw messages ------------------------------------------------------------------------
    def send(self, request: int, payload: bytes = b"", fds=(), flags: int = messages.VERSION, size: int | None = None):
        data = messages.HEADER.pack(request, flags, len(payload) if size is None else size) + payload
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def recv(self, request: int) -> bytes:
        head = self._exact(messages.HEADER.size)
        req, flags, size = messages.HEADER.unpack(head)
        assert req == request and flags == messages.VERSION | messages.FLAG_REPLY, (req, flags)
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("the back-end closed the connection")
            buf += chunk
        return buf

    def closed(self, timeout: float = 5) -> bool:
        """Whether the back-end has closed the connection (reads EOF within `timeout`)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def get_u64(self, request: int) -> int:
        self.send(request)
        return messages.U64.unpack(self.recv(request))[0]

    def set_u64(self, request: int, value: int, fds=(), flags: int = messages.VERSION) -> None:
        self.send(request, messages.U64.pack(value), fds, flags)

    # --- the usual sequence ------------------------------------------------------------------------
    def negotiate(self, features: int | None = None, protocol: int | None = None) -> int:
        offered = self.get_u64(messages.GET_FEATURES)
        pf = self.get_u64(messages.GET_PROTOCOL_FEATURES)
        self.set_u64(messages.SET_PROTOCOL_FEATURES, pf if protocol is None else protocol)
        self.send(messages.SET_OWNER)
        want = offered & ~(1 << virtio.F_RING_PACKED) if features is None else features
        self.set_u64(messages.SET_FEATURES, want)
        self.features = want
        return offered

    def make_memory(self, size: int = RAM) -> int:
        self.fd = os.memfd_create("vhost-user-test", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.mem = BytearrayMemory(self.map, base=GPA)
        self.alloc = Allocator(GPA + 0x1000, GPA + size)
        return self.fd

    def add_memory(self, size: int = RAM) -> None:
        fd = self.make_memory(size)
        self.send(messages.SET_MEM_TABLE, messages.MEM_TABLE_HEAD.pack(1, 0) + messages.MEM_REGION.pack(GPA, size, UVA, 0), [fd])

    def uva(self, gpa: int) -> int:
        return gpa - GPA + UVA

    def setup_ring(self, index: int, size: int = 8) -> SplitDriverQueue:
        q = SplitDriverQueue(self.mem, self.alloc, size)
        self.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(index, size))
        self.send(messages.SET_VRING_BASE, messages.VRING_STATE.pack(index, 0))
        self.send(messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(index, 0, self.uva(q.desc), self.uva(q.used_addr),
                                                      self.uva(q.avail), 0))
        call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.set_u64(messages.SET_VRING_CALL, index, [call])
        self.set_u64(messages.SET_VRING_KICK, index, [kick])
        self.send(messages.SET_VRING_ENABLE, messages.VRING_STATE.pack(index, 1))
        self.calls[index], self.kicks[index] = call, kick
        return q

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kicks[index], 1)

    def wait_call(self, index: int, timeout: float = 5) -> bool:
        r, _, _ = select.select([self.calls[index]], [], [], timeout)
        if not r:
            return False
        os.eventfd_read(self.calls[index])
        return True

    def close(self) -> None:
        self.sock.close()
        for fd in [*self.kicks.values(), *self.calls.values()] + ([self.fd] if self.fd is not None else []):
            os.close(fd)
        self.kicks, self.calls, self.fd = {}, {}, None
        if self.map is not None:
            self.mem = None
            try:
                self.map.close()
            except BufferError:
                pass
            self.map = None


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)
