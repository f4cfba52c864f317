"""UnicornVCpu: NVMM's vCPU semantics on a unicorn software CPU, at unicorn's full speed.

Guest code runs without per-instruction hooks and without `count`. Exits are precise:
- MMIO: unmapped guest-physical ranges fault before the access; assist_mem decodes and performs
  the instruction with emulator.Emulator (as libnvmm does on NVMM).
- IN/OUT/INS/OUTS, RDMSR/WRMSR, CPUID, HLT: every executed code page is scanned once (on its first
  instruction fetch, caught by mapping RAM without execute permission) and the addresses where
  such an instruction may start become unicorn exits; translation stops before them. A page the
  guest writes after that loses execute permission again and is rescanned on its next fetch
  (scan.CodeScanner keeps those pages and addresses; exits.InstructionExits reports them).
- Exceptions the guest raises and events the VMM injects are delivered in software through the
  real-mode IVT or the protected/long-mode IDT (emulator.events), with escalation to #DF and
  shutdown (delivery.EventDelivery).

Stopping from another thread never calls emu_stop there: unicorn would take it after a store in
the middle of an instruction and run that instruction twice (tbstop.py has the evidence). The
requester sets a flag under a lock and a word that a C block hook (tbstop.TbStop) reads at the start
of the next translation block, where the vCPU's own thread stops itself; without a C compiler,
emu_start runs in slices of SLICE_COUNT instructions and the flag is checked between them. The
flag is checked before every emu_start; nothing closes the engine before run() has returned.
"""
import errno
import threading

from unicorn import (UcError, UC_HOOK_INTR, UC_HOOK_INSN, UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED,
                     UC_MEM_WRITE_PROT, UC_MEM_FETCH_PROT, UC_ERR_INSN_INVALID)
from unicorn import x86_const as x86

from nvmmpy.emulator import pagewalk
from nvmmpy.emulator.arch import ERROR_CODE_VECTORS, PAGE_SIZE
from nvmmpy.emulator.faults import EmulationError, GuestFault

from ... import constants as nvmm
from ...errors import AssistError, NvmmError
from ...guestbus import GuestBus
from ...vcpu import VCpu
from .cpu_env import CpuEnv
from .lazystate import LazyState
from .delivery import EventDelivery
from .exits import HIDDEN_FEATURES, RESUME, InstructionExits
from .scan import PAGE_MASK, CodeScanner
from .memhooks import MemoryHooks
from .syscall import SyscallEntry
from . import tbstop
from .ucstate import FastRegs, StateSync, attrib_to_flags

# Instructions per emu_start where the block hook cannot be had (no C compiler), and while waiting
# for an NMI window (unicorn cannot exit on IRET): stops and windows are checked between slices.
SLICE_COUNT = 100_000

_emulator = None   # emulator.x86emu.Emulator, made at the first assist (capstone takes ~16 ms to import)


def _the_emulator():
    global _emulator
    if _emulator is None:
        from nvmmpy.emulator.x86emu import Emulator
        _emulator = Emulator()
    return _emulator


class UnicornExitState:
    """struct nvmm_x86_exitstate, read on access."""
    __slots__ = ("_vcpu",)

    def __init__(self, vcpu):
        self._vcpu = vcpu

    @property
    def rflags(self):
        return self._vcpu._fast.read(x86.UC_X86_REG_RFLAGS)

    @property
    def cr8(self):
        return self._vcpu._fast.read(x86.UC_X86_REG_CR8)

    @property
    def int_shadow(self):
        return 0

    @property
    def int_window_exiting(self):
        return int(self._vcpu._int_window)

    @property
    def nmi_window_exiting(self):
        return int(self._vcpu._nmi_window)

    @property
    def evt_pending(self):
        return int(self._vcpu._pending_event is not None)


class UnicornVCpu(InstructionExits, EventDelivery, SyscallEntry, VCpu):
    def __init__(self, machine, umachine, cpuid: int):
        super().__init__(machine, cpuid)
        self._um = umachine
        self.uc = umachine.new_uc()
        self._sync = StateSync(self.uc, umachine.map_into, self._read_linear)
        self._fast = FastRegs(self.uc)
        self.exit.exitstate = UnicornExitState(self)
        self._bus = GuestBus(machine.areas, self)
        self._stop = False          # a stop was requested and not yet reported (guarded by _stop_lock)
        self._stop_lock = threading.RLock()  # re-entrant: a signal handler may stop() from inside stop()
        self._run_lock = threading.Lock()    # held by run(); _destroy waits for it
        self._fault = None          # (kind, access, address, size, value) from a memory hook
        self._intno = None          # exception/interrupt number from UC_HOOK_INTR
        self._intr_cr2 = 0          # CR2 and error code as the reported exception left them
        self._intr_error = 0
        self._env = None            # CpuEnv, made on the first exception
        self._sync_io = []          # I/O done synchronously by the fallback hooks during this run
        self._code = CodeScanner(self)  # scanned code pages and their exit addresses
        self._pending_event = None  # (kind, vector, error) to deliver at the next run
        self._int_window = False
        self._nmi_window = False
        self._nmi_blocked = False
        self._syscall = False       # the last emu_start ended at a SYSCALL (syscall.py)
        self._io_completed = False  # the current IO exit was already performed (fallback hook)
        self._rip = None            # cached RIP (None: read it from unicorn)
        self._segcache = {}         # (seg, selector, PE, LMA, GDTR) -> (base, limit, flags)
        self._last_lm_seg = {}      # long mode: last selector seen per segment (skips the GDTR read)
        self._last_lm_info = {}
        self._io_info = None        # the decoded IN/OUT of the current IO exit
        uc = self.uc
        self._tb = tbstop.attach(uc)            # stops at block starts (None: count slices)
        self._slice = 0 if self._tb is not None else SLICE_COUNT
        self._scan = umachine.scan
        if self._scan:
            uc.ctl_exits_enabled(True)
            uc.ctl_set_exits([])
        self._mem_hooks = MemoryHooks(uc, self._scan, self._on_unmapped, self._on_prot)
        self._mem_hooks.bound(machine.areas.areas())
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
        from ...state import reset_state
        reset_state(self.state)
        # unicorn cannot give real-mode CS a base other than selector*16: start at F000:FFF0 = 0xFFFF0
        self.state.segs[nvmm.X64_SEG_CS].base = 0xF0000
        self._setstate(nvmm.X64_STATE_ALL)

    # --- hooks (record and stop: unicorn must not be changed from inside them) ------------------------
    def _on_unmapped(self, uc, access, address, size, value, _):
        self._fault = ("unmapped", access, address, size, value)
        return False

    def _on_prot(self, uc, access, address, size, value, _):
        self._fault = ("prot", access, address, size, value)
        return False

    def _on_intr(self, uc, intno, _):
        self._intno = intno
        if intno in ERROR_CODE_VECTORS:   # read them now: unicorn clobbers CR2 before emu_start returns
            self._intr_cr2 = uc.reg_read(x86.UC_X86_REG_CR2)
            self._intr_error = self._cpu_env().error_code()
        uc.emu_stop()

    def _cpu_env(self) -> CpuEnv:
        if self._env is None:
            self._env = CpuEnv(self.uc)
        return self._env

    def _after_emu(self, cr2_before: int) -> None:
        """Undo what unicorn did to the guest outside its execution (see cpu_env): the exception
        it reported is ours to deliver, so none is in flight; a CR2 that changed without a #PF
        being reported was clobbered by unicorn's own page walks, and so was old_exception."""
        if self._intno is not None:
            self.uc.reg_write(x86.UC_X86_REG_CR2, self._intr_cr2 if self._intno == 14 else cr2_before)
            self._cpu_env().clear_in_flight()
        else:
            self._repair_walk(cr2_before)

    def _repair_walk(self, cr2_before: int) -> None:
        """After a unicorn call that walks the guest's page tables outside its execution (the end of
        emu_start, mem_protect, ctl_remove_cache): a miss there set CR2 and old_exception; undo it."""
        if self.uc.reg_read(x86.UC_X86_REG_CR2) != cr2_before:
            self.uc.reg_write(x86.UC_X86_REG_CR2, cr2_before)
            self._cpu_env().clear_in_flight()

    def protect_page(self, gpage: int, prot: int) -> None:
        cr2 = self.uc.reg_read(x86.UC_X86_REG_CR2)
        self.uc.mem_protect(gpage, PAGE_SIZE, prot)
        self._repair_walk(cr2)

    def _remove_cache(self, start: int, end: int) -> None:
        cr2 = self.uc.reg_read(x86.UC_X86_REG_CR2)
        self.uc.ctl_remove_cache(start, end)
        self._repair_walk(cr2)

    def _on_in(self, uc, port, size, _):
        data = self._bus.io_in(port, size)  # not at a registered exit: perform it now (see scan.MAX_FLIPS)
        self._sync_io.append((True, port, size))
        if not self._scan:
            uc.emu_stop()                   # an exit per I/O, as a hardware vCPU gives (end of this block)
        return int.from_bytes(data, "little")

    def _on_out(self, uc, port, size, value, _):
        self._bus.io_out(port, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        self._sync_io.append((False, port, size))
        if not self._scan:
            uc.emu_stop()

    def _on_cpuid(self, uc, _):
        leaf = uc.reg_read(x86.UC_X86_REG_EAX) & 0xFFFFFFFF
        conf = self.cpuid_confs.get(leaf)
        if (conf is None or not conf.mask) and leaf not in HIDDEN_FEATURES:
            return False  # unicorn's own answer
        sub = uc.reg_read(x86.UC_X86_REG_ECX) & 0xFFFFFFFF
        regs = self._cpuid_values(leaf, sub)
        for rid, v in zip((x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX), regs):
            uc.reg_write(rid, v)
        return True

    # --- run --------------------------------------------------------------------------------------
    def run(self):
        with self._run_lock:
            return self._run_unlocked()

    def _run_unlocked(self):
        ex = self.exit
        if self._take_stop():
            ex.reason = nvmm.VCPU_EXIT_STOPPED
            return ex
        if self._pending_event is not None or self._int_window or self._nmi_window:
            r = self._pre_run()
            if r is not None:
                return r
        uc = self.uc
        while True:
            if self._sync_io:
                # I/O the hooks performed during the last emu_start, reported once whatever else that
                # run ended with (an exception after it in the same block) has been dealt with
                return self._report_sync_io()
            rip = self._rip if self._rip is not None else self._fast.read(x86.UC_X86_REG_RIP)
            self._fault = self._intno = None
            waiting = self._int_window or self._nmi_window
            count = SLICE_COUNT if self._nmi_window else self._slice
            tb = self._tb
            if tb is not None:
                tb.window(self._int_window)
                tb_stops = tb.stops
            cr2 = uc.reg_read(x86.UC_X86_REG_CR2)
            if self._take_stop():       # a stop requested since the last check is never lost
                ex.reason = nvmm.VCPU_EXIT_STOPPED
                return ex
            try:
                uc.emu_start(rip, 0, 0, count)
                err = None
            except UcError as e:
                err = e
            self._after_emu(cr2)
            self._rip = None
            if err is not None:
                r = self._fault_exit(err)
                if r is None:
                    continue       # a page was scanned or made writable: resume
                return r
            if self._intno is not None:
                r = self._guest_exception(self._intno)
                if r is None:
                    continue
                return r
            if self._syscall:
                r = self._enter_syscall()
                if r is not None:
                    return r
                continue           # the kernel's entry is where the guest goes on (not an exit)
            if self._sync_io:
                continue           # reported at the top of the loop
            if self._take_stop():
                ex.reason = nvmm.VCPU_EXIT_STOPPED
                return ex
            rip = self._fast.read(x86.UC_X86_REG_RIP)
            ours = tb is not None and tb.stops != tb_stops   # the block hook stopped it (window)
            if self._scan:
                r = self._at_exit(rip)
            else:
                r = None if ours else self._halted_at(rip)
            if r is RESUME:
                continue
            if r is not None:
                return r
            if waiting:
                r = self._pre_run()   # the window opened (block hook), or a slice ended
                if r is not None:
                    return r
                continue
            if count:
                continue              # a slice ended: stops are checked at the top
            ex.reason = nvmm.VCPU_EXIT_NONE
            return ex

    def _report_sync_io(self):
        """I/O performed by the fallback hooks: report it as an already-completed IO exit."""
        first_in, port, size = self._sync_io[0]
        n = len(self._sync_io)
        self._sync_io.clear()
        ex = self.exit
        io = ex.io
        io.in_, io.port, io.operand_size, io.count = first_in, port, size, n
        io.rep = io.str = n > 1
        io.seg, io.address_size, io.npc = -1, 0, 0
        ex.reason = nvmm.VCPU_EXIT_IO
        self._io_completed = True
        return ex

    # --- faults: MMIO, ROM writes, code-page tracking (scan.CodeScanner) ---------------------------
    def _fault_exit(self, err):
        f = self._fault
        self._fault = None
        if f is None:
            if err.errno == UC_ERR_INSN_INVALID:
                return self._deliver("exception", 6, None)   # #UD at the instruction
            raise NvmmError(errno.EFAULT, f"unicorn stopped the guest: {err}")
        kind, access, gpa, size, value = f     # unicorn reports the guest-physical address
        if kind == "prot" and access == UC_MEM_FETCH_PROT:
            self._code.scan_page(self._code.fetch_page(gpa & PAGE_MASK), gpa & PAGE_MASK)
            return None
        if kind == "prot" and access == UC_MEM_WRITE_PROT:
            area = self.machine.areas.lookup(gpa)
            if area is not None and area.prot & nvmm.PROT_WRITE:
                self._code.unscan_page(gpa & PAGE_MASK)
                return None
        # MMIO (unmapped) or a write to ROM: a MEMORY exit at the faulting instruction
        ex = self.exit
        m = ex.mem
        m.gpa = gpa
        m.prot = nvmm.PROT_EXEC if access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT) else \
            (nvmm.PROT_WRITE if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT) else nvmm.PROT_READ)
        m.size = size
        m.inst_len = 0
        ex.reason = nvmm.VCPU_EXIT_MEMORY
        return ex

    # --- the guest as the CPU sees it: segments, linear memory ---------------------------------------
    def _seg_info(self, idx: int, sel: int, cr0: int, efer: int):
        """(base, limit, descriptor flags) of a segment register, as the CPU has it loaded."""
        if not cr0 & nvmm.CR0_PE:
            return sel << 4, 0xFFFF, (0x9B00 if idx == nvmm.X64_SEG_CS else 0x9300)
        if efer & nvmm.EFER_LMA and idx not in (nvmm.X64_SEG_FS, nvmm.X64_SEG_GS) and self._last_lm_seg.get(idx) == sel:
            return self._last_lm_info[idx]
        lma = efer & nvmm.EFER_LMA
        if lma and idx in (nvmm.X64_SEG_FS, nvmm.X64_SEG_GS):
            base = self._fast.read(x86.UC_X86_REG_FS_BASE if idx == nvmm.X64_SEG_FS else x86.UC_X86_REG_GS_BASE)
            return base, 0xFFFFFFFF, 0x9300
        _, gbase, glimit, _ = self._fast.read_mmr(x86.UC_X86_REG_LDTR if sel & 4 else x86.UC_X86_REG_GDTR)
        key = (idx, sel, lma, gbase, glimit)
        info = self._segcache.get(key)
        if info is None:
            seg = self.state.segs[idx]
            raw = None
            if sel & ~3 and (sel & ~7) + 7 <= glimit:
                raw = int.from_bytes(self._read_linear(gbase + (sel & ~7), 8), "little")
            if raw is None:
                info = (0, 0, ((sel & 3) << 13) | (0x8000 if idx == nvmm.X64_SEG_SS and lma else 0))
            else:
                from .ucstate import descriptor_to_seg
                descriptor_to_seg(seg, sel, raw)
                info = (seg.base, seg.limit, attrib_to_flags(seg.attrib))
            self._segcache[key] = info
        if lma:
            self._last_lm_seg[idx] = sel
            self._last_lm_info[idx] = info
        return info

    def _read_linear(self, linear: int, size: int, partial: bool = False) -> bytes:
        """Guest-linear bytes through the page tables (for GDT and instruction reads)."""
        fast = self._fast
        cr0 = fast.read(x86.UC_X86_REG_CR0)
        if not cr0 & nvmm.CR0_PG:
            try:
                return self.machine.read_guest(linear, size)
            except NvmmError:
                if not partial:
                    raise
                out = b""
                while size and self.machine.areas.lookup(linear) is not None:
                    out += self.machine.read_guest(linear, 1)
                    linear += 1
                    size -= 1
                return out
        args = (fast.read(x86.UC_X86_REG_CR3), fast.read(x86.UC_X86_REG_CR4), fast.read_msr(0xC0000080))
        try:
            return pagewalk.read_virt(self.machine.read_guest, cr0, *args, linear, size)
        except (pagewalk.PageFault, NvmmError):
            if not partial:
                raise
            out = b""
            for i in range(size):
                try:
                    out += pagewalk.read_virt(self.machine.read_guest, cr0, *args, linear + i, 1)
                except (pagewalk.PageFault, NvmmError):
                    break
            return out

    def _cs_base(self) -> int:
        fast = self._fast
        return self._seg_info(nvmm.X64_SEG_CS, fast.read16(x86.UC_X86_REG_CS), fast.read(x86.UC_X86_REG_CR0),
                              fast.read_msr(0xC0000080))[0]

    def tsc_khz(self):
        return self._um.tsc_khz()

    # --- stop from any thread ---------------------------------------------------------------------
    def stop(self) -> None:
        """Make the running (or next) run() return STOPPED. Safe from any thread (one racing a
        destroy does nothing; after it, stop is ENOENT like every call). The block hook's word stays
        set until the vCPU's thread takes it at a block start (or here, in _take_stop), so no stop is
        lost whenever it lands; in count slices the flag is seen within SLICE_COUNT instructions."""
        with self._stop_lock:
            if self.uc is None:
                return
            self._stop = True
            if self._tb is not None:
                self._tb.request()

    def _take_stop(self) -> bool:
        with self._stop_lock:
            stop, self._stop = self._stop, False
            if stop and self._tb is not None:
                self._tb.clear()
        return stop

    # --- assists ----------------------------------------------------------------------------------
    def assist_io(self) -> None:
        ex = self.exit
        if ex.reason != nvmm.VCPU_EXIT_IO:
            raise AssistError(errno.EINVAL, f"assist_io on a {ex.name} exit")
        if self._io_completed:
            self._io_completed = False  # the fallback hook already performed it
            return
        rip, npc, string, in_, port, size = self._io_info
        if string:
            self._emulate_at_rip()
            return
        fast = self._fast
        rax = fast.read(x86.UC_X86_REG_RAX)
        if in_:
            v = int.from_bytes(self._bus.io_in(port, size), "little")
            rax = v if size == 4 else (rax & ~((1 << (8 * size)) - 1)) | v  # 32-bit IN zero-extends
            fast.write(x86.UC_X86_REG_RAX, rax)
        else:
            self._bus.io_out(port, (rax & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        fast.write(x86.UC_X86_REG_RIP, npc)
        self._rip = npc

    def assist_mem(self) -> None:
        ex = self.exit
        if ex.reason != nvmm.VCPU_EXIT_MEMORY:
            raise AssistError(errno.EINVAL, f"assist_mem on a {ex.name} exit")
        self._emulate_at_rip()

    def _emulate_at_rip(self) -> None:
        st = LazyState(self.uc, self._fast, self._seg_info)
        insn = None
        cr0 = st.crs[nvmm.X64_CR_CR0]
        cs = st.segs[nvmm.X64_SEG_CS]
        linear = (cs.base + st.gprs[nvmm.X64_GPR_RIP]) & 0xFFFFFFFFFFFFFFFF
        key = (st.crs[nvmm.X64_CR_CR3] if cr0 & nvmm.CR0_PG else 0, linear)
        code_pages = self._code
        if linear & PAGE_MASK in code_pages.page_exits:  # a scanned (write-tracked) code page: bytes can be kept
            insn = code_pages.insn_cache.get(key)
            if insn is None:
                insn = self._read_linear(linear, 15, partial=True)
                if len(code_pages.insn_cache) > 4096:
                    code_pages.insn_cache.clear()
                code_pages.insn_cache[key] = insn
        try:
            (_emulator or _the_emulator()).step(st, self._bus, insn)
        except EmulationError as e:
            raise AssistError(errno.ENODEV, str(e)) from None
        except GuestFault as e:
            if e.vector == 14 and e.cr2 is not None:
                self.uc.reg_write(x86.UC_X86_REG_CR2, e.cr2)
            self._pending_event = ("exception", e.vector, e.error_code)
            return
        st.write_back()
        self._rip = st.gprs[nvmm.X64_GPR_RIP]

    # --- state ----------------------------------------------------------------------------------
    def _getstate(self, flags: int) -> None:
        st, s = self.state, self._sync
        if flags & nvmm.X64_STATE_GPRS:
            s.read_gprs(st)
        if flags & nvmm.X64_STATE_SEGS:
            s.read_segs(st)
        if flags & nvmm.X64_STATE_CRS:
            s.read_crs(st)
        if flags & nvmm.X64_STATE_DRS:
            s.read_drs(st)
        if flags & nvmm.X64_STATE_MSRS:
            s.read_msrs(st)
        if flags & nvmm.X64_STATE_INTR:
            st.intr.int_shadow = 0
            st.intr.int_window_exiting = 1 if self._int_window else 0
            st.intr.nmi_window_exiting = 1 if self._nmi_window else 0
            st.intr.evt_pending = 1 if self._pending_event is not None else 0
        if flags & nvmm.X64_STATE_FPU:
            s.read_fpu(st)

    def _setstate(self, flags: int) -> None:
        st, s = self.state, self._sync
        if flags & (nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS) or flags & nvmm.X64_STATE_MSRS:
            # the mode-defining groups go in together; complete them from the vCPU where not given
            need = (nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS) & ~flags
            if need:
                saved = bytes(_buf(st))
                self._getstate(need)
                wanted = bytes(_buf(st))
                _buf(st)[:] = saved
                _merge_groups(st, wanted, need)
            # the helper that loads the system state keeps the vCPU's GPRs but goes through EFLAGS
            # (and may cut RIP): without GPRS in flags, put the vCPU's own back
            fast = self._fast
            keep = None if flags & nvmm.X64_STATE_GPRS else \
                (fast.read(x86.UC_X86_REG_RIP), fast.read(x86.UC_X86_REG_RFLAGS))
            self._segcache.clear()
            self._last_lm_seg.clear()
            s.load_system(st)
            s.write_msrs(st)
            if keep is not None:
                fast.write(x86.UC_X86_REG_RIP, keep[0])
                fast.write(x86.UC_X86_REG_RFLAGS, keep[1])
        if flags & nvmm.X64_STATE_GPRS:
            s.write_gprs(st)
            self._rip = st.gprs[nvmm.X64_GPR_RIP]
        if flags & nvmm.X64_STATE_DRS:
            s.write_drs(st)
        if flags & nvmm.X64_STATE_INTR:
            self._int_window = bool(st.intr.int_window_exiting)
            self._nmi_window = bool(st.intr.nmi_window_exiting)
        if flags & nvmm.X64_STATE_FPU:
            s.write_fpu(st)

    def _configure_cpuid(self, confs: dict) -> None:
        """Nothing to push anywhere: CPUID is answered at its exit with the confs current then."""

    def _destroy(self) -> None:
        """Only once no run() is in progress: the engine must not be closed under emu_start."""
        self.stop()
        with self._run_lock, self._stop_lock:
            self._mark_destroyed()
            self.uc = None


def _buf(st):
    from ...nvmm_abi import ffi
    return ffi.buffer(st)


def _merge_groups(st, wanted: bytes, groups: int) -> None:
    """Copy `groups` of a state image `wanted` into st (used to complete a partial setstate)."""
    from ...nvmm_abi import ffi
    spans = {nvmm.X64_STATE_SEGS: ("segs", 160), nvmm.X64_STATE_CRS: ("crs", 48), nvmm.X64_STATE_MSRS: ("msrs", 88)}
    buf = ffi.buffer(st)
    for g, (field, size) in spans.items():
        if groups & g:
            off = ffi.offsetof("struct nvmm_x64_state", field)
            buf[off:off + size] = wanted[off:off + size]
