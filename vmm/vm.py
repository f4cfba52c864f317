"""VirtualMachine: RAM, buses, devices, one vCPU thread and the run loop, on any nvmmpy driver.

    vm = VirtualMachine(memory=64 << 20, driver="auto")
    vm.add_legacy_devices(serial_output=sys.stdout.buffer.write)
    vm.load_image(open("guest.elf", "rb").read())
    result = vm.run(timeout=10)
"""
import os
import threading
import time
from dataclasses import dataclass, field

import nvmmpy
from nvmmpy import constants as nvmm

from nvmmpy.devices.interfaces import GuestMemoryError
from .bus import Bus, Shifted
from .iothread import IoThreads, resolve_mode
from .memory import GuestRam

IF = nvmm.RFLAGS_IF
VIRTIO_MMIO_BASE = 0xD0000000                    # docs/guest-abi.md: one 0x200 window per device
VIRTIO_IRQS = (5, 6, 7, 9, 10, 11, 12, 13, 14, 15)  # ISA lines no built-in device uses


COMPILED_LOOP = "compiled loop"   # VirtualMachine.exit_loop_state when port/MMIO exits go through vcpu.run_loop


@dataclass
class RunResult:
    reason: str                 # "exit", "reset", "halted", "shutdown", "timeout", "interrupted", "error"
    exit_code: int              # what `nvmmpy run` exits with
    detail: str = ""
    wall: float = 0.0           # seconds from start to end of the run
    guest_time: float = 0.0     # seconds inside vcpu.run()
    exits: dict = field(default_factory=dict)
    driver: str = ""
    backend: str = ""
    exit_loop: str = ""         # COMPILED_LOOP, or why the NVMM path ran port/MMIO exits (VirtualMachine.exit_loop_state)
    registers: dict = field(default_factory=dict)
    instruction: str = ""

    @property
    def vmm_time(self) -> float:
        return max(0.0, self.wall - self.guest_time)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["vmm_time"] = self.vmm_time
        return d


class VirtualMachine:
    def __init__(self, memory: int = 64 << 20, driver: str = "auto", guest_mode: str | None = None,
                 check_mmio: bool = False, soft_exits: str = "hooks", eventfd: str = "off"):
        """eventfd: how virtio notifications and interrupts travel (vmm/iothread.py): "off" (every
        notification exits), "ioeventfd", "irqchip" or "auto" (the most the driver has); the mode
        chosen is self.eventfd. soft_exits (unicorn): "hooks" by default, unlike Machine's "scan":
        the VMM completes every I/O exit at once, so it loses nothing when unicorn's instruction
        hooks perform port I/O as it happens, and gains cheaper exits (no registered exit list, whose
        translations unicorn drops after every emu_start) and no memory hooks over RAM, which is
        what lets stores to a page the guest maps NX take unicorn's fast path
        (docs/unicorn-performance.md)."""
        self.machine = nvmmpy.Machine(driver, guest_mode=guest_mode, check_mmio=check_mmio, soft_exits=soft_exits)
        try:
            self.eventfd = resolve_mode(self.machine, eventfd)
            if self.eventfd == "irqchip":
                self.machine.irqchip_create()   # before the vCPU, as KVM requires
            self.ram = GuestRam(self.machine, memory)
        except BaseException:
            self.machine.destroy()
            raise
        self._io = IoThreads(self.machine) if self.eventfd != "off" else None
        self.ports = Bus("port I/O")
        self.mmio = Bus("MMIO")
        self.vcpu = self.machine.vcpu_create(0)
        self.vcpu.configure_callbacks(io=self._on_io, mem=self._on_mem)
        self.info_devices = []     # (type, irq, base, size) for the boot info block
        self.virtio = []           # (base, irq, transport) of each virtio device
        self.pic = None
        self.pit = None
        self.timers = []           # devices with next_deadline()/update(now): the PIT, the RTC
        self.trace = None          # callable(kind, text) for --trace
        self.use_exit_loop = True  # port/MMIO exits through the driver's compiled loop where it has one
        self._result = None
        self._stop_reason = None
        self._cond = threading.Condition()  # an RLock: stop() may run in a signal handler inside it
        self._running = False       # run() is in progress (guarded by _cond)
        self._pending_stop = None   # a stop() made while no run was in progress: the next run's result
        self._vcpu_thread = None
        self._run_caller = None     # the thread inside run()
        self._idle = threading.Event()  # set while no run() is in progress
        self._idle.set()
        self._in_guest = False
        self._irq_dirty = False
        self._hlt_waiting = False  # _halted() is waiting on _cond for an interrupt
        self._window = False
        self.unassigned = 0
        self._input_stream = None
        self._input_sink = None

    # --- devices ---------------------------------------------------------------------------
    def add_port_device(self, base: int, size: int, device, label: str = "", info_type: int | None = None,
                        irq: int | None = None) -> None:
        self.ports.add(base, size, device, label)
        if info_type is not None:
            self.info_devices.append((info_type, 0xFFFFFFFF if irq is None else irq, base, size))

    def add_mmio_device(self, base: int, size: int, device, label: str = "", info_type: int | None = None,
                        irq: int | None = None) -> None:
        if self.ram.overlaps(base, size):
            raise ValueError(f"MMIO device {label or device!r} at {base:#x}+{size:#x} overlaps guest RAM")
        self.mmio.add(base, size, device, label)
        if info_type is not None:
            self.info_devices.append((info_type, 0xFFFFFFFF if irq is None else irq, base, size))

    def add_virtio_device(self, device, label: str = ""):
        """Expose a virtio device on the MMIO bus with its own interrupt line (add_legacy_devices
        first); returns its transport. Devices get the next 0x200 window from 0xD0000000 and the
        next free IRQ, are listed in the boot info block and in virtio_cmdline()."""
        from nvmmpy.devices.virtio.constants import MMIO_WINDOW
        from nvmmpy.devices.virtio.mmio import VirtioMmio
        if self.pic is None:
            raise RuntimeError("add_legacy_devices() first: virtio devices interrupt through the PIC")
        n = len(self.virtio)
        if n >= len(VIRTIO_IRQS):
            raise ValueError(f"at most {len(VIRTIO_IRQS)} virtio devices (one interrupt line each)")
        base, irq = VIRTIO_MMIO_BASE + n * MMIO_WINDOW, VIRTIO_IRQS[n]
        transport = VirtioMmio(device, self.ram, self.pic.irq_line(irq))
        self.add_mmio_device(base, MMIO_WINDOW, transport, label or f"{device.name}{n}", 16, irq=irq)
        self.virtio.append((base, irq, transport))
        if self._io is not None:
            self._io.add_virtio(base, transport, label or f"{device.name}{n}")
        return transport

    def virtio_cmdline(self) -> str:
        """The Linux `virtio_mmio.device=` parameters that describe the virtio devices."""
        from nvmmpy.devices.virtio.constants import MMIO_WINDOW
        return " ".join(f"virtio_mmio.device={MMIO_WINDOW:#x}@{base:#x}:{irq}" for base, irq, _ in self.virtio)

    def irq_line(self, n: int):
        """The interrupt line `n` of the PIC (add_legacy_devices first)."""
        return self.pic.irq_line(n)

    def add_legacy_devices(self, serial_output=None, serial_input=None) -> None:
        """COM1, debug-exit, i8042, PIT, PIC pair and the scratch MMIO page of docs/guest-abi.md."""
        from nvmmpy.devices.legacy.debug_exit import DebugExit
        from nvmmpy.devices.legacy.i8042 import I8042
        from nvmmpy.devices.legacy.pic8259 import Pic8259Pair
        from nvmmpy.devices.legacy.pit8254 import Pit8254
        from nvmmpy.devices.legacy.scratch import ScratchMmio
        from nvmmpy.devices.legacy.uart16550 import Uart16550
        if self.eventfd == "irqchip":
            from .kernel_pic import KernelPic
            self.pic = KernelPic(self.machine)   # its ports are the kernel's; listed for the boot info only
            self.info_devices.append((5, 0xFFFFFFFF, 0x20, 2))
        else:
            self.pic = Pic8259Pair(on_change=self._irq_changed)
            self.add_port_device(0x20, 2, self.pic.master_ports, "pic-master", 5)
            self.add_port_device(0xA0, 2, self.pic.slave_ports, "pic-slave")
            self.add_port_device(0x4D0, 2, self.pic.elcr_ports, "pic-elcr")
        self.pit = Pit8254(self.pic.irq_line(0))
        self.timers.append(self.pit)
        self.add_port_device(0x40, 4, self.pit, "pit", 4, irq=0)
        self.add_port_device(0x61, 1, self.pit.port61, "pit-port61")
        self.uart = Uart16550(self.pic.irq_line(4), output=serial_output)
        self.add_port_device(0x3F8, 8, self.uart, "com1", 1, irq=4)
        self.add_port_device(0x501, 2, DebugExit(self._debug_exit), "debug-exit", 2)
        kbc = I8042(self._reset)
        self.add_port_device(0x60, 1, kbc, "i8042-data", 3, irq=1)
        self.add_port_device(0x64, 1, Shifted(kbc, 4), "i8042-status")
        self.scratch = ScratchMmio()
        self.add_mmio_device(0xC0000000, 0x1000, self.scratch, "scratch", 6)
        if serial_input is not None:
            self.uart.feed(serial_input)

    def add_platform_devices(self) -> None:
        """What a Linux guest needs beside the legacy set: the CMOS RTC (ports 0x70-0x71, IRQ 8) and
        the ACPI PM registers the FADT names (vmm/acpi.py), whose S5 and reset end the run."""
        from nvmmpy.devices.legacy.acpi_pm import SIZE, AcpiPm
        from nvmmpy.devices.legacy.rtc_cmos import RtcCmos
        from .acpi import MachineDescription, RESET_VALUE
        if self.pic is None:
            raise RuntimeError("add_legacy_devices() first: the RTC interrupts through the PIC")
        self.rtc = RtcCmos(self.pic.irq_line(8))
        self.add_port_device(0x70, 2, self.rtc, "rtc")
        self.timers.append(self.rtc)
        pm = AcpiPm(on_sleep=self._acpi_sleep, on_reset=lambda: self._reset("the ACPI reset register"),
                    reset_value=RESET_VALUE)
        self.add_port_device(MachineDescription.pm_base, SIZE, pm, "acpi-pm")

    def _acpi_sleep(self, slp_typ: int) -> None:
        from .acpi import SLP_TYP_S5
        if slp_typ == SLP_TYP_S5:
            self._finish("poweroff", 0, "the guest powered off (ACPI S5)")

    def attach_serial_input(self, stream, sink=None) -> None:
        """Feed COM1 (or `sink`, e.g. a virtio console's feed) from a binary stream (stdin, a file)
        on a thread, as fast as the guest reads. `sink(bytes)` returns how many bytes it took."""
        self._input_stream = stream
        self._input_sink = sink

    def _input_pump(self, stream) -> None:
        feed = self._input_sink or self.uart.feed
        fd = stream.fileno() if hasattr(stream, "fileno") else None
        while self._result is None:
            try:
                chunk = os.read(fd, 4096) if fd is not None else stream.read(4096)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            while chunk and self._result is None:
                n = feed(chunk)
                chunk = chunk[n:]
                if chunk:
                    time.sleep(0.001)  # the guest has not read yet: the UART's input is bounded

    def _debug_exit(self, code: int) -> None:
        self._finish("exit", code, f"guest wrote {code} to the debug-exit port")

    def _reset(self, how: str = "the i8042") -> None:
        self._finish("reset", 0, f"guest reset the machine through {how}")

    # --- the bus callbacks the assists call ------------------------------------------------------
    def _on_io(self, io):
        if not self.ports.access(io.port, io.in_, io.data):
            self.unassigned += 1
        if self.trace:
            self.trace("io", f"{'in ' if io.in_ else 'out'} port {io.port:#06x} size {io.size} "
                             f"{'->' if io.in_ else '<-'} {bytes(io.data).hex()}  [{self.ports.label(io.port)}]")

    def _on_mem(self, mem):
        if not self.mmio.access(mem.gpa, not mem.write, mem.data):
            self.unassigned += 1
        if self.trace:
            self.trace("mmio", f"{'write' if mem.write else 'read '} {mem.gpa:#x} size {mem.size} "
                               f"{'<-' if mem.write else '->'} {bytes(mem.data).hex()}  [{self.mmio.label(mem.gpa)}]"
                               f"  {self._decode_at_rip()}")

    def _decode_at_rip(self) -> str:
        from .inspect import instruction_at_rip
        finder = getattr(self.vcpu, "exit_instruction_rip", None)  # kvm: RIP may be past a write already
        rip = finder() if finder is not None else None
        return instruction_at_rip(self.machine, self.vcpu, rip)

    # --- interrupts --------------------------------------------------------------------------
    def _irq_changed(self) -> None:
        self._irq_dirty = True
        if self._hlt_waiting:  # only a halted vCPU needs waking (a needless notify costs a GIL hand-off)
            with self._cond:
                self._cond.notify_all()
        if self._in_guest:
            self.vcpu.stop()

    def _deliver_interrupts(self, ex) -> None:
        """If the PIC has an interrupt for the CPU: inject it when the guest can take it, else ask
        for an interrupt window (NVMM's way; the same on every driver)."""
        self._irq_dirty = False
        pic = self.pic
        if pic is None or self._window or not pic.pending():
            return
        self._irq_dirty = True  # until it is injected
        es = ex.exitstate
        if es.rflags & IF and not es.int_shadow and not es.evt_pending:
            self.vcpu.inject(nvmm.VCPU_EVENT_INTR, pic.acknowledge())
            self._irq_dirty = False
        else:
            st = self.vcpu.getstate(nvmm.X64_STATE_INTR)
            st.intr.int_window_exiting = 1
            self.vcpu.setstate(nvmm.X64_STATE_INTR)
            self._window = True

    def _next_deadline(self):
        """The earliest moment a timer device (PIT, RTC) has an interrupt due, or None."""
        due = [d for d in (t.next_deadline() for t in self.timers) if d is not None]
        return min(due) if due else None

    def _update_timers(self, now=None) -> None:
        for t in self.timers:
            t.update(now)

    def _ticker(self) -> None:
        """Kick the vCPU out of the guest when a timer's next interrupt is due."""
        while self._result is None:
            deadline = self._next_deadline()
            now = time.monotonic()
            if deadline is None or deadline > now:
                with self._cond:
                    self._cond.wait(0.05 if deadline is None else min(0.05, deadline - now))
                continue
            self._update_timers(now)
            if self._in_guest and self.eventfd != "irqchip":  # the in-kernel PIC wakes the vCPU itself
                self.vcpu.stop()

    # --- running --------------------------------------------------------------------------------
    def _finish(self, reason: str, code: int, detail: str = "") -> None:
        with self._cond:  # the first reason wins
            if self._result is None:
                self._result = RunResult(reason, code, detail)
            self._cond.notify_all()
        self.vcpu.stop()

    def stop(self, reason: str = "interrupted") -> None:
        """Stop the run from any thread or a signal handler (Ctrl-C, a timeout, a library user).
        Made while no run is in progress, it is the next run()'s result, as nvmm_vcpu_stop is."""
        code, detail = 130 if reason == "interrupted" else 124, f"stopped: {reason}"
        with self._cond:
            if not self._running:
                self._pending_stop = RunResult(reason, code, detail)
                return
        self._finish(reason, code, detail)

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the guest on a vCPU thread until it exits, resets, faults, times out or is stopped.
        Returns only once the vCPU thread has left the guest and been joined, so the account
        includes the last run and close() can free what the vCPU uses."""
        exits = {}
        guest = [0.0]
        done = threading.Event()
        th = threading.Thread(target=self._vcpu_main, args=(exits, guest, done), name="nvmmpy-vcpu0", daemon=True)
        with self._cond:  # in this order, a stop() from a signal handler anywhere in here is kept
            self._result = None
            self._running = True
            self._idle.clear()
            pending, self._pending_stop = self._pending_stop, None
            if pending is not None and self._result is None:
                self._result = pending
            self._vcpu_thread = th
            self._run_caller = threading.get_ident()
        t0 = time.monotonic()
        ticker = None
        try:
            ticker = threading.Thread(target=self._ticker, name="nvmmpy-timer", daemon=True) if self.timers else None
            th.start()
            if ticker:
                ticker.start()
            if self._input_stream is not None:
                threading.Thread(target=self._input_pump, args=(self._input_stream,), name="nvmmpy-serial-in",
                                 daemon=True).start()
            self._wait_vcpu(th, done, t0, timeout)
        finally:
            try:
                if th.ident is not None:
                    if not done.is_set():  # leaving on an exception: the vCPU must still stop
                        self.stop("interrupted")
                    self._wait_vcpu(th, done, t0, None)
                if self._result is None:
                    self._finish("error", 1, "the vCPU thread ended without a result")
                if ticker is not None and ticker.ident is not None:
                    ticker.join()  # it ends at once: _result is set and _finish woke it
                if self._io is not None:
                    self._io.drain()   # every notification the guest made is handled, as without eventfds
            finally:
                with self._cond:
                    self._running = False
                    self._vcpu_thread = None
                self._idle.set()
        r = self._result
        r.wall = time.monotonic() - t0
        r.guest_time = guest[0]
        r.exits = {nvmm.EXIT_NAMES.get(k, hex(k)): v for k, v in exits.items()}
        r.driver = self.machine.driver_name
        r.exit_loop = self.exit_loop_state
        r.backend = self.machine.capability.backend
        if r.reason in ("shutdown", "error") and not r.registers:
            from .inspect import register_dump
            r.registers, r.instruction = register_dump(self.machine, self.vcpu)
        return r

    def _wait_vcpu(self, th, done, t0: float, timeout) -> None:
        """Wait until the vCPU thread has finished (not Thread.join alone: on Python < 3.12 a
        KeyboardInterrupt inside join(timeout) can mark a thread that is still running as
        stopped, CPython issue 90882). Ctrl-C here stops the run and keeps waiting."""
        while True:
            try:
                if done.wait(0.1):
                    th.join()
                    return
                if timeout is not None and time.monotonic() - t0 > timeout and self._result is None:
                    self._finish("timeout", 124, f"timed out after {timeout:g} s")
            except KeyboardInterrupt:
                self.stop("interrupted")

    def _vcpu_main(self, exits: dict, guest: list, done) -> None:
        try:
            self._loop(exits, guest)
        finally:
            self._in_guest = False
            done.set()

    def _loop(self, exits: dict, guest: list) -> None:
        vcpu = self.vcpu
        try:
            if self.exit_loop_state != COMPILED_LOOP:
                self._loop_python(exits, guest)
                return
            io0, mmio0, ns0 = vcpu.exit_loop_account()
            try:
                self._loop_compiled(exits)
            finally:
                io, mmio, ns = vcpu.exit_loop_account()
                for r, n in ((nvmm.VCPU_EXIT_IO, io - io0), (nvmm.VCPU_EXIT_MEMORY, mmio - mmio0)):
                    if n:
                        exits[r] = exits.get(r, 0) + n
                guest[0] += (ns - ns0) / 1e9
        except GuestMemoryError as e:
            self._finish("error", 3, f"a device was handed memory outside guest RAM: {e}")
        except nvmmpy.NvmmError as e:
            self._finish("error", 3, str(e.strerror or e))

    @property
    def exit_loop_state(self) -> str:
        """COMPILED_LOOP when this run can use the driver's compiled exit loop (vcpu.run_loop),
        else why port and MMIO exits take the NVMM path (run(), assist_io/assist_mem)."""
        if getattr(self.vcpu, "run_loop", None) is None:
            return f"NVMM path (the {self.machine.driver_name} driver has no compiled exit loop)"
        if not self.use_exit_loop:
            return "NVMM path (use_exit_loop is off)"
        if self.trace:
            return "NVMM path (--trace sees every exit)"
        why = self.vcpu.exit_loop_unavailable
        return f"NVMM path ({why})" if why else COMPILED_LOOP

    def _exit_loop_io(self, port: int, is_in: int, data) -> bool:
        """A port exit from the compiled loop; true: return to _loop_compiled (an interrupt may be
        waiting). _in_guest as in _loop_python: a device that raises a line here must not stop
        its own vCPU. A handler that ends the run returns here too, so no KVM_RUN follows."""
        self._in_guest = False
        if not self.ports.access(port, is_in, data):
            self.unassigned += 1
        self._in_guest = True
        return self._irq_dirty or self._result is not None

    def _exit_loop_mem(self, gpa: int, is_write: int, data) -> bool:
        self._in_guest = False
        if not self.mmio.access(gpa, not is_write, data):
            self.unassigned += 1
        self._in_guest = True
        return self._irq_dirty or self._result is not None

    def _loop_compiled(self, exits: dict) -> None:
        """_loop_python with port and MMIO exits handled inside vcpu.run_loop; the other exits
        (and string I/O) come back here. The exits and guest time the compiled loop handled are
        counted by it (see _loop)."""
        run_loop, on_io, on_mem = self.vcpu.run_loop, self._exit_loop_io, self._exit_loop_mem
        dispatch = self._dispatch
        while self._result is None:
            self._in_guest = True
            ex = run_loop(on_io, on_mem)
            self._in_guest = False
            if ex is not None:
                r = ex.reason
                exits[r] = exits.get(r, 0) + 1
                dispatch(ex, r)
            self._in_guest = True
            if self._irq_dirty:
                self._deliver_interrupts(self.vcpu.exit)

    def _loop_python(self, exits: dict, guest: list) -> None:
        """Every exit through run() and the assists (NVMM's way; every driver has it)."""
        run = self.vcpu.run
        clock = time.perf_counter
        dispatch = self._dispatch
        trace = self.trace
        while self._result is None:
            self._in_guest = True
            t = clock()
            ex = run()
            guest[0] += clock() - t
            self._in_guest = False
            r = ex.reason
            exits[r] = exits.get(r, 0) + 1
            if trace:
                trace("exits", repr(ex))
            dispatch(ex, r)
            # From here an interrupt raised on another thread (timer, I/O thread) stops the next
            # run; one raised before is seen below: none waits for the guest's next exit.
            self._in_guest = True
            if self._irq_dirty:  # the PIC said an interrupt may be waiting (or a window opened)
                self._deliver_interrupts(ex)

    def _dispatch(self, ex, r: int) -> None:
        """One exit back from the driver, the same for both loops."""
        if r == nvmm.VCPU_EXIT_IO:
            self.vcpu.assist_io()
        elif r == nvmm.VCPU_EXIT_MEMORY:
            self.vcpu.assist_mem()
        elif r == nvmm.VCPU_EXIT_HALTED:
            self._halted(ex)
        elif r == nvmm.VCPU_EXIT_INT_READY:
            self._window = False
            self._irq_dirty = True
        elif r in (nvmm.VCPU_EXIT_RDMSR, nvmm.VCPU_EXIT_WRMSR):
            self._unknown_msr(ex)
        elif r == nvmm.VCPU_EXIT_SHUTDOWN:
            self._finish("shutdown", 3, "the guest triple-faulted (shutdown)")
        elif r == nvmm.VCPU_EXIT_INVALID:
            self._finish("error", 3, f"the driver could not run the guest: {ex.inv.detail or hex(ex.inv.hwcode)}")
        elif r not in (nvmm.VCPU_EXIT_NONE, nvmm.VCPU_EXIT_STOPPED):
            self._finish("error", 3, f"unhandled exit {ex!r}")

    def _halted(self, ex) -> None:
        """HLT: wait for an interrupt the guest can take, a timer tick, or the end of the run."""
        while self._result is None:
            self._update_timers()
            if self.pic is not None and self.pic.pending():
                if ex.exitstate.rflags & IF:
                    self._irq_dirty = True
                    return  # the loop injects it
                self._finish("halted", 1, "the guest halted with interrupts disabled")
                return
            if self.pic is None and not ex.exitstate.rflags & IF:
                self._finish("halted", 1, "the guest halted with interrupts disabled")
                return
            deadline = self._next_deadline()
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            with self._cond:
                self._hlt_waiting = True
                if not self._irq_dirty:
                    self._cond.wait(wait)
                self._hlt_waiting = False

    def _unknown_msr(self, ex) -> None:
        """An MSR no driver handles: reads give 0 and writes are ignored, as QEMU does."""
        st = self.vcpu.getstate(nvmm.X64_STATE_GPRS)
        if ex.reason == nvmm.VCPU_EXIT_RDMSR:
            st.gprs[nvmm.X64_GPR_RAX] = 0
            st.gprs[nvmm.X64_GPR_RDX] = 0
            st.gprs[nvmm.X64_GPR_RIP] = ex.rdmsr.npc
        else:
            st.gprs[nvmm.X64_GPR_RIP] = ex.wrmsr.npc
        self.vcpu.setstate(nvmm.X64_STATE_GPRS)

    # --- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the VM. A run in progress on another thread is stopped and waited for first: the
        vCPU thread must have left the guest before its engine and RAM go away."""
        if not self._idle.is_set():
            if threading.current_thread() is self._vcpu_thread or threading.get_ident() == self._run_caller:
                raise RuntimeError("VirtualMachine.close() inside its own run(): call stop(), and close() after run()")
            self.stop("closed")
            while not self._idle.wait(0.1):
                pass
        if self._io is not None:
            self._io.close()   # the I/O threads finish their work before the devices and RAM go
        for _, _, transport in self.virtio:
            close = getattr(transport.device, "close", None)
            if close is not None:
                close()
        self.machine.destroy()
        self.ram.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
