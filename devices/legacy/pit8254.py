"""Intel 8254 programmable interval timer and the PC/AT port 0x61, from the 8254 datasheet.

Why it looks the way it does:
- Nothing ticks: a counter remembers when it started (on the injected clock) and its value and
  OUT level are computed from the 1.193182 MHz input clock whenever someone looks.  Tests drive a
  fake clock; nothing ever sleeps.
- The VMM asks `next_deadline()` when channel 0's OUT next rises and calls `update()` then; edges
  missed in between (a late host) are coalesced into one IRQ edge and counted in `lost_ticks`.
- The counting element is loaded at the moment the count is written (the datasheet loads it on
  the next CLK pulse, 0.84 us later), and a new count written in mode 2 or 3 restarts the period at
  once instead of at the end of the current one.  Mode 3 with an odd count is approximated.
- Count 1 in modes 2/3 (illegal on the chip) is treated as 2.
- A wider port access is split into byte accesses at consecutive ports, as the ISA bus does.
"""
import math
import threading
import time

FREQ = 1193182.0      # Hz, the PC's PIT input clock
_EPS = 1e-6           # ticks: absorbs float rounding so that update(next_deadline()) fires
_REFRESH = 15.085e-6  # port 0x61 bit 4 toggles with DRAM refresh about every 15 us

_LATCH_NONE, _LATCH_LSB, _LATCH_MSB, _LATCH_BOTH = 0, 1, 2, 3


def _to_bcd(value: int) -> int:
    return int(str(value % 10000), 16)


def _from_bcd(value: int) -> int:
    result, scale = 0, 1
    while value:
        result += min(value & 0xF, 9) * scale  # invalid digits read as 9
        value >>= 4
        scale *= 10
    return result


class _Counter:
    """One counter: control word, count register, output latch and timing."""

    def __init__(self):
        self.mode = 0
        self.access = 3       # 1 LSB, 2 MSB, 3 LSB then MSB
        self.bcd = False
        self.count = 0x10000  # the period in ticks (0 was written: 65536 / 10000)
        self.armed = False    # counting element loaded (a count written, or triggered by GATE)
        self.gate = True
        self.start = 0.0      # time counting (re)started
        self.base = 0         # ticks counted before the last gate pause
        self.running = False
        self.edges_done = 0   # OUT rising edges already reported since `start`
        self.write_lsb = None  # the first byte of a two-byte write
        self.read_msb = False  # two-byte read flip-flop
        self.latch = None     # latched count (OL)
        self.latch_state = _LATCH_NONE
        self.status = None    # latched status byte
        self.control = 0x30   # RW/mode/BCD bits for the status byte
        self.out_idle = True  # OUT before a count is loaded (low in mode 0 after the control word)
        self.loaded = False   # modes 1/5: a count was written and waits for its GATE trigger

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def period(self) -> int:
        n = self.count
        return max(n, 2) if self.mode in (2, 3) else n

    def elapsed(self, now: float) -> int:
        if not self.running:
            return self.base
        return self.base + max(0, math.floor((now - self.start) * FREQ + _EPS))

    def restart(self, now: float) -> None:
        self.armed = True
        self.start, self.base, self.edges_done = now, 0, 0
        self.running = self.gate or self.mode in (1, 5)

    def value(self, now: float) -> int:
        if not self.armed:
            return self.count % self.modulus
        e, n = self.elapsed(now), self.period()
        if self.mode in (2, 3) and not self.gate:
            return n % self.modulus
        if self.mode == 2:
            return n - e % n
        if self.mode == 3:
            p, high = e % n, (n + 1) // 2
            q = p if p < high else p - high
            return max(n - 2 * q, 1) % self.modulus
        return (n - e) % self.modulus

    def out(self, now: float) -> bool:
        if not self.armed:
            return self.out_idle
        e, n = self.elapsed(now), self.period()
        if self.mode == 0:
            return e >= n
        if self.mode == 1:
            return e >= n
        if self.mode == 2:
            return not self.gate or e % n != n - 1
        if self.mode == 3:
            return not self.gate or e % n < (n + 1) // 2
        return e != n  # modes 4, 5: low for one clock when the count reaches 0

    def edges(self, now: float) -> int:
        """OUT rising edges since `start` up to `now`."""
        if not self.armed or (self.mode in (2, 3) and not self.gate):
            return 0
        e, n = self.elapsed(now), self.period()
        if self.mode in (2, 3):
            return e // n
        if self.mode in (0, 1):
            return 1 if e >= n else 0
        return 1 if e >= n + 1 else 0

    def next_edge(self):
        """Ticks from `start` at which the next unreported OUT rising edge falls, or None."""
        if not self.armed or not self.running:
            return None
        n = self.period()
        if self.mode in (2, 3):
            return (self.edges_done + 1) * n
        if self.edges_done:
            return None
        return n if self.mode in (0, 1) else n + 1

    def set_gate(self, level: bool, now: float) -> None:
        if level == self.gate:
            return
        if not level:
            if self.mode not in (1, 5):  # modes 1/5 keep counting; the others stop
                self.base, self.running = self.elapsed(now), False
            self.gate = False
            return
        self.gate = True
        if self.mode in (1, 5):
            if self.armed or self.loaded:
                self.restart(now)           # a rising GATE triggers the count
        elif self.mode in (2, 3):
            if self.armed:
                self.restart(now)           # a rising GATE reloads the count
        elif self.armed:
            self.start, self.running = now, True  # modes 0/4 resume counting


class Pit8254:
    """Counters 0-2 at offsets 0-2, control word at offset 3; `port61` is the AT's port 0x61."""

    def __init__(self, irq, clock=time.monotonic):
        self._irq = irq
        self._clock = clock
        self._lock = threading.Lock()
        self._counters = [_Counter(), _Counter(), _Counter()]
        self._counters[2].gate = False   # port 0x61 bit 0 starts low
        self._port61 = 0                 # bits 0-3 as last written
        self.lost_ticks = 0
        self.port61 = _Port61(self)

    # --- VMM side ---

    def next_deadline(self):
        """Monotonic time of channel 0's next OUT rising edge (its IRQ), or None."""
        with self._lock:
            c = self._counters[0]
            e = c.next_edge()
            if e is None:
                return None
            return c.start + (e - c.base) / FREQ

    def update(self, now=None) -> None:
        """Raise the IRQ edge due by `now`; missed periods become one edge plus `lost_ticks`."""
        with self._lock:
            self._update(self._clock() if now is None else now)

    def _update(self, now: float) -> None:
        c = self._counters[0]
        due = c.edges(now) - c.edges_done
        if due > 0:
            c.edges_done += due
            self.lost_ticks += due - 1
            self._irq.trigger()

    # --- bus ---

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            now = self._clock()
            for i in range(len(data)):
                port = offset + i
                data[i] = self._read_counter(self._counters[port], now) if 0 <= port < 3 else 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        with self._lock:
            now = self._clock()
            for i in range(len(data)):
                port = offset + i
                value = data[i] & 0xFF
                if port == 3:
                    self._control(value, now)
                elif 0 <= port < 3:
                    self._write_counter(port, value, now)

    def _control(self, value: int, now: float) -> None:
        sc = value >> 6
        if sc == 3:                      # read-back command
            for i in range(3):
                if value & (2 << i):
                    c = self._counters[i]
                    if not value & 0x20:
                        self._latch(c, now)
                    if not value & 0x10 and c.status is None:
                        null = not c.armed or c.elapsed(now) < 1
                        c.status = (0x80 if c.out(now) else 0) | (0x40 if null else 0) | c.control
            return
        c = self._counters[sc]
        if not value & 0x30:             # counter latch command
            self._latch(c, now)
            return
        if sc == 0:
            self._update(now)            # report what was due under the old programming
        mode = (value >> 1) & 7
        c.mode = mode - 4 if mode >= 6 else mode
        c.access = (value >> 4) & 3
        c.bcd = bool(value & 1)
        c.control = value & 0x3F
        c.armed = c.loaded = c.running = False
        c.edges_done = 0
        c.write_lsb, c.read_msb = None, False
        c.latch, c.latch_state, c.status = None, _LATCH_NONE, None
        c.out_idle = c.mode != 0

    def _latch(self, c: _Counter, now: float) -> None:
        if c.latch_state == _LATCH_NONE:   # a second latch before reading is ignored
            c.latch = self._encode(c, c.value(now))
            c.latch_state = _LATCH_BOTH if c.access == 3 else c.access

    @staticmethod
    def _encode(c: _Counter, value: int) -> int:
        value %= c.modulus
        return _to_bcd(value) if c.bcd else value

    def _read_counter(self, c: _Counter, now: float) -> int:
        if c.status is not None:
            status, c.status = c.status, None
            return status
        if c.latch_state != _LATCH_NONE:
            if c.latch_state == _LATCH_MSB:
                c.latch_state = _LATCH_NONE
                return c.latch >> 8 & 0xFF
            c.latch_state = _LATCH_MSB if c.latch_state == _LATCH_BOTH else _LATCH_NONE
            return c.latch & 0xFF
        value = self._encode(c, c.value(now))
        if c.access == 1:
            return value & 0xFF
        if c.access == 2:
            return value >> 8 & 0xFF
        msb, c.read_msb = c.read_msb, not c.read_msb
        return value >> 8 & 0xFF if msb else value & 0xFF

    def _write_counter(self, index: int, value: int, now: float) -> None:
        c = self._counters[index]
        if c.access == 1:
            raw = value
        elif c.access == 2:
            raw = value << 8
        elif c.access == 3 and c.write_lsb is None:
            c.write_lsb = value
            if c.mode == 0:              # the first byte stops a mode-0 count, OUT goes low
                c.base, c.running, c.armed, c.out_idle = c.elapsed(now), False, False, False
            return
        elif c.access == 3:
            raw, c.write_lsb = c.write_lsb | value << 8, None
        else:
            return                       # no access mode programmed yet (latch command only)
        n = _from_bcd(raw) % 10000 if c.bcd else raw
        c.count = n or c.modulus
        if index == 0:
            self._update(now)
        if c.mode in (1, 5):
            c.loaded = True              # waits for a GATE rising edge
            c.out_idle = True
        else:
            c.restart(now)

    # --- port 0x61 ---

    def _read61(self) -> int:
        now = self._clock()
        c2 = self._counters[2]
        refresh = int(now / _REFRESH) & 1
        return (self._port61 & 0x0F) | (refresh << 4) | (0x20 if c2.out(now) else 0)

    def _write61(self, value: int) -> None:
        self._port61 = value & 0x0F
        self._counters[2].set_gate(bool(value & 1), self._clock())

    @property
    def speaker_on(self) -> bool:
        """Bit 1 of port 0x61: the counter 2 output reaches the speaker."""
        return bool(self._port61 & 0x02 and self._port61 & 0x01)


class _Port61:
    """Port 0x61: bit 0 GATE2, bit 1 speaker data, bit 4 refresh toggle, bit 5 OUT2."""

    def __init__(self, pit: Pit8254):
        self._pit = pit

    def read(self, offset: int, data: memoryview) -> None:
        with self._pit._lock:
            for i in range(len(data)):
                data[i] = self._pit._read61() if offset + i == 0 else 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        with self._pit._lock:
            for i in range(len(data)):
                if offset + i == 0:
                    self._pit._write61(data[i] & 0xFF)
