"""The PC/AT keyboard controller (i8042), only as far as a guest needs it to reset the machine.

Why it exists: guests reset a PC by pulsing the controller's output port bit 0 (command 0xFE, or
any 0xF0-0xFE pulse command with bit 0 clear, or command 0xD1 followed by an output-port byte
with bit 0 clear).  No keyboard or mouse is attached: data bytes for them are ignored.  The
controller answers the few commands drivers wait on (0x20, 0xAA, 0xAB, 0xA9, 0xC0, 0xD0,
0xD2/0xD3 echo); others are accepted and ignored.  The output buffer holds at most a few bytes,
and an empty data port reads 0.  Ports: data at offset 0 (0x60), status/command at offset 4
(0x64); a wider access is split into byte accesses at consecutive ports, as the ISA bus does.
`on_reset()` is the VMM's own callback; whatever it raises is the VMM's business.
"""
from collections import deque

_OBF, _SYS, _CMD, _UNLOCKED, _AUX_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
_OUTBUF_MAX = 4
_NPORTS = 5


class I8042:
    """Ports 0x60 (data) and 0x64 (status / command)."""

    def __init__(self, on_reset):
        self._on_reset = on_reset
        self._out = deque()         # (byte, from_aux) waiting to be read, at most _OUTBUF_MAX
        self._ccb = 0x45            # command byte: keyboard IRQ enabled, system flag, translate
        self._outport = 0x03        # output port: bit 0 reset line (high = run), bit 1 A20
        self._pending_cmd = None    # command waiting for its data byte
        self._last_was_cmd = True
        self.resets = 0

    @property
    def a20(self) -> bool:
        return bool(self._outport & 0x02)

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            port = offset + i
            if port == 0:
                data[i] = self._out.popleft()[0] if self._out else 0
            elif port == 4:
                data[i] = self._status()
            else:
                data[i] = 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            port = offset + i
            if port == 0:
                self._data(data[i] & 0xFF)
            elif port == 4:
                self._command(data[i] & 0xFF)

    def _status(self) -> int:
        status = _SYS | _UNLOCKED | (_CMD if self._last_was_cmd else 0)
        if self._out:
            status |= _OBF | (_AUX_OBF if self._out[0][1] else 0)
        return status

    def _reply(self, byte: int, aux: bool = False) -> None:
        if len(self._out) < _OUTBUF_MAX:
            self._out.append((byte & 0xFF, aux))

    def _reset(self) -> None:
        self.resets += 1
        self._on_reset()

    def _command(self, cmd: int) -> None:
        self._last_was_cmd = True
        self._pending_cmd = None
        if cmd == 0x20:
            self._reply(self._ccb)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self._pending_cmd = cmd
        elif cmd == 0xAA:
            self._reply(0x55)       # self test passed
        elif cmd in (0xA9, 0xAB):
            self._reply(0x00)       # interface test passed
        elif cmd == 0xC0:
            self._reply(0xBF)       # input port: keyboard not inhibited
        elif cmd == 0xD0:
            self._reply(self._outport)
        elif cmd == 0xDD:
            self._outport &= ~0x02
        elif cmd == 0xDF:
            self._outport |= 0x02
        elif cmd >= 0xF0 and not cmd & 0x01:
            self._reset()           # pulse output port bit 0 low: CPU reset

    def _data(self, value: int) -> None:
        self._last_was_cmd = False
        cmd, self._pending_cmd = self._pending_cmd, None
        if cmd == 0x60:
            self._ccb = value
        elif cmd == 0xD1:
            self._outport = value
            if not value & 0x01:
                self._reset()       # the reset line is active low
                self._outport |= 0x01
        elif cmd == 0xD2:
            self._reply(value)
        elif cmd == 0xD3:
            self._reply(value, aux=True)
        # 0xD4 (to the mouse) and plain keyboard bytes go nowhere: nothing is attached
