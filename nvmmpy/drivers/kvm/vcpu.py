"""KvmVCpu: NVMM vCPU semantics over a KVM vCPU fd and its kvm_run area.

The run loop reads kvm_run in place (a cffi view of the mmap) and fills the vCPU's one reusable
Exit; GPRS live in kvm_run's sync-regs area, so reading them after an exit and committing them
before the next run costs no system call, like NVMM's comm page.
"""
import errno
import fcntl
import mmap
import os
import signal
import threading

from ... import constants as nvmm
from ...errors import AssistError, NvmmError
from ...vcpu import VCpu
from . import abi, exit_loop, statemap
from .abi import ffi
from .system import ioctl, int_arg

_NULL = abi.NULL_ARG
# fcntl.ioctl(fd, KVM_RUN) with the argument left out passes 0 without parsing it: ~200 ns a call here.
# Given an int, CPython's fcntl first tries it as a writable and then a read-only buffer and formats
# a TypeError for each failure (~900 ns); a cffi or ctypes call costs ~670 ns. Raises OSError.
_run_ioctl = fcntl.ioctl
_get_ident = threading.get_ident

KVM_RUN = abi.KVM_RUN
EXIT_IO = abi.KVM_EXIT_IO
EXIT_MMIO = abi.KVM_EXIT_MMIO
SYNC_REGS = abi.KVM_SYNC_X86_REGS
NVMM_EXIT_IO, NVMM_EXIT_MEMORY = nvmm.VCPU_EXIT_IO, nvmm.VCPU_EXIT_MEMORY   # globals: one lookup less per exit
PROT_READ, PROT_WRITE = nvmm.PROT_READ, nvmm.PROT_WRITE

_X = ffi.offsetof("struct kvm_run", "x")
MMIO_DATA_OFFSET = _X + ffi.offsetof("struct kvm_run_mmio", "data")


# Byte offsets in kvm_run of the fields an exit is decoded from, in exit_loop.c's order (OFF_*).
_EXIT_FIELDS = (ffi.offsetof("struct kvm_run", "exit_reason"),
                *(_X + ffi.offsetof(t, f) for t, f in (
                    ("struct kvm_run_io", "direction"), ("struct kvm_run_io", "size"),
                    ("struct kvm_run_io", "port"), ("struct kvm_run_io", "count"),
                    ("struct kvm_run_io", "data_offset"), ("struct kvm_run_mmio", "phys_addr"),
                    ("struct kvm_run_mmio", "len"), ("struct kvm_run_mmio", "is_write"))))


def _index(offset: int, width: int) -> int:
    """Index of the kvm_run field at `offset` in a memoryview cast to `width`-byte items."""
    assert offset % width == 0
    return offset // width


(_R_EXIT_REASON, _R_IO_DIRECTION, _R_IO_SIZE, _R_IO_PORT, _R_IO_COUNT, _R_IO_DATA_OFFSET, _R_MMIO_ADDR,
 _R_MMIO_LEN, _R_MMIO_IS_WRITE) = (_index(o, w) for o, w in zip(_EXIT_FIELDS, (4, 1, 1, 2, 4, 8, 8, 4, 1)))

# Real-time signal used to kick a vCPU thread out of KVM_RUN (its handler does nothing).
KICK_SIGNAL = signal.SIGRTMIN + 3
_kick_ready = False


def _install_kick_handler() -> bool:
    """Install a no-op handler for KICK_SIGNAL (only possible from the main thread)."""
    global _kick_ready
    if _kick_ready:
        return True
    try:
        current = signal.getsignal(KICK_SIGNAL)
        if current in (signal.SIG_DFL, None):
            signal.signal(KICK_SIGNAL, lambda signum, frame: None)
        elif current == signal.SIG_IGN:
            return False
        _kick_ready = True
    except ValueError:  # not the main thread
        return False
    return True


_emulator_instance = None


def _check_emulator(cls):
    global _emulator_instance
    if _emulator_instance is None:
        _emulator_instance = cls()
    return _emulator_instance


class KvmExitState:
    """struct nvmm_x86_exitstate, read on access: rflags from the sync area, cr8 from kvm_run,
    the rest from KVM, so exits that nobody inspects cost nothing."""
    __slots__ = ("_vcpu",)

    def __init__(self, vcpu):
        self._vcpu = vcpu

    @property
    def rflags(self):
        return self._vcpu._regs.rflags

    @property
    def cr8(self):
        return self._vcpu._kr.cr8

    @property
    def int_window_exiting(self):
        return int(self._vcpu._kr.request_interrupt_window != 0)

    @property
    def nmi_window_exiting(self):
        return int(self._vcpu._nmi_window)

    @property
    def int_shadow(self):
        return int(self._vcpu._events_get().interrupt.shadow != 0)

    @property
    def evt_pending(self):
        return self._vcpu._event_pending()


class KvmVCpu(VCpu):
    def __init__(self, machine, kmachine, cpuid: int):
        super().__init__(machine, cpuid, None)
        self.exit.exitstate = KvmExitState(self)
        self._kmachine = kmachine
        sysm = kmachine.sys
        self._sys = sysm
        try:
            self._fd = ioctl(kmachine.vmfd, abi.KVM_CREATE_VCPU, int_arg(cpuid))
        except OSError as e:
            raise NvmmError(e.errno, f"KVM_CREATE_VCPU {cpuid} failed: {e.strerror}") from None
        try:
            self._mm = mmap.mmap(self._fd, sysm.mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self._fd)
            raise NvmmError(e.errno, f"cannot map the kvm_run area of vCPU {cpuid}: {e.strerror}") from None
        self._mmcd = ffi.from_buffer(self._mm)
        kr = self._kr = ffi.cast("struct kvm_run *", self._mmcd)
        self._kio = kr.x.io
        self._kmmio = kr.x.mmio
        self._kmsr = kr.x.msr
        self._regs = kr.s.regs.regs
        self._runmv = memoryview(self._mm)
        # Typed views for the hot path: indexing a memoryview is cheaper than a cffi field access.
        self._u8, self._u16, self._u32, self._u64 = (self._runmv.cast(t) for t in "BHIQ")
        self._mmio_views = [self._runmv[MMIO_DATA_OFFSET:MMIO_DATA_OFFSET + n] for n in range(9)]
        self._pio_offset = abi.KVM_PIO_PAGE_OFFSET * mmap.PAGESIZE  # where KVM puts I/O data
        self._pio_views = {}  # (data_offset, size) -> [memoryview per element]
        self._pio1 = [self._runmv[self._pio_offset:self._pio_offset + n] for n in range(5)]

        # scratch structures, allocated once
        self._sregs = ffi.new("struct kvm_sregs *")
        self._events = ffi.new("struct kvm_vcpu_events *")
        self._dregs = ffi.new("struct kvm_debugregs *")
        self._xcrs = ffi.new("struct kvm_xcrs *")
        self._xsave = ffi.new("char[]", max(sysm.xsave_size, 4096))
        self._fpu = ffi.new("struct kvm_fpu *")
        self._msrs = ffi.new("struct kvm_msrs *", {"entries": len(statemap.MSR_NUMBERS)})
        self._msr_slots = list(statemap.MSR_NUMBERS.items())
        self._last_tsc = 0

        # NVMM semantics KVM lacks, kept here
        self._nmi_window = False
        self._window_armed = False
        self._msr_pending = None  # (original rip, npc, is_rdmsr)
        self._msr_gp = False
        self._stop_requested = False
        self._has_run = False
        self._slow = True  # take _pre_run on the next run()
        self._tid = 0             # the thread inside run(), for the kick (see _wait_kick)
        self._kicking = 0         # stop()s between reading _tid and signalling it (a handler may nest one)
        self._kick_lock = threading.RLock()  # re-entrant: a signal handler may stop() from inside stop()
        self._run_lock = threading.Lock()    # held by run(); _destroy waits for it
        self._can_kick = _install_kick_handler()
        self._check_mmio = kmachine.check_mmio
        self._exit_loop = None    # the compiled loop's state (exit_loop.c), made at the first run_loop()
        self.mmio_disagreements = []  # with check_mmio: (rip, instruction, what KVM did, what the emulator did)

        # GPRS live in kvm_run's sync area; seed it with the reset registers.
        kr.kvm_valid_regs = SYNC_REGS
        tmp = ffi.new("struct kvm_regs *")
        ioctl(self._fd, abi.KVM_GET_REGS, tmp)
        ffi.memmove(ffi.addressof(self._regs), tmp, ffi.sizeof("struct kvm_regs"))
        self._configure_cpuid({})
        self._getstate(nvmm.X64_STATE_ALL)

    # --- the run loop ----------------------------------------------------------------------------
    def run(self):
        """Run until the next exit; returns self.exit (reused every call). The lock is taken by
        hand: `with` cost twice as much per exit."""
        tid = _get_ident()
        if self._tid == tid:
            self._nested()
        self._run_lock.acquire()
        try:
            if self._slow:
                ex = self._pre_run()
                if ex is not None:
                    return ex
            self._tid = tid
            try:
                _run_ioctl(self._fd, KVM_RUN)
            except OSError as e:
                self._tid = 0
                if self._kicking:
                    self._wait_kick()
                return self._run_failed(e.errno)
            self._tid = 0
            if self._kicking:   # see _wait_kick
                self._wait_kick()
            return self._decode(self._u32[_R_EXIT_REASON])
        finally:
            self._run_lock.release()

    def _decode(self, reason: int):
        """Fill self.exit from kvm_run after an exit for `reason` and return it."""
        ex = self.exit
        if reason == EXIT_IO:
            u8 = self._u8
            io = ex.io
            io.in_ = not u8[_R_IO_DIRECTION]
            io.operand_size = u8[_R_IO_SIZE]
            io.port = self._u16[_R_IO_PORT]
            n = io.count = self._u32[_R_IO_COUNT]
            io.rep = io.str = n > 1
            ex.reason = NVMM_EXIT_IO
            return ex
        if reason == EXIT_MMIO:
            mem = ex.mem
            mem.gpa = self._u64[_R_MMIO_ADDR]
            mem.prot = PROT_WRITE if self._u8[_R_MMIO_IS_WRITE] else PROT_READ
            mem.size = self._u32[_R_MMIO_LEN]
            ex.reason = NVMM_EXIT_MEMORY
            return ex
        return self._exit_other(reason)

    # --- the compiled exit loop (exit_loop.py) ------------------------------------------------------
    @property
    def exit_loop_unavailable(self):
        """Why run_loop() cannot be used on this vCPU (None when it can)."""
        if self._check_mmio:
            return "check_mmio cross-checks every MMIO exit in Python"
        return exit_loop.unavailable()

    def run_loop(self, on_io, on_mem):
        """Run, handing single port I/O and MMIO exits to on_io(port, is_in, data) and
        on_mem(gpa, is_write, data) from compiled code (data: a writable view of the element in
        kvm_run; fill it for reads) until one of them returns true (then None is returned) or
        another exit comes (returned as run() returns it). An exception a handler raises is
        raised here; the exit it was handling is complete."""
        state = self._exit_loop
        if state is None:
            state = self._make_exit_loop()
        tid = _get_ident()
        if self._tid == tid:
            self._nested()
        self._run_lock.acquire()
        try:
            if self._slow:
                ex = self._pre_run()
                if ex is not None:
                    return ex
            self._tid = tid
            try:
                r = self._loop_run(state, on_io, on_mem)
            finally:
                self._tid = 0
                if self._kicking:   # see _wait_kick
                    self._wait_kick()
            if r >= 0:
                return self._decode(r)
            if r == self._loop_yield:
                return None
            return self._run_failed(-r)
        finally:
            self._run_lock.release()

    def _nested(self):
        """run() or run_loop() from a run_loop handler would wait for itself forever."""
        raise NvmmError(errno.EDEADLK, f"vCPU {self.cpuid} is in run_loop on this thread: a handler cannot run it "
                                       f"(return true from the handler to get back to the caller)")

    def _make_exit_loop(self):
        why = self.exit_loop_unavailable
        if why:
            raise NvmmError(errno.EOPNOTSUPP, f"no compiled exit loop: {why}")
        mod = exit_loop.module()
        address = int(ffi.cast("uintptr_t", self._mmcd))
        self._exit_loop = mod.new(self._fd, KVM_RUN, address, EXIT_IO, EXIT_MMIO, _EXIT_FIELDS, self._pio_offset,
                                  tuple(self._pio1), tuple(self._mmio_views))
        self._loop_run, self._loop_yield, self._loop_account = mod.run, mod.YIELD, mod.account
        return self._exit_loop

    def exit_loop_account(self):
        """(port exits, MMIO exits, ns inside KVM_RUN) of run_loop() so far on this vCPU."""
        state = self._exit_loop
        return (0, 0, 0) if state is None else self._loop_account(state)

    def _wait_kick(self) -> None:
        """No kick may target this thread once it has left run() (pthread_kill on a thread that has
        ended is undefined), yet taking _kick_lock at every exit cost more than the rest of the
        exit's bookkeeping. So run() clears _tid before it reads _kicking, and stop() raises
        _kicking before it reads _tid (statements the GIL runs in order): either stop() sees 0, or
        run() sees the kick in progress and waits here for it to finish."""
        with self._kick_lock:
            pass

    def _run_failed(self, err: int):
        """EINTR (a kick, or immediate_exit set by stop()) is a normal stop, not an error."""
        ex = self.exit
        if err == errno.EINTR or err == errno.EAGAIN:
            with self._kick_lock:  # consumed together, or a stop() in between would lose immediate_exit
                stopped, self._stop_requested = self._stop_requested, False
                if stopped:
                    self._kr.immediate_exit = 0
            ex.reason = nvmm.VCPU_EXIT_STOPPED if stopped else nvmm.VCPU_EXIT_NONE
            return ex
        if err == errno.EFAULT:
            raise NvmmError(err, f"KVM_RUN failed on vCPU {self.cpuid}: guest memory is backed by an invalid host mapping")
        raise NvmmError(err, f"KVM_RUN failed on vCPU {self.cpuid}: {os.strerror(err)}")

    def _pre_run(self):
        """Work NVMM does at the next run that KVM needs done by hand; may answer without running."""
        self._slow = False
        self._has_run = True
        if self._msr_pending is not None:
            orig_rip, npc, is_rd = self._msr_pending
            km = self._kmsr
            regs = self._regs
            if self._msr_gp:
                km.error = 1  # KVM injects #GP and does not advance RIP
            elif self._kr.kvm_dirty_regs & SYNC_REGS and regs.rip == npc:
                if is_rd:
                    km.data = ((regs.rdx & 0xFFFFFFFF) << 32) | (regs.rax & 0xFFFFFFFF)
                km.error = 0
                regs.rip = orig_rip  # KVM's completion advances RIP past the instruction itself
            else:
                # The VMM neither emulated the access nor injected #GP: on NVMM the guest would
                # execute the instruction again and exit again, so report the same exit.
                self._slow = True
                return self.exit
            self._msr_pending = None
            self._msr_gp = False
        kr = self._kr
        if kr.request_interrupt_window:
            # KVM reports ready_for_interrupt_injection on every exit; a kvm_pvm host only exits with
            # IRQ_WINDOW_OPEN at exits it handles itself, so report an open window here (NVMM reports
            # INT_READY as soon as the window opens).
            if kr.ready_for_interrupt_injection and self._window_armed:
                kr.request_interrupt_window = 0
                self.exit.reason = nvmm.VCPU_EXIT_INT_READY
                return self.exit
            self._window_armed = True
            self._slow = True
        if self._nmi_window:
            ev = self._events_get()
            if not (ev.nmi.masked or ev.nmi.injected or ev.nmi.pending):
                self._nmi_window = False
                self.exit.reason = nvmm.VCPU_EXIT_NMI_READY
                return self.exit
            self._slow = True  # KVM has no NMI-window exit: look again after the next exit
        return None

    def _exit_other(self, reason: int):
        ex = self.exit
        kr = self._kr
        if reason == abi.KVM_EXIT_HLT:
            ex.reason = nvmm.VCPU_EXIT_HALTED
        elif reason == abi.KVM_EXIT_IRQ_WINDOW_OPEN:
            kr.request_interrupt_window = 0
            ex.reason = nvmm.VCPU_EXIT_INT_READY
        elif reason == abi.KVM_EXIT_X86_RDMSR or reason == abi.KVM_EXIT_X86_WRMSR:
            km = self._kmsr
            rip = self._regs.rip
            npc = rip + 2  # RDMSR/WRMSR are 0F 32 / 0F 30
            is_rd = reason == abi.KVM_EXIT_X86_RDMSR
            if is_rd:
                ex.rdmsr.msr = km.index
                ex.rdmsr.npc = npc
                ex.reason = nvmm.VCPU_EXIT_RDMSR
            else:
                ex.wrmsr.msr = km.index
                ex.wrmsr.val = km.data
                ex.wrmsr.npc = npc
                ex.reason = nvmm.VCPU_EXIT_WRMSR
            self._msr_pending = (rip, npc, is_rd)
            self._msr_gp = False
            self._slow = True
        elif reason == abi.KVM_EXIT_SHUTDOWN:
            ex.reason = nvmm.VCPU_EXIT_SHUTDOWN
        elif reason == abi.KVM_EXIT_SYSTEM_EVENT:
            ex.reason = nvmm.VCPU_EXIT_SHUTDOWN
        elif reason == abi.KVM_EXIT_INTR:
            ex.reason = nvmm.VCPU_EXIT_NONE
        elif reason == abi.KVM_EXIT_FAIL_ENTRY:
            fe = kr.x.fail_entry
            self._invalid(fe.hardware_entry_failure_reason,
                          f"VM entry failed (hardware reason {fe.hardware_entry_failure_reason:#x}): invalid guest state")
        elif reason == abi.KVM_EXIT_INTERNAL_ERROR:
            ie = kr.x.internal
            what = {abi.KVM_INTERNAL_ERROR_EMULATION: "KVM could not emulate an instruction",
                    abi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
                    abi.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
                    abi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit"}.get(
                        ie.suberror, f"internal error {ie.suberror}")
            data = ", ".join(hex(ie.data[i]) for i in range(min(ie.ndata, 16)))
            self._invalid(ie.suberror, f"KVM internal error: {what}" + (f" (data {data})" if data else ""))
        elif reason == abi.KVM_EXIT_UNKNOWN:
            hw = kr.x.hw.hardware_exit_reason
            self._invalid(hw, f"unknown hardware exit {hw:#x}")
        else:
            self._invalid(reason, f"unhandled KVM exit reason {reason}")
        return ex

    def _invalid(self, hwcode: int, detail: str) -> None:
        self.exit.reason = nvmm.VCPU_EXIT_INVALID
        self.exit.inv.hwcode = hwcode
        self.exit.inv.detail = detail

    def stop(self) -> None:
        """Make the running (or next) run() return STOPPED. Safe from any thread (one racing a
        destroy does nothing; after it, stop is ENOENT like every call). immediate_exit stops a KVM_RUN not yet entered; the kick signal one in
        progress. The kick goes only to a thread still inside run() (pthread_kill on a thread
        that has exited is undefined)."""
        with self._kick_lock:
            kr = self._kr
            if kr is None:
                return
            self._stop_requested = True
            kr.immediate_exit = 1
            self._kicking += 1    # before reading _tid: see _wait_kick
            try:
                tid = self._tid
                if tid and tid != _get_ident() and self._can_kick:
                    try:
                        signal.pthread_kill(tid, KICK_SIGNAL)
                    except (ProcessLookupError, OSError):
                        pass
            finally:
                self._kicking -= 1

    # --- assists ---------------------------------------------------------------------------------
    def assist_io(self) -> None:
        """Deliver the IO exit's element(s) to callbacks.io; KVM completes RIP and string registers."""
        ex = self.exit
        if ex.reason != NVMM_EXIT_IO:
            raise AssistError(errno.EINVAL, f"assist_io on a {ex.name} exit")
        io = ex.io
        acc = self._io
        acc.port = io.port
        acc.in_ = io.in_
        size = acc.size = io.operand_size
        count = io.count
        cb = self.callbacks.io
        if count == 1 and self._u64[_R_IO_DATA_OFFSET] == self._pio_offset:
            acc.data = self._pio1[size]
            cb(acc)
            return
        offset = self._kio.data_offset
        views = self._pio_views.get((offset, size))
        if views is None or len(views) < count:
            views = self._make_pio_views(offset, size, count)
        for i in range(count):
            acc.data = views[i]
            cb(acc)

    def _make_pio_views(self, offset: int, size: int, count: int):
        if size not in (1, 2, 4) or count < 1 or offset + size * count > len(self._runmv):
            raise AssistError(errno.EINVAL, f"KVM reported an I/O data area outside kvm_run (offset {offset}, {count}x{size})")
        n = max(count, 1)
        views = [self._runmv[offset + i * size: offset + (i + 1) * size] for i in range(n)]
        self._pio_views[(offset, size)] = views
        return views

    def assist_mem(self) -> None:
        """Deliver the MMIO access KVM decoded to callbacks.mem; KVM completes the instruction."""
        ex = self.exit
        if ex.reason != NVMM_EXIT_MEMORY:
            raise AssistError(errno.EINVAL, f"assist_mem on a {ex.name} exit")
        m = ex.mem
        size = m.size
        if not 0 < size <= 8:
            raise AssistError(errno.EINVAL, f"KVM reported an MMIO access of {size} bytes")
        acc = self._mem
        acc.gpa = m.gpa
        acc.write = m.prot == PROT_WRITE
        acc.size = size
        acc.data = self._mmio_views[size]
        self.callbacks.mem(acc)
        if self._check_mmio:
            self._cross_check(m.gpa, size, acc.write, bytes(acc.data))

    def _cross_check(self, gpa: int, size: int, write: bool, data: bytes) -> None:
        """Emulate the instruction on a copy of the state and compare its MMIO access with the one
        KVM decoded; record a disagreement in self.mmio_disagreements."""
        found, tried = self._find_mmio_instruction(gpa, size, write, data)
        if found is None:
            self.mmio_disagreements.append((self.state.gprs[nvmm.X64_GPR_RIP], (gpa, size, write, data), tried))

    def exit_instruction_rip(self):
        """RIP of the instruction that made the current MEMORY exit (None if not found), for traces.
        KVM finishes a write before exiting (RIP is past it): the instruction ending at RIP is found."""
        m = self.exit.mem
        write = m.prot == nvmm.PROT_WRITE
        data = bytes(self._mmio_views[m.size]) if 0 < m.size <= 8 else b""
        found, _ = self._find_mmio_instruction(m.gpa, m.size, write, data)
        return None if found is None else found[0]

    def _find_mmio_instruction(self, gpa: int, size: int, write: bool, data: bytes):
        """((rip, emulator Step), tried) for the instruction whose MMIO access this exit is, run on a
        copy of the state with a bus that has no side effects; (None, tried) if none matches."""
        from ...guestbus import RecordingBus
        from ...state import copy_state, new_state
        from nvmmpy.emulator.x86emu import EmulationError, Emulator, GuestFault
        self._getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS | nvmm.X64_STATE_FPU)
        rip = self.state.gprs[nvmm.X64_GPR_RIP]
        emu = _check_emulator(Emulator)
        bus = RecordingBus(self.machine.areas, gpa, None if write else data)
        tried = []
        for back in (range(1, 16) if write else (0,)):
            st = new_state()
            copy_state(st, self.state)
            st.gprs[nvmm.X64_GPR_RIP] = rip - back
            try:
                step = emu.step(st, bus, None, max_reps=1)
            except (EmulationError, GuestFault) as e:
                tried.append(f"{rip - back:#x}: {e}")
                continue
            if write and step.length != back:
                continue
            seen = [(a, n, w, bytes(v)) for k, a, n, w, v in step.accesses
                    if k == "mem" and self.machine.areas.lookup(a) is None]
            if any(a <= gpa and gpa + size <= a + n and w == write and v[gpa - a:gpa - a + size] == data
                   for a, n, w, v in seen):
                return (rip - back, step), tried
            tried.append(f"{rip - back:#x}: {step.mnemonic} {seen}")
        return None, tried

    # --- state -----------------------------------------------------------------------------------
    def _getstate(self, flags: int) -> None:
        st = self.state
        if flags & nvmm.X64_STATE_GPRS:
            statemap.gprs_from_kvm(st, self._regs)
        if flags & (nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS):
            self._vcpu_ioctl(abi.KVM_GET_SREGS, self._sregs, "KVM_GET_SREGS")
            if flags & nvmm.X64_STATE_SEGS:
                statemap.segs_from_kvm(st, self._sregs)
            if flags & nvmm.X64_STATE_CRS:
                statemap.crs_from_kvm(st, self._sregs)
                st.crs[nvmm.X64_CR_XCR0] = self._get_xcr0()
            if flags & nvmm.X64_STATE_MSRS:
                st.msrs[nvmm.X64_MSR_EFER] = self._sregs.efer
                self._get_msrs()
        if flags & nvmm.X64_STATE_DRS:
            d = self._dregs
            self._vcpu_ioctl(abi.KVM_GET_DEBUGREGS, d, "KVM_GET_DEBUGREGS")
            for i in range(4):
                st.drs[i] = d.db[i]
            st.drs[nvmm.X64_DR_DR6] = d.dr6
            st.drs[nvmm.X64_DR_DR7] = d.dr7
        if flags & nvmm.X64_STATE_INTR:
            ev = self._events_get()
            st.intr.int_shadow = 1 if ev.interrupt.shadow else 0
            st.intr.int_window_exiting = 1 if self._kr.request_interrupt_window else 0
            st.intr.nmi_window_exiting = 1 if self._nmi_window else 0
            st.intr.evt_pending = self._event_pending(ev)
        if flags & nvmm.X64_STATE_FPU:
            self._vcpu_ioctl(abi.KVM_GET_XSAVE, self._xsave, "KVM_GET_XSAVE")
            statemap.fpu_from_fxsave(st, ffi, self._xsave)

    def _setstate(self, flags: int) -> None:
        st = self.state
        if flags & nvmm.X64_STATE_GPRS:
            statemap.gprs_to_kvm(self._regs, st)
            self._kr.kvm_dirty_regs |= SYNC_REGS
        if flags & (nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS):
            sr = self._sregs
            self._vcpu_ioctl(abi.KVM_GET_SREGS, sr, "KVM_GET_SREGS")
            if flags & nvmm.X64_STATE_SEGS:
                statemap.segs_to_kvm(sr, st)
            if flags & nvmm.X64_STATE_CRS:
                statemap.crs_to_kvm(sr, st)
            if flags & nvmm.X64_STATE_MSRS:
                sr.efer = st.msrs[nvmm.X64_MSR_EFER]
            self._vcpu_ioctl(abi.KVM_SET_SREGS, sr, "KVM_SET_SREGS (segments, control registers or EFER)")
            if flags & nvmm.X64_STATE_CRS:
                # Without an in-kernel APIC, KVM reloads CR8 from kvm_run->cr8 at every KVM_RUN.
                self._kr.cr8 = st.crs[nvmm.X64_CR_CR8]
                self._set_xcr0(st.crs[nvmm.X64_CR_XCR0])
            if flags & nvmm.X64_STATE_MSRS:
                self._set_msrs()
        if flags & nvmm.X64_STATE_DRS:
            d = self._dregs
            ffi.memmove(d, b"\0" * ffi.sizeof(d[0]), ffi.sizeof(d[0]))
            for i in range(4):
                d.db[i] = st.drs[i]
            d.dr6 = st.drs[nvmm.X64_DR_DR6]
            d.dr7 = st.drs[nvmm.X64_DR_DR7]
            self._vcpu_ioctl(abi.KVM_SET_DEBUGREGS, d, "KVM_SET_DEBUGREGS")
        if flags & nvmm.X64_STATE_INTR:
            ev = self._events_get()
            ev.interrupt.shadow = abi.KVM_X86_SHADOW_INT_MOV_SS if st.intr.int_shadow else 0
            ev.flags = abi.KVM_VCPUEVENT_VALID_SHADOW
            self._vcpu_ioctl(abi.KVM_SET_VCPU_EVENTS, ev, "KVM_SET_VCPU_EVENTS")
            self._kr.request_interrupt_window = 1 if st.intr.int_window_exiting else 0
            self._window_armed = False  # the ready flag we hold predates this request
            if st.intr.int_window_exiting:
                self._slow = True
            self._nmi_window = bool(st.intr.nmi_window_exiting)
            if self._nmi_window:
                self._slow = True
        if flags & nvmm.X64_STATE_FPU:
            self._vcpu_ioctl(abi.KVM_GET_XSAVE, self._xsave, "KVM_GET_XSAVE")
            statemap.fpu_to_fxsave(self._xsave, ffi, st)
            bv = ffi.cast("uint64_t *", self._xsave + abi.XSTATE_BV_OFFSET)
            bv[0] |= abi.XFEATURE_MASK_FPSSE
            self._vcpu_ioctl(abi.KVM_SET_XSAVE, self._xsave, "KVM_SET_XSAVE (FPU state; is MXCSR valid?)")

    def _vcpu_ioctl(self, request: int, arg, what: str) -> None:
        try:
            ioctl(self._fd, request, arg)
        except OSError as e:
            raise NvmmError(e.errno, f"{what} failed on vCPU {self.cpuid}: {e.strerror}") from None

    def _events_get(self):
        self._vcpu_ioctl(abi.KVM_GET_VCPU_EVENTS, self._events, "KVM_GET_VCPU_EVENTS")
        return self._events

    def _event_pending(self, ev=None) -> int:
        ev = ev if ev is not None else self._events_get()
        return int(bool(ev.exception.injected or ev.exception.pending or ev.interrupt.injected
                        or ev.nmi.injected))

    def _get_xcr0(self) -> int:
        if not self._sys.xcrs:
            return 1
        x = self._xcrs
        self._vcpu_ioctl(abi.KVM_GET_XCRS, x, "KVM_GET_XCRS")
        for i in range(x.nr_xcrs):
            if x.xcrs[i].xcr == 0:
                return x.xcrs[i].value
        return 1

    def _set_xcr0(self, value: int) -> None:
        if not self._sys.xcrs:
            if value != 1:
                raise NvmmError(errno.EOPNOTSUPP, "this KVM cannot set XCR0 (no KVM_CAP_XCRS)")
            return
        x = self._xcrs
        ffi.memmove(x, b"\0" * ffi.sizeof(x[0]), ffi.sizeof(x[0]))
        x.nr_xcrs = 1
        x.xcrs[0].xcr = 0
        x.xcrs[0].value = value
        self._vcpu_ioctl(abi.KVM_SET_XCRS, x, f"KVM_SET_XCRS (XCR0={value:#x}: x87 must be set and only supported bits)")

    def _get_msrs(self) -> None:
        m = self._msrs
        m.nmsrs = len(self._msr_slots)
        for i, (_, number) in enumerate(self._msr_slots):
            m.entries[i].index = number
            m.entries[i].data = 0
        n = ioctl(self._fd, abi.KVM_GET_MSRS, m)
        msrs = self.state.msrs
        for i in range(n):
            msrs[self._msr_slots[i][0]] = m.entries[i].data
        self._last_tsc = msrs[nvmm.X64_MSR_TSC]

    def _set_msrs(self) -> None:
        m = self._msrs
        msrs = self.state.msrs
        n = 0
        for idx, number in self._msr_slots:
            value = msrs[idx]
            if idx == nvmm.X64_MSR_TSC and value in (0, self._last_tsc):
                continue  # as NVMM: 0 or the last value read leaves the TSC alone
            m.entries[n].index = number
            m.entries[n].data = value
            n += 1
        m.nmsrs = n
        done = ioctl(self._fd, abi.KVM_SET_MSRS, m)
        if done != n:
            bad = m.entries[done]
            raise NvmmError(errno.EINVAL, f"KVM refused MSR {bad.index:#x} = {bad.data:#x} on vCPU {self.cpuid}")

    # --- events ----------------------------------------------------------------------------------
    def _inject_exception(self, vector: int, has_error: bool, error: int) -> None:
        if self._msr_pending is not None and vector == 13:
            self._msr_gp = True  # complete the pending MSR exit by failing it: KVM injects the #GP
            self._slow = True
            return
        ev = self._events_get()
        ev.exception.injected = 1
        ev.exception.pending = 0
        ev.exception.nr = vector
        ev.exception.has_error_code = 1 if has_error else 0
        ev.exception.error_code = error & 0xFFFFFFFF
        ev.flags = 0
        self._vcpu_ioctl(abi.KVM_SET_VCPU_EVENTS, ev, f"injecting exception {vector}")

    def _inject_interrupt(self, vector: int) -> None:
        if self._kmachine.irqchip:
            raise NvmmError(errno.EBUSY, "the in-kernel interrupt controller delivers interrupts on this machine: "
                                         "raise its lines with machine.irq_line(n)")
        irq = ffi.new("struct kvm_interrupt *", {"irq": vector})
        self._vcpu_ioctl(abi.KVM_INTERRUPT, irq, f"injecting interrupt {vector}")

    def _inject_nmi(self) -> None:
        self._vcpu_ioctl(abi.KVM_NMI, _NULL, "injecting an NMI")

    # --- configuration ---------------------------------------------------------------------------
    def _configure_cpuid(self, confs: dict) -> None:
        if self._has_run:
            raise NvmmError(errno.EBUSY, "on kvm, CPUID can only be configured before the vCPU first runs "
                                         "(KVM freezes CPUID at the first KVM_RUN)")
        entries = self._sys.supported_cpuid
        buf = ffi.new("struct kvm_cpuid2 *", {"entries": len(entries)})
        buf.nent = len(entries)
        for i, src in enumerate(entries):
            e = buf.entries[i]
            e.function, e.index, e.flags = src["function"], src["index"], src["flags"]
            regs = [src["eax"], src["ebx"], src["ecx"], src["edx"]]
            if e.function == 1:
                regs[1] = (regs[1] & 0x00FFFFFF) | ((self.cpuid & 0xFF) << 24)  # initial APIC id
                regs[2] |= 1 << 31  # hypervisor present
            elif e.function in (0xB, 0x1F):
                regs[3] = self.cpuid  # x2APIC id
            conf = confs.get(e.function)
            if conf is not None and conf.mask:
                regs = [(r & ~d) | s for r, s, d in zip(regs, conf.set, conf.del_)]
            e.eax, e.ebx, e.ecx, e.edx = regs
        self._vcpu_ioctl(abi.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    # --- lifetime ----------------------------------------------------------------------------------
    def _destroy(self) -> None:
        """Only once no run() is in progress: the thread inside it still reads kvm_run."""
        if self._tid == _get_ident():   # a run_loop handler: its loop would go on into freed kvm_run
            raise NvmmError(errno.EDEADLK, f"vCPU {self.cpuid} is in run_loop on this thread (a handler cannot "
                                           f"destroy it): destroy it after run_loop has returned")
        self.stop()
        with self._run_lock, self._kick_lock:
            self._mark_destroyed()
            self.run_loop = self._dead
            self._kio = self._kmmio = self._kmsr = self._regs = self._kr = None
        self._pio_views.clear()
        self._mmio_views = self._pio1 = []
        self._exit_loop = None   # holds views of kvm_run
        for v in (self._u8, self._u16, self._u32, self._u64):
            v.release()
        self._runmv.release()
        self._mmcd = None
        try:
            self._mm.close()
        except BufferError:
            pass
        os.close(self._fd)
