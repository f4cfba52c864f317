"""Legacy PC devices against their datasheets, and against hostile guests (hypothesis fuzz)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvmmpy.devices.interfaces import RecordingIrq
from nvmmpy.devices.legacy.debug_exit import DebugExit
from nvmmpy.devices.legacy.i8042 import I8042
from nvmmpy.devices.legacy.pic8259 import Pic8259Pair
from nvmmpy.devices.legacy.pit8254 import FREQ, Pit8254
from nvmmpy.devices.legacy.scratch import ScratchMmio
from nvmmpy.devices.legacy.uart16550 import Uart16550


def wr(dev, offset, value, size=1):
    dev.write(offset, memoryview(bytearray(value.to_bytes(size, "little"))))


def rd(dev, offset, size=1):
    buf = bytearray(size)
    dev.read(offset, memoryview(buf))
    return int.from_bytes(buf, "little")


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- UART 16550A

RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


def make_uart(**kw):
    irq, out = RecordingIrq(), bytearray()
    return Uart16550(irq, output=out.extend, **kw), irq, out


def test_uart_reset_state_and_transmit():
    u, irq, out = make_uart()
    assert rd(u, LSR) == 0x60            # THRE | TEMT, no data
    assert rd(u, IIR) == 0x01            # no interrupt, FIFOs off
    for b in b"hi\n":
        wr(u, RBR, b)
    assert bytes(out) == b"hi\n"
    assert rd(u, LSR) & 0x60 == 0x60
    assert not irq.level


def test_uart_divisor_latch():
    u, _, out = make_uart()
    wr(u, LCR, 0x83)                     # DLAB, 8N1
    wr(u, RBR, 0x01)                     # DLL
    wr(u, IER, 0x00)                     # DLM
    assert u.divisor == 1
    assert rd(u, RBR) == 0x01 and rd(u, IER) == 0x00
    assert out == b""                    # DLL writes do not transmit
    wr(u, LCR, 0x03)
    assert rd(u, IER) == 0               # IER untouched by the DLM write
    wr(u, RBR, ord("x"))
    assert out == b"x"


def test_uart_scratch_and_word_length():
    u, _, out = make_uart()
    wr(u, SCR, 0xA5)
    assert rd(u, SCR) == 0xA5
    wr(u, LCR, 0x02)                     # 7 bits
    wr(u, RBR, 0xFF)
    assert out == b"\x7f"


def test_uart_rx_feed_and_rda_interrupt():
    u, irq, _ = make_uart()
    wr(u, IER, 0x01)                     # ERBFI
    assert u.feed(b"ab") == 2
    assert irq.level and rd(u, IIR) == 0x04
    assert rd(u, LSR) & 0x01
    assert rd(u, RBR) == ord("a") and irq.level
    assert rd(u, RBR) == ord("b")
    assert not irq.level and rd(u, IIR) == 0x01
    assert rd(u, LSR) & 0x01 == 0
    assert rd(u, RBR) == 0               # empty receiver


def test_uart_input_limit_and_flow_control():
    u, _, _ = make_uart(input_limit=32)
    wr(u, IIR, 0x07)                     # FIFOs on and cleared
    assert u.feed(bytes(range(40))) == 32
    assert len(u._rx) == 16 and len(u._input) == 16   # the FIFO took 16 at once
    assert u.feed(bytes(range(32, 80))) == 16         # the queue fills back up to its limit
    assert u.feed(b"x") == 0
    got = bytes(rd(u, RBR) for _ in range(48))
    assert got == bytes(range(48))
    assert rd(u, LSR) & 0x02 == 0        # host input never overruns
    assert u.feed(b"more") == 4


def test_uart_fifo_trigger_level_and_timeout():
    u, irq, _ = make_uart()
    wr(u, IIR, 0x81)                     # FIFO on, trigger 8
    wr(u, IER, 0x01)
    u.feed(b"1234")
    assert rd(u, IIR) == 0xCC            # below trigger: character timeout, FIFO bits set
    u.feed(b"5678")
    assert rd(u, IIR) == 0xC4            # at trigger: received data available
    wr(u, IIR, 0x83)                     # clear RX FIFO
    assert rd(u, LSR) & 0x01 == 0 and not irq.level


def test_uart_loopback_fifo_overrun_sets_oe():
    u, irq, out = make_uart()
    wr(u, IIR, 0x01)                     # FIFO mode
    wr(u, MCR, 0x10)                     # loopback
    for i in range(17):
        wr(u, RBR, 0x40 + i)
    assert out == b""                    # nothing reaches the host in loopback
    wr(u, IER, 0x04)                     # line status interrupt
    assert irq.level and rd(u, IIR) == 0xC6
    lsr = rd(u, LSR)
    assert lsr & 0x03 == 0x03            # DR and OE
    assert rd(u, LSR) & 0x02 == 0        # OE clears on read
    assert not irq.level
    assert bytes(rd(u, RBR) for _ in range(16)) == bytes(range(0x40, 0x50))  # 17th lost


def test_uart_loopback_16450_mode_overwrites():
    u, _, _ = make_uart()
    wr(u, MCR, 0x10)
    wr(u, RBR, 1)
    wr(u, RBR, 2)
    assert rd(u, LSR) & 0x03 == 0x03
    assert rd(u, RBR) == 2


def test_uart_thre_interrupt_semantics():
    u, irq, _ = make_uart()
    wr(u, IER, 0x02)                     # ETBEI while THR empty: interrupt at once
    assert irq.level
    assert rd(u, IIR) == 0x02
    assert not irq.level                 # IIR read cleared THRE
    assert rd(u, IIR) == 0x01
    wr(u, RBR, 0x41)                     # THR write, transmitted, empty again
    assert irq.level and rd(u, IIR) == 0x02
    wr(u, IER, 0x00)
    assert not irq.level


def test_uart_iir_priorities():
    u, irq, _ = make_uart()
    wr(u, MCR, 0x10)
    wr(u, RBR, 1)
    wr(u, RBR, 2)                        # overrun in 16450 mode
    wr(u, MCR, 0x11)                     # DTR in loopback -> DSR changes -> DDSR
    wr(u, IER, 0x0F)
    assert rd(u, IIR) == 0x06            # line status first
    rd(u, LSR)
    assert rd(u, IIR) == 0x04            # then received data
    rd(u, RBR)
    assert rd(u, IIR) == 0x02            # then THR empty (cleared by this read)
    assert rd(u, IIR) == 0x00            # then modem status
    msr = rd(u, MSR)
    assert msr & 0x22 == 0x22            # DSR and DDSR
    assert rd(u, IIR) == 0x01 and not irq.level


def test_uart_loopback_modem_lines():
    u, _, _ = make_uart()
    wr(u, MCR, 0x1F)                     # loop + DTR RTS OUT1 OUT2
    assert rd(u, MSR) & 0xF0 == 0xF0
    wr(u, MCR, 0x10)
    msr = rd(u, MSR)
    assert msr & 0xF0 == 0 and msr & 0x04  # TERI on RI's trailing edge
    wr(u, MCR, 0x00)
    assert rd(u, MSR) & 0xF0 == 0xB0     # outside loopback: a terminal is attached


def test_uart_out2_gate_option():
    u, irq, _ = make_uart(gate_out2=True)
    wr(u, IER, 0x02)
    assert not irq.level
    wr(u, MCR, 0x08)
    assert irq.level


def test_uart_wide_access_splits_into_bytes():
    u, _, out = make_uart()
    wr(u, RBR, 0x0141, size=2)           # THR <- 0x41, IER <- 0x01
    assert out == b"A" and rd(u, IER) == 0x01
    assert rd(u, LSR, size=2) & 0xFF == 0x60


# ---------------------------------------------------------------- PIC 8259A pair


def linux_init(pic, master_base=0x20, slave_base=0x28):
    wr(pic.master_ports, 1, 0xFF)
    wr(pic.slave_ports, 1, 0xFF)
    wr(pic.master_ports, 0, 0x11)        # ICW1: edge, cascade, ICW4
    wr(pic.master_ports, 1, master_base)  # ICW2
    wr(pic.master_ports, 1, 0x04)        # ICW3: slave on IR2
    wr(pic.master_ports, 1, 0x01)        # ICW4: 8086
    wr(pic.slave_ports, 0, 0x11)
    wr(pic.slave_ports, 1, slave_base)
    wr(pic.slave_ports, 1, 0x02)         # ICW3: slave ID 2
    wr(pic.slave_ports, 1, 0x01)
    wr(pic.master_ports, 1, 0x00)        # OCW1: unmask all
    wr(pic.slave_ports, 1, 0x00)


def eoi(pic, slave=False):
    if slave:
        wr(pic.slave_ports, 0, 0x20)
    wr(pic.master_ports, 0, 0x20)


def isr(ports):
    wr(ports, 0, 0x0B)
    return rd(ports, 0)


def irr(ports):
    wr(ports, 0, 0x0A)
    return rd(ports, 0)


def test_pic_linux_init_and_delivery():
    kicks = []
    pic = Pic8259Pair(on_change=lambda: kicks.append(1))
    linux_init(pic)
    assert not pic.pending()
    pic.set_irq(0, True)
    assert pic.pending() and kicks == [1]
    assert irr(pic.master_ports) == 0x01
    assert pic.acknowledge() == 0x20
    assert isr(pic.master_ports) == 0x01 and irr(pic.master_ports) == 0
    assert not pic.pending()
    eoi(pic)
    assert isr(pic.master_ports) == 0


def test_pic_masking():
    pic = Pic8259Pair()
    linux_init(pic)
    wr(pic.master_ports, 1, 0x02)        # mask IRQ1
    assert rd(pic.master_ports, 1) == 0x02
    pic.irq_line(1).trigger()
    assert not pic.pending()
    wr(pic.master_ports, 1, 0x00)        # unmasking shows the latched request
    assert pic.pending() and pic.acknowledge() == 0x21


def test_pic_priority_order_and_nesting():
    pic = Pic8259Pair()
    linux_init(pic)
    for line in (5, 3, 1):
        pic.irq_line(line).trigger()
    assert pic.acknowledge() == 0x21
    assert not pic.pending()             # lower levels wait behind IR1 in service
    pic.irq_line(0).trigger()
    assert pic.acknowledge() == 0x20     # a higher level nests
    eoi(pic)                             # non-specific EOI ends IR0 (the highest in service)
    assert isr(pic.master_ports) == 0x02
    eoi(pic)
    assert pic.acknowledge() == 0x23
    wr(pic.master_ports, 0, 0x63)        # specific EOI for IR3
    assert pic.acknowledge() == 0x25


def test_pic_rotation():
    pic = Pic8259Pair()
    linux_init(pic)
    pic.irq_line(1).trigger()
    pic.irq_line(4).trigger()
    assert pic.acknowledge() == 0x21
    wr(pic.master_ports, 0, 0xA0)        # rotate on non-specific EOI: IR1 becomes lowest
    pic.irq_line(1).trigger()
    assert pic.acknowledge() == 0x24     # IR4 now outranks IR1
    wr(pic.master_ports, 0, 0xC7)        # set priority: IR7 lowest (IR0 highest) again
    wr(pic.master_ports, 0, 0x64)
    assert pic.acknowledge() == 0x21


def test_pic_cascade_through_irq2():
    pic = Pic8259Pair()
    linux_init(pic)
    pic.irq_line(12).trigger()
    assert pic.pending()
    assert irr(pic.master_ports) & 0x04
    assert pic.acknowledge() == 0x2C
    assert isr(pic.master_ports) == 0x04 and isr(pic.slave_ports) == 0x10
    pic.irq_line(3).trigger()
    assert not pic.pending()             # IR2 in service blocks IR3
    eoi(pic, slave=True)
    assert pic.acknowledge() == 0x23
    # masking IR2 on the master hides every slave line
    eoi(pic)
    wr(pic.master_ports, 1, 0x04)
    pic.irq_line(8).trigger()
    assert not pic.pending()
    wr(pic.master_ports, 1, 0x00)
    assert pic.acknowledge() == 0x28


def test_pic_special_fully_nested_mode():
    pic = Pic8259Pair()
    linux_init(pic)
    wr(pic.master_ports, 0, 0x11)        # re-init the master with ICW4 SFNM
    wr(pic.master_ports, 1, 0x20)
    wr(pic.master_ports, 1, 0x04)
    wr(pic.master_ports, 1, 0x11)
    pic.irq_line(12).trigger()
    assert pic.acknowledge() == 0x2C
    pic.irq_line(9).trigger()            # a higher slave level nests despite master IR2 in service
    assert pic.acknowledge() == 0x29
    assert isr(pic.slave_ports) == 0x12


def test_pic_isa_irq2_is_irq9():
    pic = Pic8259Pair()
    linux_init(pic)
    pic.irq_line(2).trigger()
    assert pic.acknowledge() == 0x29


def test_pic_spurious_irq7_when_level_request_vanishes():
    pic = Pic8259Pair()
    linux_init(pic)
    wr(pic.elcr_ports, 0, 0x20)          # IRQ5 level-triggered
    assert rd(pic.elcr_ports, 0) == 0x20
    pic.set_irq(5, True)
    assert pic.pending()
    pic.set_irq(5, False)                # the device withdrew it before INTA
    assert pic.acknowledge() == 0x27
    assert isr(pic.master_ports) == 0    # a spurious IRQ sets nothing in service


def test_pic_spurious_irq15():
    pic = Pic8259Pair()
    linux_init(pic)
    wr(pic.elcr_ports, 1, 0x08)          # IRQ11 level-triggered
    pic.set_irq(11, True)
    pic.set_irq(11, False)
    assert pic.acknowledge() == 0x2F
    assert isr(pic.master_ports) == 0x04 and isr(pic.slave_ports) == 0


def test_pic_level_mode_keeps_requesting():
    pic = Pic8259Pair()
    linux_init(pic)
    wr(pic.elcr_ports, 1, 0x08)
    pic.set_irq(11, True)
    assert pic.acknowledge() == 0x2B
    eoi(pic, slave=True)
    assert pic.pending()                 # still asserted: asks again after EOI
    assert pic.acknowledge() == 0x2B
    pic.set_irq(11, False)
    eoi(pic, slave=True)
    assert not pic.pending()


def test_pic_elcr_reserved_bits():
    pic = Pic8259Pair()
    wr(pic.elcr_ports, 0, 0xFFFF, size=2)
    assert rd(pic.elcr_ports, 0, size=2) == 0xDEF8


def test_pic_auto_eoi_and_poll():
    pic = Pic8259Pair()
    wr(pic.master_ports, 0, 0x13)        # single, ICW4
    wr(pic.master_ports, 1, 0x40)
    wr(pic.master_ports, 1, 0x03)        # 8086, auto-EOI
    pic.irq_line(6).trigger()
    assert pic.acknowledge() == 0x46
    assert isr(pic.master_ports) == 0
    pic.irq_line(3).trigger()
    wr(pic.master_ports, 0, 0x0C)        # poll
    assert rd(pic.master_ports, 0) == 0x83
    wr(pic.master_ports, 0, 0x0C)
    assert rd(pic.master_ports, 0) == 0x00


def test_pic_special_mask_mode():
    pic = Pic8259Pair()
    linux_init(pic)
    pic.irq_line(1).trigger()
    assert pic.acknowledge() == 0x21
    pic.irq_line(4).trigger()
    assert not pic.pending()
    wr(pic.master_ports, 1, 0x02)        # mask the in-service level
    wr(pic.master_ports, 0, 0x68)        # OCW3: set special mask mode
    assert pic.pending() and pic.acknowledge() == 0x24
    wr(pic.master_ports, 0, 0x48)        # reset special mask mode


def test_pic_no_delivery_during_init_and_edge_rearm():
    pic = Pic8259Pair()
    pic.set_irq(4, True)                 # line held high across initialisation
    wr(pic.master_ports, 0, 0x11)
    assert not pic.pending()
    wr(pic.master_ports, 1, 0x20)
    wr(pic.master_ports, 1, 0x04)
    wr(pic.master_ports, 1, 0x01)
    assert not pic.pending()             # edge sense reset: needs a fresh rising edge
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x24


def test_pic_acknowledge_with_nothing_is_spurious():
    pic = Pic8259Pair()
    linux_init(pic)
    assert pic.acknowledge() == 0x27


def test_pic_rejects_bad_lines():
    pic = Pic8259Pair()
    with pytest.raises(ValueError):
        pic.set_irq(16, True)
    with pytest.raises(ValueError):
        pic.irq_line(-1)


# ---------------------------------------------------------------- PIT 8254


def make_pit():
    clock, irq = FakeClock(), RecordingIrq()
    return Pit8254(irq, clock=clock), clock, irq


def program(pit, channel, mode, count, bcd=False):
    wr(pit, 3, channel << 6 | 0x30 | mode << 1 | int(bcd))
    wr(pit, channel, count & 0xFF)
    wr(pit, channel, count >> 8)


def test_pit_mode2_1000hz_deadlines():
    pit, clock, irq = make_pit()
    assert pit.next_deadline() is None
    program(pit, 0, 2, 1193)
    period = 1193 / FREQ
    assert abs(period - 0.001) < 1e-6
    d1 = pit.next_deadline()
    assert d1 == pytest.approx(clock.t + period, abs=1e-12)
    clock.t = d1
    pit.update()
    assert irq.edges == 1
    d2 = pit.next_deadline()
    assert d2 - d1 == pytest.approx(period, abs=1e-9)
    pit.update(d2 - 1e-7)
    assert irq.edges == 1                # not due yet
    for _ in range(10):
        d = pit.next_deadline()
        pit.update(d)
    assert irq.edges == 11 and pit.lost_ticks == 0


def test_pit_lost_ticks_coalesce():
    pit, clock, irq = make_pit()
    program(pit, 0, 2, 1193)
    start = clock.t
    clock.t = start + 5.5 * 1193 / FREQ
    pit.update()
    assert irq.edges == 1 and pit.lost_ticks == 4
    assert pit.next_deadline() == pytest.approx(start + 6 * 1193 / FREQ)


def test_pit_latch_and_read_counting_value():
    pit, clock, _ = make_pit()
    program(pit, 0, 2, 10000)
    clock.t += 1000 / FREQ
    wr(pit, 3, 0x00)                     # latch counter 0
    clock.t += 3000 / FREQ               # the latch holds while time passes
    lo, hi = rd(pit, 0), rd(pit, 0)
    assert lo | hi << 8 == 9000
    lo, hi = rd(pit, 0), rd(pit, 0)      # live read afterwards
    assert lo | hi << 8 == 6000


def test_pit_readback_status_and_count():
    pit, clock, _ = make_pit()
    program(pit, 2, 0, 500)
    wr(pit.port61, 0, 0x01)              # gate 2 on
    clock.t += 100 / FREQ
    wr(pit, 3, 0xC8)                     # read-back: count + status of counter 2
    status = rd(pit, 2)
    assert status & 0x3F == 0x30 and status & 0x80 == 0  # LSB/MSB mode 0 binary, OUT low
    assert rd(pit, 2) | rd(pit, 2) << 8 == 400


def test_pit_mode0_one_shot():
    pit, clock, irq = make_pit()
    program(pit, 0, 0, 2000)
    deadline = pit.next_deadline()
    assert deadline == pytest.approx(clock.t + 2000 / FREQ)
    clock.t = deadline
    pit.update()
    assert irq.edges == 1 and pit.next_deadline() is None
    clock.t += 1.0
    pit.update()
    assert irq.edges == 1 and pit.lost_ticks == 0
    wr(pit, 3, 0xE2)                     # read-back status of counter 0
    assert rd(pit, 0) & 0x80             # OUT stays high after terminal count


def test_pit_bcd_and_lsb_only():
    pit, clock, _ = make_pit()
    wr(pit, 3, 0x35)                     # counter 0, LSB/MSB, mode 2, BCD
    wr(pit, 0, 0x00)
    wr(pit, 0, 0x10)                     # 1000 decimal
    clock.t += 1 / FREQ * 1
    assert rd(pit, 0) | rd(pit, 0) << 8 == 0x0999
    wr(pit, 3, 0x54)                     # counter 1, LSB only, mode 2
    wr(pit, 1, 100)
    clock.t += 30 / FREQ
    assert rd(pit, 1) == 70


def test_pit_channel2_gate_and_out2_through_port61():
    pit, clock, _ = make_pit()
    program(pit, 2, 0, 100)
    assert rd(pit.port61, 0) & 0x21 == 0          # gate off, OUT2 low
    clock.t += 200 / FREQ
    assert rd(pit, 2) | rd(pit, 2) << 8 == 100    # gate low: not counting
    wr(pit.port61, 0, 0x03)                       # gate on, speaker on
    assert pit.speaker_on
    clock.t += 150 / FREQ
    assert rd(pit.port61, 0) & 0x23 == 0x23       # OUT2 high after terminal count
    assert rd(pit.port61, 1) == 0xFF


def test_pit_mode3_square_wave_and_mode4():
    pit, clock, irq = make_pit()
    program(pit, 2, 3, 100)
    wr(pit.port61, 0, 0x01)
    clock.t += 10 / FREQ
    assert rd(pit.port61, 0) & 0x20               # high half
    clock.t += 50 / FREQ
    assert not rd(pit.port61, 0) & 0x20           # low half
    program(pit, 0, 4, 50)
    pit.update(clock.t + 50 / FREQ)
    assert irq.edges == 0
    pit.update(clock.t + 51 / FREQ)
    assert irq.edges == 1


def test_pit_reprogramming_reports_due_edge():
    pit, clock, irq = make_pit()
    program(pit, 0, 2, 100)
    clock.t += 150 / FREQ
    program(pit, 0, 2, 1000)
    assert irq.edges == 1
    assert pit.next_deadline() == pytest.approx(clock.t + 1000 / FREQ)


# ---------------------------------------------------------------- i8042, debug-exit, scratch


def test_i8042_reset_paths():
    resets = []
    kbc = I8042(on_reset=lambda: resets.append(1))
    assert rd(kbc, 4) == 0x1C
    assert rd(kbc, 0) == 0               # empty data port
    wr(kbc, 4, 0xFE)
    assert len(resets) == 1
    wr(kbc, 4, 0xD1)
    wr(kbc, 0, 0xDF)                     # A20 on, reset line high: no reset
    assert len(resets) == 1 and kbc.a20
    wr(kbc, 4, 0xD1)
    wr(kbc, 0, 0xFE)
    assert len(resets) == 2
    wr(kbc, 4, 0xFF)                     # pulse nothing: no reset
    wr(kbc, 4, 0xAD)                     # ignored
    assert len(resets) == 2


def test_i8042_replies():
    kbc = I8042(on_reset=lambda: None)
    wr(kbc, 4, 0xAA)
    assert rd(kbc, 4) & 0x01
    assert rd(kbc, 0) == 0x55
    assert not rd(kbc, 4) & 0x01
    wr(kbc, 4, 0x60)
    wr(kbc, 0, 0x47)
    assert rd(kbc, 4) & 0x08 == 0        # last write went to the data port
    wr(kbc, 4, 0x20)
    assert rd(kbc, 0) == 0x47
    wr(kbc, 4, 0xD3)
    wr(kbc, 0, 0x99)
    assert rd(kbc, 4) & 0x21 == 0x21 and rd(kbc, 0) == 0x99
    for _ in range(20):
        wr(kbc, 4, 0xAA)
    assert len(kbc._out) <= 4
    assert rd(kbc, 2) == 0xFF


def test_debug_exit_codes():
    codes = []
    dev = DebugExit(codes.append)
    wr(dev, 0, 0x2A)
    wr(dev, 0, 0x1234, size=2)
    wr(dev, 1, 0x07)                     # second port: ignored
    wr(dev, 0, 0x05, size=4)             # not a byte or word: ignored
    assert codes == [0x2A, 0x34]
    assert rd(dev, 0) == 0xFF and rd(dev, 0, size=2) == 0xFFFF


def test_scratch_registers_and_counters():
    s = ScratchMmio()
    wr(s, 0x10, 0xDEADBEEF, size=4)
    assert rd(s, 0x10, size=4) == 0xDEADBEEF
    assert s.register(4) == 0xDEADBEEF
    wr(s, 0x11, 0x55)
    assert rd(s, 0x10, size=4) == 0xDEAD55EF
    assert rd(s, 0x10, size=8) == 0xDEAD55EF
    wr(s, 0xFFE, 0x1234, size=4)         # straddles the end: ignored
    assert rd(s, 0xFFE, size=4) == 0xFFFFFFFF
    assert rd(s, 0xFFC, size=4) == 0
    assert rd(s, -4, size=4) == 0xFFFFFFFF
    assert (s.reads, s.writes) == (6, 3)


# ---------------------------------------------------------------- hostile guests

ACCESS = st.tuples(st.integers(-8, 0x100), st.sampled_from([1, 2, 4, 8]),
                   st.integers(0, 2**64 - 1), st.booleans())
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hammer(dev, ops):
    for offset, size, value, is_write in ops:
        buf = bytearray((value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
        if is_write:
            dev.write(offset, memoryview(buf))
        else:
            dev.read(offset, memoryview(buf))
            assert len(buf) == size


@FUZZ
@given(st.lists(st.one_of(ACCESS, st.binary(max_size=64)), max_size=80))
def test_fuzz_uart(ops):
    u, irq, _ = make_uart(input_limit=100)
    for op in ops:
        if isinstance(op, bytes):
            u.feed(op)
        else:
            hammer(u, [(op[0] & 0xF, op[1], op[2], op[3])])
            hammer(u, [op])
        assert len(u._rx) <= 16 and len(u._input) <= 100
        assert irq.level == (u._iir() != 0x01)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 5), ACCESS, st.integers(0, 15), st.booleans()), max_size=80))
def test_fuzz_pic(ops):
    pic = Pic8259Pair(on_change=lambda: None)
    for which, access, line, level in ops:
        if which < 3:
            dev = (pic.master_ports, pic.slave_ports, pic.elcr_ports)[which]
            offset, size, value, is_write = access
            hammer(dev, [(offset & 3, size, value, is_write), access])
        elif which == 3:
            pic.set_irq(line, level)
        elif which == 4:
            assert 0 <= pic.acknowledge() <= 0xFF
        else:
            pic.irq_line(line).trigger()
        for chip in (pic._master, pic._slave):
            assert all(0 <= r <= 0xFF for r in (chip.irr, chip.isr, chip.imr, chip.elcr))
        assert isinstance(pic.pending(), bool)


@FUZZ
@given(st.lists(st.tuples(ACCESS, st.floats(0, 0.5), st.booleans()), max_size=80))
def test_fuzz_pit(ops):
    pit, clock, irq = make_pit()
    updates = 0
    for access, dt, port61 in ops:
        clock.t += dt
        offset, size, value, is_write = access
        hammer(pit.port61 if port61 else pit, [(offset & 3, size, value, is_write), access])
        deadline = pit.next_deadline()
        if deadline is not None:
            assert deadline >= clock.t - 1.0
            pit.update(max(deadline, clock.t))
        pit.update()
        updates += 2
        assert pit.lost_ticks >= 0
    assert irq.edges <= updates + len(ops)   # at most one edge per update (+ one per reprogramming)


@FUZZ
@given(st.lists(ACCESS, max_size=100))
def test_fuzz_small_devices(ops):
    resets, codes = [], []
    kbc = I8042(on_reset=lambda: resets.append(1))
    dbg = DebugExit(codes.append)
    scratch = ScratchMmio(size=64)
    for offset, size, value, is_write in ops:
        for dev in (kbc, dbg, scratch):
            hammer(dev, [(offset & 7, size, value, is_write), (offset, size, value, is_write)])
        assert len(kbc._out) <= 4
        assert len(scratch._regs) == 64
    assert all(0 <= c <= 0xFF for c in codes)
    assert scratch.reads + scratch.writes == 2 * len(ops)
