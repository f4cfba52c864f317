"""The vhost-user back-end against a Python front-end over a socketpair: the normal sequence works
(rng and blk requests over split rings, GET_VRING_BASE, config), and every kind of hostile message
closes that connection with a log line while the back-end survives to serve the next one,
without leaking a file descriptor."""
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest

from harness import reaped, sigint_as_in_a_terminal

from nvmmpy.devices.testing.vhost_user import GPA, RAM, UVA, Frontend
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.blk import VirtioBlk
from nvmmpy.devices.virtio.rng import VirtioRng
from nvmmpy.devices.virtio.vhost_user import messages
from nvmmpy.devices.virtio.vhost_user.server import Server, ServerError


class Backend:
    """A Server on its own I/O thread; connect() hands it one end of a socketpair."""

    def __init__(self, device, path):
        self.events = []
        self.server = Server(device, path, on_event=self.events.append)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connect(self) -> Frontend:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.hand_over(b)
        return Frontend(a)

    def errors(self):
        return [e["message"] for e in self.events if e["event"] == "error"]

    def stop(self):
        self.server.stop()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def rng(tmp_path):
    b = Backend(VirtioRng(), str(tmp_path / "rng.sock"))
    yield b
    b.stop()


def _open_fds() -> dict:
    gc.collect()   # mmaps (which hold a dup of their fd) die with their last view
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def test_rng_request_round_trip(rng):
    fe = Frontend(socket.socket(socket.AF_UNIX))
    fe.sock.connect(rng.server.path)          # through the listening socket, as QEMU connects
    offered = fe.negotiate()
    assert offered >> messages.F_PROTOCOL_FEATURES & 1 and offered >> virtio.F_VERSION_1 & 1
    assert offered >> virtio.F_RING_PACKED & 1 and offered >> virtio.F_EVENT_IDX & 1
    assert fe.get_u64(messages.GET_QUEUE_NUM) == 1
    fe.add_memory()
    q = fe.setup_ring(0, 8)
    head = q.add([(4096, True)])
    fe.kick(0)
    assert fe.wait_call(0)
    (h, length), = q.used()
    assert (h, length) == (head, 4096)
    assert rng.server.device.requests == 1 and rng.server.device.bytes_served == 4096
    assert len(set(q.written(head))) > 200          # random bytes, in the guest's buffer
    # GET_VRING_BASE stops the ring and says where it stands
    fe.send(messages.GET_VRING_BASE, messages.VRING_STATE.pack(0, 0))
    assert messages.VRING_STATE.unpack(fe.recv(messages.GET_VRING_BASE)) == (0, 1)
    assert rng.server.device.queues == [None]
    fe.close()


def test_reply_ack_and_status(rng):
    fe = rng.connect()
    fe.negotiate()
    fe.set_u64(messages.SET_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER, flags=messages.VERSION | messages.FLAG_NEED_REPLY)
    assert fe.recv(messages.SET_STATUS) == messages.U64.pack(0)
    assert fe.get_u64(messages.GET_STATUS) == virtio.S_ACKNOWLEDGE | virtio.S_DRIVER
    assert fe.get_u64(messages.GET_MAX_MEM_SLOTS) >= 8
    fe.close()


def test_reset_device_and_reset_owner_stop_the_rings_and_keep_the_connection(rng):
    """RESET_DEVICE resets the device (rings stopped, features and status cleared) and the same
    connection sets it up again; RESET_OWNER (deprecated) disables the rings: kicks go unanswered
    until SET_VRING_ENABLE."""
    fe = rng.connect()
    _start(fe)
    q = fe.setup_ring(0, 8)
    fe.set_u64(messages.SET_STATUS, virtio.S_ACKNOWLEDGE | virtio.S_DRIVER | virtio.S_DRIVER_OK)
    fe.send(messages.RESET_DEVICE, flags=messages.VERSION | messages.FLAG_NEED_REPLY)
    assert fe.recv(messages.RESET_DEVICE) == messages.U64.pack(0)
    assert rng.server.device.queues == [None] and fe.get_u64(messages.GET_STATUS) == 0
    for fds in (fe.kicks, fe.calls):
        os.close(fds.pop(0))
    fe.set_u64(messages.SET_FEATURES, fe.features)
    q = fe.setup_ring(0, 8)
    head = q.add([(24, True)])
    fe.kick(0)
    assert fe.wait_call(0) and q.used() == [(head, 24)]
    fe.send(messages.RESET_OWNER)
    q.set_used_event(1)                              # EVENT_IDX: call once the used index passes 1
    head = q.add([(40, True)])
    fe.kick(0)
    assert not fe.wait_call(0, timeout=0.3) and q.used() == []      # disabled: the request waits
    fe.send(messages.SET_VRING_ENABLE, messages.VRING_STATE.pack(0, 1))
    fe.kick(0)
    assert fe.wait_call(0) and q.used() == [(head, 40)]
    assert not rng.errors()
    fe.close()


def test_blk_config_and_io_through_two_regions(tmp_path):
    """Two regions (ADD_MEM_REG), the second at an mmap offset: a write lands in the image."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(64 << 10))
    b = Backend(VirtioBlk(str(img)), str(tmp_path / "blk.sock"))
    try:
        fe = b.connect()
        fe.negotiate()
        fe.send(messages.GET_CONFIG, messages.CONFIG_HEAD.pack(0, 8, 0) + bytes(8))
        off, size, flags = messages.CONFIG_HEAD.unpack_from(cfg := fe.recv(messages.GET_CONFIG))
        assert (off, size) == (0, 8) and struct.unpack_from("<Q", cfg, 12)[0] == 128   # capacity in sectors
        fd = fe.make_memory()
        half = RAM // 2
        for gpa, uva, offset in ((GPA, UVA, 0), (GPA + half, UVA + half, half)):
            fe.send(messages.ADD_MEM_REG, struct.pack("<Q", 0) + messages.MEM_REGION.pack(gpa, half, uva, offset), [fd])
        q = fe.setup_ring(0, 8)
        data = bytes(range(256)) * 2
        head = q.add([(struct.pack("<IIQ", 1, 0, 3), False), (data, False), (1, True)])
        fe.kick(0)
        assert fe.wait_call(0)
        assert q.used() == [(head, 1)] and q.written(head) == b"\0"
        assert img.read_bytes()[3 * 512:4 * 512] == data
        # the guest switches the cache to writethrough (CONFIG_WCE): SET_CONFIG reaches the device
        fe.send(messages.SET_CONFIG, messages.CONFIG_HEAD.pack(32, 1, 0) + b"\0", flags=messages.VERSION | messages.FLAG_NEED_REPLY)
        assert fe.recv(messages.SET_CONFIG) == messages.U64.pack(0)
        fe.send(messages.GET_CONFIG, messages.CONFIG_HEAD.pack(32, 1, 0) + b"\0")
        assert fe.recv(messages.GET_CONFIG)[12:] == b"\0" and not b.server.device.writeback
        fe.send(messages.SET_CONFIG, messages.CONFIG_HEAD.pack(60, 4, 0) + bytes(4))     # past the config space
        assert fe.closed() and "the config space has 60" in b.errors()[-1]
        fe.close()
    finally:
        b.stop()


def _send_with_eventfd(fe, request, value, signal_it=False):
    fd = os.eventfd(0)
    try:
        fe.set_u64(request, value, [fd])
        if signal_it:
            os.eventfd_write(fd, 1)
    finally:
        os.close(fd)


def test_memory_table_change_while_running_and_ring_restart(rng):
    """A region added while a ring runs keeps it running; removing the ring's region is refused;
    GET_VRING_BASE then SET_VRING_BASE + a new kick resumes where the ring stood."""
    fe = rng.connect()
    _start(fe)
    q = fe.setup_ring(0, 8)
    extra = os.memfd_create("extra")
    os.ftruncate(extra, 1 << 16)
    fe.send(messages.ADD_MEM_REG, struct.pack("<Q", 0) + messages.MEM_REGION.pack(0x40000000, 1 << 16, UVA + (1 << 30), 0), [extra])
    os.close(extra)
    head = q.add([(32, True)])
    fe.kick(0)
    assert fe.wait_call(0) and q.used() == [(head, 32)]
    fe.send(messages.GET_VRING_BASE, messages.VRING_STATE.pack(0, 0))
    assert messages.VRING_STATE.unpack(fe.recv(messages.GET_VRING_BASE)) == (0, 1)
    q.set_used_event(1)                              # EVENT_IDX: tell us once the used index passes 1
    head = q.add([(48, True)])                      # made available while the ring is stopped
    fe.send(messages.SET_VRING_BASE, messages.VRING_STATE.pack(0, 1))
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    os.close(fe.kicks.pop(0))
    fe.kicks[0] = kick
    fe.set_u64(messages.SET_VRING_KICK, 0, [kick])       # restart: the back-end looks at the ring at once
    assert fe.wait_call(0) and q.used() == [(head, 48)]
    assert rng.server.device.requests == 2
    fe.send(messages.REM_MEM_REG, struct.pack("<Q", 0) + messages.MEM_REGION.pack(GPA, RAM, UVA, 0))
    assert fe.closed()
    assert "outside every memory region" in rng.errors()[-1]
    fe.close()


def test_kick_fd_before_the_ring_address_starts_at_the_first_kick(rng):
    fe = rng.connect()
    _start(fe)
    from nvmmpy.devices.testing.driver import SplitDriverQueue
    q = SplitDriverQueue(fe.mem, fe.alloc, 8)
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    fe.kicks[0], fe.calls[0] = kick, call
    fe.set_u64(messages.SET_VRING_KICK, 0, [kick])
    fe.set_u64(messages.SET_VRING_CALL, 0, [call])
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 8))
    fe.send(messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(0, 0, fe.uva(q.desc), fe.uva(q.used_addr), fe.uva(q.avail), 0))
    fe.send(messages.SET_VRING_ENABLE, messages.VRING_STATE.pack(0, 1))
    head = q.add([(8, True)])
    fe.kick(0)
    assert fe.wait_call(0) and q.used() == [(head, 8)]
    fe.close()


def test_packed_ring_round_trip_and_base_across_a_restart(rng):
    """RING_PACKED: requests across the ring's wrap, GET_VRING_BASE's packed encoding (avail index
    + wrap bit 15, used index + wrap bit 31), and a restart from that base."""
    from nvmmpy.devices.testing.packed import PackedDriverQueue
    fe = rng.connect()
    offered = fe.negotiate(features=None)
    fe.set_u64(messages.SET_FEATURES, offered & ~(1 << virtio.F_EVENT_IDX))   # plain notifications: every push calls
    fe.add_memory()
    q = PackedDriverQueue(fe.mem, fe.alloc, 4)
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 4))
    fe.send(messages.SET_VRING_BASE, messages.VRING_STATE.pack(0, 1 << 15 | 1 << 31))     # both wrap counters start at 1
    fe.send(messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(0, 0, fe.uva(q.desc), fe.uva(q.device_event_addr),
                                                fe.uva(q.driver_event_addr), 0))
    fe.calls[0], fe.kicks[0] = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    fe.set_u64(messages.SET_VRING_CALL, 0, [fe.calls[0]])
    fe.set_u64(messages.SET_VRING_KICK, 0, [fe.kicks[0]])
    fe.send(messages.SET_VRING_ENABLE, messages.VRING_STATE.pack(0, 1))
    for n in range(6):                                   # 6 one-slot chains on a ring of 4: one wrap
        bid = q.add([(16 + n, True)])
        fe.kick(0)
        assert fe.wait_call(0) and q.used() == [(bid, 16 + n)]
    fe.send(messages.GET_VRING_BASE, messages.VRING_STATE.pack(0, 0))
    index, base = messages.VRING_STATE.unpack(fe.recv(messages.GET_VRING_BASE))
    assert (index, base) == (0, 2 | 0 << 15 | 2 << 16 | 0 << 31)      # slot 2, wrap counters flipped to 0
    bid = q.add([(40, True)])                            # while stopped
    fe.send(messages.SET_VRING_BASE, messages.VRING_STATE.pack(0, base))
    os.close(fe.kicks[0])
    fe.kicks[0] = os.eventfd(0, os.EFD_NONBLOCK)
    fe.set_u64(messages.SET_VRING_KICK, 0, [fe.kicks[0]])
    assert fe.wait_call(0) and q.used() == [(bid, 40)]
    assert rng.server.device.requests == 7
    fe.close()


def test_stopped_ring_kick_fd_does_not_spin_the_loop(rng):
    """GET_VRING_BASE closes our copy of the kick eventfd; the front-end still holds it and may
    write it. Closed while registered, it would stay in epoll and wake the loop for ever."""
    fe = rng.connect()
    _start(fe)
    fe.setup_ring(0, 8)
    fe.send(messages.GET_VRING_BASE, messages.VRING_STATE.pack(0, 0))
    fe.recv(messages.GET_VRING_BASE)
    fe.kick(0)                                           # the stale eventfd is now readable for good
    before = rng.server.wakeups
    threading.Event().wait(0.3)
    assert rng.server.wakeups - before < 5
    assert fe.get_u64(messages.GET_QUEUE_NUM) == 1
    fe.close()


def test_driver_breaking_the_ring_signals_the_error_fd(rng):
    """A bad head index is the guest's fault, not the front-end's: the connection stays, the
    device stops using its queues, the ring's error eventfd fires."""
    fe = rng.connect()
    _start(fe)
    err = os.eventfd(0, os.EFD_NONBLOCK)
    fe.set_u64(messages.SET_VRING_ERR, 0, [err])
    q = fe.setup_ring(0, 8)
    fe.mem.write(q.avail + 4, struct.pack("<H", 99))     # head 99 in a table of 8
    fe.mem.write(q.avail + 2, struct.pack("<H", 1))
    fe.kick(0)
    assert select.select([err], [], [], 5)[0] and os.eventfd_read(err) == 1
    assert "outside the table" in rng.server.transport.broken
    assert fe.get_u64(messages.GET_FEATURES)                   # still connected
    fe.send(messages.GET_STATUS)
    assert fe.recv(messages.GET_STATUS) == messages.U64.pack(virtio.S_DEVICE_NEEDS_RESET)
    os.close(err)
    fe.close()


def _start(fe):
    fe.negotiate()
    fe.add_memory()


def _serves(fe, nbytes: int) -> bool:
    """A fresh connection is set up and one rng request of `nbytes` comes back whole."""
    _start(fe)
    q = fe.setup_ring(0, 8)
    head = q.add([(nbytes, True)])
    fe.kick(0)
    return fe.wait_call(0) and q.used() == [(head, nbytes)]


def _bad_ring_addr(fe):
    _start(fe)
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 8))
    fe.send(messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(0, 0, UVA + RAM, UVA + 0x1000, UVA + 0x2000, 0))  # desc past the end
    _send_with_eventfd(fe, messages.SET_VRING_KICK, 0)


def _overlap(fe):
    fe.negotiate()
    fd = fe.make_memory()
    regions = messages.MEM_REGION.pack(GPA, 0x8000, UVA, 0) + messages.MEM_REGION.pack(GPA + 0x4000, 0x8000, UVA + 0x10000, 0)
    fe.send(messages.SET_MEM_TABLE, messages.MEM_TABLE_HEAD.pack(2, 0) + regions, [fd, fd])


def _beyond_file(fe):
    fe.negotiate()
    fd = fe.make_memory()
    fe.send(messages.SET_MEM_TABLE, messages.MEM_TABLE_HEAD.pack(1, 0) + messages.MEM_REGION.pack(GPA, 2 * RAM, UVA, 0), [fd])


def _missing_fd(fe):
    fe.negotiate()
    fe.make_memory()
    fe.send(messages.SET_MEM_TABLE, messages.MEM_TABLE_HEAD.pack(1, 0) + messages.MEM_REGION.pack(GPA, RAM, UVA, 0))


def _extra_fd(fe):
    fd = os.eventfd(0)
    fe.send(messages.GET_FEATURES, fds=[fd])
    os.close(fd)


def _kick_before_addr(fe):
    """The kick fd may come first (the ring starts at the first kick), but a kick needs an address."""
    _start(fe)
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 8))
    _send_with_eventfd(fe, messages.SET_VRING_KICK, 0, signal_it=True)


def _num_on_running_ring(fe):
    _start(fe)
    fe.setup_ring(0, 8)
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 4))


def _ring_out_of_range(fe):
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(7, 8))


def _mem_slots_not_negotiated(fe):
    fe.negotiate(protocol=1 << messages.PF_REPLY_ACK)
    fd = fe.make_memory()
    fe.send(messages.ADD_MEM_REG, struct.pack("<Q", 0) + messages.MEM_REGION.pack(GPA, RAM, UVA, 0), [fd])


def _kick_fd_not_pollable(fe, tmp=[]):
    _start(fe)
    import tempfile
    with tempfile.TemporaryFile() as f:          # a regular file: epoll refuses it
        fe.set_u64(messages.SET_VRING_KICK, 0, [f.fileno()])


def _ring_before_memory(fe):
    """A ring set up and kicked before any SET_MEM_TABLE: its addresses translate to nothing."""
    fe.negotiate()
    fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 8))
    fe.send(messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(0, 0, UVA, UVA + 0x1000, UVA + 0x2000, 0))
    _send_with_eventfd(fe, messages.SET_VRING_KICK, 0, signal_it=True)


def _running_ring(fe, msg, payload):
    _start(fe)
    fe.setup_ring(0, 8)
    fe.send(msg, payload)


def _protocol_not_offered(fe):
    fe.set_u64(messages.SET_FEATURES, 1 << messages.F_PROTOCOL_FEATURES | 1 << virtio.F_VERSION_1)
    fe.set_u64(messages.SET_PROTOCOL_FEATURES, 1 << 40)


def _layout_change_while_running(fe):
    _start(fe)
    fe.setup_ring(0, 8)
    fe.set_u64(messages.SET_FEATURES, fe.features | 1 << virtio.F_RING_PACKED)


CASES = {
    "short payload": (lambda fe: fe.send(messages.SET_FEATURES, b"\1\0\0\0"), "payload of 4 bytes, not 8"),
    "payload where none belongs": (lambda fe: fe.send(messages.GET_FEATURES, bytes(8)), "payload of 8 bytes, not 0"),
    "huge size": (lambda fe: fe.send(messages.SET_MEM_TABLE, size=1 << 30), "more than"),
    "cut short": (lambda fe: (fe.send(messages.SET_FEATURES, b"\1\0", size=8), fe.sock.shutdown(socket.SHUT_WR)),
                  "connection closed after 2 of 8 bytes"),
    "bad version": (lambda fe: fe.send(messages.GET_FEATURES, flags=2), "protocol version 2"),
    "reply flag": (lambda fe: fe.send(messages.GET_FEATURES, flags=messages.VERSION | messages.FLAG_REPLY), "reply flag"),
    "unknown request": (lambda fe: fe.send(63), "not supported"),
    "features not offered": (lambda fe: fe.set_u64(messages.SET_FEATURES, 1 << 63 | 1 << virtio.F_VERSION_1), "not offered"),
    "missing fd": (_missing_fd, "with 0 file descriptors, not 1"),
    "extra fd": (_extra_fd, "with 1 file descriptors, not 0"),
    "overlapping regions": (_overlap, "overlaps"),
    "region beyond its file": (_beyond_file, "beyond its file"),
    "ring outside every region": (_bad_ring_addr, "outside every memory region"),
    "kick before SET_VRING_ADDR": (_kick_before_addr, "without SET_VRING_ADDR"),
    "SET_VRING_NUM on a running ring": (_num_on_running_ring, "running ring 0"),
    "ring index out of range": (_ring_out_of_range, "ring 7"),
    "ADD_MEM_REG not negotiated": (_mem_slots_not_negotiated, "without protocol feature 15"),
    "kick fd that cannot be waited on": (_kick_fd_not_pollable, "cannot be waited on"),
    "ring before any memory table": (_ring_before_memory, "started before any memory table"),
    "SET_OWNER twice": (lambda fe: (fe.negotiate(), fe.send(messages.SET_OWNER)), "SET_OWNER twice"),
    "legacy driver (no VERSION_1)": (lambda fe: fe.set_u64(messages.SET_FEATURES, 0), "without VIRTIO_F_VERSION_1"),
    "protocol features not offered": (_protocol_not_offered, "were not offered"),
    "ring size 0": (lambda fe: fe.send(messages.SET_VRING_NUM, messages.VRING_STATE.pack(0, 0)), "size 0 is not in 1.."),
    "ring moved while running": (lambda fe: _running_ring(fe, messages.SET_VRING_ADDR, messages.VRING_ADDR.pack(
        0, 0, UVA, UVA + 0x1000, UVA + 0x2000, 0)), "moves running ring 0"),
    "SET_VRING_BASE on a running ring": (lambda fe: _running_ring(fe, messages.SET_VRING_BASE, messages.VRING_STATE.pack(0, 3)),
                                         "SET_VRING_BASE on running ring 0"),
    "ring layout changed while running": (_layout_change_while_running, "changes the ring layout"),
    "polling instead of a kick fd": (lambda fe: fe.set_u64(messages.SET_VRING_KICK, messages.VRING_NOFD),
                                     "polling instead of a kick fd"),
    "SET_VRING_ENABLE with 2": (lambda fe: fe.send(messages.SET_VRING_ENABLE, messages.VRING_STATE.pack(0, 2)), "not 0 or 1"),
    "SET_STATUS wider than 8 bits": (lambda fe: (fe.negotiate(), fe.set_u64(messages.SET_STATUS, 0x100)),
                                     "wider than the 8-bit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_message_closes_connection_and_backend_survives(rng, case):
    send, why = CASES[case]
    before = _open_fds()
    fe = rng.connect()
    send(fe)
    assert fe.closed(), f"{case}: the back-end kept the connection"
    assert any(why in e for e in rng.errors()), (case, rng.errors())
    fe.close()
    # the next front-end is served normally, by a freshly reset device
    assert rng.server.device.queues == [None] and rng.server.device.driver_features == 0
    fe2 = rng.connect()
    assert _serves(fe2, 16)
    fe2.close()
    for _ in range(100):   # the back-end notices the close on its thread
        if rng.server.conn is None:
            break
        threading.Event().wait(0.02)
    assert rng.server.conn is None
    after = _open_fds()
    assert len(after) <= len(before), f"file descriptors leaked: {set(after.values()) - set(before.values())}"


def test_second_frontend_is_refused_while_one_is_connected(rng):
    fe = Frontend(socket.socket(socket.AF_UNIX))
    fe.sock.connect(rng.server.path)
    fe.negotiate()
    other = Frontend(socket.socket(socket.AF_UNIX))
    other.sock.connect(rng.server.path)
    assert other.closed()
    assert fe.get_u64(messages.GET_QUEUE_NUM) == 1     # the first one is unaffected
    assert any(e["event"] == "refused" for e in rng.events)
    fe.close()
    other.close()


def test_socket_path_checks(tmp_path):
    p = tmp_path / "exists.sock"
    p.write_text("")
    with pytest.raises(ServerError, match="already exists"):
        Server(VirtioRng(), str(p))
    with pytest.raises(ServerError, match="does not exist"):
        Server(VirtioRng(), str(tmp_path / "nodir" / "x.sock"))
    s = Server(VirtioRng(), str(tmp_path / "ok.sock"))
    assert os.path.exists(s.path)
    s.close()
    assert not os.path.exists(s.path)


@pytest.mark.parametrize("argv,words", [
    (["rng", "--socket", "{tmp}/exists"], "already exists"),
    (["rng", "--socket", "{tmp}/no/such/dir.sock"], "does not exist"),
    (["blk", "--socket", "{tmp}/b.sock", "{tmp}/missing.img"], "missing.img: no such disk image"),
    (["sound", "--socket", "{tmp}/s.sock", "--sound", "out=bogus:x"], "--sound"),
    (["rng", "--socket", "{tmp}"], "already exists (a directory)"),
    (["rng", "--socket", "/sys/nvmmpy-vhost-user-test.sock"], "is not writable"),     # EPERM even for root
    (["rng", "--socket", "{tmp}/" + "x" * 120 + ".sock"], "too long for a Unix socket"),
])
def test_cli_user_errors_are_one_line(tmp_path, argv, words):
    (tmp_path / "exists").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "nvmmpy.cli", "vhost-user", *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "b.sock") and not os.path.exists(tmp_path / "s.sock")


def test_cli_sigterm_and_ctrl_c_remove_the_socket(tmp_path):
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        path = tmp_path / f"{sig}.sock"
        with reaped(subprocess.Popen([sys.executable, "-m", "nvmmpy.cli", "vhost-user", "rng", "--socket", str(path),
                                      "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=sigint_as_in_a_terminal)) as proc:
            assert json.loads(proc.stdout.readline())["event"] == "listening"
            proc.send_signal(sig)
            assert proc.wait(30) == code, proc.stderr.read()
            assert "Traceback" not in proc.stderr.read().decode()
            assert not os.path.exists(path)


def _events(proc, buf: list, n: int, timeout: float = 30) -> list:
    """The next n JSON events from the back-end's stdout (raw reads: select sees what a buffered
    readline would hide)."""
    out = []
    while len(out) < n:
        if b"\n" in buf[0]:
            line, buf[0] = buf[0].split(b"\n", 1)
            out.append(json.loads(line))
            continue
        assert select.select([proc.stdout], [], [], timeout)[0], f"no event in {timeout} s; so far {out}"
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"the back-end exited: {proc.wait()} {proc.stderr.read()!r}"
        buf[0] += chunk
    return out


def test_cli_json_events_hostile_frontend_then_a_good_one(tmp_path):
    """The command's --json events through a hostile front-end (error, then disconnected) and the
    next one, which is served (its disconnect says what it did); SIGTERM then exits 0."""
    path = str(tmp_path / "r.sock")
    buf = [b""]
    with reaped(subprocess.Popen([sys.executable, "-m", "nvmmpy.cli", "vhost-user", "rng", "--socket", path, "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as proc:
        assert _events(proc, buf, 1)[0]["event"] == "listening"
        fe = Frontend(socket.socket(socket.AF_UNIX))
        fe.sock.connect(path)
        fe.send(messages.GET_FEATURES, flags=2)
        assert fe.closed()
        fe.close()
        connected, error, gone = _events(proc, buf, 3)
        assert (connected["event"], error["event"], gone["event"]) == ("connected", "error", "disconnected")
        assert "protocol version 2" in error["message"] and all("time" in e for e in (connected, error, gone))
        fe = Frontend(socket.socket(socket.AF_UNIX))
        fe.sock.connect(path)
        assert _serves(fe, 64)
        fe.close()
        connected, gone = _events(proc, buf, 2)
        assert connected["connection"] == 2 and gone["stats"] == {"requests": 1, "bytes": 64}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not os.path.exists(path)
