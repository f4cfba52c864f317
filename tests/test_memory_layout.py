"""Guest RAM above 3 GiB: the regions below the MMIO hole and from 4 GiB, their bounds, the boot info
block that describes them, the E820 map, and `nvmmpy run --memory` with more RAM than the host has."""
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile

import pytest

import nvmmpy
from asm import assemble
from nvmmpy.devices.interfaces import GuestMemoryError, RecordingIrq
from nvmmpy.devices.virtio import constants as virtio
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.rng import VirtioRng
from harness import ROOT, need
from nvmmpy.errors import NvmmError
from nvmmpy.devices.testing.driver import MmioDriver
from nvmmpy.vmm import loader
from nvmmpy.vmm.cpu_modes import PDPT_ADDR
from nvmmpy.vmm.guests import guest_path
from nvmmpy.vmm.memory import E820_RAM, E820_RESERVED, HIGH_START, HOLE_START, GuestRam, layout
from nvmmpy.vmm.vm import VirtualMachine

G = 1 << 30
DRIVERS = ["kvm", "unicorn"]


@pytest.fixture
def ram64g():
    m = nvmmpy.Machine("unicorn")
    ram = GuestRam(m, 64 * G)
    yield m, ram
    m.destroy()
    ram.close()


def test_layout_splits_at_the_hole():
    assert layout(64 << 20) == [(0, 64 << 20)]
    assert layout(3 * G) == [(0, 3 * G)]
    assert layout(4 * G) == [(0, 3 * G), (4 * G, G)]
    assert layout(64 * G) == [(0, 3 * G), (4 * G, 61 * G)]


def test_regions_are_mapped_where_the_layout_says(ram64g):
    m, ram = ram64g
    assert ram.size == 64 * G
    assert [(r.gpa, r.size) for r in ram.regions] == layout(64 * G)
    assert [(a.gpa, a.size) for a in m.areas.areas()] == layout(64 * G)
    with pytest.raises(NvmmError):           # nothing is mapped in the hole
        m.gpa_to_hva(HOLE_START)


@pytest.mark.parametrize("os_name", ["netbsd", "dragonfly"])
def test_nvmm_driver_gets_one_gpa_map_per_region(os_name):
    from test_nvmm_fake_kernel import fake_nvmm
    with fake_nvmm(os_name=os_name, version=2) as fake:
        m = nvmmpy.Machine("nvmm")
        ram = GuestRam(m, 64 * G)
        try:
            (gpa,) = fake.gpa.values()
            (hva,) = fake.hva.values()
            assert {g: size for g, (_, size, _) in gpa.items()} == dict(layout(64 * G))
            assert {h: size for h, size in hva.items()} == {r.host.address: r.size for r in ram.regions}
            with pytest.raises(NvmmError, match="past the nvmm driver's"):
                GuestRam(m, m.capability.max_ram)
        finally:
            m.destroy()
            ram.close()


def test_high_region_read_write_view(ram64g):
    m, ram = ram64g
    top = HIGH_START + 61 * G
    ram.write(HIGH_START, b"first")
    ram.write(top - 4, b"last")
    assert ram.read(HIGH_START, 5) == b"first" and ram.read(top - 4, 4) == b"last"
    v = ram.view(top - 4, 4)
    v[0:1] = b"L"
    assert ram.read(top - 4, 4) == b"Last"
    assert m.read_guest(top - 4, 4) == b"Last"             # the machine sees the same bytes there
    ram.write(HOLE_START - 3, b"low")                      # the low region's last bytes
    assert ram.read(HOLE_START - 3, 3) == b"low"


@pytest.mark.parametrize("gpa, size", [
    (HOLE_START - 2, 4),             # from low RAM into the hole
    (HOLE_START, 1),                 # inside the hole
    (HIGH_START - 1, 2),             # from the hole into high RAM
    (HOLE_START - 1, HIGH_START - HOLE_START + 2),  # low RAM, over the whole hole, into high RAM
    (HIGH_START + 61 * G - 1, 2),    # past the end of RAM
    (HIGH_START + 61 * G, 0x1000),
    (-1, 1),
    (HIGH_START, -1),
])
def test_access_across_a_region_edge_is_rejected(ram64g, gpa, size):
    _, ram = ram64g
    with pytest.raises(GuestMemoryError):
        ram.read(gpa, size)
    with pytest.raises(GuestMemoryError):
        ram.view(gpa, size)
    if size >= 0:
        with pytest.raises(GuestMemoryError):
            ram.write(gpa, bytes(size))
    assert not ram.contains(gpa, size)


def test_mmio_device_may_not_overlap_high_ram():
    vm = VirtualMachine(memory=5 * G, driver="unicorn")
    try:
        vm.add_legacy_devices()                             # scratch page at 0xC0000000: in the hole
        with pytest.raises(ValueError, match="overlaps guest RAM"):
            vm.add_mmio_device(HIGH_START + G, 0x1000, object(), "inside-high-ram")
        vm.add_mmio_device(HIGH_START + 2 * G, 0x1000, object(), "after-ram")
    finally:
        vm.close()


def test_unmappable_guest_physical_top_is_refused():
    m = nvmmpy.Machine("unicorn")
    try:
        with pytest.raises(NvmmError, match="address space"):
            GuestRam(m, m.capability.max_ram)            # + the hole's 1 GiB: past the driver's space
        assert m.areas.areas() == []
    finally:
        m.destroy()


def test_a_region_the_host_cannot_map_leaves_the_machine_clean(monkeypatch):
    from nvmmpy.vmm import memory
    real = nvmmpy.HostMemory

    def host_memory(size):
        if size == 61 * G:
            raise OSError(12, "Cannot allocate memory")
        return real(size)
    monkeypatch.setattr(memory.nvmmpy, "HostMemory", host_memory)
    m = nvmmpy.Machine("unicorn")
    try:
        with pytest.raises(NvmmError, match="cannot map 61 GiB for guest RAM at 0x100000000"):
            GuestRam(m, 64 * G)
        assert m.areas.areas() == [] and m.areas.hva == {}   # the low region was unmapped again
    finally:
        m.destroy()


@pytest.mark.parametrize("size, expect", [
    (64 << 20, [(0, 64 << 20, E820_RAM), (HOLE_START, G, E820_RESERVED)]),
    (64 * G, [(0, 3 * G, E820_RAM), (HOLE_START, G, E820_RESERVED), (4 * G, 61 * G, E820_RAM)]),
])
def test_e820_map(size, expect):
    m = nvmmpy.Machine("unicorn")
    ram = GuestRam(m, size)
    try:
        assert ram.e820() == expect
    finally:
        m.destroy()
        ram.close()


def test_e820_cuts_reserved_ranges_out_of_ram(ram64g):
    _, ram = ram64g
    # cut out of the RAM they overlap, merged with the hole they touch; empty ranges ignored
    legacy, acpi = (0x9FC00, 0x60400), (0xBFF00000, 0x100000)
    assert ram.e820([legacy, acpi, (5 * G, 0)]) == [
        (0, 0x9FC00, E820_RAM), (0x9FC00, 0x60400, E820_RESERVED), (0x100000, 0xBFE00000, E820_RAM),
        (0xBFF00000, G + 0x100000, E820_RESERVED), (4 * G, 61 * G, E820_RAM)]
    # a reserved range inside high RAM splits it
    assert ram.e820([(5 * G, 0x1000)])[-3:] == [
        (4 * G, G, E820_RAM), (5 * G, 0x1000, E820_RESERVED), (5 * G + 0x1000, 60 * G - 0x1000, E820_RAM)]


# --- the boot info block ------------------------------------------------------------------------------
def _decode_info(ram):
    magic, version, total, ram_size, cmdline, cmdlen, n = struct.unpack_from("<8sIIQQII", ram.read(loader.INFO_ADDR, 40))
    table = ram.read(loader.INFO_ADDR + 40, 24 * n)
    return (magic, version, total, ram_size, cmdline, cmdlen), [struct.unpack_from("<IIQQ", table, 24 * i) for i in range(n)]


@pytest.mark.parametrize("size, ram_entries", [
    (64 << 20, [(0, 64 << 20)]),
    (64 * G, [(0, 3 * G), (HIGH_START, 61 * G)]),
])
def test_boot_info_lists_the_ram_regions(size, ram_entries):
    vm = VirtualMachine(memory=size, driver="unicorn")
    try:
        vm.add_legacy_devices()
        vm.add_virtio_device(VirtioRng())
        with open(guest_path("hello"), "rb") as f:
            loader.load(vm, f.read(), cmdline="x=1")
        (magic, version, total, ram_size, cmdline, cmdlen), entries = _decode_info(vm.ram)
        assert (magic, version, ram_size, cmdline, cmdlen) == (b"NVMMPYBI", 1, size, loader.CMDLINE_ADDR, 3)
        assert total == 40 + 24 * len(entries)
        devices = [e for e in entries if e[0] != loader.INFO_RAM]
        assert devices == vm.info_devices and entries[:len(devices)] == devices  # devices first, as before
        assert entries[len(devices):] == [(loader.INFO_RAM, 0xFFFFFFFF, a, n) for a, n in ram_entries]
        assert (16, 5, 0xD0000000, 0x200) in devices
        assert sum(n for _, _, _, n in entries[len(devices):]) == ram_size  # ram_size is the total
    finally:
        vm.close()


def test_loader_refuses_a_segment_in_the_hole():
    vm = VirtualMachine(memory=4 * G, driver="unicorn")
    try:
        with pytest.raises(loader.LoadError, match=r"0x0-0xbfffffff and 0x100000000-0x13fffffff"):
            loader.load(vm, b"\x90" * 16, fmt="raw64", load_at=(HOLE_START >> 4, 0))
    finally:
        vm.close()


# --- a guest reaching high RAM through its own page tables ----------------------------------------
HIGH_RW = """
    movabs $0x{lo:x}, %rbx
    mov (%rbx), %rax
    add $1, %rax
    mov %rax, (%rbx)
    movabs $0x{hi:x}, %rbx
    addq $2, (%rbx)
    mov $0x501, %dx
    out %al, (%dx)
    hlt
"""


@pytest.mark.parametrize("driver", DRIVERS)
def test_guest_reads_and_writes_both_ends_of_high_ram(driver):
    """The driver maps the high region at 4 GiB: the guest's accesses land in the right host bytes."""
    need(driver)
    lo, hi = HIGH_START + 0x1238, HIGH_START + 61 * G - 8
    vm = VirtualMachine(memory=64 * G, driver=driver, guest_mode="cpl0")
    try:
        vm.add_legacy_devices()
        loader.load(vm, assemble(HIGH_RW.format(lo=lo, hi=hi), bits=64, org=loader.HIGH_LOAD), fmt="raw64")
        # the loader identity-maps 4 GiB; map the 1 GiB pages around lo and hi with 2 MiB pages too
        for pd, gpa in ((0x20000, lo), (0x21000, hi)):
            vm.ram.write(PDPT_ADDR + 8 * (gpa >> 30), struct.pack("<Q", pd | 0x7))
            vm.ram.write(pd, b"".join(struct.pack("<Q", ((gpa >> 30 << 30) + (j << 21)) | 0x87) for j in range(512)))
        vm.ram.write(lo, struct.pack("<Q", 41))
        vm.ram.write(hi, struct.pack("<Q", 1000))
        r = vm.run(timeout=30)
        assert (r.reason, r.exit_code) == ("exit", 42), r
        assert struct.unpack("<Q", vm.ram.read(lo, 8))[0] == 42
        assert struct.unpack("<Q", vm.ram.read(hi, 8))[0] == 1002
    finally:
        vm.close()


# --- a virtio device whose rings and buffers are in high RAM -------------------------------------
def test_virtio_rng_with_rings_in_high_ram(ram64g):
    _, ram = ram64g
    t = VirtioMmio(VirtioRng(source=lambda n: b"\xab" * n), ram, RecordingIrq())
    drv = MmioDriver(t, ram, ram_start=HIGH_START + 60 * G, ram_end=HIGH_START + 61 * G)
    drv.init(1 << virtio.F_VERSION_1)
    q = drv.queues[0]
    assert all(a >= HIGH_START + 60 * G for a in q.areas)
    h = q.add([(64, True)])
    drv.notify(0)
    assert q.used() == [(h, 64)] and q.written(h) == b"\xab" * 64
    # a buffer running from low RAM into the hole: the device refuses it (NEEDS_RESET), no bytes move
    q.write_desc(q.free[0], HOLE_START - 16, 32, 2, 0)
    q.publish(q.free[0])
    drv.notify(0)
    assert t.status & virtio.S_DEVICE_NEEDS_RESET and "not inside one guest RAM region" in t.last_error
    assert ram.read(HOLE_START - 16, 16) == bytes(16)


# --- nvmmpy run --memory -----------------------------------------------------------------------------
# The child's own peak RSS: VmHWM of its process image, written at exit. (ru_maxrss from wait4 would
# include the pytest process the child was forked from, which keeps its high-water mark across exec.)
HWM_WRAPPER = """import atexit, os, runpy, sys
def hwm():
    with open(os.environ["NVMMPY_TEST_HWM"], "w") as out:
        out.write(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])
atexit.register(hwm)
sys.argv[0] = "nvmmpy"
runpy.run_module("nvmmpy.cli", run_name="__main__")
"""


def run_cli(*args, limit_as=None):
    """`nvmmpy run ...` in a child; returns (CompletedProcess, the child's peak RSS in KiB)."""
    with tempfile.NamedTemporaryFile("r") as hwm:
        def limits():
            if limit_as:
                resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
        p = subprocess.run([sys.executable, "-c", HWM_WRAPPER, "run", *args], capture_output=True, text=True,
                           cwd=ROOT, timeout=120, preexec_fn=limits, env=dict(os.environ, NVMMPY_TEST_HWM=hwm.name))
        return p, int(hwm.read() or 0)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("memory, size", [("4G", 4 * G), ("64G", 64 * G)])
def test_hello_with_ram_above_4g(driver, memory, size):
    need(driver)
    p, rss = run_cli("hello", "--accel", driver, "--memory", memory, "--json")
    assert p.returncode == 0, p.stderr
    assert f"ram={size} bytes ({size >> 20} MiB)" in p.stderr
    assert "devices=8" in p.stderr                        # six devices and two RAM regions
    d = json.loads(p.stdout)
    assert d["memory"] == size and d["driver"] == driver
    assert 0 < rss < 256 << 10, f"peak RSS {rss} KiB for a {memory} guest: guest RAM was touched"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("memory", ["4G", "64G"])
def test_virtio_rng_guest_with_ram_above_4g(driver, memory):
    need(driver)
    p, _ = run_cli("virtio-rng", "--accel", driver, "--memory", memory, "--cmdline", "count=4 bytes=32 irq=1")
    assert p.returncode == 0, p.stderr
    assert "rng: 4 requests, 128 bytes\n" in p.stdout


def one_line_error(p, words):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], p.stderr


def test_size_past_the_drivers_address_space_is_one_line():
    p, _ = run_cli("hello", "--accel", "unicorn", "--memory", "512T")   # unicorn: 48-bit guest-physical
    one_line_error(p, "past the unicorn driver's 256 TiB address space")


def test_host_mmap_failure_is_one_line():
    p, _ = run_cli("hello", "--accel", "unicorn", "--memory", "64G", limit_as=16 * G)
    one_line_error(p, "the host cannot map 61 GiB for guest RAM at 0x100000000 (mmap: Cannot allocate memory)")


def test_kvm_refusing_the_region_is_one_line():
    need("kvm")
    p, _ = run_cli("hello", "--accel", "kvm", "--memory", "16T")   # KVM: at most 2^31 - 1 pages per slot
    one_line_error(p, "the kvm driver cannot map 15.9971 TiB of guest RAM at 0x100000000")


def test_memory_parser_takes_t_and_has_no_fixed_64g_cap():
    from nvmmpy.cli.run import parse_size
    assert parse_size("1T") == 1 << 40 and parse_size("65G") == 65 * G
    p, _ = run_cli("hello", "--memory", "8192T")
    one_line_error(p, "not a usable RAM size")
