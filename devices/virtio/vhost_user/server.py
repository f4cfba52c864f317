"""The back-end's one I/O thread: a listening Unix socket, one front-end at a time, its messages
and the rings' kick eventfds, all waited on with one selector (no polling).

    server = Server(device, "/tmp/snd.sock", on_event=print)   # binds; ServerError if it cannot
    server.serve_forever()      # until stop() (from any thread) or KeyboardInterrupt
    server.close()              # socket file removed, device reset

A connection ends when the front-end closes it (or dies) or sends a bad message (ProtocolError:
logged, closed). Either way the device is reset and the next connection is accepted. A second
front-end while one is connected is refused (accepted and closed at once, logged).

on_event(dict) gets {"event": "listening" | "connected" | "disconnected" | "error" | "refused" |
"log", ...} for the command line's status lines and --json.
"""
import errno
import os
import select
import selectors
import socket
import stat
import threading

from .. import constants as virtio
from . import messages
from .messages import ProtocolError
from .session import Session
from .transport import VhostUserTransport, close_fd

_KICK, _CONN, _LISTEN, _WAKE = "kick", "conn", "listen", "wake"
MAX_MESSAGES_PER_WAKEUP = 256      # then kicks get their turn even under a message flood


def _conn_first(event) -> bool:
    return event[0].data[0] != _CONN


class ServerError(Exception):
    """The socket cannot be made (path exists, directory not writable, ...): one line for the user."""


def bind_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`, which must not exist yet."""
    path = os.fspath(path)
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        what = "a socket" if stat.S_ISSOCK(mode) else "a directory" if stat.S_ISDIR(mode) else "a file"
        raise ServerError(f"{path} already exists ({what}): remove it or choose another --socket path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ServerError(f"cannot create socket {path}: directory {parent} does not exist")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.bind(path)
        s.listen(4)
    except OSError as e:
        s.close()
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ServerError(f"cannot create socket {path}: {parent} is not writable ({e.strerror})") from None
        if e.errno == errno.ENAMETOOLONG or "too long" in str(e):
            raise ServerError(f"cannot create socket {path}: the path is too long for a Unix socket "
                              "(at most 107 bytes)") from None
        raise ServerError(f"cannot create socket {path}: {e.strerror or e}") from None
    return s


class Server:
    def __init__(self, device, path: str, on_event=None):
        self.device = device
        self.path = os.fspath(path)
        self.on_event = on_event or (lambda ev: None)
        self.transport = VhostUserTransport(device, log=lambda m: self._event("log", message=m))
        self.listener = bind_socket(self.path)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, (_LISTEN, None))
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
        self._woken = set()            # ring indices a host thread kicked
        self._handed = []              # connections handed over by hand_over()
        self._wake_lock = threading.Lock()
        self._stopping = False
        self.transport.wake = self._wake_ring
        self.conn = None
        self.session = None
        self._kicks = {}               # kick fd -> ring index, as registered with the selector
        self._kick_buf = [bytearray(8)]
        self.connections = 0
        self.wakeups = 0               # selector returns (a spinning loop shows here)
        self.protocol_errors = 0
        self.last_error = ""
        self._event("listening", socket=self.path)

    def _event(self, kind: str, **fields) -> None:
        try:
            self.on_event({"event": kind, **fields})
        except Exception:  # noqa: BLE001 - reporting must not stop the back-end
            pass

    # --- the loop -------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self._stopping:
            self.wakeups += 1
            for key, _ in sorted(self.sel.select(), key=_conn_first):
                kind, arg = key.data
                if kind == _KICK and self._kicks.get(key.fd) != arg or kind == _CONN and self.conn is None:
                    continue   # unregistered by an earlier event of this batch
                if kind == _KICK:
                    self._on_kick(key.fd, arg)
                elif kind == _CONN:
                    self._on_message()
                elif kind == _LISTEN:
                    self._on_accept()
                else:
                    self._on_wake()
                if self._stopping:
                    break

    def stop(self) -> None:
        """End serve_forever() (any thread)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"s")
        except OSError:
            pass

    def _wake_ring(self, index: int) -> None:
        with self._wake_lock:
            self._woken.add(index)
        self._poke(b"k")

    def _poke(self, tag: bytes) -> None:
        """Wake the I/O thread's selector (the pipe holds a pending wake-up already when it is full)."""
        try:
            os.write(self._wake_w, tag)
        except BlockingIOError:
            pass

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._wake_lock:
            woken, self._woken = self._woken, set()
            handed, self._handed = self._handed, []
        for conn in handed:
            self._adopt(conn)
        for i in sorted(woken):
            self.transport.process(i)

    def _on_kick(self, fd: int, index: int) -> None:
        try:
            if not os.readv(fd, self._kick_buf):   # into one preallocated buffer: no per-kick allocation
                self._drop(f"kick fd of ring {index} reached end of file (not an eventfd)")
                return
        except BlockingIOError:
            return
        except OSError as e:
            self._drop(f"kick eventfd of ring {index}: {e.strerror}")
            return
        ring = self.transport.rings[index]
        ring.kicks += 1
        if ring.queue is None and ring.kick == fd:
            try:   # a kick on a stopped ring starts it (the spec's rule; QEMU starts it at SET_VRING_KICK)
                self.transport.start_ring(index)
            except ProtocolError as e:
                self._drop(str(e))
            except Exception as e:  # noqa: BLE001 - a back-end bug closes this connection, not the process
                self._drop(f"starting ring {index}: internal error: {type(e).__name__}: {e}")
            return
        self.transport.process(index)

    # --- connections ------------------------------------------------------------------------------
    def _on_accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self._adopt(conn)

    def hand_over(self, conn: socket.socket) -> None:
        """Serve an already connected socket (--fd, or a socketpair in tests); any thread."""
        with self._wake_lock:
            self._handed.append(conn)
        self._poke(b"h")

    def _adopt(self, conn: socket.socket) -> None:
        if self.conn is not None:
            conn.close()
            self._event("refused", reason="another front-end is connected")
            return
        self.conn = conn
        self.session = Session(conn, self.transport, log=lambda m: self._event("log", message=m))
        self.sel.register(conn, selectors.EVENT_READ, (_CONN, None))
        self.connections += 1
        self._event("connected", connection=self.connections)

    def _on_message(self) -> None:
        """Every message already waiting, before any kick of the same wake-up: the front-end sent
        them before it kicked (a ring set up by those messages must be ready for the kick)."""
        for _ in range(MAX_MESSAGES_PER_WAKEUP):
            if not self._one_message():
                return
            ready, _, _ = select.select([self.conn], [], [], 0)
            if not ready:
                return

    def _one_message(self) -> bool:
        """Read and handle one message; False once the connection is gone."""
        try:
            msg = messages.read_message(self.conn)
        except ProtocolError as e:
            self._drop(str(e))
            return False
        except OSError as e:
            self._drop(f"connection failed: {e.strerror or e}", error=False)
            return False
        if msg is None:
            self._drop("front-end closed the connection", error=False)
            return False
        try:
            self.session.handle(msg)
            self._sync_kicks()
        except ProtocolError as e:
            self._drop(f"{msg.name}: {e}")
            return False
        except Exception as e:  # noqa: BLE001 - a back-end bug closes this connection, not the process
            self._drop(f"{msg.name}: internal error: {type(e).__name__}: {e}")
            return False
        return True

    def _sync_kicks(self) -> None:
        """Register each ring's current kick fd with the selector (and forget closed ones)."""
        want = {r.kick: r.index for r in self.transport.rings if r.kick is not None}
        for fd in [fd for fd, i in self._kicks.items() if want.get(fd) != i]:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            del self._kicks[fd]
        for fd, i in want.items():
            if fd not in self._kicks:
                try:
                    os.set_blocking(fd, False)
                    self.sel.register(fd, selectors.EVENT_READ, (_KICK, i))
                except (KeyError, ValueError, OSError) as e:
                    raise ProtocolError(f"kick fd of ring {i} cannot be waited on: {e}") from None
                self._kicks[fd] = i
        self._close_retired()

    def _close_retired(self) -> None:
        retired, self.transport.retired = self.transport.retired, []
        for fd in retired:
            close_fd(fd)

    def _drop(self, why: str, error: bool = True) -> None:
        """End the connection: log why, reset the device, wait for the next front-end."""
        if error:
            self.protocol_errors += 1
            self.last_error = why
            self._event("error", message=why)
        for fd in list(self._kicks):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        self._kicks.clear()
        features = self.transport.features
        self.transport.reset(full=True)   # before the close: a front-end that sees EOF finds it done
        self._close_retired()             # the kick fds, unregistered above
        if self.conn is not None:
            try:
                self.sel.unregister(self.conn)
            except (KeyError, ValueError, OSError):
                pass
            self.conn.close()
        n_messages = self.session.messages if self.session else 0
        self.conn = self.session = None
        self._event("disconnected", reason=why, messages=n_messages, features=f"{features:#x}",
                    ring="packed" if features >> virtio.F_RING_PACKED & 1 else "split")

    def close(self) -> None:
        """Close the connection and the socket, remove the socket file."""
        if self.conn is not None:
            self._drop("back-end shutting down", error=False)
        try:
            self.sel.unregister(self.listener)
        except (KeyError, ValueError, OSError):
            pass
        self.listener.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass
        self.sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
