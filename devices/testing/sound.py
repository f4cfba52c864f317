"""A virtio-sound test rig: the device behind the mmio transport, driven by the Python driver
over BytearrayMemory, with a fake clock and a backend that records what it is given."""
import struct

from ..interfaces import BytearrayMemory, RecordingIrq
from ..virtio import constants as virtio
from ..virtio.mmio import VirtioMmio
from ..virtio.sound import constants as snd
from ..virtio.sound.device import VirtioSound
from ..virtio.sound.topology import Topology
from .driver import MmioDriver

OK, BAD, NOTSUPP, IOERR = snd.S_OK, snd.S_BAD_MSG, snd.S_NOT_SUPP, snd.S_IO_ERR
ALL_FEATURES = (1 << virtio.F_VERSION_1) | (1 << virtio.F_INDIRECT_DESC) | (1 << virtio.F_EVENT_IDX) | (1 << snd.F_CTLS)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class MemBackend:
    """A backend that records what it is given (with the clock time) and produces a counting
    byte pattern for capture."""

    def __init__(self, clock=None, name="mem", connected=True, fail_open=False, fail_write=False):
        self.clock = clock
        self.name = name
        self.connected = connected
        self.fail_open, self.fail_write = fail_open, fail_write
        self.opens, self.closes = [], 0
        self.is_open = False
        self.writes = []          # (time, bytes)
        self.reads = []           # (time, n)
        self.produced = 0         # capture bytes produced so far

    def open(self, direction, fmt, channels, rate):
        if self.fail_open:
            raise OSError("no such device")
        assert not self.is_open, "opened twice"
        self.opens.append((direction, fmt, channels, rate))
        self.is_open = True

    def write(self, data):
        assert self.is_open
        if self.fail_write:
            raise OSError("device gone")
        self.writes.append((self.clock() if self.clock else None, bytes(data)))

    def read(self, n):
        assert self.is_open
        self.reads.append((self.clock() if self.clock else None, n))
        out = bytes((self.produced + i) & 0xFF for i in range(n))
        self.produced += n
        return out

    def close(self):
        assert self.is_open
        self.is_open = False
        self.closes += 1

    @property
    def played(self) -> bytes:
        return b"".join(d for _, d in self.writes)


def u32(b, off=0):
    return struct.unpack_from("<I", b, off)[0]


class Rig:
    def __init__(self, topo=None, want=ALL_FEATURES, ram=16 << 20, clock=None, **devkw):
        self.clock = clock or FakeClock()
        if topo is None:
            topo = Topology()
            self.backend = MemBackend(self.clock)
            topo.add_stream(snd.D_OUTPUT, self.backend)
        self.dev = VirtioSound(topo, clock=self.clock, **devkw)
        self.mem = BytearrayMemory(ram)
        self.irq = RecordingIrq()
        self.t = VirtioMmio(self.dev, self.mem, self.irq)
        self.drv = MmioDriver(self.t, self.mem)
        self.want = want
        self.drv.init(want)

    def check(self):
        assert not self.drv.status() & virtio.S_DEVICE_NEEDS_RESET, self.t.last_error
        assert self.dev.internal_errors == 0, self.dev.last_error

    def config(self):
        return struct.unpack("<4I", b"".join(self.drv.read_config(o, 4) for o in range(0, 16, 4)))

    # --- control requests -----------------------------------------------------------------------------
    def request(self, req: bytes, resp=4, fill=None):
        """(status, payload, used) of one control message; resp = bytes of response room (or a
        list of (bytes|size, writable) to pass through)."""
        q = self.drv.queues[0]
        w = [(fill * resp if fill else resp, True)] if isinstance(resp, int) else resp
        head = q.add([(req, False)] + w)
        self.drv.notify(0)
        used = q.used()
        assert [h for h, _ in used] == [head]
        n = used[0][1]
        data = q.written(head)
        return (u32(data) if n >= 4 else None), data[4:n], n

    def status(self, req, resp=4):
        return self.request(req, resp)[0]

    def query(self, code, start, count, size, resp=None, fill=None):
        st_, payload, _ = self.request(snd.QUERY_INFO.pack(code, start, count, size),
                                       4 + count * size if resp is None else resp, fill)
        return st_, payload

    def set_params(self, sid=0, buffer_bytes=4096, period_bytes=1024, features=0, channels=2, fmt=snd.FMT_S16,
                   rate=snd.RATE_48000, padding=0):
        return self.status(snd.PCM_SET_PARAMS.pack(snd.R_PCM_SET_PARAMS, sid, buffer_bytes, period_bytes, features,
                                                 channels, fmt, rate, padding))

    def pcm(self, code, sid=0):
        return self.status(snd.PCM_HDR.pack(code, sid))

    def ctl_read(self, cid):
        st_, payload, _ = self.request(snd.CTL_HDR.pack(snd.R_CTL_READ, cid), 4 + 512)
        return st_, payload

    def ctl_write(self, cid, value: bytes):
        return self.status(snd.CTL_HDR.pack(snd.R_CTL_WRITE, cid) + value.ljust(512, b"\0"))

    # --- events -------------------------------------------------------------------------------------------
    def add_event_buffers(self, n, size=8):
        q = self.drv.queues[1]
        heads = [q.add([(size, True)]) for _ in range(n)]
        self.drv.notify(1)
        return heads

    def events(self):
        q = self.drv.queues[1]
        return [q.written(h, n) for h, n in q.used()]


def ev(code, data):
    return snd.EVENT.pack(code, data)


def ctl_ev(cid, mask):
    return snd.CTL_EVENT.pack(snd.EVT_CTL_NOTIFY, cid, mask)
