"""GuestBus: what the instruction emulator reads and writes through during an assist.

Guest-physical accesses go to mapped RAM directly and to the VMM's mem callback elsewhere (MMIO,
split into pieces of at most 8 bytes, as KVM splits them); port accesses go to the io callback.
Drivers that emulate instructions (unicorn, nvmm) hand one of these to emulator.Emulator.step.
"""
import errno

from .errors import AssistError
from .memory import host_buffer


class GuestBus:
    __slots__ = ("areas", "vcpu")

    def __init__(self, areas, vcpu):
        self.areas = areas
        self.vcpu = vcpu

    # --- guest-physical memory ------------------------------------------------------------------
    def read(self, gpa: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            a = self.areas.lookup(gpa)
            if a is not None:
                n = min(size, a.gpa + a.size - gpa)
                out += host_buffer(a.hva + gpa - a.gpa, n)
            else:
                n = min(size, 8, self._mmio_run(gpa, size))
                out += self._mmio(gpa, n, None)
            gpa += n
            size -= n
        return bytes(out)

    def write(self, gpa: int, data) -> None:
        data = bytes(data)
        while data:
            a = self.areas.lookup(gpa)
            if a is not None and a.prot & 2:
                n = min(len(data), a.gpa + a.size - gpa)
                host_buffer(a.hva + gpa - a.gpa, n)[:] = data[:n]
            else:
                # MMIO, or a write to ROM (an area without PROT_WRITE): the VMM's mem callback sees it
                n = min(len(data), 8, self._mmio_run(gpa, len(data)))
                self._mmio(gpa, n, data[:n])
            gpa += n
            data = data[n:]

    def _mmio_run(self, gpa: int, size: int) -> int:
        """Bytes from gpa up to the next mapped area (an MMIO piece must not spill into RAM)."""
        n = size
        for a in self.areas.areas():
            if gpa < a.gpa < gpa + n:
                n = a.gpa - gpa
        return n

    def _mmio(self, gpa: int, size: int, data):
        v = self.vcpu
        acc = v._mem
        acc.gpa = gpa
        acc.size = size
        buf = bytearray(size) if data is None else bytearray(data)
        acc.write = data is not None
        acc.data = memoryview(buf)
        v.callbacks.mem(acc)
        acc.data = None
        return bytes(buf)

    # --- ports ---------------------------------------------------------------------------------
    def io_in(self, port: int, size: int) -> bytes:
        return self._io(port, size, None)

    def io_out(self, port: int, data) -> None:
        self._io(port, len(data), bytes(data))

    def _io(self, port: int, size: int, data):
        if size not in (1, 2, 4):
            raise AssistError(errno.EINVAL, f"port access of {size} bytes")
        v = self.vcpu
        acc = v._io
        acc.port = port & 0xFFFF
        acc.size = size
        acc.in_ = data is None
        buf = bytearray(size) if data is None else bytearray(data)
        acc.data = memoryview(buf)
        v.callbacks.io(acc)
        acc.data = None
        return bytes(buf)


class RecordingBus:
    """A bus with no side effects, for cross-checking: RAM is read for real, writes and port
    accesses are only recorded, and the one MMIO read being checked returns `read_data`."""

    def __init__(self, areas, gpa: int, read_data: bytes | None):
        self.areas = areas
        self.gpa = gpa
        self.read_data = read_data

    def read(self, gpa: int, size: int) -> bytes:
        a = self.areas.lookup(gpa)
        if a is not None and gpa + size <= a.gpa + a.size:
            return bytes(host_buffer(a.hva + gpa - a.gpa, size))
        if self.read_data is not None and gpa <= self.gpa < gpa + size:
            out = bytearray(size)
            off = self.gpa - gpa
            out[off:off + len(self.read_data)] = self.read_data[:size - off]
            return bytes(out)
        return bytes(size)

    def write(self, gpa: int, data) -> None:
        pass

    def io_in(self, port: int, size: int) -> bytes:
        return bytes(size)

    def io_out(self, port: int, data) -> None:
        pass
