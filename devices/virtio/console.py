"""virtio-console (VIRTIO 1.2 sec. 5.3) with one port: receiveq 0 (host to guest) and
transmitq 1 (guest to host), the console size (F_SIZE) and emergency write (F_EMERG_WRITE).

Output goes to a callable (a terminal's write, a file's write). Input is fed from a host thread
with feed(); it waits in a bounded buffer until the guest makes receive buffers available.
"""
import struct

from . import constants as virtio
from .device import VirtioDevice

F_SIZE, F_MULTIPORT, F_EMERG_WRITE = 0, 1, 2
MAX_PENDING_INPUT = 64 << 10   # host bytes waiting for guest buffers; feed() takes less when full
_CONFIG = struct.Struct("<HHII")
RX, TX = 0, 1


class VirtioConsole(VirtioDevice):
    device_id = virtio.ID_CONSOLE
    queue_sizes = (64, 64)
    device_features = (1 << F_SIZE) | (1 << F_EMERG_WRITE)
    name = "virtio-console"

    def __init__(self, output=None, cols: int = 80, rows: int = 25):
        super().__init__()
        self.output = output
        self.cols, self.rows = cols, rows
        self._pending = bytearray()
        self.bytes_out = 0
        self.bytes_in = 0

    def config_space(self) -> bytes:
        return _CONFIG.pack(self.cols, self.rows, 1, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        if offset == 8 and self.has_feature(F_EMERG_WRITE):  # emerg_wr: one character, even before DRIVER_OK
            self._emit(data[:1])

    def resize(self, cols: int, rows: int) -> None:
        """The terminal changed size: new config and a configuration-change interrupt."""
        with self.lock:
            self.cols, self.rows = cols, rows
            self.config_changed()

    def _emit(self, data) -> None:
        self.bytes_out += len(data)
        if self.output is not None:
            self.output(bytes(data))

    def feed(self, data: bytes) -> int:
        """Queue host input for the guest; returns how many bytes were taken (bounded buffer)."""
        with self.lock:
            n = min(len(data), MAX_PENDING_INPUT - len(self._pending))
            self._pending += data[:n]
            if self.context is not None:
                self.context.kick(RX)
            return n

    @property
    def pending_input(self) -> int:
        return len(self._pending)

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        pushed = False
        if index == TX:
            while (chain := q.pop()) is not None:
                for seg in chain.readable:
                    self._emit(seg)
                q.push(chain, 0)
                pushed = True
        elif index == RX:
            while self._pending and (chain := q.pop()) is not None:
                n = chain.write(memoryview(self._pending)[:chain.writable_len])
                del self._pending[:n]
                self.bytes_in += n
                q.push(chain, n)
                pushed = True
        if pushed:
            self.signal_used(index)

    def reset(self) -> None:
        """Host input already fed stays: it belongs to the terminal, not to the driver's session
        (a guest resets the device while it starts, after `--virtio-console-input` began feeding)."""
