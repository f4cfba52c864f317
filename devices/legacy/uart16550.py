"""NS16550A / PC16550D UART (COM1), written from the National/TI datasheet.

Why it looks the way it does:
- Transmission is instantaneous: a THR write goes straight to `output` (or, in loopback, to the
  receiver), so THR and the transmitter are always empty again when the guest looks.  Nothing is
  buffered on the way out.
- Host input is flow controlled: `feed()` queues at most `input_limit` bytes, and bytes move into
  the receive FIFO only as the guest makes room, so host input never overruns the FIFO.  Overruns
  (LSR OE) happen the way the datasheet says only for loopback traffic the guest does not read.
- Time is not modelled, so a receive FIFO holding data below its trigger level reports the
  character-timeout interrupt (IIR 0xC) at once instead of four character times later.
- A wider port access is split into byte accesses at consecutive ports, as the ISA bus does.
- The interrupt output is not gated by MCR OUT2 unless `gate_out2=True` (PC boards gate it; most
  VMMs and small guests do not bother).
"""
import threading
from collections import deque

# IER bits
_ERBFI, _ETBEI, _ELSI, _EDSSI = 0x01, 0x02, 0x04, 0x08
# LCR / MCR bits
_DLAB = 0x80
_DTR, _RTS, _OUT1, _OUT2, _LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# LSR bits
_DR, _OE, _PE, _FE, _BI, _THRE, _TEMT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
_LSR_ERRORS = _OE | _PE | _FE | _BI
# MSR bits: deltas in the low nibble, line states in the high nibble
_DCTS, _DDSR, _TERI, _DDCD = 0x01, 0x02, 0x04, 0x08
_CTS, _DSR, _RI, _DCD = 0x10, 0x20, 0x40, 0x80
# IIR interrupt identification codes, highest priority first
IIR_NONE, IIR_LINE, IIR_RDA, IIR_TIMEOUT, IIR_THRE, IIR_MODEM = 0x01, 0x06, 0x04, 0x0C, 0x02, 0x00
_TRIGGER_LEVELS = (1, 4, 8, 14)
_NPORTS = 8
_HOST_MODEM_LINES = _DCD | _DSR | _CTS  # an attached terminal: carrier, data set ready, clear to send


class Uart16550:
    """COM port registers RBR/THR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR (+ DLL/DLM with DLAB)."""

    def __init__(self, irq, output=None, fifo_size=16, input_limit=4096, *, gate_out2=False):
        self._irq = irq
        self._output = output
        self._fifo_size = max(1, int(fifo_size))
        self._input_limit = max(0, int(input_limit))
        self._gate_out2 = gate_out2
        self._lock = threading.Lock()
        self._input = bytearray()   # host bytes waiting for FIFO room (<= input_limit)
        self._rx = deque()          # receive FIFO (<= rx capacity)
        self._ier = 0
        self._lcr = 0x03
        self._mcr = 0
        self._lsr = _THRE | _TEMT
        self._msr = _HOST_MODEM_LINES
        self._scr = 0
        self._dll, self._dlm = 0x0C, 0x00  # 9600 baud
        self._fcr = 0                      # FIFO enable and trigger bits as last programmed
        self._thre_pending = False         # THR-empty interrupt latched, cleared by IIR read/THR write
        self._irq_level = False

    # --- host side ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> int:
        """Queue host input (stdin, a file); returns how many bytes fit under input_limit."""
        with self._lock:
            room = self._input_limit - len(self._input)
            taken = bytes(data[:max(0, room)])
            self._input += taken
            self._refill()
            self._update_irq()
            return len(taken)

    def flush(self) -> None:
        """Nothing is buffered on output; kept so the VMM can treat all consoles alike."""

    @property
    def divisor(self) -> int:
        return self._dll | (self._dlm << 8)

    # --- bus ---------------------------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            for i in range(len(data)):
                port = offset + i
                data[i] = self._read_reg(port) if 0 <= port < _NPORTS else 0xFF
            self._update_irq()

    def write(self, offset: int, data: memoryview) -> None:
        with self._lock:
            for i in range(len(data)):
                port = offset + i
                if 0 <= port < _NPORTS:
                    self._write_reg(port, data[i] & 0xFF)
            self._update_irq()

    # --- registers ---------------------------------------------------------------------------

    def _read_reg(self, port: int) -> int:
        dlab = self._lcr & _DLAB
        if port == 0:
            if dlab:
                return self._dll
            value = self._rx.popleft() if self._rx else 0
            self._refill()
            return value
        if port == 1:
            return self._dlm if dlab else self._ier
        if port == 2:
            iir = self._iir()
            if iir == IIR_THRE:
                self._thre_pending = False  # reading IIR while it reports THRE clears that source
            return iir | (0xC0 if self._fifo_enabled else 0)
        if port == 3:
            return self._lcr
        if port == 4:
            return self._mcr
        if port == 5:
            value = self._lsr | (_DR if self._rx else 0)
            self._lsr &= ~_LSR_ERRORS
            return value
        if port == 6:
            value = self._msr
            self._msr &= 0xF0
            return value
        return self._scr

    def _write_reg(self, port: int, value: int) -> None:
        dlab = self._lcr & _DLAB
        if port == 0:
            if dlab:
                self._dll = value
            else:
                self._transmit(value)
        elif port == 1:
            if dlab:
                self._dlm = value
            else:
                was = self._ier
                self._ier = value & 0x0F
                # Enabling ETBEI while THR is empty raises THRE at once (the datasheet's behaviour
                # that drivers probe for).
                if self._ier & _ETBEI and not was & _ETBEI and self._lsr & _THRE:
                    self._thre_pending = True
        elif port == 2:
            self._write_fcr(value)
        elif port == 3:
            self._lcr = value
        elif port == 4:
            self._write_mcr(value & 0x1F)
        elif port == 7:
            self._scr = value
        # LSR and MSR writes (factory test) are ignored

    def _write_fcr(self, value: int) -> None:
        enable = value & 0x01
        if enable != (self._fcr & 0x01):
            self._rx.clear()  # changing the FIFO mode empties both FIFOs
        if not enable:
            self._fcr = 0     # other FCR bits only take when FCR0 is written as 1
            self._refill()
            return
        if value & 0x02:
            self._rx.clear()
        # bit 2 clears the transmit FIFO, which is always empty here
        self._fcr = value & 0xC9
        self._refill()

    def _write_mcr(self, value: int) -> None:
        self._mcr = value
        if value & _LOOP:
            # In loopback the modem inputs are wired to the modem outputs.
            lines = ((_CTS if value & _RTS else 0) | (_DSR if value & _DTR else 0)
                     | (_RI if value & _OUT1 else 0) | (_DCD if value & _OUT2 else 0))
        else:
            lines = _HOST_MODEM_LINES
        old = self._msr & 0xF0
        changed = old ^ lines
        delta = ((_DCTS if changed & _CTS else 0) | (_DDSR if changed & _DSR else 0)
                 | (_DDCD if changed & _DCD else 0) | (_TERI if old & _RI and not lines & _RI else 0))
        self._msr = lines | (self._msr & 0x0F) | delta

    def _transmit(self, value: int) -> None:
        value &= (1 << (5 + (self._lcr & 0x03))) - 1  # word length 5..8 bits
        self._thre_pending = False
        if self._mcr & _LOOP:
            self._receive(value)
        elif self._output is not None:
            try:
                self._output(bytes((value,)))
            except OSError:
                pass  # a closed console must not take the guest down
        # the character left at once: THR and shift register are empty again
        self._lsr |= _THRE | _TEMT
        self._thre_pending = True

    def _receive(self, value: int) -> None:
        if len(self._rx) < self._rx_capacity:
            self._rx.append(value)
        elif self._fifo_enabled:
            self._lsr |= _OE          # FIFO full: the new character is lost
        else:
            self._rx[-1] = value      # 16450 mode: the holding register is overwritten
            self._lsr |= _OE

    def _refill(self) -> None:
        """Move waiting host input into the receive FIFO as far as it has room."""
        room = self._rx_capacity - len(self._rx)
        if room > 0 and self._input:
            chunk = self._input[:room]
            del self._input[:room]
            self._rx.extend(chunk)

    # --- interrupts --------------------------------------------------------------------------

    @property
    def _fifo_enabled(self) -> bool:
        return bool(self._fcr & 0x01)

    @property
    def _rx_capacity(self) -> int:
        return self._fifo_size if self._fifo_enabled else 1

    def _iir(self) -> int:
        ier = self._ier
        if ier & _ELSI and self._lsr & _LSR_ERRORS:
            return IIR_LINE
        if ier & _ERBFI and self._rx:
            if not self._fifo_enabled or len(self._rx) >= _TRIGGER_LEVELS[self._fcr >> 6]:
                return IIR_RDA
            return IIR_TIMEOUT
        if ier & _ETBEI and self._thre_pending:
            return IIR_THRE
        if ier & _EDSSI and self._msr & 0x0F:
            return IIR_MODEM
        return IIR_NONE

    def _update_irq(self) -> None:
        level = self._iir() != IIR_NONE
        if self._gate_out2 and not (self._mcr & _OUT2 and not self._mcr & _LOOP):
            level = False
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)
