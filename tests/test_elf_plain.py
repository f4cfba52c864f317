"""The loader's struct reading of plain x86 ELF files gives what pyelftools gives, errors included."""
import glob
import os
import random

import pytest

from nvmmpy.vmm import loader

GUEST_DIR = os.path.dirname(loader.__file__) + "/guests"
IMAGES = sorted(glob.glob(GUEST_DIR + "/*.elf"))


def _outcome(fn, data):
    try:
        return fn(data)
    except loader.LoadError as e:
        return ("LoadError", str(e))


def _mutants(data, seed):
    """Copies with bytes of the ELF and program headers replaced: the fields both readers use."""
    rng = random.Random(seed)
    klass = data[4]
    phoff = int.from_bytes(data[32:40] if klass == 2 else data[28:32], "little")
    heads = list(range(16, 64)) + list(range(phoff, min(len(data), phoff + 4 * 56)))
    for _ in range(150):
        d = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            d[rng.choice(heads)] = rng.choice((0, 1, 2, 3, 0xFF, rng.randrange(256)))
        yield bytes(d)


@pytest.mark.parametrize("path", IMAGES, ids=os.path.basename)
def test_plain_reading_matches_pyelftools(path):
    data = open(path, "rb").read()
    assert loader._plain_elf_segments(data) == loader._elftools_segments(data)
    checked = 0
    for d in _mutants(data, path):
        try:
            loader._check_elf_header(d)
        except loader.LoadError:
            continue
        plain = _outcome(loader._plain_elf_segments, d)
        if plain is not None:
            assert plain == _outcome(loader._elftools_segments, d)
            checked += 1
    assert checked > 20


def test_elf32_reads_the_same():
    """A minimal ELF32 i386 executable with one PT_LOAD (no bundled guest is ELF32)."""
    import struct
    ph = struct.pack("<8I", 1, 0x54, 0x100000, 0, 4, 0x2000, 5, 0x1000)
    eh = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x100000, 52, 0, 0, 52, 32, 1,
                                                           40, 0, 0)
    data = eh + ph + b"\x90\x90\xf4\xf4"
    want = (32, "EM_386", 0x100000, [(0x100000, 0x54, 4, 0x2000)])
    assert loader._plain_elf_segments(data) == loader._elftools_segments(data) == want
