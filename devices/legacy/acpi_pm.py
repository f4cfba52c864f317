"""ACPI fixed-hardware PM registers of a PIC machine: PM1a event and control blocks and the FADT's
reset register, in one port I/O window (ACPI 6.5 sec. 4.8.3).

    +0  PM1a_STS (2 bytes, write 1 to clear)    +2  PM1a_EN (2 bytes)
    +4  PM1a_CNT (2 bytes): SCI_EN reads 1 (no SMI_CMD: always in ACPI mode);
        writing SLP_EN with SLP_TYP calls on_sleep(SLP_TYP) (5 = S5, soft off, per the DSDT's \\_S5)
    +8  reset register: writing the FADT's RESET_VALUE calls on_reset()

No fixed event ever fires (no power button, no PM timer), so the SCI line is never raised.
"""
import struct

PM1_STS, PM1_EN, PM1_CNT, RESET = 0, 2, 4, 8
SIZE = 12
SCI_EN = 1 << 0
SLP_EN = 1 << 13
WAK_STS = 1 << 15


class AcpiPm:
    def __init__(self, on_sleep, on_reset, reset_value: int = 1):
        self.on_sleep, self.on_reset, self.reset_value = on_sleep, on_reset, reset_value
        self.regs = bytearray(SIZE)
        struct.pack_into("<H", self.regs, PM1_CNT, SCI_EN)

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            o = offset + i
            data[i] = self.regs[o] if 0 <= o < SIZE else 0xFF   # the reset register reads 0

    def write(self, offset: int, data: memoryview) -> None:
        if offset == RESET:
            if data[0] == self.reset_value:
                self.on_reset()
            return
        if offset < 0 or offset + len(data) > RESET:
            return
        old = bytes(self.regs)
        for i in range(len(data)):
            self.regs[offset + i] = data[i]
        sts = struct.unpack_from("<H", old, PM1_STS)[0]
        if offset <= PM1_STS + 1 and offset + len(data) > PM1_STS:     # write 1 to clear
            written = struct.unpack_from("<H", self.regs, PM1_STS)[0]
            struct.pack_into("<H", self.regs, PM1_STS, sts & ~written)
        cnt = struct.unpack_from("<H", self.regs, PM1_CNT)[0]
        if cnt & SLP_EN:
            struct.pack_into("<H", self.regs, PM1_CNT, (cnt & ~SLP_EN) | SCI_EN)
            self.on_sleep(cnt >> 10 & 7)
        else:
            struct.pack_into("<H", self.regs, PM1_CNT, cnt | SCI_EN)
