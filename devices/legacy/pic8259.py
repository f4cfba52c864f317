"""The PC/AT pair of Intel 8259A interrupt controllers, written from the 8259A datasheet.

Why it looks the way it does:
- The VMM is the CPU side: `pending()` is the INTR pin, `acknowledge()` the INTA cycle.
- Edge-triggered inputs latch a rising edge in IRR until the INTA cycle takes it, so a device's
  `trigger()` (raise and lower at once) is never lost.  Level-triggered inputs (ICW1 LTIM, or the
  PIIX ELCR at 0x4D0/0x4D1) follow the line, so a request that vanishes before INTA gives the
  spurious vector (IR7 of the chip that was asked, i.e. IRQ 7 or IRQ 15).
- The slave's INT output drives master IR2; ISA IRQ 2 is wired to IRQ 9 as on the PC/AT.
- A wider port access is split into byte accesses at consecutive ports, as the ISA bus does.
- MCS-80/85 mode (ICW4 uPM = 0) is accepted but the vector is computed as in 8086 mode: an x86
  CPU can only take a vector number.
- `on_change()` is called, outside the lock, when `pending()` goes from False to True.
"""
import threading

_SLAVE_LINE = 2  # the master input the slave's INT output is wired to


def _lowest_bit_priority(bits: int, rotation: int) -> int:
    """The line in `bits` with the highest priority (0 is highest after `rotation`), or -1."""
    for p in range(8):
        line = (p + rotation) & 7
        if bits >> line & 1:
            return line
    return -1


class _Chip:
    """One 8259A: registers and the init state machine; no locking, no cascade knowledge."""

    def __init__(self, is_master: bool):
        self.is_master = is_master
        self.irr = self.isr = self.imr = 0
        self.inputs = 0          # current input levels
        self.elcr = 0            # level-triggered lines selected by the ELCR
        self.ltim = False        # ICW1 LTIM: all lines level-triggered
        self.single = True
        self.need_icw4 = False
        self.vector_base = 0x08 if is_master else 0x70
        self.icw3 = 0
        self.auto_eoi = self.rotate_on_aeoi = self.sfnm = False
        self.mode_8086 = True
        self.init_step = 0       # 0 = ready; 2, 3, 4 = the ICW expected next
        self.read_isr = False
        self.special_mask = False
        self.poll = False
        self.rotation = 0        # the line with the highest priority

    @property
    def level_mask(self) -> int:
        return 0xFF if self.ltim else self.elcr

    def set_input(self, line: int, level: bool) -> None:
        bit = 1 << line
        if level:
            if not self.inputs & bit or self.level_mask & bit:
                self.irr |= bit          # rising edge, or a level request
            self.inputs |= bit
        else:
            self.inputs &= ~bit
            if self.level_mask & bit:
                self.irr &= ~bit         # a level request vanishes with its line

    def relevel(self) -> None:
        """After a trigger-mode change: level lines show their input, edge lines keep latches."""
        lm = self.level_mask
        self.irr = (self.irr & ~lm) | (self.inputs & lm)

    def _blocking_isr(self) -> int:
        isr = self.isr
        if self.special_mask:
            isr &= ~self.imr     # masked in-service levels do not block lower ones
        if self.sfnm and self.is_master and not self.single:
            isr &= ~self.icw3    # fully nested: a slave in service does not block its own line
        return isr

    def best_request(self) -> int:
        """The line this chip would deliver now, or -1."""
        if self.init_step:
            return -1
        line = _lowest_bit_priority(self.irr & ~self.imr, self.rotation)
        if line < 0:
            return -1
        blocker = _lowest_bit_priority(self._blocking_isr(), self.rotation)
        if blocker >= 0 and (blocker - self.rotation) & 7 <= (line - self.rotation) & 7:
            return -1
        return line

    def take(self, line: int) -> None:
        """The INTA (or poll) side effects for `line`."""
        bit = 1 << line
        if not self.level_mask & bit:
            self.irr &= ~bit
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.rotation = (line + 1) & 7
        else:
            self.isr |= bit

    # --- port writes ---

    def write(self, port: int, value: int) -> None:
        if port == 0:
            if value & 0x10:
                self._icw1(value)
            elif value & 0x08:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif self.init_step == 2:
            self.vector_base = value & 0xF8
            self.init_step = 0 if self.single and not self.need_icw4 else (4 if self.single else 3)
        elif self.init_step == 3:
            self.icw3 = value
            self.init_step = 4 if self.need_icw4 else 0
        elif self.init_step == 4:
            self.mode_8086 = bool(value & 0x01)
            self.auto_eoi = bool(value & 0x02)
            self.sfnm = bool(value & 0x10)
            self.init_step = 0
        else:
            self.imr = value  # OCW1

    def _icw1(self, value: int) -> None:
        self.need_icw4 = bool(value & 0x01)
        self.single = bool(value & 0x02)
        self.ltim = bool(value & 0x08)
        self.init_step = 2
        self.imr = self.isr = 0
        self.irr = self.inputs & self.level_mask  # edge sense reset: edges need a new rise
        self.rotation = 0
        self.icw3 = 0
        self.special_mask = self.read_isr = self.poll = False
        self.rotate_on_aeoi = False
        if not self.need_icw4:
            self.mode_8086 = self.auto_eoi = self.sfnm = False

    def _ocw2(self, value: int) -> None:
        cmd, level = value >> 5, value & 7
        if cmd in (1, 5):        # non-specific EOI (and rotate)
            line = _lowest_bit_priority(self.isr, self.rotation)
            if line >= 0:
                self.isr &= ~(1 << line)
                if cmd == 5:
                    self.rotation = (line + 1) & 7
        elif cmd in (3, 7):      # specific EOI (and rotate)
            self.isr &= ~(1 << level)
            if cmd == 7:
                self.rotation = (level + 1) & 7
        elif cmd == 6:           # set priority: `level` becomes the lowest
            self.rotation = (level + 1) & 7
        elif cmd == 4:
            self.rotate_on_aeoi = True
        elif cmd == 0:
            self.rotate_on_aeoi = False
        # cmd 2: no operation

    def _ocw3(self, value: int) -> None:
        if value & 0x40:
            self.special_mask = bool(value & 0x20)
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 0x01)

    # --- port reads ---

    def read(self, port: int) -> int:
        if port == 1:
            return self.imr
        if self.poll:
            self.poll = False
            line = self.best_request()
            if line < 0:
                return 0x00
            self.take(line)
            return 0x80 | line
        return self.isr if self.read_isr else self.irr


class _Ports:
    """A BusDevice over one chip's two ports."""

    def __init__(self, pair, chip):
        self._pair, self._chip = pair, chip

    def read(self, offset: int, data: memoryview) -> None:
        self._pair._io(self._chip, offset, data, False)

    def write(self, offset: int, data: memoryview) -> None:
        self._pair._io(self._chip, offset, data, True)


class _ElcrPorts:
    """The PIIX edge/level control registers (0x4D0 master, 0x4D1 slave)."""

    _WRITABLE = (0xF8, 0xDE)  # IRQ 0, 1, 2, 8 and 13 are always edge-triggered

    def __init__(self, pair):
        self._pair = pair

    def read(self, offset: int, data: memoryview) -> None:
        chips = (self._pair._master, self._pair._slave)
        with self._pair._lock:
            for i in range(len(data)):
                port = offset + i
                data[i] = chips[port].elcr if 0 <= port < 2 else 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        chips = (self._pair._master, self._pair._slave)
        with self._pair._lock:
            before = self._pair._pending()
            for i in range(len(data)):
                port = offset + i
                if 0 <= port < 2:
                    chips[port].elcr = data[i] & self._WRITABLE[port]
                    chips[port].relevel()
            self._pair._cascade()
        self._pair._notify(before)


class _Line:
    """IrqLine adapter for one PIC input."""

    def __init__(self, pair, line: int):
        self._pair, self._line = pair, line

    def trigger(self) -> None:
        self._pair.set_irq(self._line, True)
        self._pair.set_irq(self._line, False)

    def set_level(self, level: bool) -> None:
        self._pair.set_irq(self._line, level)


class Pic8259Pair:
    """Master (ports 0x20-0x21) and slave (0xA0-0xA1) 8259A, slave cascaded on master IR2."""

    def __init__(self, on_change=None):
        self._on_change = on_change
        self._lock = threading.Lock()
        self._master = _Chip(True)
        self._slave = _Chip(False)
        self._lines = 0  # ISA line levels as set by set_irq (bit n = IRQ n)
        self.master_ports = _Ports(self, self._master)
        self.slave_ports = _Ports(self, self._slave)
        self.elcr_ports = _ElcrPorts(self)

    # --- VMM side ---

    def irq_line(self, n: int) -> _Line:
        if not 0 <= n < 16:
            raise ValueError(f"PIC line {n} out of range 0-15")
        return _Line(self, n)

    def set_irq(self, line: int, level: bool) -> None:
        if not 0 <= line < 16:
            raise ValueError(f"PIC line {line} out of range 0-15")
        with self._lock:
            before = self._pending()
            if level:
                self._lines |= 1 << line
            else:
                self._lines &= ~(1 << line)
            if line in (2, 9):   # ISA IRQ 2 is wired to slave IR1 on the AT
                self._slave.set_input(1, bool(self._lines & (1 << 2 | 1 << 9)))
            elif line < 8:
                self._master.set_input(line, bool(level))
            else:
                self._slave.set_input(line - 8, bool(level))
            self._cascade()
        self._notify(before)

    def pending(self) -> bool:
        with self._lock:
            return self._pending()

    def acknowledge(self) -> int:
        with self._lock:
            before = self._pending()
            vector = self._acknowledge()
            self._cascade()
        self._notify(before)
        return vector

    # --- internals (lock held) ---

    def _cascaded(self) -> bool:
        return not self._master.single and bool(self._master.icw3 & (1 << _SLAVE_LINE))

    def _pending(self) -> bool:
        return self._master.best_request() >= 0

    def _cascade(self) -> None:
        self._master.set_input(_SLAVE_LINE, self._slave.best_request() >= 0)

    def _acknowledge(self) -> int:
        master = self._master
        line = master.best_request()
        if line < 0:
            return (master.vector_base + 7) & 0xFF   # spurious IRQ 7: nothing is set in service
        master.take(line)
        if line != _SLAVE_LINE or not self._cascaded():
            return (master.vector_base + line) & 0xFF
        slave = self._slave
        if slave.single or slave.icw3 & 7 != _SLAVE_LINE:
            return 0xFF   # no slave answers to this cascade address: the bus floats
        sline = slave.best_request()
        if sline < 0:
            return (slave.vector_base + 7) & 0xFF    # spurious IRQ 15 (master IR2 is in service)
        slave.take(sline)
        return (slave.vector_base + sline) & 0xFF

    def _io(self, chip: _Chip, offset: int, data: memoryview, is_write: bool) -> None:
        with self._lock:
            before = self._pending()
            for i in range(len(data)):
                port = offset + i
                if is_write:
                    if 0 <= port < 2:
                        chip.write(port, data[i] & 0xFF)
                else:
                    data[i] = chip.read(port) if 0 <= port < 2 else 0xFF
                self._cascade()
        self._notify(before)

    def _notify(self, before: bool) -> None:
        if self._on_change is not None and not before and self.pending():
            self._on_change()
