"""The bundled virtio guests (guests/virtio-*.c on guests/runtime/virtio.c) through `nvmmpy run`
on kvm and on unicorn, sleeping on interrupts (irq=1) and polling (irq=0); plus, in process, what
the driver does to the transport (32-bit register accesses only, no interrupts when polling) and
how it refuses a device it cannot drive.

Each run does little guest work: kvm here may emulate CPL0 code at about 1 us an instruction."""
import os
import re

import pytest

from harness import need, run_nvmmpy
from nvmmpy.vmm.guests import GUESTS, guest_path

DRIVERS = ["kvm", "unicorn"]
IRQ = pytest.mark.parametrize("irq", [0, 1], ids=["poll", "irq"])
M64 = (1 << 64) - 1
SECTOR = 512
GREETING = "Hello from the virtio console!\n"


def pattern(seed: int, sector: int) -> bytes:
    """What guests/virtio-blk.c writes to `sector` (pattern_word: splitmix64's finaliser)."""
    out = bytearray()
    for i in range(SECTOR // 8):
        z = (seed * 0x9E3779B97F4A7C15 + sector * (SECTOR // 8) + i) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    return bytes(out)


def check_interrupts(out: str, name: str, irq: int, line: int) -> None:
    """irq=1: the guest took the device's interrupts; irq=0: it polled and took none."""
    m = re.search(rf"virtio: {name}: (\d+) interrupts on irq {line}\n", out)
    if irq:
        assert ", interrupts\n" in out, out
        assert m and int(m.group(1)) >= 1, out
        assert "InterruptStatus 0" not in out, out
    else:
        assert ", polling\n" in out and m is None, out


def test_catalogue_entries():
    for name, device in (("virtio-console", "console"), ("virtio-rng", "rng"), ("virtio-blk", "blk")):
        g = GUESTS[name]
        assert g.devices == (device,) and g.mode == "cpl0" and g.expect_exit == 0
        assert "irq=1" in g.default_cmdline and g.expect_output
        assert os.path.isfile(guest_path(name))


# --- virtio-rng ----------------------------------------------------------------------------------
@IRQ
@pytest.mark.parametrize("driver", DRIVERS)
def test_rng(driver, irq):
    need(driver)
    proc = run_nvmmpy("run", "virtio-rng", "--accel", driver, "--cmdline", f"count=6 bytes=32 irq={irq}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rng: 6 requests, 192 bytes\n" in proc.stdout
    check_interrupts(proc.stdout, "rng", irq, 5)


def test_rng_without_a_device_says_so():
    proc = run_nvmmpy("run", guest_path("virtio-rng"), "--accel", "unicorn")   # a file: no catalogue devices
    assert proc.returncode == 1
    assert "virtio: no rng device (DeviceID 4) among the 0 virtio-mmio devices" in proc.stdout
    assert "--virtio-rng" in proc.stdout


# --- virtio-console ------------------------------------------------------------------------------
@IRQ
@pytest.mark.parametrize("driver", DRIVERS)
def test_console_lines(tmp_path, driver, irq):
    need(driver)
    out = tmp_path / "vcon.txt"
    proc = run_nvmmpy("run", "virtio-console", "--accel", driver, "--cmdline", f"count=2 irq={irq}",
                  "--virtio-console", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text() == GREETING + "line 1 of 2\nline 2 of 2\n"
    assert "console: greeting and 2 lines sent (55 bytes), 0 bytes echoed\n" in proc.stdout
    check_interrupts(proc.stdout, "console", irq, 5)


def test_console_defaults_to_stdio():
    """The catalogue entry brings its own virtio console on stdout."""
    proc = run_nvmmpy("run", "virtio-console", "--accel", "unicorn")
    assert proc.returncode == 0, proc.stderr
    assert GREETING + "line 1 of 3\nline 2 of 3\nline 3 of 3\n" in proc.stdout
    for s in GUESTS["virtio-console"].expect_output:
        assert s in proc.stdout


@IRQ
@pytest.mark.parametrize("driver", DRIVERS)
def test_console_echo(tmp_path, driver, irq):
    """The input file starts feeding as the run starts, before the guest resets and sets up the
    device: what was fed must survive that reset."""
    need(driver)
    text = b"".join(b"%03d echo through receiveq\n" % i for i in range(11))   # 297 bytes: two RX buffers
    inp, out = tmp_path / "in.txt", tmp_path / "vcon.txt"
    inp.write_bytes(text + b"not this\n")                                      # beyond echo=: left unread
    proc = run_nvmmpy("run", "virtio-console", "--accel", driver, "--cmdline", f"count=0 echo={len(text)} irq={irq}",
                  "--virtio-console", str(out), "--virtio-console-input", str(inp), "--timeout", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes() == GREETING.encode() + b"echo: " + text
    assert f"console: greeting and 0 lines sent (31 bytes), {len(text)} bytes echoed\n" in proc.stdout


# --- virtio-blk ----------------------------------------------------------------------------------
@IRQ
@pytest.mark.parametrize("driver", DRIVERS)
def test_blk_writes_the_pattern(tmp_path, driver, irq):
    need(driver)
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(64 << 10))                                        # 128 sectors
    proc = run_nvmmpy("run", "virtio-blk", "--accel", driver, "--cmdline", f"count=5 sector=3 seed=7 depth=2 irq={irq}",
                  "--virtio-blk", str(img))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "blk: capacity 128 sectors (64 KiB), read-write, flush\n" in out
    assert 'blk: id "disk.img"\n' in out
    assert "blk: 5 sectors from 3 written, flushed, read back and verified (seed 7)\n" in out
    check_interrupts(out, "blk", irq, 5)
    expect = bytes(3 * SECTOR) + b"".join(pattern(7, s) for s in range(3, 8))
    data = img.read_bytes()
    assert len(data) == 64 << 10
    assert data[:len(expect)] == expect
    assert data[len(expect):] == bytes(len(data) - len(expect))


@pytest.mark.parametrize("driver", DRIVERS)
def test_blk_read_only_image_gives_ioerr(tmp_path, driver):
    need(driver)
    img = tmp_path / "ro.img"
    before = bytes(range(256)) * 128                                        # 32 KiB of something
    img.write_bytes(before)
    proc = run_nvmmpy("run", "virtio-blk", "--accel", driver, "--cmdline", "count=2 irq=1", "--virtio-blk", f"{img},ro")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "blk: capacity 64 sectors (32 KiB), read-only, flush\n" in proc.stdout
    assert "blk: FAILED: write of sector 0 returned status 1 (IOERR)\n" in proc.stdout
    assert img.read_bytes() == before


@pytest.mark.parametrize("driver", DRIVERS)
def test_blk_second_disk_interrupts_through_the_slave_pic(tmp_path, driver):
    """console, rng, blk, blk get IRQs 5, 6, 7, 9: disk=1 is on IRQ 9 (slave PIC, ELCR 0x4D1)."""
    need(driver)
    d0, d1 = tmp_path / "d0.img", tmp_path / "d1.img"
    for d in (d0, d1):
        d.write_bytes(bytes(16 << 10))
    proc = run_nvmmpy("run", "virtio-blk", "--accel", driver, "--cmdline", "count=3 sector=29 seed=3 disk=1 irq=1",
                  "--virtio-console", str(tmp_path / "vcon.txt"), "--virtio-rng",
                  "--virtio-blk", str(d0), "--virtio-blk", str(d1))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "virtio: blk at 0xd0000600: irq 9," in proc.stdout
    check_interrupts(proc.stdout, "blk", 1, 9)
    assert d0.read_bytes() == bytes(16 << 10)
    assert d1.read_bytes() == bytes(29 * SECTOR) + b"".join(pattern(3, s) for s in (29, 30, 31))


def test_blk_beyond_the_capacity_is_refused(tmp_path):
    img = tmp_path / "small.img"
    img.write_bytes(bytes(8 * SECTOR))
    proc = run_nvmmpy("run", "virtio-blk", "--accel", "unicorn", "--cmdline", "count=2 sector=7", "--virtio-blk", str(img))
    assert proc.returncode == 1
    assert "blk: sectors 7+2 are beyond the capacity of 8 sectors" in proc.stdout
    assert img.read_bytes() == bytes(8 * SECTOR)


# --- in process: what the driver does to the transport -----------------------------------------
class _CountingLine:
    def __init__(self, line):
        self.line, self.rises, self.level = line, 0, False

    def set_level(self, level):
        self.rises += bool(level and not self.level)
        self.level = bool(level)
        self.line.set_level(level)

    def trigger(self):
        self.rises += 1
        self.line.trigger()


def _run_in_process(driver, name, cmdline, add_devices):
    from nvmmpy.vmm.loader import load
    from nvmmpy.vmm.vm import VirtualMachine
    need(driver)
    console = bytearray()
    vm = VirtualMachine(memory=16 << 20, driver=driver, guest_mode="cpl0")
    try:
        vm.add_legacy_devices(serial_output=console.extend)
        extra = add_devices(vm)
        with open(guest_path(name), "rb") as f:
            load(vm, f.read(), "elf", cmdline)
        result = vm.run(timeout=60)
    finally:
        vm.close()
    return result, console.decode(errors="replace"), extra


@IRQ
@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_protocol_on_the_transport(tmp_path, driver, irq):
    """Only aligned 32-bit register accesses, the full status sequence, one request of each kind
    the guest meant, and no interrupt at all when polling (VIRTQ_AVAIL_F_NO_INTERRUPT)."""
    from nvmmpy.devices.virtio.blk import VirtioBlk
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(16 << 10))

    def add(vm):
        dev = VirtioBlk(str(img))
        t = vm.add_virtio_device(dev)
        t.irq = line = _CountingLine(t.irq)
        return dev, t, line

    result, out, (dev, t, line) = _run_in_process(driver, "virtio-blk", f"count=4 depth=3 irq={irq}", add)
    assert result.reason == "exit" and result.exit_code == 0, out
    assert t.bad_accesses == 0 and t.last_error == ""
    assert t.status == 0x0F                                      # ACKNOWLEDGE DRIVER FEATURES_OK DRIVER_OK
    assert dev.driver_features == 1 << 32 | 1 << 9 | 1 << 6      # VERSION_1, FLUSH, BLK_SIZE
    assert (dev.writes, dev.reads, dev.flushes, dev.get_ids, dev.bad_requests) == (4, 4, 1, 1, 0)
    if irq:
        # one interrupt a notification: GET_ID, 2 write batches, FLUSH, 2 read batches
        assert line.rises == 6 and "virtio: blk: 6 interrupts on irq 5\n" in out
    else:
        assert line.rises == 0 and t.interrupt_status == 0


@IRQ
def test_driver_refuses_a_used_element_that_heads_no_chain_in_flight(tmp_path, irq):
    """A device that answers the first write with the id of its data descriptor (inside the table,
    but no request's head): the stream loop (virtq_stream_run) must not take it for a request."""
    from nvmmpy.devices.virtio.blk import VirtioBlk
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(16 << 10))

    class WrongHead(VirtioBlk):
        requests = 0

        def process_queue(self, index):
            q, pushed = self.queues[index], False
            while (chain := q.pop()) is not None:
                length = self._handle(chain)
                self.requests += 1
                if self.requests == 2:          # GET_ID, then the first write: 3 descriptors
                    chain.head += 1
                q.push(chain, length)
                pushed = True
            if pushed:
                self.signal_used(index)

    def add(vm):
        vm.add_virtio_device(WrongHead(str(img)))

    result, out, _ = _run_in_process("unicorn", "virtio-blk", f"count=2 irq={irq}", add)
    assert result.exit_code == 1, out
    assert "the used ring returned descriptor 1, which heads no chain in flight\n" \
           "blk: FAILED: a request did not complete\n" in out, out


class _FakeWindow:
    """A register window that is not (or not a modern) virtio-mmio device."""

    def __init__(self, magic, version, device_id=4):
        self.regs = {0x000: magic, 0x004: version, 0x008: device_id}

    def read(self, offset, data):
        data[:] = self.regs.get(offset, 0).to_bytes(4, "little")[:len(data)]

    def write(self, offset, data):
        pass


@pytest.mark.parametrize("magic,version,words", [
    (0x12345678, 2, "has MagicValue 0x12345678, not 0x74726976 (\"virt\")"),
    (0x74726976, 1, "has Version 1 (legacy): this driver speaks virtio-mmio version 2 only"),
])
def test_driver_refuses_a_window_that_is_not_virtio_mmio_v2(magic, version, words):
    def add(vm):
        vm.add_mmio_device(0xD0000000, 0x200, _FakeWindow(magic, version), "fake", 16, irq=5)
    result, out, _ = _run_in_process("unicorn", "virtio-rng", "count=1", add)
    assert result.exit_code == 1 and words in out, out


def test_driver_fails_a_device_without_version_1():
    from nvmmpy.devices.virtio.mmio import VirtioMmio
    from nvmmpy.devices.virtio.rng import VirtioRng

    def add(vm):
        t = VirtioMmio(VirtioRng(), vm.ram, vm.irq_line(5), features_mask=~(1 << 32))
        vm.add_mmio_device(0xD0000000, 0x200, t, "rng-legacy-only", 16, irq=5)
        return t

    result, out, t = _run_in_process("unicorn", "virtio-rng", "count=1", add)
    assert result.exit_code == 1, out
    assert "does not offer VIRTIO_F_VERSION_1 (bit 32)" in out
    assert t.status & 0x80 and not t.status & 0x04                 # FAILED, never DRIVER_OK
