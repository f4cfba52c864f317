"""The eventfd seam (nvmmpy.extensions, vmm/iothread.py, vmm/kernel_pic.py): real guests on
/dev/kvm give the same bytes with notifications through ioeventfd and I/O threads (with the
Python PIC or the in-kernel one) as without; drivers without the extensions (unicorn) keep the
NVMM path. Exit counts are compared, never times."""
import errno
import subprocess
import sys

import pytest

from harness import kvm_usable
from nvmmpy.vmm.guests import guest_path

MODES = ["off", "ioeventfd", "irqchip"]


def need_kvm():
    ok, why = kvm_usable()
    if not ok:
        pytest.skip(f"needs /dev/kvm: {why}")


def run_guest(driver, mode, name, cmdline, disk=None):
    """(RunResult, console text, transport, VM mode, notifications served by an I/O thread,
    QueueNotify writes that exited to the VMM) of one in-process run."""
    from nvmmpy.devices.virtio.constants import MMIO_QUEUE_NOTIFY
    from nvmmpy.devices.virtio.blk import VirtioBlk
    from nvmmpy.devices.virtio.rng import VirtioRng
    from nvmmpy.vmm.loader import load
    from nvmmpy.vmm.vm import VirtualMachine
    console = bytearray()
    vm = VirtualMachine(memory=16 << 20, driver=driver, guest_mode="cpl0", eventfd=mode)
    try:
        vm.add_legacy_devices(serial_output=console.extend)
        t = vm.add_virtio_device(VirtioBlk(str(disk)) if disk else VirtioRng())
        exited = []
        write = t.write

        def counting_write(offset, data):   # the bus calls the transport's write on an exit
            if offset == MMIO_QUEUE_NOTIFY:
                exited.append(1)
            write(offset, data)
        t.write = counting_write
        with open(guest_path(name), "rb") as f:
            load(vm, f.read(), "elf", cmdline)
        result = vm.run(timeout=120)
        served = any(n.served for n in vm._io.notifiers) if vm._io else False
    finally:
        vm.close()
    return result, console.decode(errors="replace"), t, vm.eventfd, served, len(exited)


# --- the API -----------------------------------------------------------------------------------
def test_unicorn_has_no_extensions_and_the_vmm_falls_back():
    import nvmmpy
    from nvmmpy.vmm.iothread import resolve_mode
    m = nvmmpy.Machine("unicorn")
    try:
        assert m.extensions == frozenset() and not m.irqchip
        with pytest.raises(nvmmpy.NvmmError) as e:
            m.ioeventfd(0xD0000050, 4, 0, 0)
        assert e.value.errno == errno.EOPNOTSUPP
        assert resolve_mode(m, "auto") == "off"
        with pytest.raises(ValueError, match="needs ioeventfd"):
            resolve_mode(m, "ioeventfd")
        with pytest.raises(ValueError, match="one of"):
            resolve_mode(m, "fast")
    finally:
        m.destroy()


def test_kvm_extensions_and_their_rules():
    need_kvm()
    import nvmmpy
    from nvmmpy import constants as nvmm
    m = nvmmpy.Machine("kvm")
    try:
        if not {"ioeventfd", "irqchip"} <= m.extensions:
            pytest.skip(f"this /dev/kvm offers {sorted(m.extensions)}")
        with pytest.raises(nvmmpy.NvmmError, match="irqchip_create first"):
            m.irq_line(4)
        with pytest.raises(nvmmpy.NvmmError) as e:
            m.ioeventfd(0xD0000050, 3, 0, 0)
        assert e.value.errno == errno.EINVAL
        m.irqchip_create()
        assert m.irqchip
        with pytest.raises(nvmmpy.NvmmError) as e:
            m.irqchip_create()
        assert e.value.errno == errno.EEXIST
        line = m.irq_line(5)
        line.set_level(True)
        line.set_level(False)
        line.trigger()
        vcpu = m.vcpu_create(0)
        with pytest.raises(nvmmpy.NvmmError, match="in-kernel interrupt controller delivers"):
            vcpu.inject(nvmm.VCPU_EVENT_INTR, 0x20)
    finally:
        m.destroy()


def test_irqfd_needs_the_irqchip_and_takes_an_eventfd():
    need_kvm()
    import os
    import nvmmpy
    m = nvmmpy.Machine("kvm")
    fd, rfd = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    try:
        if "irqfd" not in m.extensions:
            pytest.skip("no irqfd")
        with pytest.raises(nvmmpy.NvmmError, match="irqchip_create first"):
            m.irqfd(5, fd)
        m.irqchip_create()
        m.irqfd(5, fd, resample_fd=rfd)       # a level line: raised until the guest's EOI
        m.irqfd(5, fd, resample_fd=rfd, deassign=True)
        m.irqfd(0, fd)                        # an edge line: each write is a pulse
        os.eventfd_write(fd, 1)
        m.irqfd(0, fd, deassign=True)
    finally:
        m.destroy()
        os.close(fd)
        os.close(rfd)


def test_irqchip_must_come_before_the_vcpu():
    need_kvm()
    import nvmmpy
    m = nvmmpy.Machine("kvm")
    try:
        if "irqchip" not in m.extensions:
            pytest.skip("no in-kernel interrupt controller")
        m.vcpu_create(0)
        with pytest.raises(nvmmpy.NvmmError) as e:
            m.irqchip_create()
        assert e.value.errno == errno.EBUSY
    finally:
        m.destroy()


# --- real guests, eventfds on and off ---------------------------------------------------------------
@pytest.mark.parametrize("irq", [0, 1], ids=["poll", "irq"])
def test_rng_same_output_in_every_mode(irq):
    need_kvm()
    count = 40
    runs = {mode: run_guest("kvm", mode, "virtio-rng", f"count={count} bytes=64 irq={irq}") for mode in MODES}
    ref = runs["off"][1]
    assert f"rng: {count} requests, {64 * count} bytes\n" in ref
    for mode, (result, out, t, chosen, served, exited) in runs.items():
        assert chosen == mode
        assert result.reason == "exit" and result.exit_code == 0, out
        assert out == ref, mode
        assert t.bad_accesses == 0 and t.last_error == ""
        if mode == "off":
            assert exited >= count and not served
        else:   # every notification stayed in the kernel and was served by an I/O thread
            assert exited == 0 and served
    if irq:   # the in-kernel PIC takes the EOIs and the HLTs
        assert runs["irqchip"][0].exits["IO"] < runs["off"][0].exits["IO"] - count
        assert "HALTED" not in runs["irqchip"][0].exits


@pytest.mark.parametrize("irq", [0, 1], ids=["poll", "irq"])
def test_blk_same_disk_bytes_in_every_mode(tmp_path, irq):
    need_kvm()
    images, outputs = {}, {}
    for mode in MODES + ["unicorn"]:
        (tmp_path / mode).mkdir()
        disk = tmp_path / mode / "disk.img"     # the same name: the device's ID is made from it
        disk.write_bytes(bytes(64 << 10))
        driver, m = ("unicorn", "auto") if mode == "unicorn" else ("kvm", mode)
        result, out, t, chosen, _, _ = run_guest(driver, m, "virtio-blk",
                                              f"count=6 sector=2 seed=5 depth=2 irq={irq}", disk)
        assert chosen == ("off" if mode == "unicorn" else mode)     # unicorn: the NVMM path
        assert result.reason == "exit" and result.exit_code == 0, out
        assert t.bad_accesses == 0 and t.last_error == ""
        images[mode], outputs[mode] = disk.read_bytes(), out
    assert "blk: 6 sectors from 2 written, flushed, read back and verified (seed 5)" in outputs["off"]
    for mode in images:
        assert images[mode] == images["off"], mode
        assert outputs[mode] == outputs["off"], mode


def test_pit_ticks_through_the_in_kernel_pic():
    """The Python PIT raises IRQ 0 on the kernel's PIC from the timer thread; no HALTED exits."""
    need_kvm()
    from nvmmpy.vmm.loader import load
    from nvmmpy.vmm.vm import VirtualMachine
    console = bytearray()
    vm = VirtualMachine(memory=16 << 20, driver="kvm", guest_mode="cpl0", eventfd="irqchip")
    try:
        vm.add_legacy_devices(serial_output=console.extend)
        with open(guest_path("interrupts"), "rb") as f:
            load(vm, f.read(), "elf", "ticks=20")
        result = vm.run(timeout=60)
    finally:
        vm.close()
    assert result.reason == "exit" and result.exit_code == 0, console
    assert "ticks=20\n" in console.decode()
    assert "HALTED" not in result.exits and "STOPPED" not in result.exits


# --- the I/O threads alone (no guest, any OS with eventfd) -------------------------------------------
class _FakeMachine:
    def __init__(self):
        self.registered = []

    def ioeventfd(self, gpa, length, datamatch, fd, deassign=False):
        if deassign:
            self.registered.remove((gpa, length, datamatch, fd))
        else:
            self.registered.append((gpa, length, datamatch, fd))


class _SlowTransport:
    """notified() takes a while, so drain() has something to wait for."""
    class device:
        queue_sizes = (8, 8)

    def __init__(self):
        import threading
        self.calls = []
        self.lock = threading.Lock()

    def notified(self, index):
        import time
        time.sleep(0.02)
        with self.lock:
            self.calls.append(index)


def test_io_threads_register_each_queue_and_drain_before_a_run_ends():
    import os
    from nvmmpy.devices.virtio.constants import MMIO_QUEUE_NOTIFY
    from nvmmpy.vmm.iothread import IoThreads
    m, t = _FakeMachine(), _SlowTransport()
    io = IoThreads(m)
    io.add_virtio(0xD0000000, t, "dev")
    try:
        assert [(g, n, d) for g, n, d, _ in m.registered] == [(0xD0000000 + MMIO_QUEUE_NOTIFY, 4, 0),
                                                             (0xD0000000 + MMIO_QUEUE_NOTIFY, 4, 1)]
        io.drain()                                      # nothing signalled: nothing handled
        assert t.calls == []
        q0, q1 = io.notifiers
        for _ in range(3):                              # a guest's notifications (they may fold into one)
            os.eventfd_write(q1.fd, 1)
        os.eventfd_write(q0.fd, 1)
        io.drain()                                      # returns only once both queues were handled
        assert sorted(set(t.calls)) == [0, 1] and q0.served and q1.served
    finally:
        io.close()
    assert m.registered == [] and io.notifiers == []


def test_run_cli_offers_the_modes():
    """`nvmmpy run --eventfd` lists the modes vmm/iothread.py has, and a mode the driver lacks is
    one line (the CLI does not import the VMM to build its options: start-up time)."""
    from nvmmpy.cli.run import EVENTFD_MODES
    from nvmmpy.vmm.iothread import MODES
    assert sorted(EVENTFD_MODES) == sorted(MODES)
    p = subprocess.run([sys.executable, "-m", "nvmmpy", "run", "hello", "--accel", "unicorn", "--eventfd", "irqchip"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--eventfd" in p.stderr and "unicorn driver does not have" in p.stderr


@pytest.mark.parametrize("mode", ["ioeventfd", "irqchip"])
def test_run_cli_eventfd_modes_on_kvm(mode):
    need_kvm()
    p = subprocess.run([sys.executable, "-m", "nvmmpy", "run", "virtio-rng", "--accel", "kvm", "--eventfd", mode],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "exit (exit status 0)" in p.stderr, p.stderr[-2000:]
