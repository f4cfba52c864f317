"""NvmmVCpu: a vCPU on /dev/nvmm, done the way libnvmm does it.

State and events go through the comm page (commpage.py): setstate and inject make no system call,
getstate calls GETSTATE only for groups the kernel has not already provided. run() is one
VCPU_RUN. MEMORY exits carry only a GPA (plus instruction bytes on SVM with decode assists), so
assist_mem decodes and performs the instruction with emulator/ -- fetching the bytes at CS:RIP
through a guest page walk when the exit has none (always on VMX) -- and writes the result back
through the comm page.
"""
import errno
import signal
import threading

from ... import constants as nvmm
from ...assist import TprConf
from ...errors import AssistError, NvmmError
from ...guestbus import GuestBus
from ...state import copy_state, new_state
from ...stopkick import KICKER
from ...vcpu import VCpu
from . import abi
from .abi import ffi
from .commpage import CommPage
from .exitdecode import decode

_ASSIST_GROUPS = nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS
# A signal with a no-op handler kicks a vCPU thread out of VCPU_RUN (NVMM returns NONE when a
# signal is pending); the comm page's `stop` alone only stops a run that has not started yet.
KICK_SIGNAL = signal.SIGRTMIN + 3 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
_kick_ready = False
_emulator = None


def _get_emulator():
    global _emulator
    if _emulator is None:
        from nvmmpy.emulator.x86emu import Emulator
        _emulator = Emulator()
    return _emulator


def _install_kick_handler() -> bool:
    global _kick_ready
    if not _kick_ready:
        try:
            if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
                signal.signal(KICK_SIGNAL, lambda signum, frame: None)
            _kick_ready = signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        except ValueError:  # not the main thread
            return False
    return _kick_ready


class _AssistState:
    """The comm page's state as the emulator sees it; FPU (for SSE moves) is fetched on first use,
    since the kernel provides only GPRS|SEGS|CRS|MSRS with an exit."""
    __slots__ = ("segs", "gprs", "crs", "drs", "msrs", "intr", "_st", "_vcpu", "fpu_used")

    def __init__(self, vcpu, st):
        self._vcpu, self._st = vcpu, st
        self.segs, self.gprs, self.crs, self.drs, self.msrs, self.intr = st.segs, st.gprs, st.crs, st.drs, st.msrs, st.intr
        self.fpu_used = False

    @property
    def fpu(self):
        if not self.fpu_used:
            self._vcpu.getstate(nvmm.X64_STATE_FPU)
            self.fpu_used = True
        return self._st.fpu


class NvmmVCpu(VCpu):
    def __init__(self, machine, nmachine, cpuid: int):
        super().__init__(machine, cpuid)
        self._nm = nmachine
        sysm = self._sys = nmachine.sys
        fl = sysm.flavour
        args = ffi.new(fl.vcpu_create_type + " *")
        args.machid, args.cpuid = nmachine.machid, cpuid
        sysm.ioctl("VCPU_CREATE", args)
        try:
            if fl.comm_mmap:
                address = sysm.kernel.mmap(abi.PAGE_SIZE, abi.comm_off(nmachine.machid, cpuid))
            else:
                address = int(ffi.cast("uintptr_t", args.comm))
                if not address:
                    raise OSError(errno.EFAULT, "VCPU_CREATE returned no comm page")
        except OSError as e:
            self._vcpu_ioctl_quiet("VCPU_DESTROY")
            raise NvmmError(e.errno, f"cannot map vCPU {cpuid}'s comm page: {e.strerror}") from None
        self.comm = CommPage(address, fl)
        self.state = self.comm.state      # libnvmm: vcpu->state = &comm->state
        self.event = self.comm.event      # libnvmm: vcpu->event = &comm->event
        self._run = ffi.new("struct nvmm_ioc_vcpu_run *")
        self._run.machid, self._run.cpuid = nmachine.machid, cpuid
        self._kexit = ffi.addressof(self._run, "exit")
        self._ids = ffi.new("struct nvmm_ioc_vcpu_getstate *")
        self._ids.machid, self._ids.cpuid = nmachine.machid, cpuid
        self._bus = GuestBus(machine.areas, self)
        self._astate = _AssistState(self, self.state)
        self._stop_requested = False
        self._tid = 0             # the thread inside VCPU_RUN, for the kick (guarded by _kick_lock)
        self._kick_lock = threading.RLock()  # re-entrant: a signal handler may stop() from inside stop()
        self._run_lock = threading.Lock()    # held by run(); _destroy waits for it
        self._can_kick = _install_kick_handler()

    def _vcpu_ioctl_quiet(self, name):
        a = ffi.new("struct nvmm_ioc_vcpu_destroy *")
        a.machid, a.cpuid = self._nm.machid, self.cpuid
        try:
            self._sys.ioctl(name, a)
        except NvmmError:
            pass

    # --- state (comm page) -------------------------------------------------------------------
    def _getstate(self, flags: int) -> None:
        missing = self.comm.missing(flags)
        if missing:
            self.comm.want(missing)
            self._sys.ioctl("VCPU_GETSTATE", self._ids)

    def _setstate(self, flags: int) -> None:
        self.comm.commit_state(flags)

    # --- events (comm page) --------------------------------------------------------------------
    # VCpu.inject has stored type/vector/error in self.event, which is the comm page's event;
    # the kernel pushes the error code and checks the vector itself.
    def _inject_exception(self, vector, has_error, error):
        self.comm.commit_event()

    def _inject_interrupt(self, vector):
        self.comm.commit_event()

    def _inject_nmi(self):
        self.comm.commit_event()

    # --- run / stop ----------------------------------------------------------------------------
    def run(self):
        with self._run_lock:
            return self._run_unlocked()

    def _run_unlocked(self):
        ex = self.exit
        with self._kick_lock:  # a stop() from now on sees _tid and kicks this thread
            if self._stop_requested and not self.comm.has_stop:
                self._stop_requested = False
                ex.reason = nvmm.VCPU_EXIT_STOPPED
                return ex
            self._tid = threading.get_ident()
        try:
            self._sys.kernel.ioctl(self._sys.flavour.request("VCPU_RUN"), self._run)
        except OSError as e:
            if e.errno != errno.EINTR:
                with self._kick_lock:
                    self._tid = 0
                raise NvmmError(e.errno, f"NVMM_IOC_VCPU_RUN failed: {e.strerror}"
                                + (" (an injected event or committed state was invalid)" if e.errno == errno.EINVAL else "")) from None
            self._kexit.reason = nvmm.VCPU_EXIT_NONE
        with self._kick_lock:  # no kick may target this thread once it has left run()
            self._tid = 0
            decode(self._kexit, ex)
            if ex.reason == nvmm.VCPU_EXIT_STOPPED:
                self._stop_requested = False
                self.comm.clear_stop()
            elif self._stop_requested and ex.reason == nvmm.VCPU_EXIT_NONE:
                self._stop_requested = False
                ex.reason = nvmm.VCPU_EXIT_STOPPED
        return ex

    def stop(self) -> None:
        """nvmm_vcpu_stop: the running or next run() returns STOPPED. Safe from any thread (one
        racing a destroy does nothing; after it, stop is ENOENT like every call). Without the comm page's stop field a kick landing just before
        VCPU_RUN is entered would be lost, so KICKER repeats it until the run has returned."""
        with self._kick_lock:
            if self.comm is None:
                return
            self._stop_requested = True
            self.comm.request_stop()
            if self._kick():
                KICKER.watch(self)

    def _kick(self) -> bool:
        tid = self._tid
        if not tid or tid == threading.get_ident() or not self._can_kick:
            return False
        try:
            signal.pthread_kill(tid, KICK_SIGNAL)
        except (ProcessLookupError, OSError):
            return False
        return not self.comm.has_stop

    def _restop(self) -> bool:
        """KICKER: kick again while a stop is pending inside VCPU_RUN; False once it is not."""
        with self._kick_lock:
            return self.comm is not None and self._stop_requested and self._kick()

    # --- assists ---------------------------------------------------------------------------------
    def assist_io(self) -> None:
        """nvmm_assist_io: port I/O through callbacks.io; RAX (or memory for INS/OUTS) and RIP are
        written back through the comm page."""
        ex = self.exit
        if ex.reason != nvmm.VCPU_EXIT_IO:
            raise AssistError(errno.EINVAL, f"assist_io on a {ex.name} exit")
        self.getstate(_ASSIST_GROUPS)
        io = ex.io
        if io.str:
            self._emulate(None)
            return
        g = self.state.gprs
        size = io.operand_size
        if size not in (1, 2, 4):
            raise AssistError(errno.EINVAL, f"IO exit with operand size {size}")
        mask = (1 << (8 * size)) - 1
        rax = g[nvmm.X64_GPR_RAX]
        if io.in_:
            v = int.from_bytes(self._bus.io_in(io.port, size), "little")
            g[nvmm.X64_GPR_RAX] = v if size == 4 else (rax & ~mask) | v   # 32-bit IN zero-extends
        else:
            self._bus.io_out(io.port, (rax & mask).to_bytes(size, "little"))
        g[nvmm.X64_GPR_RIP] = io.npc
        self.setstate(nvmm.X64_STATE_GPRS)

    def assist_mem(self) -> None:
        """nvmm_assist_mem: decode the instruction (exit bytes on SVM, else fetched at CS:RIP through
        the guest's page tables) and perform it through callbacks.mem."""
        ex = self.exit
        if ex.reason != nvmm.VCPU_EXIT_MEMORY:
            raise AssistError(errno.EINVAL, f"assist_mem on a {ex.name} exit")
        self.getstate(_ASSIST_GROUPS)
        self._emulate(ex.mem.inst_bytes if ex.mem.inst_len else None)

    def _emulate(self, insn) -> None:
        from nvmmpy.emulator.x86emu import EmulationError, GuestFault
        st = self._astate
        st.fpu_used = False
        try:
            _get_emulator().step(st, self._bus, insn)
        except EmulationError as e:
            raise AssistError(errno.ENODEV, str(e)) from None
        except GuestFault as e:
            self._fault(e)
            return
        self.setstate(nvmm.X64_STATE_GPRS | (nvmm.X64_STATE_FPU if st.fpu_used else 0))

    def _fault(self, e) -> None:
        """The instruction faults in the guest: inject the exception through the comm page."""
        if e.vector == 14 and e.cr2 is not None:
            self.state.crs[nvmm.X64_CR_CR2] = e.cr2
            self.setstate(nvmm.X64_STATE_CRS)
        ev = self.event
        ev.type, ev.vector = nvmm.VCPU_EVENT_EXCP, e.vector
        ev.u.excp.error = e.error_code or 0
        self.comm.commit_event()

    # --- configuration ---------------------------------------------------------------------------
    def _vcpu_configure(self, op: int, conf) -> None:
        a = ffi.new("struct nvmm_ioc_vcpu_configure *")
        a.machid, a.cpuid, a.op, a.conf = self._nm.machid, self.cpuid, op, conf
        self._sys.ioctl("VCPU_CONFIGURE", a)

    def _configure_cpuid(self, confs: dict) -> None:
        """One VCPU_CONFIGURE(CPUID) per leaf that changed; mask=exit=0 deletes a leaf."""
        old = self.cpuid_confs
        for leaf in set(old) | set(confs):
            new = confs.get(leaf)
            if new is not None and new is old.get(leaf):
                continue
            c = ffi.new("struct nvmm_vcpu_conf_cpuid *")
            c.leaf = leaf
            if new is not None:
                c.mask, c.exit = int(bool(new.mask)), int(bool(new.exit))
                s, d = c.u.mask.set, getattr(c.u.mask, "del")
                s.eax, s.ebx, s.ecx, s.edx = new.set
                d.eax, d.ebx, d.ecx, d.edx = new.del_
            self._vcpu_configure(nvmm.VCPU_CONF_CPUID, c)

    def _configure_tpr(self, conf: TprConf) -> None:
        c = ffi.new("struct nvmm_vcpu_conf_tpr *")
        c.exit_changed = int(bool(conf.exit_changed))
        self._vcpu_configure(nvmm.VCPU_CONF_TPR, c)

    # --- lifetime ------------------------------------------------------------------------------
    def _destroy(self) -> None:
        """VCPU_DESTROY, then unmap the comm page; vcpu.state becomes a detached copy so a
        reference kept by the caller never points at unmapped memory. Only once no run() is in
        progress: the thread inside it still reads the comm page."""
        self.stop()
        with self._run_lock, self._kick_lock:
            detached = new_state()
            copy_state(detached, self.state)
            self.state = detached
            self.event = ffi.new("struct nvmm_vcpu_event *")
            self._astate = None
            self._vcpu_ioctl_quiet("VCPU_DESTROY")
            self._sys.kernel.munmap(self.comm.address, abi.PAGE_SIZE)
            self.comm = None
            self._mark_destroyed()
