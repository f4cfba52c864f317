"""The devices a Linux guest needs beside the legacy set: the CMOS RTC and the ACPI PM registers."""
import calendar
import struct

import pytest

from nvmmpy.devices.interfaces import RecordingIrq
from nvmmpy.devices.legacy import acpi_pm, rtc_cmos

T0 = calendar.timegm((2026, 12, 4, 13, 45, 59, 0, 0, 0))   # a Friday


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def rig():
    wall, mono, irq = Clock(float(T0)), Clock(100.0), RecordingIrq()
    return rtc_cmos.RtcCmos(irq, wallclock=wall, clock=mono), wall, mono, irq


def rd(rtc, idx):
    rtc.write(0, memoryview(bytearray([idx])))
    b = bytearray(1)
    rtc.read(1, memoryview(b))
    return b[0]


def wr(rtc, idx, value):
    rtc.write(0, memoryview(bytearray([idx])))
    rtc.write(1, memoryview(bytearray([value])))


def test_time_in_bcd_24h():
    rtc, *_ = rig()
    got = [rd(rtc, i) for i in (rtc_cmos.SEC, rtc_cmos.MIN, rtc_cmos.HOUR, rtc_cmos.WEEKDAY, rtc_cmos.DAY, rtc_cmos.MONTH, rtc_cmos.YEAR, rtc_cmos.CENTURY)]
    assert got == [0x59, 0x45, 0x13, 0x06, 0x04, 0x12, 0x26, 0x20]
    assert rd(rtc, rtc_cmos.REG_D) == rtc_cmos.D_VRT and not rd(rtc, rtc_cmos.REG_A) & 0x80


def test_binary_and_12_hour_modes():
    rtc, *_ = rig()
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_DM_BINARY)                        # binary, 12-hour
    assert rd(rtc, rtc_cmos.SEC) == 59 and rd(rtc, rtc_cmos.HOUR) == 0x80 | 1   # 13:xx is 1 PM
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_24H)
    assert rd(rtc, rtc_cmos.HOUR) == 0x13


def test_setting_the_clock_with_set_bit():
    rtc, wall, *_ = rig()
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_24H | rtc_cmos.B_SET)
    wall.t += 30                                            # frozen while SET
    assert rd(rtc, rtc_cmos.SEC) == 0x59
    wr(rtc, rtc_cmos.YEAR, 0x99)
    wr(rtc, rtc_cmos.CENTURY, 0x19)
    wr(rtc, rtc_cmos.HOUR, 0x23)
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_24H)                               # apply
    assert rtc.guest_time() == calendar.timegm((1999, 12, 4, 23, 45, 59, 0, 0, 0))
    wall.t += 61
    assert (rd(rtc, rtc_cmos.MIN), rd(rtc, rtc_cmos.SEC)) == (0x47, 0x00)


def test_periodic_interrupt_and_register_c():
    rtc, wall, mono, irq = rig()
    assert rtc.next_deadline() is None
    wr(rtc, rtc_cmos.REG_A, 0x2F)                                  # 2 Hz
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_24H | rtc_cmos.B_PIE)
    assert rtc.next_deadline() == pytest.approx(100.5)
    mono.t = 100.5
    rtc.update()
    assert irq.edges == 1 and rtc.next_deadline() == pytest.approx(101.0)
    assert rd(rtc, rtc_cmos.REG_C) == rtc_cmos.C_IRQF | rtc_cmos.C_PF and rd(rtc, rtc_cmos.REG_C) == 0
    mono.t = 103.2                                          # late host: coalesced, counted
    rtc.update()
    assert irq.edges == 2 and rtc.lost_events == 4


def test_update_and_alarm_flags():
    rtc, wall, mono, irq = rig()
    wr(rtc, rtc_cmos.SEC_ALARM, 0x00)
    wr(rtc, rtc_cmos.MIN_ALARM, 0xC0)                              # don't care
    wr(rtc, rtc_cmos.HOUR_ALARM, 0xFF)
    wr(rtc, rtc_cmos.REG_B, rtc_cmos.B_24H | rtc_cmos.B_AIE)
    assert rtc.next_deadline() == pytest.approx(101.0)
    mono.t, wall.t = 101.0, T0 + 1.0                        # 13:46:00 matches the alarm
    rtc.update()
    assert rd(rtc, rtc_cmos.REG_C) == rtc_cmos.C_IRQF | rtc_cmos.C_AF | rtc_cmos.C_UF and irq.edges == 1


def test_cmos_ram_and_nmi_bit():
    rtc, *_ = rig()
    rtc.write(0, memoryview(bytearray([0x80 | 0x40])))
    rtc.write(1, memoryview(bytearray([0xA5])))
    assert rtc.nmi_masked and rd(rtc, 0x40) == 0xA5 and not rtc.nmi_masked
    b = bytearray(1)
    rtc.read(0, memoryview(b))
    assert b[0] == 0xFF


def test_acpi_pm_soft_off_and_reset():
    events = []
    pm = acpi_pm.AcpiPm(on_sleep=lambda t: events.append(("sleep", t)), on_reset=lambda: events.append("reset"))
    b = bytearray(2)
    pm.read(acpi_pm.PM1_CNT, memoryview(b))
    assert struct.unpack("<H", b)[0] & acpi_pm.SCI_EN
    pm.write(acpi_pm.PM1_CNT, memoryview(bytearray(struct.pack("<H", 5 << 10))))     # SLP_TYP alone
    assert events == []
    pm.write(acpi_pm.PM1_CNT, memoryview(bytearray(struct.pack("<H", 5 << 10 | acpi_pm.SLP_EN))))
    assert events == [("sleep", 5)]
    pm.write(acpi_pm.RESET, memoryview(bytearray([0x02])))
    pm.write(acpi_pm.RESET, memoryview(bytearray([0x01])))
    assert events == [("sleep", 5), "reset"]
    pm.regs[0:2] = struct.pack("<H", 0x8001)
    pm.write(acpi_pm.PM1_STS, memoryview(bytearray(struct.pack("<H", 0x8000))))        # write 1 to clear
    assert struct.unpack_from("<H", pm.regs, 0)[0] == 0x0001
    pm.read(20, memoryview(b))
    assert b == b"\xff\xff"
