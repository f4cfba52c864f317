"""Every bundled guest through `nvmmpy run`, on kvm and on unicorn: output, exit status, exit counts.
Plus the ways a run ends badly: a triple fault, a timeout, Ctrl-C."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from asm import assemble
from harness import ROOT, need, reaped, run_nvmmpy, sigint_as_in_a_terminal
from nvmmpy.vmm.guests import GUESTS

DRIVERS = ["kvm", "unicorn"]
# small enough for the suite; the defaults run in bench/ and by hand
CMDLINE = {"exits": "count=2000", "compute": "n=200000 crc=65536 mat=40", "interrupts": "ticks=20"}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", sorted(GUESTS))
def test_bundled_guest(name, driver, tmp_path):
    need(driver)
    g = GUESTS[name]
    args = ["run", name, "--accel", driver, "--json"]
    if name in CMDLINE:
        args += ["--cmdline", CMDLINE[name]]
    proc = run_nvmmpy(*args, cwd=tmp_path, timeout=300)  # the sound guests' default topology writes ./nvmmpy-sound.wav
    d = json.loads(proc.stdout)
    console = proc.stderr
    assert proc.returncode == g.expect_exit == d["exit_code"], console
    assert d["reason"] == "exit" and d["driver"] == driver
    if name == "exits":
        assert "io=2000 mmio=4000" in console
        assert d["exits"]["IO"] >= 2000                   # port 0x80 writes (plus console output)
        assert d["exits"]["MEMORY"] >= 2000               # kvm and the emulator each exit per access
    elif name == "interrupts":
        assert "ticks=20" in console
        assert d["exits"].get("HALTED", 0) >= 10          # it sleeps between ticks
    elif name == "compute":
        assert "compute at CPL3" in console and "checksum=0x" in console
    else:
        for s in g.expect_output:
            assert s in console, (s, console)


@pytest.mark.parametrize("name", ["hello", "exits", "interrupts", "compute", "virtio-rng", "virtio-blk"])
def test_unicorn_scan_mode_runs_the_guest_as_hooks_mode_does(name, tmp_path):
    """`nvmmpy run` takes unicorn's hooks mode by default; --soft-exits scan (NVMM's precise exits)
    must give the same guest output and MMIO exits. Hooks mode reports the port accesses of one
    translation block as one exit (unicorn stops at the block's end), so it has no more IO exits."""
    need("unicorn")
    out = {}
    for mode in ("hooks", "scan"):
        args = ["run", name, "--accel", "unicorn", "--soft-exits", mode, "--json"]
        if name in CMDLINE:
            args += ["--cmdline", CMDLINE[name]]
        proc = run_nvmmpy(*args, cwd=tmp_path, timeout=300)
        d = json.loads(proc.stdout)
        assert proc.returncode == GUESTS[name].expect_exit == d["exit_code"], proc.stderr
        console = proc.stderr.split("\n" + name + ":")[0]
        out[mode] = (re.sub(r"scratch-\w+", "scratch-*", console), d["exits"].get("IO"), d["exits"].get("MEMORY"))
    (text_h, io_h, mem_h), (text_s, io_s, mem_s) = out["hooks"], out["scan"]
    assert text_h == text_s and mem_h == mem_s and (io_h or 0) <= (io_s or 0)


def test_scan_mode_refuses_a_linux_kernel(tmp_path):
    proc = run_nvmmpy("run", "--kernel", sys.executable, "--soft-exits", "scan", cwd=tmp_path)
    assert proc.returncode == 2 and "scan mode cannot run a Linux kernel" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compute_maps_its_heap_no_execute():
    """The compute guest marks its heap's 2 MiB pages NX (W^X, and unicorn's fast store path):
    after a run the identity map's entries over the heap have bit 63 set, those over the image not."""
    need("unicorn")
    from nvmmpy.vmm.cpu_modes import PD_ADDR
    from nvmmpy.vmm.loader import load
    from nvmmpy.vmm.vm import VirtualMachine
    vm = VirtualMachine(memory=16 << 20, driver="unicorn", guest_mode="cpl3")
    try:
        vm.add_legacy_devices(serial_output=lambda b: None)
        with open(GUESTS["compute"].path, "rb") as f:
            load(vm, f.read(), "elf", "n=3000000 crc=1000 mat=4", None)
        r = vm.run(timeout=120)
        assert r.exit_code == 0, r
        pde = [int.from_bytes(vm.ram.read(PD_ADDR + 8 * i, 8), "little") for i in range(4)]
        assert [bool(e >> 63) for e in pde] == [False, True, True, False]   # image | heap (3 MB) | beyond
    finally:
        vm.close()


def test_compute_default_checksum_on_kvm():
    """The default compute run (5e7 operations at CPL3) gives the catalogued checksum."""
    need("kvm")
    proc = run_nvmmpy("run", "compute", "--accel", "kvm", timeout=300)
    assert proc.returncode == 0
    for s in GUESTS["compute"].expect_output:
        assert s in proc.stdout


def test_default_run_is_hello(tmp_path):
    proc = run_nvmmpy("run", timeout=300)
    assert proc.returncode == 0 and "Hello from nvmmpy guest!" in proc.stdout
    assert "hello: exit" in proc.stderr


def test_guests_lists_the_catalogue():
    proc = run_nvmmpy("guests", "--json", timeout=300)
    assert set(json.loads(proc.stdout)) == set(GUESTS)


def _image(tmp_path, source, name):
    p = tmp_path / name
    p.write_bytes(assemble(source, bits=64, org=0x100000))
    return str(p)


@pytest.mark.parametrize("driver", DRIVERS)
def test_triple_fault_reports_registers_and_instruction(tmp_path, driver):
    need(driver)
    img = _image(tmp_path, "mov $0x1234, %rbx\n ud2", "crash.bin")
    proc = run_nvmmpy("run", img, "--format", "raw64", "--accel", driver, timeout=300)
    assert proc.returncode == 3
    assert "shutdown" in proc.stderr and "triple-faulted" in proc.stderr
    assert "ud2" in proc.stderr and "rbx=0x1234" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_timeout_stops_a_spinning_guest(tmp_path):
    img = _image(tmp_path, "1: jmp 1b", "spin.bin")
    t = time.monotonic()
    proc = run_nvmmpy("run", img, "--format", "raw64", "--accel", "unicorn", "--timeout", "0.5", timeout=300)
    assert proc.returncode == 124 and "timed out after 0.5 s" in proc.stderr
    assert time.monotonic() - t < 30


def test_ctrl_c_stops_cleanly(tmp_path):
    img = _image(tmp_path, "1: jmp 1b", "spin.bin")
    with reaped(subprocess.Popen([sys.executable, "-m", "nvmmpy.cli", "run", img, "--format", "raw64", "--accel",
                                  "unicorn"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=sigint_as_in_a_terminal)) as p:
        time.sleep(2.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
