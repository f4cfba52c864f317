"""The PC's CMOS real-time clock (Motorola MC146818A) and its 128 bytes of CMOS RAM: ports 0x70/0x71.

Why it looks the way it does:
- Nothing ticks: the guest's time is the host's wall clock plus an offset the guest sets (SET bit
  in register B freezes the time registers while the guest writes them, clearing it applies them),
  so reading the time is a computation, exact to the second like the chip.
- Time registers follow register B's data mode (BCD or binary) and 12/24-hour mode; the century is
  at index 0x32 (the FADT's CENTURY field names it). UIP never reads as set: an update is instant.
- Interrupts (IRQ 8, edge): periodic (rate from register A), alarm (0xC0-0xFF are don't-care) and
  update-ended, each flagged in register C whether enabled or not; IRQF and the line only when
  enabled. Reading C clears it. `next_deadline()`/`update()` let the VMM's timer drive them, as
  with the PIT; events missed while the host was late are coalesced.
- Index port bit 7 is the NMI mask: remembered, not acted on (there is no NMI source).
"""
import calendar
import time

SEC, SEC_ALARM, MIN, MIN_ALARM, HOUR, HOUR_ALARM, WEEKDAY, DAY, MONTH, YEAR = range(10)
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM_BINARY, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80
_TIME_REGS = (SEC, MIN, HOUR, WEEKDAY, DAY, MONTH, YEAR, CENTURY)


def to_bcd(value: int) -> int:
    return (value // 10 % 10) << 4 | value % 10


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


def periodic_hz(reg_a: int) -> float | None:
    """Register A's rate select (RS3-0) with the 32.768 kHz time base; None when off."""
    rs = reg_a & 0x0F
    if rs == 0 or (reg_a >> 4 & 7) != 2:
        return None
    return 32768.0 / (1 << (rs - 1)) if rs >= 3 else (256.0 if rs == 1 else 128.0)


class RtcCmos:
    """Index at offset 0, data at offset 1 (ports 0x70, 0x71)."""

    def __init__(self, irq, wallclock=time.time, clock=time.monotonic):
        self.irq = irq
        self.wallclock, self.clock = wallclock, clock
        self.ram = bytearray(128)
        self.ram[REG_A] = 0x26                  # 32.768 kHz time base, 1024 Hz periodic rate
        self.ram[REG_B] = B_24H
        self.ram[REG_D] = D_VRT
        self.index = 0
        self.nmi_masked = False
        self.offset = 0.0                       # guest epoch seconds - host epoch seconds
        self.frozen = None                      # the epoch seconds the time registers hold while SET
        self.pending_flags = 0                  # register C
        self._next_periodic = None
        self._next_second = None
        self.lost_events = 0

    # --- time ---------------------------------------------------------------------------------
    def guest_time(self) -> int:
        return int(self.frozen if self.frozen is not None else self.wallclock() + self.offset)

    def _encode(self, value: int) -> int:
        return value if self.ram[REG_B] & B_DM_BINARY else to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[REG_B] & B_DM_BINARY else from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.ram[REG_B] & B_24H:
            return self._encode(hour)
        pm = 0x80 if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hour(self, value: int) -> int:
        if self.ram[REG_B] & B_24H:
            return self._decode(value)
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _time_register(self, index: int) -> int:
        t = time.gmtime(self.guest_time())
        if index == SEC:
            return self._encode(t.tm_sec)
        if index == MIN:
            return self._encode(t.tm_min)
        if index == HOUR:
            return self._encode_hour(t.tm_hour)
        if index == WEEKDAY:
            return self._encode((t.tm_wday + 1) % 7 + 1)   # Sunday = 1
        if index == DAY:
            return self._encode(t.tm_mday)
        if index == MONTH:
            return self._encode(t.tm_mon)
        if index == YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)              # CENTURY

    def _set_time_register(self, index: int, value: int) -> None:
        """A write while SET is on: change one field of the frozen time."""
        t = list(time.gmtime(self.frozen))
        try:
            if index == SEC:
                t[5] = self._decode(value) % 60
            elif index == MIN:
                t[4] = self._decode(value) % 60
            elif index == HOUR:
                t[3] = self._decode_hour(value) % 24
            elif index == DAY:
                t[2] = max(1, min(31, self._decode(value)))
            elif index == MONTH:
                t[1] = max(1, min(12, self._decode(value)))
            elif index == YEAR:
                t[0] = t[0] // 100 * 100 + self._decode(value) % 100
            elif index == CENTURY:
                t[0] = self._decode(value) % 100 * 100 + t[0] % 100
            else:
                return                                      # the weekday follows from the date
            self.frozen = calendar.timegm(tuple(t[:6]) + (0, 0, 0))
        except (OverflowError, ValueError):
            pass                                            # nonsense from the guest: keep the old time

    # --- interrupts --------------------------------------------------------------------------------
    def _raise(self, flag: int, enable: int) -> None:
        self.pending_flags |= flag
        if self.ram[REG_B] & enable and not self.pending_flags & C_IRQF:
            self.pending_flags |= C_IRQF
            self.irq.trigger()

    def _reschedule(self, now: float) -> None:
        hz = periodic_hz(self.ram[REG_A])
        self._next_periodic = now + 1.0 / hz if hz and self.ram[REG_B] & B_PIE else None
        if self.ram[REG_B] & (B_UIE | B_AIE) and not self.ram[REG_B] & B_SET:
            wall = self.wallclock() + self.offset
            self._next_second = now + (1.0 - (wall - int(wall)))
        else:
            self._next_second = None

    def next_deadline(self):
        ds = [d for d in (self._next_periodic, self._next_second) if d is not None]
        return min(ds) if ds else None

    def update(self, now=None) -> None:
        now = self.clock() if now is None else now
        if self._next_periodic is not None and now >= self._next_periodic:
            hz = periodic_hz(self.ram[REG_A]) or 1.0
            missed = int((now - self._next_periodic) * hz)
            self.lost_events += missed
            self._next_periodic += (missed + 1) / hz
            self._raise(C_PF, B_PIE)
        if self._next_second is not None and now >= self._next_second:
            self._next_second += 1.0 + int(now - self._next_second)
            self._raise(C_UF, B_UIE)
            if self._alarm_matches():
                self._raise(C_AF, B_AIE)

    def _alarm_matches(self) -> bool:
        for reg, alarm in ((SEC, SEC_ALARM), (MIN, MIN_ALARM), (HOUR, HOUR_ALARM)):
            a = self.ram[alarm]
            if a & 0xC0 != 0xC0 and a != self._time_register(reg):
                return False
        return True

    # --- ports ---------------------------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            data[i] = self._read_port(offset + i)

    def write(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            self._write_port(offset + i, data[i])

    def _read_port(self, port: int) -> int:
        if port != 1:
            return 0xFF                                     # the index port is write-only
        idx = self.index
        if idx in _TIME_REGS:
            return self._time_register(idx)
        if idx == REG_A:
            return self.ram[REG_A] & 0x7F                   # UIP: updates are instant
        if idx == REG_C:
            v = self.pending_flags
            self.pending_flags = 0
            return v
        if idx == REG_D:
            return D_VRT
        return self.ram[idx]

    def _write_port(self, port: int, value: int) -> None:
        if port == 0:
            self.index = value & 0x7F
            self.nmi_masked = bool(value & 0x80)
            return
        if port != 1:
            return
        idx = self.index
        if idx in _TIME_REGS:
            if self.frozen is None:                         # as on the chip: set the time with SET on
                self.frozen = self.guest_time()
                self._set_time_register(idx, value)
                self.offset = self.frozen - self.wallclock()
                self.frozen = None
            else:
                self._set_time_register(idx, value)
        elif idx == REG_A:
            self.ram[REG_A] = value & 0x7F
            self._reschedule(self.clock())
        elif idx == REG_B:
            old = self.ram[REG_B]
            if value & B_SET and not old & B_SET:
                self.frozen = self.guest_time()
                value &= ~B_UIE                              # SET clears UIE
            elif old & B_SET and not value & B_SET and self.frozen is not None:
                self.offset = self.frozen - self.wallclock()
                self.frozen = None
            self.ram[REG_B] = value
            self._reschedule(self.clock())
        elif idx in (REG_C, REG_D):
            pass                                             # read-only
        else:
            self.ram[idx] = value
