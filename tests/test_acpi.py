"""ACPI tables for Linux guests: checked by ACPICA's own disassembler (iasl -d) and by a small AML
reader written here from the spec, independently of vmm/aml.py's encoder."""
import shutil
import struct
import subprocess

import pytest

from nvmmpy.vmm import acpi, aml

BASE = 0xE0000
DESC = acpi.MachineDescription(virtio=[(0xD0000000, 0x200, 5), (0xD0000200, 0x200, 6), (0xD0000400, 0x200, 7)])


def tables(blob: bytes, base: int = BASE) -> dict:
    """Walk RSDP -> XSDT -> FADT -> DSDT/FACS as an OS does, checking each checksum on the way."""
    at = lambda addr: addr - base  # noqa: E731
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) & 0xFF == 0 and sum(blob[:36]) & 0xFF == 0
    assert blob[15] == 2 and struct.unpack_from("<I", blob, 20)[0] == 36
    out = {"RSDP": blob[:36]}

    def sdt(addr):
        length = struct.unpack_from("<I", blob, at(addr) + 4)[0]
        t = blob[at(addr):at(addr) + length]
        assert sum(t) & 0xFF == 0, f"{t[:4]} checksum"
        out[t[:4].decode()] = t
        return t

    xsdt = sdt(struct.unpack_from("<Q", blob, 24)[0])
    for i in range(36, len(xsdt), 8):
        sdt(struct.unpack_from("<Q", xsdt, i)[0])
    fadt = out["FACP"]
    assert struct.unpack_from("<Q", fadt, 140)[0] == struct.unpack_from("<I", fadt, 40)[0]
    sdt(struct.unpack_from("<Q", fadt, 140)[0])
    facs_addr = struct.unpack_from("<Q", fadt, 132)[0]
    assert facs_addr % 64 == 0
    out["FACS"] = blob[at(facs_addr):at(facs_addr) + 64]
    assert out["FACS"][:4] == b"FACS"
    return out


# --- an AML reader for what a DSDT of ours may hold (ACPI 6.5 sec. 20.2) -------------------------------
class Reader:
    def __init__(self, data: bytes):
        self.d, self.i = data, 0

    def byte(self):
        self.i += 1
        return self.d[self.i - 1]

    def pkglen(self):
        start = self.i
        lead = self.byte()
        n = lead >> 6
        if n == 0:
            return start + (lead & 0x3F)
        v = lead & 0x0F
        for k in range(n):
            v |= self.byte() << (4 + 8 * k)
        return start + v

    def namestring(self):
        s = ""
        while self.d[self.i] in b"\\^":
            s += chr(self.byte())
        c = self.d[self.i]
        if c == 0:
            self.i += 1
            return s
        count = 1
        if c == 0x2E:
            self.i, count = self.i + 1, 2
        elif c == 0x2F:
            self.i += 1
            count = self.byte()
        segs = []
        for _ in range(count):
            segs.append(self.d[self.i:self.i + 4].decode())
            self.i += 4
        return s + ".".join(segs)

    def term(self):
        op = self.byte()
        if op in (0x00, 0x01):
            return op
        if op == 0xFF:
            return (1 << 64) - 1
        if op in (0x0A, 0x0B, 0x0C, 0x0E):
            n = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x0E: 8}[op]
            v = int.from_bytes(self.d[self.i:self.i + n], "little")
            self.i += n
            return v
        if op == 0x0D:
            end = self.d.index(b"\0", self.i)
            s = self.d[self.i:end].decode()
            self.i = end + 1
            return s
        if op == 0x08:
            return ("Name", self.namestring(), self.term())
        if op in (0x10, 0x11, 0x12, 0x5B):
            if op == 0x5B:
                assert self.byte() == 0x82, "only Device of the extended ops"
            end = self.pkglen()
            if op == 0x11:
                size = self.term()
                data = self.d[self.i:end]
                assert len(data) == size
                self.i = end
                return ("Buffer", data)
            if op == 0x12:
                n = self.byte()
                items = []
                while self.i < end:
                    items.append(self.term())
                assert len(items) == n
                return ("Package", items)
            name = self.namestring()
            body = []
            while self.i < end:
                body.append(self.term())
            assert self.i == end
            return ("Scope" if op == 0x10 else "Device", name, body)
        raise AssertionError(f"unexpected AML opcode {op:#x} at {self.i - 1}")


def parse_dsdt(t: bytes):
    r = Reader(t[36:])
    terms = []
    while r.i < len(r.d):
        terms.append(r.term())
    return terms


def resources(buf: bytes):
    """[(kind, fields)] of a ResourceTemplate buffer; ends at the End Tag."""
    out, i = [], 0
    while True:
        tag = buf[i]
        if tag == 0x79:
            assert i + 2 == len(buf)
            return out
        if tag & 0x80:
            length = struct.unpack_from("<H", buf, i + 1)[0]
            body = buf[i + 3:i + 3 + length]
            if tag == 0x86:
                out.append(("Memory32Fixed", struct.unpack("<BII", body)))
            elif tag == 0x89:
                flags, n = body[0], body[1]
                out.append(("Interrupt", (flags, list(struct.unpack_from(f"<{n}I", body, 2)))))
            i += 3 + length
        else:
            length = tag & 7
            body = buf[i + 1:i + 1 + length]
            if tag >> 3 == 0x08:
                out.append(("IO", struct.unpack("<BHHBB", body)))
            elif tag >> 3 == 0x04:
                out.append(("IRQ", struct.unpack_from("<H", body)[0]))
            i += 1 + length


def eisa(v: int) -> str:
    v = int.from_bytes(v.to_bytes(4, "little"), "big")
    return "".join(chr((v >> s & 31) + 0x40) for s in (26, 21, 16)) + f"{v & 0xFFFF:04X}"


def test_tables_chain_and_checksums():
    blob, rsdp = acpi.build(DESC, BASE)
    assert rsdp == BASE
    t = tables(blob)
    assert set(t) == {"RSDP", "XSDT", "FACP", "DSDT", "FACS"}
    fadt = t["FACP"]
    assert len(fadt) == acpi.FADT_LENGTH and fadt[8] == 6
    assert struct.unpack_from("<H", fadt, 46)[0] == 9                        # SCI on IRQ 9
    assert struct.unpack_from("<I", fadt, 48)[0] == 0                        # no SMI_CMD: ACPI mode always
    assert struct.unpack_from("<II", fadt, 56)[0] == DESC.pm_base
    assert struct.unpack_from("<I", fadt, 64)[0] == DESC.pm_base + 4
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & (1 << 20), "hardware-reduced ACPI would make Linux drop the PIC and PIT"
    assert flags & acpi.F_RESET_REG_SUP
    assert fadt[116] == 1 and struct.unpack_from("<Q", fadt, 120)[0] == DESC.reset_port   # reset in I/O space
    assert not struct.unpack_from("<H", fadt, 109)[0] & acpi.BOOT_NO_CMOS_RTC


def test_dsdt_describes_every_device():
    t = tables(acpi.build(DESC, BASE)[0])
    terms = parse_dsdt(t["DSDT"])
    (sb,) = [x for x in terms if x[0] == "Scope"]
    assert sb[1] == "\\_SB_"
    devs = {d[1]: {n[1]: n[2] for n in d[2]} for d in sb[2]}
    com1 = devs["COM1"]
    assert eisa(com1["_HID"]) == "PNP0501"
    assert resources(com1["_CRS"][1]) == [("IO", (1, 0x3F8, 0x3F8, 1, 8)), ("IRQ", 1 << 4)]
    assert eisa(devs["RTC_"]["_HID"]) == "PNP0B00"
    for i, (base, size, irq) in enumerate(DESC.virtio):
        v = devs[f"VR{i:02X}"]
        assert v["_HID"] == "LNRO0005" and v["_UID"] == i
        (mem, (kind, (flags, gsis))) = resources(v["_CRS"][1])
        assert mem == ("Memory32Fixed", (1, base, size)) and kind == "Interrupt" and gsis == [irq]
        assert flags & 1 and not flags & 2, "consumer, level-triggered (the transport's line is a level)"
    (s5,) = [x for x in terms if x[0] == "Name" and x[1] == "\\_S5_"]
    assert s5[2] == ("Package", [acpi.SLP_TYP_S5, acpi.SLP_TYP_S5, 0, 0])


@pytest.mark.skipif(shutil.which("iasl") is None, reason="needs iasl (apt-get install acpica-tools; setup.sh does)")
def test_acpica_disassembles_every_table(tmp_path):
    t = tables(acpi.build(DESC, BASE)[0])
    for sig in ("DSDT", "FACP", "XSDT", "FACS"):
        f = tmp_path / f"{sig.lower()}.dat"
        f.write_bytes(t[sig])
        proc = subprocess.run(["iasl", "-d", str(f)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        dsl = (tmp_path / f"{sig.lower()}.dsl").read_text()
        assert "Incorrect" not in dsl and "Invalid" not in dsl, dsl
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert 'EisaId ("PNP0501")' in dsl and dsl.count('Name (_HID, "LNRO0005")') == 3
    assert "Memory32Fixed (ReadWrite,\n                    0xD0000200," in dsl
    assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )\n                {\n                    0x00000007," in dsl
    fadt = (tmp_path / "facp.dsl").read_text()
    assert "Reset Register Supported (V2) : 1" in fadt and "Hardware Reduced (V5) : 0" in fadt


@pytest.mark.parametrize("n", [0, 1, 62, 63, 64, 4000, 4094, 4095, 1 << 20, (1 << 28) - 5])
def test_pkg_length_round_trips(n):
    enc = aml.pkg_length(n)
    r = Reader(enc + bytes(8))
    assert r.pkglen() == n + len(enc)


def test_aml_rejects_what_it_cannot_encode():
    for bad in ("cOM1", "TOOLONG", "1ABC", ""):
        with pytest.raises(ValueError):
            aml.name_seg(bad)
    with pytest.raises(ValueError):
        aml.integer(-1)
    with pytest.raises(ValueError):
        aml.irq_no_flags(16)
    with pytest.raises(ValueError):
        aml.eisa_id("pnp0501")
    with pytest.raises(ValueError):
        acpi.build(DESC, BASE + 8)
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2E_SB_COM1"
    assert aml.name_string("\\A.B.C") == b"\\\x2F\x03A___B___C___"


def test_fadt_names_the_facs_once():
    """ACPI 6.5 5.2.9: FIRMWARE_CTRL is zero when X_FIRMWARE_CTRL holds the FACS (Linux loaded it
    twice when both did)."""
    from nvmmpy.vmm import acpi
    blob, _ = acpi.build(acpi.MachineDescription(), 0xE0000)
    at = blob.find(b"FACP")
    fadt = blob[at:]
    assert struct.unpack_from("<I", fadt, 36)[0] == 0
    assert struct.unpack_from("<Q", fadt, 132)[0] != 0
