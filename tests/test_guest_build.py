"""The bundled guests: the shipped images are what guests/build.py makes, and they are loadable."""
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from nvmmpy.vmm.guests import COMPUTE_DEFAULT_CHECKSUM, GUESTS, TOOLCHAIN, guest_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "guests", "build.py")
NAMES = ["hello", "compute", "exits", "interrupts", "virtio-console", "virtio-rng", "virtio-blk", "virtio-sound-play",
         "virtio-sound-record"]
LOAD_MIN = 0x100000  # docs/guest-abi.md: images load at or above 1 MiB


def test_catalogue_lists_the_guests_with_their_images():
    assert set(NAMES) <= set(GUESTS)
    for name in NAMES:
        g = GUESTS[name]
        assert g.name == name and g.format == "elf" and g.mode in ("cpl0", "cpl3")
        assert os.path.isfile(g.path) and guest_path(name) == g.path
        assert g.expect_output and all(isinstance(s, str) and s for s in g.expect_output)
        assert isinstance(g.expect_exit, int) and 0 <= g.expect_exit <= 255
        assert g.description and isinstance(g.default_cmdline, str)
    assert GUESTS["compute"].mode == "cpl3"
    assert f"checksum=0x{COMPUTE_DEFAULT_CHECKSUM:08x}" in GUESTS["compute"].expect_output
    with pytest.raises(KeyError, match="hello"):
        guest_path("no-such-guest")


@pytest.mark.parametrize("name", NAMES)
def test_image_is_a_loadable_elf64(name):
    with open(guest_path(name), "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf.little_endian
        assert elf["e_machine"] == "EM_X86_64" and elf["e_type"] == "ET_EXEC"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads, "no PT_LOAD segment"
        for s in loads:
            assert s["p_vaddr"] >= LOAD_MIN and s["p_paddr"] == s["p_vaddr"]
            assert s["p_filesz"] <= s["p_memsz"]
        entry = elf["e_entry"]
        text = [s for s in loads if s["p_vaddr"] <= entry < s["p_vaddr"] + s["p_memsz"]]
        assert len(text) == 1, f"entry {entry:#x} is in no PT_LOAD segment"
        assert text[0]["p_flags"] & P_FLAGS.PF_X and entry >= LOAD_MIN
        assert not any(s.name.startswith(".debug") or s.name == ".comment" for s in elf.iter_sections())


def test_rebuild_is_byte_identical(tmp_path):
    missing = [t for t in ("gcc", "as", "ld") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"cannot rebuild the guests: {', '.join(missing)} not installed")
    r = subprocess.run([sys.executable, BUILD, "--out", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    differ = [n for n in NAMES if (tmp_path / f"{n}.elf").read_bytes() != Path(guest_path(n)).read_bytes()]
    assert not differ, (f"rebuilt {differ} differ from vmm/guests/ (shipped images were built with "
                        f"{TOOLCHAIN}; this build: {r.stdout.splitlines()[0]}). After changing guests/, "
                        f"run `python3 guests/build.py` and commit the images.")


def test_compute_checksum_matches_a_model_of_the_guest():
    """The documented checksum follows from compute.c's algorithms at the default parameters."""
    args = dict(kv.split("=") for kv in GUESTS["compute"].default_cmdline.split())
    n, nbytes, m = int(args["n"]), int(args["crc"]), int(args["mat"])
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n + 1, i)))
    count, largest = sum(sieve), sieve.rindex(1)
    x, buf = 0x12345678, bytearray(nbytes)
    for i in range(nbytes):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        buf[i] = x >> 24
    crc = zlib.crc32(buf)
    a = [[(r * 3 + k * 7 + 1) % 17 - 8 for k in range(m)] for r in range(m)]
    bt = list(zip(*[[(r * 5 + k * 11 + 3) % 13 - 6 for k in range(m)] for r in range(m)]))
    matsum = 0
    for row in a:
        for col in bt:
            matsum = (matsum * 31 + sum(p * q for p, q in zip(row, col))) & 0xFFFFFFFF
    checksum = zlib.crc32(struct.pack("<4I", count, largest, crc, matsum))
    expect = GUESTS["compute"].expect_output
    assert f"primes<=n: count={count} largest={largest}" in expect
    assert f"crc32=0x{crc:08x}" in expect and f"matmul sum=0x{matsum:08x}" in expect
    assert checksum == COMPUTE_DEFAULT_CHECKSUM
