"""The kvm driver's compiled exit loop (nvmmpy/drivers/kvm/exit_loop.c) and its pure-Python
fallback: the same guests give the same results and exits both ways; what the loop does not
handle comes back as the NVMM path's exits; a build that cannot happen says why."""
import errno
import os
import re
import subprocess
import sys
import threading

import pytest

import nvmmpy

from asm import assemble
import harness
from harness import ROOT, need
from nvmmpy import constants as nvmm
from nvmmpy.drivers.kvm import exit_loop
from nvmmpy.vmm.cpu_modes import set_real_mode

CODE = 0x1000
MMIO_SEG = 0x9000          # 0x90000: above the 512 KiB of RAM below, so MMIO
GUEST = assemble("""
    mov $0x51, %dx
    mov $0x12, %al
    out %al, (%dx)              # port exit: out 0x51 <- 0x12
    in (%dx), %al               # port exit: in 0x51 -> the handler's 0x34
    mov %al, %bl
    mov $0x9000, %ax
    mov %ax, %ds
    movw $0xbeef, (0x10)        # MMIO write of 2 bytes at 0x90010
    mov (0x20), %cx             # MMIO read of 2 bytes at 0x90020 -> 0x5678
    xor %ax, %ax
    mov %ax, %ds
    mov $0x1100, %si
    mov $3, %cx
    mov $0x52, %dx
    rep outsb                   # string I/O: one exit per byte (kvm_pvm), or one for assist_io
    mov $0x5678, %cx
    hlt
""", bits=16, org=CODE)


@pytest.fixture
def vm():
    need("kvm")
    why = exit_loop.unavailable()
    if why:
        pytest.skip(f"no compiled exit loop here: {why}")
    t = harness.TestVM("kvm", ram_size=512 << 10)
    t.load(GUEST, CODE)
    t.load(b"abc", 0x1100)
    set_real_mode(t.vcpu, 0, CODE, sp=0x7000)
    yield t
    t.close()


class Handlers:
    """on_io/on_mem for run_loop that record what they get and answer reads."""

    def __init__(self, yield_on=(), raise_on=()):
        self.seen = []
        self.yield_on, self.raise_on = yield_on, raise_on

    def on_io(self, port, is_in, data):
        self.seen.append(("io", port, bool(is_in), None if is_in else bytes(data)))
        if is_in:
            data[:] = (0x34).to_bytes(len(data), "little")
        return self._after()

    def on_mem(self, gpa, is_write, data):
        self.seen.append(("mem", gpa, bool(is_write), bytes(data) if is_write else None))
        if not is_write:
            data[:] = (0x5678).to_bytes(len(data), "little")
        return self._after()

    def _after(self):
        n = len(self.seen)
        if n in self.raise_on:
            raise ValueError(f"handler failed at access {n}")
        return n in self.yield_on


def test_port_and_mmio_exits_reach_the_handlers_and_the_rest_comes_back_as_exits(vm):
    h = Handlers()
    io0, mmio0, _ = vm.vcpu.exit_loop_account()
    ex = vm.vcpu.run_loop(h.on_io, h.on_mem)
    while ex.reason == nvmm.VCPU_EXIT_IO:           # a string the loop left to the NVMM path
        assert ex.io.port == 0x52 and ex.io.count > 1 and ex.io.str
        vm.mach.assist_io(vm.vcpu)
        ex = vm.vcpu.run_loop(h.on_io, h.on_mem)
    assert ex.reason == nvmm.VCPU_EXIT_HALTED       # HLT is not the loop's either
    assert h.seen[:4] == [("io", 0x51, False, b"\x12"), ("io", 0x51, True, None),
                          ("mem", 0x90010, True, b"\xef\xbe"), ("mem", 0x90020, False, None)]
    string = b"".join(data for _, port, _, data in h.seen[4:] if port == 0x52)
    assert string + bytes(vm.out.get(0x52, b"")) == b"abc"
    assert vm.reg(nvmm.X64_GPR_RBX) & 0xFF == 0x34      # the IN got the handler's byte
    assert vm.reg(nvmm.X64_GPR_RCX) & 0xFFFF == 0x5678
    io, mmio, guest_ns = vm.vcpu.exit_loop_account()
    assert (io - io0, mmio - mmio0) == (2 + len(string), 2) and guest_ns > 0


def test_a_true_handler_result_returns_none_after_that_exit_and_the_next_call_goes_on(vm):
    h = Handlers(yield_on=(1, 3))
    assert vm.vcpu.run_loop(h.on_io, h.on_mem) is None
    assert [s[:2] for s in h.seen] == [("io", 0x51)]
    assert vm.vcpu.run_loop(h.on_io, h.on_mem) is None
    assert [s[:3] for s in h.seen] == [("io", 0x51, False), ("io", 0x51, True), ("mem", 0x90010, True)]
    ex = vm.vcpu.run_loop(h.on_io, h.on_mem)       # no more yields: on to the end
    while ex.reason == nvmm.VCPU_EXIT_IO:
        vm.mach.assist_io(vm.vcpu)
        ex = vm.vcpu.run_loop(h.on_io, h.on_mem)
    assert ex.reason == nvmm.VCPU_EXIT_HALTED and h.seen[3][:2] == ("mem", 0x90020)


def test_a_handler_exception_is_raised_after_its_exit_is_complete(vm):
    h = Handlers(raise_on=(2,))
    with pytest.raises(ValueError, match="access 2"):
        vm.vcpu.run_loop(h.on_io, h.on_mem)
    assert len(h.seen) == 2
    h.raise_on = ()
    ex = vm.vcpu.run_loop(h.on_io, h.on_mem)      # goes on after the IN, which completes with 0x34
    while ex.reason == nvmm.VCPU_EXIT_IO:
        vm.mach.assist_io(vm.vcpu)
        ex = vm.vcpu.run_loop(h.on_io, h.on_mem)
    assert ex.reason == nvmm.VCPU_EXIT_HALTED
    assert h.seen[2][:2] == ("mem", 0x90010)
    assert vm.reg(nvmm.X64_GPR_RBX) & 0xFF == 0x34


def test_stop_from_another_thread_ends_a_loop_that_never_yields():
    need("kvm")
    if exit_loop.unavailable():
        pytest.skip(f"no compiled exit loop here: {exit_loop.unavailable()}")
    t = harness.TestVM("kvm", ram_size=512 << 10)
    try:
        t.start_real_mode_loop(0, CODE)            # out to 0x51 forever
        count = [0]
        started = threading.Event()

        def on_io(port, is_in, data):
            count[0] += 1
            started.set()
            return False

        stopper = threading.Thread(target=lambda: (started.wait(10), t.vcpu.stop()))
        stopper.start()
        ex = t.vcpu.run_loop(on_io, on_io)
        stopper.join()
        assert ex.reason == nvmm.VCPU_EXIT_STOPPED and count[0] >= 1
    finally:
        t.close()


def test_run_loop_after_destroy_is_enoent_like_every_call():
    need("kvm")
    t = harness.TestVM("kvm", ram_size=512 << 10)
    vcpu = t.vcpu
    t.close()
    with pytest.raises(nvmmpy.NvmmError) as e:
        vcpu.run_loop(lambda *a: True, lambda *a: True)
    assert e.value.errno == errno.ENOENT


def test_a_handler_that_destroys_the_machine_is_refused_and_it_stays_usable(vm):
    def on_io(port, is_in, data):
        vm.mach.destroy()

    with pytest.raises(nvmmpy.NvmmError) as e:
        vm.vcpu.run_loop(on_io, on_io)
    assert e.value.errno == errno.EDEADLK and "after run_loop has returned" in str(e.value)
    h = Handlers()
    ex = vm.vcpu.run_loop(h.on_io, h.on_mem)      # the vCPU is intact and goes on after that OUT
    assert h.seen[0] == ("io", 0x51, True, None) and ex is not None
    vm.mach.destroy()                             # and can be destroyed once the loop has returned
    assert not vm.mach.vcpus


@pytest.mark.parametrize("nested", ["run", "run_loop"])
def test_a_handler_that_runs_its_own_vcpu_is_refused_not_left_waiting(vm, nested):
    def on_io(port, is_in, data):
        if nested == "run":
            vm.vcpu.run()
        else:
            vm.vcpu.run_loop(on_io, on_io)

    with pytest.raises(nvmmpy.NvmmError) as e:
        vm.vcpu.run_loop(on_io, on_io)
    assert e.value.errno == errno.EDEADLK
    h = Handlers()
    assert vm.vcpu.run_loop(h.on_io, h.on_mem) is not None and h.seen[0][:2] == ("io", 0x51)


def _run(guest: str, cmdline: str, mode: str, tmp_path=None, **env):
    e = dict(os.environ, NVMMPY_KVM_EXIT_LOOP=mode, **env)
    p = subprocess.run([sys.executable, "-m", "nvmmpy", "run", guest, "--accel", "kvm", "--cmdline", cmdline,
                        "--stats"], env=e, capture_output=True, text=True, timeout=300, cwd=ROOT)
    return p


def _exit_table(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    return rows


@pytest.mark.parametrize("guest,cmdline", [
    ("exits", "io=300 mmio=200"),
    ("virtio-rng", "count=20 bytes=64 irq=1"),
    ("virtio-blk", "count=8 sector=0 seed=1 depth=1 irq=1"),
])
def test_the_same_guest_gives_the_same_output_and_exits_on_both_paths(guest, cmdline):
    """Interrupt-driven virtio guests make the compiled loop yield for every interrupt."""
    need("kvm")
    if exit_loop.unavailable():
        pytest.skip(f"no compiled exit loop here: {exit_loop.unavailable()}")
    compiled, python = _run(guest, cmdline, "compiled"), _run(guest, cmdline, "python")
    for p in (compiled, python):
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "port and MMIO exits: compiled loop" in compiled.stdout + compiled.stderr
    assert "port and MMIO exits: NVMM path (NVMMPY_KVM_EXIT_LOOP=python)" in python.stdout + python.stderr
    guest_output = lambda p: re.sub(r"scratch-\w+", "scratch-*", p.stdout.split("\n" + guest + ":")[0])  # noqa: E731
    assert guest_output(compiled) == guest_output(python)
    a, b = _exit_table(compiled.stdout + compiled.stderr), _exit_table(python.stdout + python.stderr)
    assert a["IO"] == b["IO"] and a["MEMORY"] == b["MEMORY"], (a, b)


def test_without_a_compiler_the_run_says_why_and_takes_the_nvmm_path(tmp_path):
    need("kvm")
    p = _run("exits", "io=20 mmio=20", "compiled", NVMMPY_CACHE=str(tmp_path), CC="no-such-compiler-here")
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert "io=20 mmio=40" in out
    assert "port and MMIO exits: NVMM path (cannot build exit_loop.c: no C compiler (no-such-compiler-here" in out


def test_without_python_headers_the_build_says_which_package(tmp_path, monkeypatch):
    monkeypatch.setenv("NVMMPY_CACHE", str(tmp_path))
    monkeypatch.setattr(exit_loop.sysconfig, "get_paths", lambda: {"include": str(tmp_path / "no-include")})
    with pytest.raises(exit_loop.native.BuildError, match="python3-dev"):
        exit_loop._build()
