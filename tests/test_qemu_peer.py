"""bench/qemu.py: the bundled guests, unchanged, under QEMU through the multiboot shim.

The image builder is checked without QEMU; the boots need qemu-system-x86_64 (setup.sh installs
it) and are skipped, saying so, only where it is missing.
"""
import os
import struct
import sys

import pytest
from elftools.elf.elffile import ELFFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nvmmpy.bench import qemu  # noqa: E402
from nvmmpy.vmm.guests import guest_path  # noqa: E402

needs_qemu = pytest.mark.skipif(qemu.qemu_binary() is None,
                                reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")


def _loads(path):
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return elf, [(s["p_paddr"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s.data())
                     for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]


@pytest.mark.parametrize("name", ["hello", "compute"])
def test_multiboot_image_is_an_elf32_with_the_guest_and_the_shim(tmp_path, name):
    out = tmp_path / f"{name}.mb.elf"
    qemu.multiboot_image(guest_path(name), str(out))
    data = out.read_bytes()

    # multiboot header: 4-byte aligned within the first 8 KiB, flags page-align + memory info
    # (no a.out kludge: QEMU loads the ELF's segments), checksum making the sum 0
    hits = [o for o in range(0, min(len(data), 8192) - 11, 4)
            if struct.unpack_from("<I", data, o)[0] == 0x1BADB002]
    assert len(hits) == 1
    magic, flags, checksum = struct.unpack_from("<III", data, hits[0])
    assert flags == 0x3 and not flags & 0x10000
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0

    guest_elf, guest_loads = _loads(guest_path(name))
    entry64 = guest_elf["e_entry"]
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf.little_endian
        assert elf["e_machine"] == "EM_386" and elf["e_type"] == "ET_EXEC"
        loads = [(s["p_paddr"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s.data(), s["p_offset"])
                 for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        entry = elf["e_entry"]
    # the guest's segments, unchanged, then the shim above the highest one, page-aligned
    assert [ld[:5] for ld in loads[:-1]] == guest_loads
    for paddr, _, _, _, _, off in loads:
        assert off % 4096 == paddr % 4096
    top = max(p + m for p, _, _, m, _ in guest_loads)
    shim_addr, _, filesz, memsz, shim, _ = loads[-1]
    assert shim_addr == (top + 4095) & ~4095 and entry == shim_addr
    assert filesz == memsz == os.path.getsize(qemu.SHIM_PATH)
    # the shim's parameter block carries the guest's 64-bit entry
    assert shim[8:16] == b"NVMMSHIM"
    assert struct.unpack_from("<Q", shim, 16)[0] == entry64
    with open(qemu.SHIM_PATH, "rb") as f:
        raw = f.read()
    assert shim[:16] == raw[:16] and shim[24:] == raw[24:]


def test_multiboot_image_refuses_what_is_not_an_elf64_guest(tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an ELF file at all")
    with pytest.raises(qemu.QemuError, match="not a valid ELF"):
        qemu.multiboot_image(str(bad), str(tmp_path / "out"))
    img = tmp_path / "hello32.elf"
    qemu.multiboot_image(guest_path("hello"), str(img))  # an ELF32: not a guest for the wrapper
    with pytest.raises(qemu.QemuError, match="not an x86-64 ELF64 guest"):
        qemu.multiboot_image(str(img), str(tmp_path / "out"))


def test_missing_qemu_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NVMMPY_QEMU", str(tmp_path / "no-such-qemu"))
    assert qemu.qemu_binary() is None and qemu.qemu_version() is None
    with pytest.raises(qemu.QemuError, match="apt-get install qemu-system-x86"):
        qemu.run_guest(guest_path("hello"), "console=ttyS0")


@needs_qemu
def test_qemu_version():
    assert qemu.qemu_version()[0].isdigit()


@needs_qemu
def test_hello_under_qemu_tcg():
    r = qemu.run_guest(guest_path("hello"), "console=ttyS0 a=1", accel="tcg", timeout=60)
    assert r.reason == "debug-exit" and r.exit_code == 0, (r.output, r.stderr)
    # the same lines as under nvmmpy: RAM from QEMU's -m, the -append line, six devices
    assert r.output == ('Hello from nvmmpy guest!\nram=67108864 bytes (64 MiB)\n'
                        'cmdline="console=ttyS0 a=1"\ndevices=6\n')
    assert r.wall > 0 and "-kernel" in r.argv and r.argv[r.argv.index("-append") + 1] == "console=ttyS0 a=1"


@needs_qemu
def test_exits_under_qemu_tcg_scratch_mmio_reads_back():
    """pc-testdev's window at 0xFF000000 is the scratch page: every read returns the value written."""
    r = qemu.run_guest(guest_path("exits"), "count=100", accel="tcg", timeout=60)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert r.output == "io=100 mmio=200\n"


@needs_qemu
def test_guest_exit_codes_and_qemu_errors_are_told_apart():
    # compute refuses parameters that do not fit in RAM and returns 1: QEMU exits with 3
    r = qemu.run_guest(guest_path("compute"), "n=100000000", accel="tcg", memory_mib=16, timeout=60)
    assert (r.returncode, r.exit_code, r.reason) == (3, 1, "debug-exit")
    assert "needs" in r.output and "MiB of RAM" in r.output
    # QEMU's own failure also exits 1, which is not the guest's 0
    r = qemu.run_guest(guest_path("hello"), "", accel="tcg", extra_args=("-device", "no-such-device"), timeout=60)
    assert r.returncode == 1 and r.exit_code is None and r.reason == "error" and "no-such-device" in r.stderr


@needs_qemu
@pytest.mark.kvm
def test_hello_and_interrupts_under_qemu_kvm():
    problem = qemu.kvm_problem()
    if problem:
        pytest.skip(problem)
    r = qemu.run_guest(guest_path("hello"), "console=ttyS0", accel="kvm", timeout=60)
    assert r.exit_code == 0 and 'cmdline="console=ttyS0"' in r.output, (r.output, r.stderr)
    r = qemu.run_guest(guest_path("interrupts"), "ticks=5", accel="kvm", timeout=60)
    assert r.exit_code == 0 and "ticks=5\n" in r.output, (r.output, r.stderr)
