"""A tiny VM for driver tests: RAM at 0, one vCPU, recording port and MMIO callbacks; and the
helpers every test file needs (skip a driver that cannot run here, run the `nvmmpy` command)."""
import contextlib
import os
import subprocess
import sys

import pytest

import nvmmpy
from nvmmpy import constants as nvmm

MMIO_BASE = 0x10000000  # 256 MiB: far above test RAM, so always unmapped
MMIO_SIZE = 0x1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sigint_as_in_a_terminal() -> None:
    """preexec_fn for a child a test will Ctrl-C: SIGINT at its default disposition, as under a
    terminal. A child inherits an ignored SIGINT (a suite started as a background job: `cmd &` in a
    script) and would then never see the test's SIGINT."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def reaped(proc):
    """`with reaped(subprocess.Popen(...)) as p:` the child is killed and waited for however the
    test ends (a failed assert must not leave a back-end or a QEMU running)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def kvm_usable():
    """(usable, reason) for /dev/kvm on this machine."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no read/write permission on /dev/kvm"
    return True, ""


def kvm_runs_kernel_code() -> bool:
    """True where /dev/kvm is usable and backed by VMX or SVM. kvm_pvm (this project's development
    machine) emulates CPL0 code one instruction at a time and routes SYSCALL through its own
    switcher, so tests of a whole kernel or of architectural SYSCALL are collected for kvm only
    where this holds; what kvm_pvm can do of them is tested separately."""
    if not kvm_usable()[0]:
        return False
    from nvmmpy.drivers.kvm.detect import kvm_backend
    return kvm_backend()[0] in ("vmx", "svm")


def random_wav(channels: int, rate: int, width: int, frames: int, seed: int = 1, fmt: int = 1):
    """(a WAV file's bytes, its sample data): random samples, so the last frame is checked too."""
    import random
    import struct
    data = random.Random(seed).randbytes(frames * channels * width)
    block = channels * width
    head = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, fmt, channels, rate,
                       rate * block, block, 8 * width, b"data", len(data))
    return head + data, data


def need(driver: str) -> None:
    """Skip the calling test unless `driver` can run here (kvm needs a usable /dev/kvm)."""
    if driver == "kvm" and not kvm_usable()[0]:
        pytest.skip(f"needs /dev/kvm: {kvm_usable()[1]}")


def run_nvmmpy(*args, timeout: float = 120, cwd=ROOT) -> subprocess.CompletedProcess:
    """`nvmmpy ARGS` in a child process, as a user runs it, output captured as text."""
    return subprocess.run([sys.executable, "-m", "nvmmpy.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


class TestVM:
    def __init__(self, driver: str = "kvm", ram_size: int = 2 << 20, **machine_options):
        """`machine_options` go to nvmmpy.Machine (check_mmio=, soft_exits=, ...)."""
        self.mach = nvmmpy.Machine(driver, **machine_options)
        self.mem = nvmmpy.HostMemory(ram_size)
        self.ram = self.mem.view
        self.mach.hva_map(self.mem.address, ram_size)
        self.mach.gpa_map(self.mem.address, 0, ram_size, nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)
        self.vcpu = self.mach.vcpu_create(0)
        self.out = {}        # port -> bytearray of everything written
        self.in_data = {}    # port -> bytearray consumed by IN
        self.mmio = bytearray(MMIO_SIZE)
        self.mmio_log = []   # (write, offset, size, value)
        self.vcpu.configure_callbacks(io=self._io, mem=self._mem)
        self.exits = {}

    def _io(self, io):
        if io.in_:
            src = self.in_data.setdefault(io.port, bytearray())
            chunk = bytes(src[:io.size]).ljust(io.size, b"\xff")
            del src[:io.size]
            io.data[:] = chunk
        else:
            self.out.setdefault(io.port, bytearray()).extend(io.data)

    def _mem(self, mem):
        off = mem.gpa - MMIO_BASE
        assert 0 <= off and off + mem.size <= MMIO_SIZE, f"MMIO outside the test window: {mem.gpa:#x}"
        if mem.write:
            self.mmio[off:off + mem.size] = mem.data
            self.mmio_log.append((True, off, mem.size, int.from_bytes(mem.data, "little")))
        else:
            mem.data[:] = self.mmio[off:off + mem.size]
            self.mmio_log.append((False, off, mem.size, int.from_bytes(self.mmio[off:off + mem.size], "little")))

    def load(self, code: bytes, at: int) -> None:
        self.ram[at:at + len(code)] = code

    def start_real_mode_loop(self, cs: int, ip: int, port: int = 0x51) -> None:
        """Start the vCPU in real mode at cs:ip (stack cs:7000) on a loop that enables interrupts
        and writes to `port` forever: a guest to inject interrupts into."""
        from asm import assemble
        from nvmmpy.vmm.cpu_modes import set_real_mode
        self.load(assemble(f"""
            sti
        1:  mov ${port:#x}, %dx
            out %al, (%dx)
            jmp 1b
        """, bits=16, org=ip), (cs << 4) + ip)
        set_real_mode(self.vcpu, cs, ip, sp=0x7000)

    def interrupt(self, vector: int, report_port: int):
        """At the guest loop's port exit: inject `vector`, run its handler (which reports on
        `report_port`) until the guest exits on another port, back in its loop; returns that exit."""
        self.mach.assist_io(self.vcpu)
        self.vcpu.inject(nvmm.VCPU_EVENT_INTR, vector)
        ex = self.run(until=(nvmm.VCPU_EXIT_IO,))
        while ex.io.port == report_port:
            self.mach.assist_io(self.vcpu)
            ex = self.run(until=(nvmm.VCPU_EXIT_IO,))
        return ex

    def run(self, until=(nvmm.VCPU_EXIT_HALTED,), max_exits: int = 100000):
        """Run, completing IO and MEMORY exits, until an exit in `until`; returns that exit."""
        vcpu, mach = self.vcpu, self.mach
        for _ in range(max_exits):
            ex = vcpu.run()
            self.exits[ex.reason] = self.exits.get(ex.reason, 0) + 1
            if ex.reason in until:
                return ex
            if ex.reason == nvmm.VCPU_EXIT_IO:
                mach.assist_io(vcpu)
            elif ex.reason == nvmm.VCPU_EXIT_MEMORY:
                mach.assist_mem(vcpu)
            elif ex.reason == nvmm.VCPU_EXIT_NONE:
                continue
            else:
                st = vcpu.getstate(nvmm.X64_STATE_GPRS)
                raise AssertionError(f"unexpected exit {ex!r} at rip={st.gprs[nvmm.X64_GPR_RIP]:#x}")
        raise AssertionError(f"no exit in {until} after {max_exits} exits")

    def reg(self, idx: int) -> int:
        return self.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs[idx]

    def close(self):
        self.mach.destroy()
        self.mem.close()


def bench_carries_section(monkeypatch, tmp_path, module, name: str, key: str, section: dict, shown) -> None:
    """`nvmmpy bench --quick --workloads NAME` runs only that section (its `measure` replaced by one
    returning `section`), puts it under `key` in the JSON report and prints `shown` (each string);
    a quick run that does not name it leaves it out, and --list names it."""
    import json
    from click.testing import CliRunner
    from nvmmpy.cli.bench import bench
    calls = []
    monkeypatch.setattr(module, "measure", lambda reps, quick, timeout, progress: calls.append((reps, quick)) or section)
    out = tmp_path / "r.json"
    r = CliRunner().invoke(bench, ["--quick", "--reps", "3", "--workloads", name, "--runners", "native",
                                   "--json", str(out), "--no-save-profile"])
    assert r.exit_code == 0, r.output
    assert calls == [(3, True)]
    report = json.loads(out.read_text())
    assert report["workloads"] == [] and report[key] == section
    for text in shown:
        assert text in r.output, r.output
    r = CliRunner().invoke(bench, ["--quick", "--reps", "1", "--workloads", "startup", "--runners", "native",
                                   "--json", str(out), "--no-save-profile"])
    assert r.exit_code == 0, r.output
    assert calls == [(3, True)] and key not in json.loads(out.read_text())
    assert name in CliRunner().invoke(bench, ["--list"]).output
