"""ACPI tables for a Linux guest: RSDP, XSDT, FADT, FACS and a DSDT describing the machine.

Why ACPI: Debian's kernels find virtio-mmio devices only through ACPI (`_HID "LNRO0005"` devices with
a memory and an interrupt resource; VIRTIO_MMIO_CMDLINE_DEVICES is not set), and power off/reset
through the FADT. The machine has a PIC and no APIC, so the FADT is a full (not hardware-reduced)
one: Linux treats hardware-reduced ACPI as "no legacy PIC and no PIT". No MADT: Linux then runs the
8259 in PIC mode and a _CRS interrupt number is the ISA IRQ.

`build(desc, base)` is a pure function from a MachineDescription to the bytes placed at guest-physical
`base` (the RSDP first, 16-byte aligned, where the legacy 0xE0000-0xFFFFF search finds it too).
Layouts: ACPI 6.5 sec. 5.2 (RSDP 5.2.5, header 5.2.6, XSDT 5.2.8, FADT 5.2.9, FACS 5.2.10).
"""
import struct
from dataclasses import dataclass, field

from . import aml

OEM_ID = b"NVMMPY"
OEM_TABLE_ID = b"NVMMPYVM"
CREATOR_ID = b"NVPY"
FADT_REVISION, FADT_MINOR = 6, 5
FADT_LENGTH = 276

# FADT Flags (table 5.10) and IAPC_BOOT_ARCH (table 5.11)
F_WBINVD, F_PROC_C1, F_PWR_BUTTON, F_SLP_BUTTON, F_RESET_REG_SUP = 1 << 0, 1 << 2, 1 << 4, 1 << 5, 1 << 10
BOOT_LEGACY_DEVICES, BOOT_8042, BOOT_NO_VGA, BOOT_NO_MSI, BOOT_NO_CMOS_RTC = 1, 2, 4, 8, 32

# the PM register block of devices/legacy/acpi_pm.py, in port I/O space
SLP_TYP_S5 = 5  # the value \_S5 gives and PM1a_CNT.SLP_TYP must carry to power off


@dataclass
class MachineDescription:
    """What the guest is told about: ports and IRQs of the legacy devices, the virtio-mmio windows."""
    pm_base: int = 0x600                 # PM1a_EVT (4 bytes) at +0, PM1a_CNT (2) at +4, reset at +8
    sci_irq: int = 9
    com1: tuple | None = (0x3F8, 4)      # (port, irq)
    rtc: tuple | None = (0x70, 8)        # CMOS RTC (port, irq)
    i8042: bool = True
    virtio: list = field(default_factory=list)  # (base, size, irq) of each virtio-mmio window

    @property
    def reset_port(self) -> int:
        return self.pm_base + 8


RESET_VALUE = 0x01


def checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the 36-byte header (checksum filled in) and its body."""
    hdr = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                      CREATOR_ID, 1)
    raw = hdr + body
    return raw[:9] + bytes([checksum(raw)]) + raw[10:]


def gas_io(port: int, width_bytes: int) -> bytes:
    """Generic Address Structure for a port I/O register (space 1), byte access."""
    return struct.pack("<BBBBQ", 1, width_bytes * 8, 0, 1, port) if port else bytes(12)


def dsdt(desc: MachineDescription) -> bytes:
    devices = []
    if desc.com1:
        port, irq = desc.com1
        devices.append(aml.device("COM1", aml.name("_HID", aml.eisa_id("PNP0501")), aml.name("_UID", 1),
                                  aml.name("_CRS", aml.resource_template(aml.io(port, 8), aml.irq_no_flags(irq)))))
    if desc.rtc:
        port, irq = desc.rtc
        devices.append(aml.device("RTC", aml.name("_HID", aml.eisa_id("PNP0B00")),
                                  aml.name("_CRS", aml.resource_template(aml.io(port, 2), aml.irq_no_flags(irq)))))
    for i, (base, size, irq) in enumerate(desc.virtio):
        if i > 0xFF:
            raise ValueError("at most 256 virtio-mmio devices")
        devices.append(aml.device(f"VR{i:02X}", aml.name("_HID", "LNRO0005"), aml.name("_UID", i),
                                  aml.name("_CCA", 1),
                                  aml.name("_CRS", aml.resource_template(aml.memory32_fixed(base, size),
                                                                         aml.interrupt(irq, level=True)))))
    body = aml.scope("\\_SB_", *devices) + aml.name("\\_S5_", aml.package(SLP_TYP_S5, SLP_TYP_S5, 0, 0))
    return table(b"DSDT", 2, body)


def facs() -> bytes:
    """FACS: no header checksum, 64 bytes, version 2; nothing in it is used (no S4, no global lock user)."""
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, 0, 0, 0, 0, 0, 2, bytes(3), 0, bytes(24))


def fadt(desc: MachineDescription, facs_addr: int, dsdt_addr: int) -> bytes:
    b = bytearray(FADT_LENGTH - 36)

    def put(off, fmt, *v):
        struct.pack_into(fmt, b, off - 36, *v)

    put(36, "<I", 0)          # FIRMWARE_CTRL must be 0 when X_FIRMWARE_CTRL is set (ACPI 6.5 5.2.9);
    put(40, "<I", dsdt_addr)  # with both, Linux loads the FACS twice
    put(45, "<B", 0)                       # preferred PM profile: unspecified
    put(46, "<H", desc.sci_irq)
    put(48, "<I", 0)                       # SMI_CMD 0: always in ACPI mode (SCI_EN reads 1)
    put(56, "<I", desc.pm_base)            # PM1a_EVT_BLK
    put(64, "<I", desc.pm_base + 4)        # PM1a_CNT_BLK
    put(88, "<BB", 4, 2)                   # PM1_EVT_LEN, PM1_CNT_LEN
    put(96, "<HH", 101, 1001)              # no C2, no C3
    put(108, "<B", 0x32 if desc.rtc else 0)  # CMOS index of the century
    boot = BOOT_LEGACY_DEVICES | BOOT_NO_VGA | BOOT_NO_MSI | (BOOT_8042 if desc.i8042 else 0) | \
        (0 if desc.rtc else BOOT_NO_CMOS_RTC)
    put(109, "<H", boot)
    put(112, "<I", F_WBINVD | F_PROC_C1 | F_PWR_BUTTON | F_SLP_BUTTON | F_RESET_REG_SUP)
    b[116 - 36:128 - 36] = gas_io(desc.reset_port, 1)
    put(128, "<B", RESET_VALUE)
    put(131, "<B", FADT_MINOR)
    put(132, "<Q", facs_addr)
    put(140, "<Q", dsdt_addr)
    b[148 - 36:160 - 36] = gas_io(desc.pm_base, 4)       # X_PM1a_EVT_BLK
    b[172 - 36:184 - 36] = gas_io(desc.pm_base + 4, 2)   # X_PM1a_CNT_BLK
    b[268 - 36:276 - 36] = b"NVMMPY\0\0"                   # hypervisor vendor identity
    return table(b"FACP", FADT_REVISION, bytes(b))


def rsdp(xsdt_addr: int) -> bytes:
    first = struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, 0)
    first = first[:8] + bytes([checksum(first)]) + first[9:]
    full = first + struct.pack("<IQB3s", 36, xsdt_addr, 0, bytes(3))
    return full[:32] + bytes([checksum(full)]) + full[33:]


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def build(desc: MachineDescription, base: int) -> tuple[bytes, int]:
    """(bytes to load at `base`, the RSDP's guest-physical address == base)."""
    if base % 16:
        raise ValueError("the RSDP must be 16-byte aligned")
    off_facs = 64                                    # FACS is 64-byte aligned
    off_dsdt = off_facs + 64
    d = dsdt(desc)
    off_fadt = _align(off_dsdt + len(d), 8)
    off_xsdt = _align(off_fadt + FADT_LENGTH, 8)
    f = fadt(desc, base + off_facs, base + off_dsdt)
    x = table(b"XSDT", 1, struct.pack("<Q", base + off_fadt))
    out = bytearray(off_xsdt + len(x))
    out[0:36] = rsdp(base + off_xsdt)
    out[off_facs:off_facs + 64] = facs()
    out[off_dsdt:off_dsdt + len(d)] = d
    out[off_fadt:off_fadt + len(f)] = f
    out[off_xsdt:off_xsdt + len(x)] = x
    return bytes(out), base
