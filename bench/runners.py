"""The things `nvmmpy bench` compares: nvmmpy on each driver, QEMU (TCG, KVM) and native code.

Every runner runs a workload's bundled guest at a size and returns how long it took and what
the guest printed; the suite checks the output before it keeps the time, so a figure always
comes from a run that did its work.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(Exception):
    """A run failed or printed the wrong thing: the message says which and shows the output's tail."""


@dataclass
class Run:
    seconds: float
    output: str
    exit_code: int
    exits: dict | None = None   # in-process runs: exits to the VMM by NVMM name


def _tail(text: str, n: int = 300) -> str:
    text = text.strip()
    return text[-n:] if text else "(no output)"


class NvmmpyRunner:
    """A bundled guest in this process's VirtualMachine on one driver (start-up: `nvmmpy run` as a
    child process, so the interpreter and imports are paid as a user pays them)."""
    kind = "nvmmpy"

    def __init__(self, driver: str, workdir: str, eventfd: str = "off"):
        self.driver = driver
        self.name = f"nvmmpy-{driver}"
        self.workdir = workdir
        self.eventfd = eventfd      # VirtualMachine(eventfd=...) of in-process runs
        self._disk = None

    def available(self):
        from nvmmpy.drivers import load
        from nvmmpy.errors import DriverUnavailable
        try:
            load(self.driver)
        except DriverUnavailable as e:
            return False, str(e)
        return True, ""

    def supports(self, w):
        return (True, "") if "nvmmpy" in w.runners else (False, "native only")

    def run(self, w, size: int, timeout: float) -> Run:
        if w.kind == "single":
            return self._spawn(w, size, timeout)
        return self.run_guest(w.guest, w.cmdline(size), timeout)

    def run_guest(self, guest: str, cmdline: str, timeout: float) -> Run:
        """One run of a bundled guest with the devices it needs; seconds = vm.run()'s wall time."""
        from nvmmpy.vmm.guests import GUESTS
        from nvmmpy.vmm.loader import load
        from nvmmpy.vmm.vm import VirtualMachine
        g = GUESTS[guest]
        vm = VirtualMachine(memory=64 << 20, driver=self.driver, guest_mode=g.mode, eventfd=self.eventfd)
        out = bytearray()
        try:
            vm.add_legacy_devices(serial_output=out.extend)
            for dev in self._devices(g.devices):
                vm.add_virtio_device(dev)
            with open(g.path, "rb") as f:
                load(vm, f.read(), cmdline=cmdline)
            r = vm.run(timeout=timeout)
        finally:
            vm.close()
        return Run(r.wall, out.decode(errors="replace"), r.exit_code if r.reason in ("exit", "reset") else -1,
                   r.exits)

    def _devices(self, needed):
        for kind in needed:
            if kind == "rng":
                from nvmmpy.devices.virtio.rng import VirtioRng
                yield VirtioRng()
            elif kind == "blk":
                from nvmmpy.devices.virtio.blk import VirtioBlk
                if self._disk is None:
                    self._disk = os.path.join(self.workdir, f"{self.name}-disk.img")
                    with open(self._disk, "wb") as f:
                        f.truncate(8 << 20)
                yield VirtioBlk(self._disk)
            elif kind == "sound":
                from nvmmpy.devices.virtio.sound.device import VirtioSound
                from nvmmpy.devices.virtio.sound.topology import Topology
                yield VirtioSound(Topology.parse("out=null"))
            elif kind == "console":
                from nvmmpy.devices.virtio.console import VirtioConsole
                yield VirtioConsole(output=lambda b: None)
            else:
                raise BenchError(f"no bench device for {kind!r}")

    def _spawn(self, w, size, timeout):
        argv = [sys.executable, "-m", "nvmmpy.cli", "run", w.guest, "--accel", self.driver, "--cmdline",
                w.cmdline(size), "--serial", "stdio"]
        t = time.perf_counter()
        try:
            p = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name}: `{' '.join(argv[2:])}` did not finish in {timeout:.0f} s") from None
        dt = time.perf_counter() - t
        return Run(dt, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace"), p.returncode)


class QemuRunner:
    """The same guest image under qemu-system-x86_64 (TCG or KVM), booted through a multiboot shim
    that builds nvmmpy's 64-bit entry (bench/qemu.py); time is the process's spawn to exit."""
    kind = "qemu"

    def __init__(self, accel: str):
        self.accel = accel
        self.name = f"qemu-{accel}"

    def available(self):
        from . import qemu
        if qemu.qemu_binary() is None:
            return False, "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
        if self.accel == "kvm":
            from nvmmpy.drivers.kvm.driver import probe
            ok, reason = probe()
            if not ok:
                return False, f"QEMU needs a usable /dev/kvm for -accel kvm: {reason}"
        return True, ""

    def supports(self, w):
        if "qemu" not in w.runners:
            return False, w.not_for_qemu or "native only"
        return True, ""

    def run(self, w, size: int, timeout: float) -> Run:
        from . import qemu
        from nvmmpy.vmm.guests import guest_path
        try:
            r = qemu.run_guest(guest_path(w.guest), w.cmdline(size), accel=self.accel, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - one line, whatever QEMU did
            raise BenchError(f"{self.name}: {e}") from None
        return Run(r.wall, r.output, -1 if r.exit_code is None else r.exit_code)


class NativeRunner:
    """The compute guest's kernels compiled for the host with the guest's code-generation flags."""
    kind = "native"
    name = "native"
    SOURCE = os.path.join(ROOT, "bench", "native", "compute.c")
    KERNEL_DIR = os.path.join(ROOT, "guests")

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._exe = None

    def available(self):
        if not os.path.exists(self.SOURCE) or not os.path.exists(os.path.join(self.KERNEL_DIR, "compute_kernel.h")):
            return False, "needs nvmmpy's source tree (bench/native, guests/compute_kernel.h)"
        if shutil.which("gcc") is None:
            return False, "gcc is not installed (apt-get install gcc)"
        try:
            self._build()
        except BenchError as e:
            return False, str(e)
        return True, ""

    def supports(self, w):
        return (True, "") if "native" in w.runners else (False, "not a native workload")

    def _build(self):
        if self._exe:
            return
        h = hashlib.sha256()
        for p in (self.SOURCE, os.path.join(self.KERNEL_DIR, "compute_kernel.h"), os.path.join(self.KERNEL_DIR, "build.py")):
            with open(p, "rb") as f:
                h.update(f.read())
        exe = os.path.join(self.workdir, f"compute-native-{h.hexdigest()[:12]}")
        p = subprocess.run(["gcc", *self._guest_cflags(), "-no-pie", "-I", self.KERNEL_DIR, "-o", exe, self.SOURCE],
                           capture_output=True, text=True)
        if p.returncode:
            raise BenchError(f"building the native compute baseline failed: {_tail(p.stderr)}")
        self._exe = exe

    def _guest_cflags(self) -> list:
        """The guests' own compiler flags (guests/build.py), so native code is generated as theirs is."""
        import importlib.util
        spec = importlib.util.spec_from_file_location("nvmmpy_guest_build", os.path.join(self.KERNEL_DIR, "build.py"))
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        return build.CFLAGS

    def run(self, w, size: int, timeout: float) -> Run:
        argv = [self._exe, *w.cmdline(size).split()]
        t = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
        dt = time.perf_counter() - t
        return Run(dt, p.stdout.decode(errors="replace"), p.returncode)


def all_runners(workdir: str | None = None, include=None):
    """Every runner `nvmmpy bench` knows, in table order; `include` narrows them by name."""
    workdir = workdir or tempfile.mkdtemp(prefix="nvmmpy-bench-")
    runners = [NvmmpyRunner("kvm", workdir), NvmmpyRunner("unicorn", workdir), QemuRunner("kvm"),
               QemuRunner("tcg"), NativeRunner(workdir)]
    if include is not None:
        runners = [r for r in runners if r.name in include]
    return runners


RUNNER_NAMES = ("nvmmpy-kvm", "nvmmpy-unicorn", "qemu-kvm", "qemu-tcg", "native")
