"""AML, the byte code of ACPI's DSDT: the few terms a VMM needs to describe its devices to an OS.

Pure functions from Python values to bytes, named after the ASL they encode (ACPI 6.5, sec. 20.2
"AML Grammar Definition" and sec. 6.4 "Resource Data Types"):

    scope("\\_SB_", device("COM1", name("_HID", eisa_id("PNP0501")),
                              name("_CRS", resource_template(io(0x3F8, 8), irq_no_flags(4)))))

Checked by decoding with `iasl -d` and by this project's own reader in the tests.
"""
import struct


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes; the encoding counts its own bytes (sec. 20.2.4)."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            total >>= 4
            for _ in range(extra):
                out.append(total & 0xFF)
                total >>= 8
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too large")


def name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_") or \
            not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise ValueError(f"bad ACPI name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """`\\_SB_.COM1`, `^FOO`, `_HID` -> NameString (root/parent prefixes, dual/multi name paths)."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += path[0].encode()
        path = path[1:]
    segs = [s for s in path.split(".") if s]
    if not segs:
        return prefix + b"\0"
    body = b"".join(name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + b"\x2E" + body
    return prefix + b"\x2F" + bytes([len(segs)]) + body


def integer(v: int) -> bytes:
    if v < 0 or v >= 1 << 64:
        raise ValueError(f"AML integer {v} is out of range")
    if v == 0:
        return b"\x00"
    if v == 1:
        return b"\x01"
    if v < 1 << 8:
        return b"\x0A" + bytes([v])
    if v < 1 << 16:
        return b"\x0B" + struct.pack("<H", v)
    if v < 1 << 32:
        return b"\x0C" + struct.pack("<I", v)
    return b"\x0E" + struct.pack("<Q", v)


def string(s: str) -> bytes:
    raw = s.encode("ascii")
    if b"\0" in raw:
        raise ValueError("AML strings cannot hold NUL")
    return b"\x0D" + raw + b"\0"


def _term(v) -> bytes:
    if isinstance(v, bool):
        return integer(int(v))
    if isinstance(v, int):
        return integer(v)
    if isinstance(v, str):
        return string(v)
    return bytes(v)


def eisa_id(s: str) -> bytes:
    """EISAID("PNP0501"): three letters 5 bits each and four hex digits, as a DWord integer."""
    if len(s) != 7 or not s[:3].isalpha() or not s[:3].isupper():
        raise ValueError(f"bad EISA id {s!r}")
    v = (ord(s[0]) - 0x40) << 26 | (ord(s[1]) - 0x40) << 21 | (ord(s[2]) - 0x40) << 16 | int(s[3:], 16)
    return b"\x0C" + v.to_bytes(4, "big")  # the compressed id's bytes in reading order (PNP0501: 41 D0 05 01)


def name(path: str, value) -> bytes:
    return b"\x08" + name_string(path) + _term(value)


def scope(path: str, *terms) -> bytes:
    body = name_string(path) + b"".join(terms)
    return b"\x10" + pkg_length(len(body)) + body


def device(path: str, *terms) -> bytes:
    body = name_string(path) + b"".join(terms)
    return b"\x5B\x82" + pkg_length(len(body)) + body


def method(path: str, nargs: int, *terms, serialized: bool = False) -> bytes:
    body = name_string(path) + bytes([nargs & 7 | (8 if serialized else 0)]) + b"".join(terms)
    return b"\x14" + pkg_length(len(body)) + body


def return_(value) -> bytes:
    return b"\xA4" + _term(value)


def package(*elements) -> bytes:
    if len(elements) > 255:
        raise ValueError("an AML Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(_term(e) for e in elements)
    return b"\x12" + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return b"\x11" + pkg_length(len(body)) + body


# --- resource descriptors (sec. 6.4) ------------------------------------------------------------------
def io(base: int, length: int, align: int = 1) -> bytes:
    """IO (Decode16, base, base, align, length)"""
    return struct.pack("<BBHHBB", 0x47, 1, base, base, align, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags () {irqs}: ISA edge-triggered, active-high lines of the PIC."""
    mask = 0
    for i in irqs:
        if not 0 <= i < 16:
            raise ValueError(f"ISA IRQ {i} is not 0-15")
        mask |= 1 << i
    return struct.pack("<BH", 0x22, mask)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    return struct.pack("<BHBII", 0x86, 9, int(writable), base, length)


def interrupt(*gsis: int, level: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Exclusive|Shared) {gsis}"""
    flags = 1 | (0 if level else 2) | (4 if active_low else 0) | (8 if shared else 0)
    return struct.pack("<BHBB", 0x89, 2 + 4 * len(gsis), flags, len(gsis)) + b"".join(
        struct.pack("<I", g) for g in gsis)


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate () {...}: a Buffer of descriptors closed by an End Tag (checksum 0 = none)."""
    return buffer(b"".join(descriptors) + b"\x79\x00")
