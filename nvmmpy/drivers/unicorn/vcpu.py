"""UnicornVCpu: NVMM's vCPU semantics on a unicorn software CPU, at unicorn's full speed.

Guest code runs without per-instruction hooks and without `count`. Exits are precise:
- MMIO: unmapped guest-physical ranges fault before the access; assist_mem decodes and performs
  the instruction with emulator.Emulator (as libnvmm does on NVMM).
- IN/OUT/INS/OUTS, RDMSR/WRMSR, CPUID, HLT: every executed code page is scanned once (on its first
  instruction fetch, caught by mapping RAM without execute permission) and the addresses where
  such an instruction may start become unicorn exits; translation stops before them. A page the
  guest writes after that loses execute permission again and is rescanned on its next fetch.
- Exceptions the guest raises and events the VMM injects are delivered in software through the
  real-mode IVT or the protected/long-mode IDT (emulator.events), with escalation to #DF and
  shutdown.

Stopping from another thread: the requester sets a flag under a lock and calls emu_stop only while
the vCPU thread is inside emu_start (nvmmpy/stopkick.py repeats it if unicorn dropped it); the flag
is checked before every emu_start; nothing closes the engine before run() has returned.
"""
import errno
import threading

from unicorn import (UcError, UC_HOOK_INTR, UC_HOOK_INSN, UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_FETCH_PROT,
                     UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC,
                     UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_FETCH_PROT,
                     UC_ERR_INSN_INVALID)
from unicorn import x86_const as X

from nvmmpy.emulator import pagewalk
from nvmmpy.emulator.arch import ERROR_CODE_VECTORS, PAGE_SIZE
from nvmmpy.emulator.events import TripleFault, deliver
from nvmmpy.emulator.x86emu import EmulationError, Emulator, GuestFault

from ... import constants as C
from ...errors import AssistError, NvmmError
from ...guestbus import GuestBus
from ...stopkick import KICKER
from ...vcpu import VCpu
from .cpu_env import CpuEnv
from .lazystate import LazyState
from .scan import MAX_PREFIXES, exit_candidates
from .ucstate import SEG_IDS, FastRegs, StateSync, attrib_to_flags

PAGE_MASK = ~(PAGE_SIZE - 1)
# After this many write/execute flips a page stays writable and executable (code and data share
# it); I/O on such a page is still correct, through unicorn's IN/OUT hooks, just not a precise exit.
MAX_FLIPS = 32
# Time slice while waiting for an interrupt window (unicorn cannot exit on STI/POPF).
WINDOW_SLICE_US = 2000

# MSRs unicorn implements itself, as NVMM's kernel does for its own set; others exit to the VMM.
KNOWN_MSRS = frozenset({0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000100,
                        0xC0000101, 0xC0000102, 0xC0000103, 0x174, 0x175, 0x176, 0x277, 0x10, 0x1B})

# Features unicorn announces but does not run as a CPU does, hidden from the guest: its TCG raises
# #UD for the VEX-encoded BMI1/BMI2 instructions (andn, shlx, ...) while CR4.OSFXSR is clear, which
# real CPUs do not require (Linux's bzImage decompressor runs shlx with CR4 = PAE only).
HIDDEN_FEATURES = {7: (0, 1 << 3 | 1 << 8, 0, 0)}   # leaf 7, subleaf 0

_emulator = Emulator()
_RESUME = object()  # an exit address handled in place: keep running the guest


class UnicornExitState:
    """struct nvmm_x86_exitstate, read on access."""
    __slots__ = ("_vcpu",)

    def __init__(self, vcpu):
        self._vcpu = vcpu

    @property
    def rflags(self):
        return self._vcpu._fast.read(X.UC_X86_REG_RFLAGS)

    @property
    def cr8(self):
        return self._vcpu._fast.read(X.UC_X86_REG_CR8)

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


class UnicornVCpu(VCpu):
    def __init__(self, machine, umachine, cpuid: int):
        super().__init__(machine, cpuid)
        self._um = umachine
        self.uc = umachine.new_uc()
        self._sync = StateSync(self.uc, umachine.map_into, self._read_linear)
        self._fast = FastRegs(self.uc)
        self.exit.exitstate = UnicornExitState(self)
        self._bus = GuestBus(machine.areas, self)
        self._stop = False          # a stop was requested and not yet reported (guarded by _stop_lock)
        self._in_emu = False        # the vCPU thread is inside emu_start (guarded by _stop_lock)
        self._stop_lock = threading.RLock()  # re-entrant: a signal handler may stop() from inside stop()
        self._run_lock = threading.Lock()    # held by run(); _destroy waits for it
        self._fault = None          # (kind, access, address, size, value) from a memory hook
        self._intno = None          # exception/interrupt number from UC_HOOK_INTR
        self._intr_cr2 = 0          # CR2 and error code as the reported exception left them
        self._intr_error = 0
        self._env = None            # CpuEnv, made on the first exception
        self._sync_io = []          # I/O done synchronously by the fallback hooks during this run
        self._exits = set()         # linear addresses registered as unicorn exits
        self._page_exits = {}       # linear page -> its exit addresses
        self._scanned = {}          # guest-physical page -> linear page it was scanned at
        self._flips = {}
        self._pending_event = None  # (kind, vector, error) to deliver at the next run
        self._int_window = False
        self._nmi_window = False
        self._nmi_blocked = False
        self._io_completed = False  # the current IO exit was already performed (fallback hook)
        self._rip = None            # cached RIP (None: read it from unicorn)
        self._segcache = {}         # (seg, selector, PE, LMA, GDTR) -> (base, limit, flags)
        self._last_lm_seg = {}      # long mode: last selector seen per segment (skips the GDTR read)
        self._last_lm_info = {}
        self._exit_info = {}        # linear address -> decoded exit instruction
        self._insn_cache = {}       # (cr3, linear RIP) -> instruction bytes, for MMIO assists
        self._io_info = None        # the decoded IN/OUT of the current IO exit
        uc = self.uc
        self._scan = umachine.scan
        if self._scan:
            uc.ctl_exits_enabled(True)
            uc.ctl_set_exits([])
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_prot)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_prot)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        from ...state import reset_state
        reset_state(self.state)
        # unicorn cannot give real-mode CS a base other than selector*16: start at F000:FFF0 = 0xFFFF0
        self.state.segs[C.X64_SEG_CS].base = 0xF0000
        self._setstate(C.X64_STATE_ALL)

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
            self._intr_cr2 = uc.reg_read(X.UC_X86_REG_CR2)
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
            self.uc.reg_write(X.UC_X86_REG_CR2, self._intr_cr2 if self._intno == 14 else cr2_before)
            self._cpu_env().clear_in_flight()
        else:
            self._repair_walk(cr2_before)

    def _repair_walk(self, cr2_before: int) -> None:
        """After a unicorn call that walks the guest's page tables outside its execution (the end of
        emu_start, mem_protect, ctl_remove_cache): a miss there set CR2 and old_exception; undo it."""
        if self.uc.reg_read(X.UC_X86_REG_CR2) != cr2_before:
            self.uc.reg_write(X.UC_X86_REG_CR2, cr2_before)
            self._cpu_env().clear_in_flight()

    def protect_page(self, gpage: int, prot: int) -> None:
        cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
        self.uc.mem_protect(gpage, PAGE_SIZE, prot)
        self._repair_walk(cr2)

    def _remove_cache(self, start: int, end: int) -> None:
        cr2 = self.uc.reg_read(X.UC_X86_REG_CR2)
        self.uc.ctl_remove_cache(start, end)
        self._repair_walk(cr2)

    def _on_in(self, uc, port, size, _):
        data = self._bus.io_in(port, size)  # not at a registered exit: perform it now (see MAX_FLIPS)
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
        leaf = uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF
        conf = self.cpuid_confs.get(leaf)
        if (conf is None or not conf.mask) and leaf not in HIDDEN_FEATURES:
            return False  # unicorn's own answer
        sub = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
        regs = self._cpuid_values(leaf, sub)
        for rid, v in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), regs):
            uc.reg_write(rid, v)
        return True

    # --- run --------------------------------------------------------------------------------------
    def run(self):
        with self._run_lock:
            return self._run_unlocked()

    def _run_unlocked(self):
        ex = self.exit
        if self._take_stop():
            ex.reason = C.VCPU_EXIT_STOPPED
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
            rip = self._rip if self._rip is not None else self._fast.read(X.UC_X86_REG_RIP)
            self._fault = self._intno = None
            timeout = WINDOW_SLICE_US if (self._int_window or self._nmi_window) else 0
            cr2 = uc.reg_read(X.UC_X86_REG_CR2)
            with self._stop_lock:       # a stop requested since the last check is never lost
                if self._stop:
                    self._stop = False
                    ex.reason = C.VCPU_EXIT_STOPPED
                    return ex
                self._in_emu = True
            try:
                uc.emu_start(rip, 0, timeout)
                err = None
            except UcError as e:
                err = e
            finally:
                with self._stop_lock:
                    self._in_emu = False
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
            if self._sync_io:
                continue           # reported at the top of the loop
            if self._take_stop():
                ex.reason = C.VCPU_EXIT_STOPPED
                return ex
            rip = self._fast.read(X.UC_X86_REG_RIP)
            r = self._at_exit(rip) if self._scan else self._halted_at(rip)
            if r is _RESUME:
                continue
            if r is not None:
                return r
            if timeout:
                r = self._pre_run()   # a window may have opened during the slice
                if r is not None:
                    return r
                continue
            ex.reason = C.VCPU_EXIT_NONE
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
        ex.reason = C.VCPU_EXIT_IO
        self._io_completed = True
        return ex

    # --- precise exits at registered addresses --------------------------------------------------------
    def _at_exit(self, rip: int):
        fast = self._fast
        cr0 = fast.read(X.UC_X86_REG_CR0)
        efer = fast.read_msr(0xC0000080)
        base, _, flags = self._seg_info(C.X64_SEG_CS, fast.read16(X.UC_X86_REG_CS), cr0, efer)
        linear = (base + rip) & 0xFFFFFFFFFFFFFFFF
        if linear not in self._exits:
            return None
        info = self._exit_info.get(linear)
        if info is None:
            code = self._read_linear(linear, 15, partial=True)
            mode = 64 if (flags >> 21) & 1 and efer & C.EFER_LMA else (32 if (flags >> 22) & 1 else 16)
            info = _classify(code, mode)
            if info is None:
                # not one of ours after all (a prefix byte sequence): drop the exit and go on
                self._drop_exit(linear)
                return _RESUME
            self._exit_info[linear] = info
        st = self.state
        # What the privilege check needs, and no more: CR0 and SS's selector (its RPL is the CPL).
        # (Reading every segment descriptor here cost ~90 us per CPL3 exit.)
        st.crs[C.X64_CR_CR0] = cr0
        st.segs[C.X64_SEG_SS].selector = fast.read16(X.UC_X86_REG_SS) if cr0 & C.CR0_PE else 0
        kind, length, *rest = info
        ex = self.exit
        npc = rip + length
        if self._privilege_fault(kind, rest, st):
            r = self._deliver("exception", 13, 0)
            return _RESUME if r is None else r
        if kind == "io":
            in_, port_imm, size, rep, string, asize = rest
            io = ex.io
            io.in_ = in_
            io.port = port_imm if port_imm is not None else fast.read(X.UC_X86_REG_RDX) & 0xFFFF
            io.operand_size, io.rep, io.str, io.address_size = size, rep, string, asize
            io.seg, io.npc, io.count = -1, npc, 1
            ex.reason = C.VCPU_EXIT_IO
            self._io_completed = False
            self._io_info = (rip, npc, string, in_, io.port, size)
            self._rip = rip
            return ex
        if kind == "hlt":
            self.uc.reg_write(X.UC_X86_REG_RIP, npc)
            ex.reason = C.VCPU_EXIT_HALTED
            return ex
        if kind in ("rdmsr", "wrmsr"):
            msr = self.uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
            if msr in KNOWN_MSRS:
                self._emulate_known_msr(kind, msr, npc)
                return _RESUME
            if kind == "rdmsr":
                ex.rdmsr.msr, ex.rdmsr.npc = msr, npc
                ex.reason = C.VCPU_EXIT_RDMSR
            else:
                val = (self.uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (self.uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
                ex.wrmsr.msr, ex.wrmsr.val, ex.wrmsr.npc = msr, val, npc
                ex.reason = C.VCPU_EXIT_WRMSR
            self._rip = rip
            return ex
        if kind == "cpuid":
            leaf = self.uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
            conf = self.cpuid_confs.get(leaf)
            if conf is not None and conf.exit:
                ex.insn.npc = npc
                ex.reason = C.VCPU_EXIT_CPUID
                self._rip = rip
                return ex
            sub = self.uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
            for rid, v in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX),
                              self._cpuid_values(leaf, sub)):
                self.uc.reg_write(rid, v)
            self.uc.reg_write(X.UC_X86_REG_RIP, npc)
            return _RESUME
        return None

    def _halted_at(self, rip: int):
        """Without scanning, unicorn runs HLT itself and returns from emu_start after it: a clean
        return right behind an HLT byte is the HALTED exit (at CPL0 only; at CPL3 HLT is #GP)."""
        try:
            before = self._read_linear(self._cs_base() + rip - 1, 1)
        except (NvmmError, pagewalk.PageFault):
            return None
        if before != b"\xf4":
            return None
        self.exit.reason = C.VCPU_EXIT_HALTED
        return self.exit

    def _privilege_fault(self, kind, rest, st) -> bool:
        """Would the CPU raise #GP(0) before this instruction exits? (CPL and I/O permission.)"""
        cpl = st.segs[C.X64_SEG_SS].selector & 3 if st.crs[C.X64_CR_CR0] & C.CR0_PE else 0
        if cpl == 0 or kind == "cpuid":
            return False
        if kind != "io":
            return True  # HLT, RDMSR, WRMSR are CPL0-only
        iopl = (self.uc.reg_read(X.UC_X86_REG_RFLAGS) >> 12) & 3
        if cpl <= iopl:
            return False
        port = rest[1] if rest[1] is not None else self.uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFF
        _, tr_base, tr_limit, _ = self.uc.reg_read(X.UC_X86_REG_TR)
        try:
            base = int.from_bytes(self._read_linear(tr_base + 102, 2), "little")
            last = base + (port + rest[2] - 1) // 8
            if tr_limit < last:
                return True
            bits = int.from_bytes(self._read_linear(tr_base + base + port // 8, last - base - port // 8 + 1), "little")
        except (NvmmError, pagewalk.PageFault):
            return True
        return bool((bits >> (port % 8)) & ((1 << rest[2]) - 1))

    def _emulate_known_msr(self, kind, msr, npc):
        uc = self.uc
        if kind == "rdmsr":
            v = uc.msr_read(msr)
            uc.reg_write(X.UC_X86_REG_RAX, v & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_RDX, v >> 32)
        else:
            v = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
            uc.msr_write(msr, v)
        uc.reg_write(X.UC_X86_REG_RIP, npc)

    def _cpuid_values(self, leaf, sub):
        """Unicorn's CPUID answer with this vCPU's masks applied (hypervisor bit and APIC id set)."""
        probe = self._um.cpuid_probe(leaf, sub)
        regs = list(probe)
        if leaf == 1:
            regs[1] = (regs[1] & 0x00FFFFFF) | ((self.cpuid & 0xFF) << 24)
            regs[2] |= 1 << 31
        hidden = HIDDEN_FEATURES.get(leaf) if sub == 0 else None
        if hidden is not None:
            regs = [r & ~h for r, h in zip(regs, hidden)]
        conf = self.cpuid_confs.get(leaf)
        if conf is not None and conf.mask:
            regs = [(r & ~d) | s for r, s, d in zip(regs, conf.set, conf.del_)]
        return regs

    # --- faults: MMIO, ROM writes, code-page tracking --------------------------------------------------
    def _fault_exit(self, err):
        f = self._fault
        self._fault = None
        if f is None:
            if err.errno == UC_ERR_INSN_INVALID:
                return self._deliver("exception", 6, None)   # #UD at the instruction
            raise NvmmError(errno.EFAULT, f"unicorn stopped the guest: {err}")
        kind, access, gpa, size, value = f     # unicorn reports the guest-physical address
        if kind == "prot" and access == UC_MEM_FETCH_PROT:
            self._scan_page(self._fetch_page(gpa & PAGE_MASK), gpa & PAGE_MASK)
            return None
        if kind == "prot" and access == UC_MEM_WRITE_PROT:
            area = self.machine.areas.lookup(gpa)
            if area is not None and area.prot & C.PROT_WRITE:
                self._unscan_page(gpa & PAGE_MASK)
                return None
        # MMIO (unmapped) or a write to ROM: a MEMORY exit at the faulting instruction
        ex = self.exit
        m = ex.mem
        m.gpa = gpa
        m.prot = C.PROT_EXEC if access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT) else \
            (C.PROT_WRITE if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT) else C.PROT_READ)
        m.size = size
        m.inst_len = 0
        ex.reason = C.VCPU_EXIT_MEMORY
        return ex

    def _translate(self, linear: int) -> int:
        fast = self._fast
        cr0 = fast.read(X.UC_X86_REG_CR0)
        if not cr0 & C.CR0_PG:
            return linear
        try:
            gpa, _ = pagewalk.gva_to_gpa(self.machine.read_guest, cr0, fast.read(X.UC_X86_REG_CR3),
                                         fast.read(X.UC_X86_REG_CR4), fast.read_msr(0xC0000080), linear)
        except pagewalk.PageFault as e:
            raise NvmmError(errno.EFAULT, f"unicorn faulted at {linear:#x}, which does not translate: {e.reason}") from None
        return gpa

    def _fetch_page(self, gpage: int) -> int:
        """The linear page of a fetch that faulted on guest-physical page `gpage`: the page of
        CS:RIP, or the next one for an instruction (or a translation block) that runs into it."""
        linear = (self._cs_base() + self._fast.read(X.UC_X86_REG_RIP)) & PAGE_MASK
        for page in (linear, linear + PAGE_SIZE):
            try:
                if self._translate(page) == gpage:
                    return page
            except NvmmError:
                pass
        raise NvmmError(errno.EFAULT, f"a fetch faulted on guest-physical page {gpage:#x}, which is mapped at "
                                      f"neither {linear:#x} nor the page after it")

    def _scan_page(self, page: int, gpage: int) -> None:
        """Find the exit instructions of the code page at linear `page` (guest-physical `gpage`)."""
        area = self.machine.areas.lookup(gpage)
        if area is None or not area.prot & C.PROT_EXEC:
            raise NvmmError(errno.EFAULT, f"guest executed non-executable memory at {page:#x} (guest-physical {gpage:#x})")
        code = self.machine.read_guest(gpage, PAGE_SIZE)
        before = b""
        if page >= MAX_PREFIXES:
            before = self._read_linear(page - MAX_PREFIXES, MAX_PREFIXES, partial=True)
        addrs = exit_candidates(code, page, before)
        old = self._page_exits.get(page)
        if old:
            self._exits.difference_update(old)
        for a in [a for a in self._exit_info if a & PAGE_MASK == page]:
            del self._exit_info[a]
        for k in [k for k in self._insn_cache if k[1] & PAGE_MASK == page]:
            del self._insn_cache[k]
        self._page_exits[page] = addrs
        self._exits.update(addrs)
        self.uc.ctl_set_exits(sorted(self._exits))
        self._remove_cache(page, page + PAGE_SIZE)
        flips = self._flips.get(gpage, 0)
        self._scanned[gpage] = page
        self._um.protect(gpage, UC_PROT_ALL if flips >= MAX_FLIPS else (UC_PROT_READ | UC_PROT_EXEC))

    def _unscan_page(self, gpage: int) -> None:
        page = self._scanned.pop(gpage, None)
        if page is not None:
            for k in [k for k in self._insn_cache if k[1] & PAGE_MASK == page]:
                del self._insn_cache[k]
        if page is not None and page in self._page_exits:
            self._exits.difference_update(self._page_exits.pop(page))
            self.uc.ctl_set_exits(sorted(self._exits))
        self._flips[gpage] = self._flips.get(gpage, 0) + 1
        self._um.protect(gpage, UC_PROT_READ | UC_PROT_WRITE)

    def _seg_info(self, idx: int, sel: int, cr0: int, efer: int):
        """(base, limit, descriptor flags) of a segment register, as the CPU has it loaded."""
        if not cr0 & C.CR0_PE:
            return sel << 4, 0xFFFF, (0x9B00 if idx == C.X64_SEG_CS else 0x9300)
        if efer & C.EFER_LMA and idx not in (C.X64_SEG_FS, C.X64_SEG_GS) and self._last_lm_seg.get(idx) == sel:
            return self._last_lm_info[idx]
        lma = efer & C.EFER_LMA
        if lma and idx in (C.X64_SEG_FS, C.X64_SEG_GS):
            base = self._fast.read(X.UC_X86_REG_FS_BASE if idx == C.X64_SEG_FS else X.UC_X86_REG_GS_BASE)
            return base, 0xFFFFFFFF, 0x9300
        _, gbase, glimit, _ = self._fast.read_mmr(X.UC_X86_REG_LDTR if sel & 4 else X.UC_X86_REG_GDTR)
        key = (idx, sel, lma, gbase, glimit)
        info = self._segcache.get(key)
        if info is None:
            seg = self.state.segs[idx]
            raw = None
            if sel & ~3 and (sel & ~7) + 7 <= glimit:
                raw = int.from_bytes(self._read_linear(gbase + (sel & ~7), 8), "little")
            if raw is None:
                info = (0, 0, ((sel & 3) << 13) | (0x8000 if idx == C.X64_SEG_SS and lma else 0))
            else:
                from .ucstate import descriptor_to_seg
                descriptor_to_seg(seg, sel, raw)
                info = (seg.base, seg.limit, attrib_to_flags(seg.attrib))
            self._segcache[key] = info
        if lma:
            self._last_lm_seg[idx] = sel
            self._last_lm_info[idx] = info
        return info

    def _forget_range(self, gpa: int, size: int) -> None:
        """RAM was unmapped: its pages are no longer scanned code."""
        for gpage in [g for g in self._scanned if gpa <= g < gpa + size]:
            page = self._scanned.pop(gpage)
            self._exits.difference_update(self._page_exits.pop(page, []))
        self.uc.ctl_set_exits(sorted(self._exits))

    def _drop_exit(self, linear: int) -> None:
        self._exits.discard(linear)
        for addrs in self._page_exits.values():
            if linear in addrs:
                addrs.remove(linear)
        self.uc.ctl_set_exits(sorted(self._exits))
        self._remove_cache(linear, linear + 1)

    def _read_linear(self, linear: int, size: int, partial: bool = False) -> bytes:
        """Guest-linear bytes through the page tables (for GDT and instruction reads)."""
        fast = self._fast
        cr0 = fast.read(X.UC_X86_REG_CR0)
        if not cr0 & C.CR0_PG:
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
        args = (fast.read(X.UC_X86_REG_CR3), fast.read(X.UC_X86_REG_CR4), fast.read_msr(0xC0000080))
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

    # --- exceptions raised by the guest, events injected by the VMM -----------------------------------
    def _guest_exception(self, intno: int):
        uc = self.uc
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        kind, next_rip, error = "exception", None, None
        code_before = self._read_linear(max(0, self._cs_base() + rip - 2), 2, partial=True)
        if len(code_before) == 2 and code_before[0] == 0xCD and code_before[1] == intno:
            kind, next_rip = "soft", rip
            uc.reg_write(X.UC_X86_REG_RIP, rip - 2)
        elif intno in (3, 4) and code_before[-1:] in (b"\xcc", b"\xce"):
            kind, next_rip = "soft", rip
            uc.reg_write(X.UC_X86_REG_RIP, rip - 1)
        elif intno in ERROR_CODE_VECTORS:
            error = self._fault_error_code(intno)
        return self._deliver(kind, intno, error, next_rip)

    def _cs_base(self) -> int:
        fast = self._fast
        return self._seg_info(C.X64_SEG_CS, fast.read16(X.UC_X86_REG_CS), fast.read(X.UC_X86_REG_CR0),
                              fast.read_msr(0xC0000080))[0]

    def _fault_error_code(self, vector: int) -> int:
        """The error code unicorn computed (its API does not report it: read from its CPU state
        when the exception was reported); #DF's is always 0."""
        return 0 if vector == 8 else self._intr_error

    def _deliver(self, kind, vector, error, next_rip=None):
        """Deliver an event through the IVT/IDT in software. Delivery runs on a lazy view of the
        registers, so only what it touches is read (CS, SS, RIP, RSP, RFLAGS, CR0/CR3/CR4, EFER,
        IDTR, GDTR, and TR on a privilege change), and only what it changed is written back: RIP,
        RSP, RFLAGS (and CR2 after a #PF during delivery) directly; CS and SS, when they change,
        through a helper handle. Control registers and MSRs are not rewritten, so the vCPU keeps
        its TLB and translated code."""
        st = LazyState(self.uc, self._fast, self._seg_info)
        try:
            deliver(st, self._bus, vector, kind, error, next_rip)
        except TripleFault:
            self.exit.reason = C.VCPU_EXIT_SHUTDOWN
            return self.exit
        changed = st.changed_segs()
        if changed:
            self._load_delivered_segs(st, changed)
        st.write_back()
        self._rip = st.gprs[C.X64_GPR_RIP]
        return None

    def _load_delivered_segs(self, st, changed) -> None:
        """Load the segment registers a delivery changed (CS to the handler's; SS on a privilege
        change; the data segments when leaving virtual-8086 mode) into unicorn."""
        cr0, efer = st.crs[C.X64_CR_CR0], st.msrs[C.X64_MSR_EFER]
        sels = {i: st.segs[i].selector for i in changed if i in SEG_IDS}
        to_cpl0 = bool(cr0 & C.CR0_PE) and C.X64_SEG_SS in sels  # SS changes with the privilege level
        if to_cpl0 and sels[C.X64_SEG_SS] & 3:
            raise ValueError("the unicorn driver can set up CPL 0 or 3, not rings 1 and 2")
        self._sync.load_segments(sels, cr0, efer, to_cpl0)
        lma = efer & C.EFER_LMA
        for i, sel in sels.items():
            self._last_lm_seg.pop(i, None)
            if cr0 & C.CR0_PE and sel & ~3:   # unicorn now has the descriptor just read: cache that
                seg = st.segs[i]
                table = st.segs[C.X64_SEG_LDT if sel & 4 else C.X64_SEG_GDT]
                self._segcache[(i, sel, lma, table.base, table.limit)] = \
                    (seg.base, seg.limit, attrib_to_flags(seg.attrib))
        g = st.gprs      # the helper went through EFLAGS (and may have cut RIP): write them all back
        for i in (C.X64_GPR_RIP, C.X64_GPR_RSP, C.X64_GPR_RFLAGS):
            g[i] = g[i]

    def _pre_run(self):
        ex = self.exit
        if self._pending_event is not None:
            kind, vector, error = self._pending_event
            self._pending_event = None
            if vector == 2 and kind == "hw":
                self._nmi_blocked = True
            r = self._deliver(kind, vector, error)
            if r is not None:
                return r
        if self._int_window or self._nmi_window:
            rflags = self._fast.read(X.UC_X86_REG_RFLAGS)
            if self._int_window and rflags & C.RFLAGS_IF:
                self._int_window = False
                ex.reason = C.VCPU_EXIT_INT_READY
                return ex
            if self._nmi_window and not self._nmi_blocked:
                self._nmi_window = False
                ex.reason = C.VCPU_EXIT_NMI_READY
                return ex
        return None

    def _inject_exception(self, vector, has_error, error):
        self._pending_event = ("exception", vector, error if has_error else None)

    def _inject_interrupt(self, vector):
        self._pending_event = ("hw", vector, None)

    def _inject_nmi(self):
        self._pending_event = ("hw", 2, None)

    def tsc_khz(self):
        return self._um.tsc_khz()

    def stop(self) -> None:
        """Make the running (or next) run() return STOPPED. Safe from any thread (one racing a
        destroy does nothing; after it, stop is ENOENT like every call). emu_stop is called only while
        the vCPU thread is inside emu_start (the lock keeps it there until emu_stop has returned);
        unicorn drops a stop that lands
        while emu_start is still starting, so KICKER repeats it until the vCPU has left."""
        with self._stop_lock:
            if self.uc is None:
                return
            self._stop = True
            if self._in_emu:
                self.uc.emu_stop()
                KICKER.watch(self)

    def _restop(self) -> bool:
        """KICKER: repeat emu_stop while a stop is pending inside emu_start; False once it is not."""
        with self._stop_lock:
            if not (self._stop and self._in_emu) or self.uc is None:
                return False
            self.uc.emu_stop()
            return True

    def _take_stop(self) -> bool:
        with self._stop_lock:
            stop, self._stop = self._stop, False
        return stop

    # --- assists ----------------------------------------------------------------------------------
    def assist_io(self) -> None:
        ex = self.exit
        if ex.reason != C.VCPU_EXIT_IO:
            raise AssistError(errno.EINVAL, f"assist_io on a {ex.name} exit")
        if self._io_completed:
            self._io_completed = False  # the fallback hook already performed it
            return
        rip, npc, string, in_, port, size = self._io_info
        if string:
            self._emulate_at_rip()
            return
        fast = self._fast
        rax = fast.read(X.UC_X86_REG_RAX)
        if in_:
            v = int.from_bytes(self._bus.io_in(port, size), "little")
            rax = v if size == 4 else (rax & ~((1 << (8 * size)) - 1)) | v  # 32-bit IN zero-extends
            fast.write(X.UC_X86_REG_RAX, rax)
        else:
            self._bus.io_out(port, (rax & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        fast.write(X.UC_X86_REG_RIP, npc)
        self._rip = npc

    def assist_mem(self) -> None:
        ex = self.exit
        if ex.reason != C.VCPU_EXIT_MEMORY:
            raise AssistError(errno.EINVAL, f"assist_mem on a {ex.name} exit")
        self._emulate_at_rip()

    def _emulate_at_rip(self) -> None:
        st = LazyState(self.uc, self._fast, self._seg_info)
        insn = None
        cr0 = st.crs[C.X64_CR_CR0]
        cs = st.segs[C.X64_SEG_CS]
        linear = (cs.base + st.gprs[C.X64_GPR_RIP]) & 0xFFFFFFFFFFFFFFFF
        key = (st.crs[C.X64_CR_CR3] if cr0 & C.CR0_PG else 0, linear)
        if linear & PAGE_MASK in self._page_exits:  # a scanned (write-tracked) code page: bytes can be kept
            insn = self._insn_cache.get(key)
            if insn is None:
                insn = self._read_linear(linear, 15, partial=True)
                if len(self._insn_cache) > 4096:
                    self._insn_cache.clear()
                self._insn_cache[key] = insn
        try:
            _emulator.step(st, self._bus, insn)
        except EmulationError as e:
            raise AssistError(errno.ENODEV, str(e)) from None
        except GuestFault as e:
            if e.vector == 14 and e.cr2 is not None:
                self.uc.reg_write(X.UC_X86_REG_CR2, e.cr2)
            self._pending_event = ("exception", e.vector, e.error_code)
            return
        st.write_back()
        self._rip = st.gprs[C.X64_GPR_RIP]

    # --- state ----------------------------------------------------------------------------------
    def _getstate(self, flags: int) -> None:
        st, s = self.state, self._sync
        if flags & C.X64_STATE_GPRS:
            s.read_gprs(st)
        if flags & C.X64_STATE_SEGS:
            s.read_segs(st)
        if flags & C.X64_STATE_CRS:
            s.read_crs(st)
        if flags & C.X64_STATE_DRS:
            s.read_drs(st)
        if flags & C.X64_STATE_MSRS:
            s.read_msrs(st)
        if flags & C.X64_STATE_INTR:
            st.intr.int_shadow = 0
            st.intr.int_window_exiting = 1 if self._int_window else 0
            st.intr.nmi_window_exiting = 1 if self._nmi_window else 0
            st.intr.evt_pending = 1 if self._pending_event is not None else 0
        if flags & C.X64_STATE_FPU:
            s.read_fpu(st)

    def _setstate(self, flags: int) -> None:
        st, s = self.state, self._sync
        if flags & (C.X64_STATE_SEGS | C.X64_STATE_CRS) or flags & C.X64_STATE_MSRS:
            # the mode-defining groups go in together; complete them from the vCPU where not given
            need = (C.X64_STATE_SEGS | C.X64_STATE_CRS | C.X64_STATE_MSRS) & ~flags
            if need:
                saved = bytes(_buf(st))
                self._getstate(need)
                wanted = bytes(_buf(st))
                _buf(st)[:] = saved
                _merge_groups(st, wanted, need)
            # the helper that loads the system state keeps the vCPU's GPRs but goes through EFLAGS
            # (and may cut RIP): without GPRS in flags, put the vCPU's own back
            fast = self._fast
            keep = None if flags & C.X64_STATE_GPRS else \
                (fast.read(X.UC_X86_REG_RIP), fast.read(X.UC_X86_REG_RFLAGS))
            self._segcache.clear()
            self._last_lm_seg.clear()
            s.load_system(st)
            s.write_msrs(st)
            if keep is not None:
                fast.write(X.UC_X86_REG_RIP, keep[0])
                fast.write(X.UC_X86_REG_RFLAGS, keep[1])
        if flags & C.X64_STATE_GPRS:
            s.write_gprs(st)
            self._rip = st.gprs[C.X64_GPR_RIP]
        if flags & C.X64_STATE_DRS:
            s.write_drs(st)
        if flags & C.X64_STATE_INTR:
            self._int_window = bool(st.intr.int_window_exiting)
            self._nmi_window = bool(st.intr.nmi_window_exiting)
        if flags & C.X64_STATE_FPU:
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
    spans = {C.X64_STATE_SEGS: ("segs", 160), C.X64_STATE_CRS: ("crs", 48), C.X64_STATE_MSRS: ("msrs", 88)}
    buf = ffi.buffer(st)
    for g, (field, size) in spans.items():
        if groups & g:
            off = ffi.offsetof("struct nvmm_x64_state", field)
            buf[off:off + size] = wanted[off:off + size]


def _classify(code: bytes, mode: int):
    """(kind, length, ...) of an exit instruction at the start of `code`, or None."""
    i = 0
    opsize = 4 if mode != 16 else 2
    asize = {16: 2, 32: 4, 64: 8}[mode]
    rep = False
    while i < len(code) and i < 14:
        b = code[i]
        if b == 0x66:
            opsize = 2 if mode != 16 else 4
        elif b == 0x67:
            asize = {16: 4, 32: 2, 64: 4}[mode]
        elif b in (0xF2, 0xF3):
            rep = True
        elif b in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0):
            pass
        elif mode == 64 and 0x40 <= b <= 0x4F:
            pass
        else:
            break
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if op in (0xE4, 0xE5, 0xE6, 0xE7):
        if i + 1 >= len(code):
            return None
        return ("io", i + 2, op in (0xE4, 0xE5), code[i + 1], 1 if op in (0xE4, 0xE6) else opsize, False, False, asize)
    if op in (0xEC, 0xED, 0xEE, 0xEF):
        return ("io", i + 1, op in (0xEC, 0xED), None, 1 if op in (0xEC, 0xEE) else opsize, False, False, asize)
    if op in (0x6C, 0x6D, 0x6E, 0x6F):
        return ("io", i + 1, op in (0x6C, 0x6D), None, 1 if op in (0x6C, 0x6E) else opsize, rep, True, asize)
    if op == 0xF4:
        return ("hlt", i + 1)
    if op == 0x0F and i + 1 < len(code):
        nxt = code[i + 1]
        if nxt == 0x32:
            return ("rdmsr", i + 2)
        if nxt == 0x30:
            return ("wrmsr", i + 2)
        if nxt == 0xA2:
            return ("cpuid", i + 2)
    return None

