"""The nvmm driver's logic against recorded NVMM exchanges (no /dev/nvmm needed, nothing skipped).

A FakeNvmm (test_nvmm_fake_kernel.py) stands behind the driver's kernel seam: each VCPU_RUN plays
the next recorded exit, written into the exit struct and the comm page as the kernel writes them,
and the tests check what the driver writes back: committed state groups, events, stop flags,
ioctls made or (for setstate/inject/cached getstate) not made. Both flavours (NetBSD v1/v2,
DragonFly) and both backends (VMX: no instruction bytes, fetched by a guest page walk; SVM: the
decode-assist bytes in the exit).
"""
import errno

import pytest

import nvmmpy
from nvmmpy import constants as nvmm
from nvmmpy.errors import AssistError, DriverUnavailable, NvmmError
from test_nvmm_fake_kernel import (FLAVOURS, ScriptCpu, fake_nvmm, io_exit, mem_exit, simple_exit, then)
from nvmmpy.vmm.cpu_modes import set_long_mode

RAM = 2 << 20
ENTRY = 0x10000
STACK = 0x80000
MMIO = 0x10000000          # beyond RAM: a MEMORY exit
RWX = nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC
GPR = nvmm.X64_STATE_GPRS
ASSIST = nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS


class Rig:
    """One machine with 2 MiB of RAM at GPA 0, one vCPU, recording callbacks."""

    def __init__(self, fake, long_mode=True):
        self.fake = fake
        self.mach = nvmmpy.Machine("nvmm")
        self.mem = nvmmpy.HostMemory(RAM)
        self.ram = self.mem.view
        self.mach.hva_map(self.mem.address, RAM)
        self.mach.gpa_map(self.mem.address, 0, RAM, RWX)
        self.vcpu = self.mach.vcpu_create(0)
        self.kv = fake.vcpu(0)
        self.mem_log, self.io_log = [], []
        self.io_in_data = b""
        self.mmio_read = b""
        self.vcpu.configure_callbacks(io=self._io, mem=self._mem)
        if long_mode:
            set_long_mode(self.vcpu, self.ram, ENTRY, STACK)   # identity-maps 1 GiB: MMIO translates

    def _mem(self, m):
        if m.write:
            self.mem_log.append(("W", m.gpa, m.size, bytes(m.data)))
        else:
            off = m.gpa - MMIO
            m.data[:] = self.mmio_read[off:off + m.size].ljust(m.size, b"\0")
            self.mem_log.append(("R", m.gpa, m.size, bytes(m.data)))

    def _io(self, io):
        if io.in_:
            io.data[:] = self.io_in_data[:io.size]
            self.io_log.append(("IN", io.port, io.size, bytes(io.data)))
        else:
            self.io_log.append(("OUT", io.port, io.size, bytes(io.data)))

    def close(self):
        self.mach.destroy()
        self.mem.close()


def rig(os_name="netbsd", version=2, backend="vmx", steps=(), long_mode=True):
    cm = fake_nvmm(os_name=os_name, version=version, backend=backend, cpu=ScriptCpu(steps))
    fake = cm.__enter__()
    r = Rig(fake, long_mode)
    r._cm = cm
    return r


@pytest.fixture
def make():
    made = []

    def _make(*a, **kw):
        r = rig(*a, **kw)
        made.append(r)
        return r
    yield _make
    for r in made:
        r.close()
        r._cm.__exit__(None, None, None)


def ioctls_during(fake, fn):
    n = len(fake.log)
    fn()
    return fake.log[n:]


HALT = simple_exit(nvmm.VCPU_EXIT_HALTED)


# --- MEMORY exits: the assist decodes and performs the instruction --------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mmio_write_vmx_fetches_instruction_by_page_walk(make, flavour):
    """VMX: inst_len 0. `mov %eax,(%rbx)` is fetched at CS:RIP through the guest's 4-level page
    tables; the mem callback gets the store; RIP+2 goes back through state_commit."""
    r = make(*flavour, backend="vmx", steps=[
        then(mem_exit(MMIO, nvmm.PROT_WRITE), rax=0x11223344DEADBEEF, rbx=MMIO, rip=ENTRY), HALT])
    r.ram[ENTRY:ENTRY + 2] = b"\x89\x03"                      # mov %eax,(%rbx)
    ex = r.vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_MEMORY and ex.mem.gpa == MMIO and ex.mem.inst_len == 0
    assert ex.mem.prot == nvmm.PROT_WRITE
    made = ioctls_during(r.fake, lambda: r.mach.assist_mem(r.vcpu))
    assert made == []                                         # state was provided with the exit
    assert r.mem_log == [("W", MMIO, 4, bytes.fromhex("efbeadde"))]
    comm = r.kv.comm
    assert comm.state_commit == GPR
    assert comm.state.gprs[nvmm.X64_GPR_RIP] == ENTRY + 2
    assert r.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED
    assert r.kv.commits[-1] == GPR and r.kv.kstate.gprs[nvmm.X64_GPR_RIP] == ENTRY + 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mmio_svm_uses_decode_assist_bytes(make, flavour):
    """SVM: the bytes come with the exit. Guest RAM at RIP holds a different instruction (a byte
    store), so a driver that fetched from RAM would report a 1-byte access."""
    r = make(*flavour, backend="svm", steps=[
        then(mem_exit(MMIO + 8, nvmm.PROT_WRITE, inst=b"\x89\x03"), rax=0xCAFEF00D, rbx=MMIO + 8, rip=ENTRY), HALT])
    r.ram[ENTRY:ENTRY + 2] = b"\x88\x03"                      # mov %al,(%rbx) -- not what ran
    ex = r.vcpu.run()
    assert ex.mem.inst_len == 2 and ex.mem.inst_bytes == b"\x89\x03"
    r.mach.assist_mem(r.vcpu)
    assert r.mem_log == [("W", MMIO + 8, 4, bytes.fromhex("0df0feca"))]
    assert r.kv.comm.state.gprs[nvmm.X64_GPR_RIP] == ENTRY + 2


def test_mmio_read_writes_register_back(make):
    r = make(steps=[then(mem_exit(MMIO, nvmm.PROT_READ), rax=0xFFFFFFFFFFFFFFFF, rbx=MMIO, rip=ENTRY), HALT])
    r.ram[ENTRY:ENTRY + 3] = b"\x48\x8b\x03"                  # mov (%rbx),%rax
    r.mmio_read = bytes(range(1, 9))
    r.vcpu.run()
    r.mach.assist_mem(r.vcpu)
    assert r.mem_log == [("R", MMIO, 8, bytes(range(1, 9)))]
    g = r.kv.comm.state.gprs
    assert g[nvmm.X64_GPR_RAX] == 0x0807060504030201 and g[nvmm.X64_GPR_RIP] == ENTRY + 3
    r.vcpu.run()
    assert r.kv.kstate.gprs[nvmm.X64_GPR_RAX] == 0x0807060504030201


def test_mmio_sse_load_commits_fpu(make):
    """An SSE load from MMIO needs the FPU group: fetched with GETSTATE, committed with GPRS."""
    r = make(steps=[then(mem_exit(MMIO, nvmm.PROT_READ), rbx=MMIO, rip=ENTRY), HALT])
    r.ram[ENTRY:ENTRY + 4] = b"\x66\x0f\x6f\x03"              # movdqa (%rbx),%xmm0
    r.mmio_read = bytes(range(16))
    r.vcpu.run()
    made = ioctls_during(r.fake, lambda: r.mach.assist_mem(r.vcpu))
    assert made == ["VCPU_GETSTATE"]
    assert r.kv.comm.state_commit == GPR | nvmm.X64_STATE_FPU
    assert bytes(r.kv.comm.state.fpu.fx_xmm[0].xmm_bytes) == bytes(range(16))


def test_mmio_unknown_instruction_is_enodev(make):
    r = make(steps=[then(mem_exit(MMIO, nvmm.PROT_READ), rbx=MMIO, rip=ENTRY)])
    r.ram[ENTRY:ENTRY + 3] = b"\x0f\x0b\x90"                  # ud2: nothing to emulate
    r.vcpu.run()
    with pytest.raises(AssistError) as e:
        r.mach.assist_mem(r.vcpu)
    assert e.value.errno == errno.ENODEV
    assert r.kv.comm.state_commit == 0


def test_mmio_guest_fault_is_injected_through_comm_page(make):
    """A MOVS whose other operand does not translate: #PF goes in as an event, CR2 as state."""
    r = make(steps=[then(mem_exit(MMIO, nvmm.PROT_READ), rsi=MMIO, rdi=0x7FFF00000000, rcx=1, rip=ENTRY), HALT])
    r.ram[ENTRY:ENTRY + 1] = b"\xa4"                          # movsb
    r.vcpu.run()
    r.mach.assist_mem(r.vcpu)
    comm = r.kv.comm
    assert comm.event_commit and comm.event.type == nvmm.VCPU_EVENT_EXCP and comm.event.vector == 14
    assert comm.state.crs[nvmm.X64_CR_CR2] == 0x7FFF00000000 and comm.state_commit & nvmm.X64_STATE_CRS
    r.vcpu.run()
    assert r.kv.events[-1][:2] == (nvmm.VCPU_EVENT_EXCP, 14)


def test_assist_on_wrong_exit_is_einval(make):
    r = make(steps=[HALT])
    r.vcpu.run()
    for assist in (r.mach.assist_mem, r.mach.assist_io):
        with pytest.raises(AssistError) as e:
            assist(r.vcpu)
        assert e.value.errno == errno.EINVAL


# --- IO exits --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_io_out_and_in(make, flavour):
    r = make(*flavour, steps=[
        then(io_exit(0x3F8, False, 1, ENTRY + 1), rax=0x1241, rip=ENTRY),
        then(io_exit(0x60, True, 2, ENTRY + 3), rax=0xAAAAAAAAAAAAAAAA, rip=ENTRY + 1),
        then(io_exit(0x70, True, 4, ENTRY + 4), rax=0xAAAAAAAAAAAAAAAA, rip=ENTRY + 3),
        HALT])
    ex = r.vcpu.run()
    assert (ex.reason, ex.io.in_, ex.io.port, ex.io.operand_size, ex.io.npc) == (nvmm.VCPU_EXIT_IO, False, 0x3F8, 1, ENTRY + 1)
    assert ioctls_during(r.fake, lambda: r.mach.assist_io(r.vcpu)) == []
    assert r.io_log[-1] == ("OUT", 0x3F8, 1, b"A")
    assert r.kv.comm.state.gprs[nvmm.X64_GPR_RIP] == ENTRY + 1 and r.kv.comm.state_commit == GPR

    r.io_in_data = b"\x34\x12"
    r.vcpu.run()
    r.mach.assist_io(r.vcpu)
    assert r.kv.comm.state.gprs[nvmm.X64_GPR_RAX] == 0xAAAAAAAAAAAA1234        # 16-bit IN keeps the rest
    r.io_in_data = b"\x78\x56\x34\x12"
    r.vcpu.run()
    assert r.kv.kstate.gprs[nvmm.X64_GPR_RIP] == ENTRY + 3                    # the commit reached the kernel
    r.mach.assist_io(r.vcpu)
    assert r.kv.comm.state.gprs[nvmm.X64_GPR_RAX] == 0x12345678               # 32-bit IN zero-extends
    assert r.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED
    assert r.kv.kstate.gprs[nvmm.X64_GPR_RIP] == ENTRY + 4


def test_io_string_outs_through_emulator(make):
    """OUTSB: data from guest RAM at DS:RSI, RSI advanced, RIP = next (VMX gives the segment)."""
    r = make(steps=[then(io_exit(0x80, False, 1, ENTRY + 1, seg=nvmm.X64_SEG_DS, string=True),
                         rsi=0x40000, rdx=0x80, rip=ENTRY), HALT])
    r.ram[ENTRY] = 0x6E                                       # outsb
    r.ram[0x40000] = 0x5A
    r.vcpu.run()
    r.mach.assist_io(r.vcpu)
    assert r.io_log == [("OUT", 0x80, 1, b"Z")]
    g = r.kv.comm.state.gprs
    assert g[nvmm.X64_GPR_RSI] == 0x40001 and g[nvmm.X64_GPR_RIP] == ENTRY + 1


# --- other exits decode into the common Exit ----------------------------------------------------
def test_exit_payloads_decode(make):
    r = make(steps=[
        simple_exit(nvmm.VCPU_EXIT_RDMSR, rdmsr__msr=0x1B, rdmsr__npc=ENTRY + 2),
        simple_exit(nvmm.VCPU_EXIT_WRMSR, wrmsr__msr=0x277, wrmsr__val=0x0007040600070406, wrmsr__npc=ENTRY + 4),
        simple_exit(nvmm.VCPU_EXIT_CPUID, insn__npc=ENTRY + 6),
        simple_exit(nvmm.VCPU_EXIT_MONITOR, insn__npc=ENTRY + 9),
        simple_exit(nvmm.VCPU_EXIT_MWAIT, insn__npc=ENTRY + 12),
        simple_exit(nvmm.VCPU_EXIT_INVALID, inv__hwcode=0x7B),
        HALT,
        simple_exit(nvmm.VCPU_EXIT_SHUTDOWN),
        simple_exit(nvmm.VCPU_EXIT_INT_READY),
        simple_exit(nvmm.VCPU_EXIT_NMI_READY),
        simple_exit(nvmm.VCPU_EXIT_TPR_CHANGED),
        simple_exit(nvmm.VCPU_EXIT_NONE),
    ])
    v = r.vcpu
    ex = v.run()
    assert (ex.reason, ex.rdmsr.msr, ex.rdmsr.npc) == (nvmm.VCPU_EXIT_RDMSR, 0x1B, ENTRY + 2)
    # RDMSR provides GPRS: completing it (RAX/RDX, RIP = npc) needs no GETSTATE
    def complete():
        st = v.getstate(nvmm.X64_STATE_GPRS)
        st.gprs[nvmm.X64_GPR_RAX], st.gprs[nvmm.X64_GPR_RDX] = 0xFEE00900, 0
        st.gprs[nvmm.X64_GPR_RIP] = ex.rdmsr.npc
        v.setstate(nvmm.X64_STATE_GPRS)
    assert ioctls_during(r.fake, complete) == []
    ex = v.run()
    assert r.kv.kstate.gprs[nvmm.X64_GPR_RAX] == 0xFEE00900 and r.kv.kstate.gprs[nvmm.X64_GPR_RIP] == ENTRY + 2
    assert (ex.reason, ex.wrmsr.msr, ex.wrmsr.val, ex.wrmsr.npc) == (nvmm.VCPU_EXIT_WRMSR, 0x277, 0x0007040600070406, ENTRY + 4)
    for reason, npc in ((nvmm.VCPU_EXIT_CPUID, 6), (nvmm.VCPU_EXIT_MONITOR, 9), (nvmm.VCPU_EXIT_MWAIT, 12)):
        ex = v.run()
        assert (ex.reason, ex.insn.npc) == (reason, ENTRY + npc)
    ex = v.run()
    assert ex.reason == nvmm.VCPU_EXIT_INVALID and ex.inv.hwcode == 0x7B and "0x7b" in ex.inv.detail
    for reason in (nvmm.VCPU_EXIT_HALTED, nvmm.VCPU_EXIT_SHUTDOWN, nvmm.VCPU_EXIT_INT_READY, nvmm.VCPU_EXIT_NMI_READY,
                   nvmm.VCPU_EXIT_TPR_CHANGED, nvmm.VCPU_EXIT_NONE):
        assert v.run().reason == reason


def test_exitstate_decodes(make):
    def step(kv, k):
        k.reason = nvmm.VCPU_EXIT_INT_READY
        es = k.exitstate
        es.rflags, es.cr8, es.int_shadow, es.int_window_exiting, es.nmi_window_exiting, es.evt_pending = \
            0x202, 5, 1, 0, 1, 1
    r = make(steps=[step])
    es = r.vcpu.run().exitstate
    assert (es.rflags, es.cr8, es.int_shadow, es.int_window_exiting, es.nmi_window_exiting, es.evt_pending) == \
        (0x202, 5, 1, 0, 1, 1)


# --- state caching, commit, events, stop ----------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_getstate_asks_only_for_uncached_groups(make, flavour):
    r = make(*flavour, steps=[then(io_exit(0x10, False, 1, ENTRY + 1), rip=ENTRY), HALT], long_mode=False)
    v, comm = r.vcpu, r.kv.comm
    r.vcpu.run()
    assert comm.state_cached == ASSIST                    # provided with the IO exit
    assert ioctls_during(r.fake, lambda: v.getstate(ASSIST)) == []
    assert ioctls_during(r.fake, lambda: v.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_FPU)) == ["VCPU_GETSTATE"]
    assert comm.state_cached == ASSIST | nvmm.X64_STATE_FPU and comm.state_wanted == 0
    assert ioctls_during(r.fake, lambda: v.getstate(nvmm.X64_STATE_FPU)) == []
    r.vcpu.run()                                          # HALTED provides nothing: the cache is gone
    assert comm.state_cached == 0
    assert ioctls_during(r.fake, lambda: v.getstate(nvmm.X64_STATE_GPRS)) == ["VCPU_GETSTATE"]


def test_getstate_wanted_is_the_missing_groups(make):
    r = make(steps=[], long_mode=False)
    seen = []
    orig = r.fake._vcpu_getstate
    r.fake._vcpu_getstate = lambda a: (seen.append(r.kv.comm.state_wanted), orig(a))
    r.vcpu.setstate(nvmm.X64_STATE_GPRS)                    # cached by setstate
    r.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_CRS)
    assert seen == [nvmm.X64_STATE_CRS]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_setstate_and_inject_make_no_system_call(make, flavour):
    r = make(*flavour, steps=[HALT, HALT, HALT], long_mode=False)
    v, comm = r.vcpu, r.kv.comm

    def write():
        v.state.gprs[nvmm.X64_GPR_RCX] = 0x55
        v.setstate(nvmm.X64_STATE_GPRS)
        v.inject(nvmm.VCPU_EVENT_EXCP, 13, 0x18)
    assert ioctls_during(r.fake, write) == []
    assert comm.state_commit == GPR and comm.state_cached & GPR and comm.event_commit
    assert ioctls_during(r.fake, v.run) == ["VCPU_RUN"]
    assert r.kv.kstate.gprs[nvmm.X64_GPR_RCX] == 0x55
    assert r.kv.events == [(nvmm.VCPU_EVENT_EXCP, 13, 0x18)]
    assert not comm.event_commit and comm.state_commit == 0
    v.inject(nvmm.VCPU_EVENT_INTR, 0x20)
    v.run()
    v.inject(nvmm.VCPU_EVENT_INTR, 2)                       # NMI
    v.run()
    assert [e[:2] for e in r.kv.events[1:]] == [(nvmm.VCPU_EVENT_INTR, 0x20), (nvmm.VCPU_EVENT_INTR, 2)]


def test_invalid_event_is_refused_before_the_kernel(make):
    r = make(steps=[], long_mode=False)
    with pytest.raises(NvmmError) as e:
        r.vcpu.inject(nvmm.VCPU_EVENT_EXCP, 3)
    assert e.value.errno == errno.EINVAL and not r.kv.comm.event_commit


def test_kernel_einval_on_run_is_reported(make):
    r = make(steps=[HALT], long_mode=False)
    r.kv.comm.event.type, r.kv.comm.event.vector = nvmm.VCPU_EVENT_EXCP, 2   # bypassing the checks
    r.kv.comm.event_commit = True
    with pytest.raises(NvmmError) as e:
        r.vcpu.run()
    assert e.value.errno == errno.EINVAL and "VCPU_RUN" in str(e.value)


def test_stop_netbsd_v2_goes_through_the_comm_page(make):
    r = make("netbsd", 2, steps=[HALT], long_mode=False)
    made = ioctls_during(r.fake, r.vcpu.stop)
    assert made == [] and r.kv.comm.stop == 1
    assert ioctls_during(r.fake, lambda: r.vcpu.run()) == ["VCPU_RUN"]
    assert r.vcpu.exit.reason == nvmm.VCPU_EXIT_STOPPED and r.kv.comm.stop == 0
    assert r.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED     # stop is one-shot; the script was not consumed


@pytest.mark.parametrize("flavour", [("netbsd", 1), ("dragonfly", 2)], ids=["netbsd-v1", "dragonfly-v2"])
def test_stop_without_comm_stop_field(make, flavour):
    r = make(*flavour, steps=[simple_exit(nvmm.VCPU_EXIT_NONE), HALT], long_mode=False)
    r.vcpu.stop()
    assert ioctls_during(r.fake, lambda: r.vcpu.run()) == []   # STOPPED without entering the kernel
    assert r.vcpu.exit.reason == nvmm.VCPU_EXIT_STOPPED
    assert r.vcpu.run().reason == nvmm.VCPU_EXIT_NONE
    assert r.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED


# --- configuration, mapping, lifetime --------------------------------------------------------------
def test_cpuid_and_tpr_configuration(make):
    r = make(backend="vmx", steps=[], long_mode=False)
    v = r.vcpu
    v.configure(nvmm.VCPU_CONF_CPUID, nvmmpy.CpuidConf(1, mask=True, set=(0, 0, 0, 1 << 7), del_=(0, 0, 1 << 5, 0)))
    v.configure(nvmm.VCPU_CONF_CPUID, nvmmpy.CpuidConf(0x40000000, exit=True))
    v.configure(nvmm.VCPU_CONF_CPUID, nvmmpy.CpuidConf(1))                  # delete leaf 1
    v.configure(nvmm.VCPU_CONF_TPR, nvmmpy.TprConf(exit_changed=True))
    confs = r.kv.confs
    assert confs[0] == (nvmm.VCPU_CONF_CPUID, dict(leaf=1, mask=1, exit=0, set=(0, 0, 0, 128), del_=(0, 0, 32, 0)))
    assert confs[1] == (nvmm.VCPU_CONF_CPUID, dict(leaf=0x40000000, mask=0, exit=1, set=(0,) * 4, del_=(0,) * 4))
    assert confs[2] == (nvmm.VCPU_CONF_CPUID, dict(leaf=1, mask=0, exit=0, set=(0,) * 4, del_=(0,) * 4))
    assert confs[3] == (nvmm.VCPU_CONF_TPR, dict(exit_changed=1))
    assert set(v.cpuid_confs) == {0x40000000}


def test_svm_has_no_tpr_configuration(make):
    r = make(backend="svm", steps=[], long_mode=False)
    assert r.mach.capability.backend == "svm"
    with pytest.raises(NvmmError) as e:
        r.vcpu.configure(nvmm.VCPU_CONF_TPR, nvmmpy.TprConf(exit_changed=True))
    assert e.value.errno == errno.EOPNOTSUPP and r.kv.confs == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_memory_mapping_ioctls_and_rules(make, flavour):
    r = make(*flavour, steps=[], long_mode=False)
    fake, mach, machid = r.fake, r.mach, r.kv.machid
    assert fake.hva[machid] == {r.mem.address: RAM}
    assert fake.gpa[machid] == {0: (r.mem.address, RAM, RWX)}
    extra = nvmmpy.HostMemory(0x4000)
    try:
        assert ioctls_during(fake, lambda: mach.hva_map(extra.address, 0x4000)) == ["HVA_MAP"]
        mach.gpa_map(extra.address, 0x400000, 0x2000, nvmm.PROT_READ)
        assert fake.gpa[machid][0x400000] == (extra.address, 0x2000, nvmm.PROT_READ)
        with pytest.raises(NvmmError) as e:                      # NVMM's overlap rule, no ioctl made
            n = len(fake.log)
            mach.gpa_map(extra.address + 0x2000, 0x401000, 0x1000, nvmm.PROT_READ)
        assert e.value.errno == errno.EEXIST and len(fake.log) == n
        with pytest.raises(NvmmError):                            # hva not inside an hva_map'ed range
            mach.gpa_map(extra.address + 0x4000, 0x500000, 0x1000, nvmm.PROT_READ)
        assert mach.gpa_to_hva(0x401000) == (extra.address + 0x1000, nvmm.PROT_READ)
        with pytest.raises(NvmmError) as e:
            mach.gpa_to_hva(0x402000)
        assert e.value.errno == errno.ENOENT
        assert ioctls_during(fake, lambda: mach.gpa_unmap(extra.address, 0x400000, 0x2000)) == ["GPA_UNMAP"]
        assert 0x400000 not in fake.gpa[machid]
        assert ioctls_during(fake, lambda: mach.hva_unmap(extra.address, 0x4000)) == ["HVA_UNMAP"]
    finally:
        extra.close()


def test_vcpu_create_and_destroy_per_flavour():
    for os_name, version in (("netbsd", 2), ("dragonfly", 2)):
        with fake_nvmm(os_name=os_name, version=version) as fake:
            with nvmmpy.Machine("nvmm") as mach:
                v = mach.vcpu_create(3)
                kv = fake.vcpu(3)
                assert fake.log[-1] == "VCPU_CREATE" and kv.mapped_by_user
                v.state.gprs[nvmm.X64_GPR_RAX] = 7
                mach.vcpu_destroy(v)
                assert fake.log[-1] == "VCPU_DESTROY"
                assert fake.munmapped == [(kv.address, 4096)]
                assert v.state.gprs[nvmm.X64_GPR_RAX] == 7          # a detached copy, not the unmapped page
                with pytest.raises(NvmmError):
                    v.run()
            assert "MACHINE_DESTROY" in fake.log


def test_capability_reports_the_kernel(make):
    r = make("dragonfly", 2, backend="svm", steps=[], long_mode=False)
    cap = r.mach.capability
    assert (cap.driver, cap.version, cap.state_size, cap.max_vcpus, cap.max_ram) == ("nvmm", 2, 1008, 128, 127 << 40)
    assert cap.extra["flavour"] == "dragonfly" and cap.cpuid_exits
    assert r.mach.driver_name == "nvmm"


def test_gva_to_gpa_walks_through_the_driver(make):
    r = make(steps=[])
    gpa, prot = r.mach.gva_to_gpa(r.vcpu, ENTRY)
    assert gpa == ENTRY and prot & nvmm.PROT_WRITE


# --- errors a person can act on -------------------------------------------------------------------
@pytest.mark.parametrize("os_name,version", [("netbsd", 3), ("dragonfly", 3), ("netbsd", 0)])
def test_unsupported_kernel_version(os_name, version):
    with fake_nvmm(os_name=os_name, version=version):
        ok, reason = nvmmpy.drivers.nvmm.driver.probe()
        assert not ok and f"version {version}" in reason and "netbsd NVMM version 1/2" in reason
        with pytest.raises(DriverUnavailable) as e:
            nvmmpy.Machine("nvmm")
        assert "supports" in str(e.value)


def test_state_size_mismatch():
    with fake_nvmm() as fake:
        orig = fake._capability

        def cap(a):
            orig(a)
            a.cap.state_size = 1024
        fake._capability = cap
        ok, reason = nvmmpy.drivers.nvmm.driver.probe()
        assert not ok and "1024-byte" in reason


def test_probe_on_linux_is_cheap_and_says_why(monkeypatch):
    from nvmmpy.drivers.nvmm import driver, system
    opened = []
    monkeypatch.setattr(system.os, "open", lambda *a, **k: opened.append(a) or -1)
    monkeypatch.setattr(system.platform, "system", lambda: "Linux")
    ok, reason = driver.probe()
    assert not ok and reason == "NVMM exists only on NetBSD and DragonFly BSD (this is Linux)"
    assert opened == []
    assert nvmmpy.drivers.driver_names()[0] == "nvmm"


def test_dev_nvmm_open_errors(monkeypatch, tmp_path):
    from nvmmpy.drivers.nvmm import system
    with pytest.raises(DriverUnavailable) as e:
        system.DevNvmm(str(tmp_path / "nvmm"), os_name="netbsd")
    assert "does not exist" in str(e.value) and "modload nvmm" in str(e.value)
    with pytest.raises(DriverUnavailable) as e:
        system.DevNvmm(str(tmp_path / "nvmm"), os_name="dragonfly")
    assert "kldload nvmm" in str(e.value)
    flags_seen = []

    def denied(path, flags, *a):
        flags_seen.append(flags)
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(system.os, "open", denied)
    with pytest.raises(DriverUnavailable) as e:
        system.DevNvmm("/dev/nvmm", os_name="netbsd")
    assert "'nvmm' group" in str(e.value) and e.value.errno == errno.EACCES
    import os
    assert flags_seen[0] & os.O_CLOEXEC and flags_seen[0] & os.O_ACCMODE == os.O_RDONLY
    monkeypatch.setattr(system.platform, "system", lambda: "Linux")
    with pytest.raises(DriverUnavailable) as e:
        system.DevNvmm()
    assert "only on NetBSD and DragonFly" in str(e.value)


def test_host_os_names():
    from nvmmpy.drivers.nvmm.system import host_os
    assert host_os("NetBSD") == "netbsd" and host_os("DragonFly") == "dragonfly"
    assert host_os("Linux") is None and host_os("FreeBSD") is None
