"""A fake NVMM kernel for running the nvmm driver on Linux, and tests of the fake itself.

FakeNvmm answers the driver's kernel-object seam (nvmmpy/drivers/nvmm/system.py) as NVMM's kernel
would, from the facts in reference/nvmm.md: it knows the ioctl numbers only as the reference lists
them (not from the driver's tables), checks every argument buffer's size against the number's
IOCPARM_LEN, and owns the comm pages (anonymous mappings, shared with the driver by address: mmap'ed
at NVMM_COMM_OFF on NetBSD, returned by VCPU_CREATE on DragonFly). VCPU_RUN follows the kernel's
comm-page protocol: apply state_commit and event_commit, honour `stop` (NetBSD v2), clear
state_cached, produce an exit, provide GPRS|SEGS|CRS|MSRS with IO/MEMORY exits and GPRS with
RDMSR/WRMSR, mark them cached.

What the vCPU does between runs comes from a CPU model:
- ScriptCpu: a recorded exchange -- each run() plays the next step, a function that writes the
  exit (and may change the kernel's copy of the state) exactly as the kernel would;
- UnicornCpu: executes guest code on nvmmpy's unicorn driver and reports its exits as NVMM would,
  VMX-style (no instruction bytes in MEMORY exits) or SVM-style (decode-assist bytes, seg -1).
"""
import contextlib
import errno
import mmap

import pytest

import nvmmpy
import nvmmpy.machine
from nvmmpy import constants as nvmm
from nvmmpy.drivers.nvmm import driver as nvmm_driver
from nvmmpy.drivers.nvmm.abi import ffi
from nvmmpy.state import reset_state
from test_nvmm_abi import IOCTLS_DRAGONFLY, IOCTLS_NETBSD

PAGE = 4096
ARG_TYPES = {  # what each ioctl carries, as nvmm_ioctl.h declares it
    "CAPABILITY": "struct nvmm_ioc_capability", "MACHINE_CREATE": "struct nvmm_ioc_machine_create",
    "MACHINE_DESTROY": "struct nvmm_ioc_machine_destroy", "MACHINE_CONFIGURE": "struct nvmm_ioc_machine_configure",
    "VCPU_DESTROY": "struct nvmm_ioc_vcpu_destroy", "VCPU_CONFIGURE": "struct nvmm_ioc_vcpu_configure",
    "VCPU_SETSTATE": "struct nvmm_ioc_vcpu_setstate", "VCPU_GETSTATE": "struct nvmm_ioc_vcpu_getstate",
    "VCPU_INJECT": "struct nvmm_ioc_vcpu_inject", "VCPU_RUN": "struct nvmm_ioc_vcpu_run",
    "GPA_MAP": "struct nvmm_ioc_gpa_map", "GPA_UNMAP": "struct nvmm_ioc_gpa_unmap",
    "HVA_MAP": "struct nvmm_ioc_hva_map", "HVA_UNMAP": "struct nvmm_ioc_hva_unmap", "CTL": "struct nvmm_ioc_ctl",
}
# state groups -> (offset, size) in struct nvmm_x64_state (reference/nvmm.md sec. 1)
GROUPS = {nvmm.X64_STATE_SEGS: (0, 160), nvmm.X64_STATE_GPRS: (160, 144), nvmm.X64_STATE_CRS: (304, 48),
          nvmm.X64_STATE_DRS: (352, 48), nvmm.X64_STATE_MSRS: (400, 88), nvmm.X64_STATE_INTR: (488, 8),
          nvmm.X64_STATE_FPU: (496, 512)}
PROVIDED = {nvmm.VCPU_EXIT_IO: nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS,
            nvmm.VCPU_EXIT_MEMORY: nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS | nvmm.X64_STATE_CRS | nvmm.X64_STATE_MSRS,
            nvmm.VCPU_EXIT_RDMSR: nvmm.X64_STATE_GPRS, nvmm.VCPU_EXIT_WRMSR: nvmm.X64_STATE_GPRS}


def copy_groups(dst, src, flags):
    d, s = ffi.buffer(dst), ffi.buffer(src)
    for g, (off, n) in GROUPS.items():
        if flags & g:
            d[off:off + n] = s[off:off + n]


class KVcpu:
    """The kernel's side of one vCPU."""

    def __init__(self, machid, cpuid):
        self.machid, self.cpuid = machid, cpuid
        self.kstate = ffi.new("struct nvmm_x64_state *")   # what the "hardware" holds
        reset_state(self.kstate)
        self.page = mmap.mmap(-1, PAGE)                      # the comm page
        self.address = int(ffi.cast("uintptr_t", ffi.from_buffer(self.page)))
        self.comm = None                                     # typed view, set per flavour
        self.mapped_by_user = False
        self.confs = []                                      # (op, dict) from VCPU_CONFIGURE
        self.commits = []                                    # state_commit flags applied per run
        self.events = []                                     # (type, vector, error) injected
        self.cpu_handle = None                               # the CPU model's per-vCPU object


class FakeNvmm:
    def __init__(self, os_name="netbsd", version=2, backend="vmx", cpu=None):
        self.os_name, self.version, self.backend = os_name, version, backend
        table = IOCTLS_NETBSD if os_name == "netbsd" else IOCTLS_DRAGONFLY
        self.numbers = {num: name for name, num in table.items()}
        self.comm_type = "struct nvmm_comm_page_v2" if (os_name == "netbsd" and version >= 2) \
            else "struct nvmm_comm_page_v1"
        self.cpu = cpu if cpu is not None else ScriptCpu([])
        self.machines = {}
        self.vcpus = {}           # (machid, cpuid) -> KVcpu
        self.hva = {}             # machid -> {hva: size}
        self.gpa = {}             # machid -> {gpa: (hva, size, prot)}
        self.log = []             # ioctl names, in order
        self.munmapped = []
        self.closed = False
        self._next_machid = 0

    # --- the seam ------------------------------------------------------------------------------
    def ioctl(self, request, arg):
        name = self.numbers.get(request)
        if name is None:
            raise OSError(errno.ENOTTY, f"not an NVMM ioctl: {request:#x}")
        want = (request >> 16) & 0x1FFF
        got = ffi.sizeof(ffi.typeof(arg).item)
        ctype = ARG_TYPES.get(name) or ("struct nvmm_ioc_vcpu_create_" + self.os_name)
        assert got == want == ffi.sizeof(ctype), f"{name}: {got}-byte argument for a {want}-byte ioctl"
        self.log.append(name)
        return getattr(self, "_" + name.lower())(arg) or 0

    def mmap(self, size, offset):
        assert self.os_name == "netbsd", "DragonFly's libnvmm gets the comm page from VCPU_CREATE"
        assert size == PAGE
        v = self.vcpus.get(((offset >> 20) & 0xFF, (offset >> 12) & 0xFF))
        if v is None or offset & 0xFFF:
            raise OSError(errno.EINVAL, "no such comm page")
        v.mapped_by_user = True
        return v.address

    def munmap(self, address, size):
        self.munmapped.append((address, size))

    def close(self):
        self.closed = True

    def vcpu(self, cpuid=0, machid=None):
        if machid is None:
            machid = max(self.machines)
        return self.vcpus[(machid, cpuid)]

    # --- ioctls --------------------------------------------------------------------------------
    def _capability(self, a):
        c = a.cap
        c.version, c.state_size = self.version, ffi.sizeof("struct nvmm_x64_state")
        c.max_machines = 128
        c.max_vcpus = 256 if self.os_name == "netbsd" else 128
        c.max_ram = (128 << 30) if self.os_name == "netbsd" else (127 << 40)
        c.arch.vcpu_conf_support = nvmm.CAP_ARCH_VCPU_CONF_CPUID | (nvmm.CAP_ARCH_VCPU_CONF_TPR if self.backend == "vmx" else 0)
        c.arch.xcr0_mask, c.arch.mxcsr_mask, c.arch.conf_cpuid_maxops = 0x3, 0xFFBF, 32

    def _machine_create(self, a):
        machid = self._next_machid
        self._next_machid += 1
        self.machines[machid] = True
        self.hva[machid], self.gpa[machid] = {}, {}
        a.machid = machid
        self.cpu.machine_created(self, machid)

    def _machine(self, machid):
        if machid not in self.machines:
            raise OSError(errno.ENOENT, "no such machine")

    def _machine_destroy(self, a):
        self._machine(a.machid)
        del self.machines[a.machid]
        for key in [k for k in self.vcpus if k[0] == a.machid]:
            del self.vcpus[key]

    def _vcpu_create(self, a):
        self._machine(a.machid)
        if (a.machid, a.cpuid) in self.vcpus:
            raise OSError(errno.EBUSY, "vCPU exists")
        v = KVcpu(a.machid, a.cpuid)
        v.comm = ffi.cast(self.comm_type + " *", v.address)
        self.vcpus[(a.machid, a.cpuid)] = v
        if self.os_name == "dragonfly":
            a.comm = ffi.cast("void *", v.address)
            v.mapped_by_user = True
        self.cpu.vcpu_created(self, v)

    def _vcpu(self, a):
        self._machine(a.machid)
        v = self.vcpus.get((a.machid, a.cpuid))
        if v is None:
            raise OSError(errno.ENOENT, "no such vCPU")
        return v

    def _vcpu_destroy(self, a):
        v = self._vcpu(a)
        del self.vcpus[(a.machid, a.cpuid)]
        self.cpu.vcpu_destroyed(self, v)

    def _vcpu_configure(self, a):
        v = self._vcpu(a)
        if a.op == nvmm.VCPU_CONF_CPUID:
            c = ffi.cast("struct nvmm_vcpu_conf_cpuid *", a.conf)
            s, d = c.u.mask.set, getattr(c.u.mask, "del")
            if c.mask and c.exit:
                raise OSError(errno.EINVAL, "mask and exit")
            v.confs.append((a.op, dict(leaf=c.leaf, mask=c.mask, exit=c.exit, set=(s.eax, s.ebx, s.ecx, s.edx),
                                       del_=(d.eax, d.ebx, d.ecx, d.edx))))
        elif a.op == nvmm.VCPU_CONF_TPR:
            if self.backend != "vmx":
                raise OSError(errno.EINVAL, "TPR conf is VMX only")
            v.confs.append((a.op, dict(exit_changed=ffi.cast("struct nvmm_vcpu_conf_tpr *", a.conf).exit_changed)))
        else:
            raise OSError(errno.EINVAL, "unknown conf op")

    def _vcpu_getstate(self, a):
        v = self._vcpu(a)
        wanted = v.comm.state_wanted
        self.cpu.sync_out(self, v, wanted)
        copy_groups(ffi.addressof(v.comm, "state"), v.kstate, wanted)
        v.comm.state_cached |= wanted
        v.comm.state_wanted = 0

    def _vcpu_setstate(self, a):
        raise AssertionError("libnvmm's setstate makes no system call: state goes through state_commit")

    def _vcpu_inject(self, a):
        raise AssertionError("libnvmm's inject makes no system call: events go through event_commit")

    def _hva_map(self, a):
        self._machine(a.machid)
        self.hva[a.machid][a.hva] = a.size
        self.cpu.hva_mapped(self, a.machid, a.hva, a.size)

    def _hva_unmap(self, a):
        self._machine(a.machid)
        if self.hva[a.machid].get(a.hva) != a.size:
            raise OSError(errno.ENOENT, "no such hva mapping")
        del self.hva[a.machid][a.hva]

    def _gpa_map(self, a):
        self._machine(a.machid)
        assert a.hva and not a.hva & 0xFFF and not a.gpa & 0xFFF and a.size and not a.size & 0xFFF
        assert any(h <= a.hva and a.hva + a.size <= h + n for h, n in self.hva[a.machid].items()), "hva not hva_map'ed"
        self.gpa[a.machid][a.gpa] = (a.hva, a.size, a.prot)
        self.cpu.gpa_mapped(self, a.machid, a.hva, a.gpa, a.size, a.prot)

    def _gpa_unmap(self, a):
        self._machine(a.machid)
        hva, size, prot = self.gpa[a.machid].pop(a.gpa)
        assert size == a.size
        self.cpu.gpa_unmapped(self, a.machid, hva, a.gpa, a.size)

    def _vcpu_run(self, a):
        v = self._vcpu(a)
        comm, k = v.comm, ffi.addressof(a, "exit")
        commit = comm.state_commit
        if commit:                                  # 1. committed state
            copy_groups(v.kstate, ffi.addressof(comm, "state"), commit)
            self.cpu.sync_in(self, v, commit)
            v.commits.append(commit)
            comm.state_commit = 0
        if comm.event_commit:                       # 2. committed event, checked as the kernel does
            ev = comm.event
            comm.event_commit = False
            if ev.type == nvmm.VCPU_EVENT_EXCP and (ev.vector >= 32 or ev.vector in (0, 2, 3)):
                raise OSError(errno.EINVAL, "bad exception vector")
            if ev.type not in (nvmm.VCPU_EVENT_EXCP, nvmm.VCPU_EVENT_INTR):
                raise OSError(errno.EINVAL, "bad event type")
            v.events.append((ev.type, ev.vector, ev.u.excp.error))
            self.cpu.inject(self, v, ev.type, ev.vector, ev.u.excp.error)
        comm.state_cached = 0
        ffi.memmove(k, b"\0" * 64, 64)
        if self.comm_type == "struct nvmm_comm_page_v2" and comm.stop:   # 3. NetBSD v2 stop
            comm.stop = 0
            k.reason = nvmm.VCPU_EXIT_STOPPED
            return
        self.cpu.run(self, v, k)                    # 4. the exit
        provided = PROVIDED.get(k.reason, 0)        # 5. state given with the exit
        if provided:
            self.cpu.sync_out(self, v, provided)
            copy_groups(ffi.addressof(comm, "state"), v.kstate, provided)
            comm.state_cached = provided

    def _ctl(self, a):
        raise OSError(errno.EINVAL, "not implemented in the fake")

    def _machine_configure(self, a):
        raise OSError(errno.EINVAL, "x86 NVMM has no machine configuration ops")


class CpuModel:
    """Default hooks: nothing to keep in sync."""

    def machine_created(self, k, machid): pass
    def vcpu_created(self, k, v): pass
    def vcpu_destroyed(self, k, v): pass
    def hva_mapped(self, k, machid, hva, size): pass
    def gpa_mapped(self, k, machid, hva, gpa, size, prot): pass
    def gpa_unmapped(self, k, machid, hva, gpa, size): pass
    def sync_in(self, k, v, flags): pass       # kstate -> CPU, after a commit
    def sync_out(self, k, v, flags): pass      # CPU -> kstate, before providing state
    def inject(self, k, v, type_, vector, error): pass

    def run(self, k, v, exit_):
        raise NotImplementedError


class ScriptCpu(CpuModel):
    """A recorded exchange: each VCPU_RUN plays the next step(v, exit) in order."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.played = 0

    def run(self, k, v, exit_):
        if self.played >= len(self.steps):
            raise AssertionError("the driver ran the vCPU more often than the recorded exchange has exits")
        step = self.steps[self.played]
        self.played += 1
        step(v, exit_)


# --- recorded-exit builders: what the kernel writes for each reason ---------------------------------
def mem_exit(gpa, prot=nvmm.PROT_WRITE, inst=b""):
    def step(v, k):
        k.reason = nvmm.VCPU_EXIT_MEMORY
        k.u.mem.prot, k.u.mem.gpa, k.u.mem.inst_len = prot, gpa, len(inst)
        for i, b in enumerate(inst):
            k.u.mem.inst_bytes[i] = b
    return step


def io_exit(port, in_, size, npc, *, seg=-1, address_size=8, rep=False, string=False):
    def step(v, k):
        k.reason = nvmm.VCPU_EXIT_IO
        io = k.u.io
        setattr(io, "in", in_)
        io.port, io.seg, io.address_size, io.operand_size = port, seg, address_size, size
        io.rep, io.str, io.npc = rep, string, npc
    return step


def simple_exit(reason, **payload):
    def step(v, k):
        k.reason = reason
        for path, value in payload.items():
            obj = k.u
            *parts, last = path.split("__")
            for p in parts:
                obj = getattr(obj, p)
            setattr(obj, last, value)
    return step


def then(step, **regs):
    """A step that also changes the kernel's state first (as the guest ran): gpr name -> value."""
    def both(v, k):
        for name, value in regs.items():
            v.kstate.gprs[getattr(nvmm, "X64_GPR_" + name.upper())] = value
        step(v, k)
    return both


class UnicornCpu(CpuModel):
    """Guest code really executes, on nvmmpy's unicorn driver; its exits are reported as NVMM's
    kernel reports them for the chosen backend."""

    def __init__(self):
        self.umach = {}

    def machine_created(self, k, machid):
        self.umach[machid] = nvmmpy.Machine("unicorn")

    def hva_mapped(self, k, machid, hva, size):
        self.umach[machid].hva_map(hva, size)

    def gpa_mapped(self, k, machid, hva, gpa, size, prot):
        self.umach[machid].gpa_map(hva, gpa, size, prot)

    def gpa_unmapped(self, k, machid, hva, gpa, size):
        self.umach[machid].gpa_unmap(hva, gpa, size)

    def vcpu_created(self, k, v):
        v.cpu_handle = uv = self.umach[v.machid].vcpu_create(v.cpuid)
        uv.getstate(nvmm.X64_STATE_ALL)
        copy_groups(v.kstate, uv.state, nvmm.X64_STATE_ALL)

    def sync_in(self, k, v, flags):
        uv = v.cpu_handle
        copy_groups(uv.state, v.kstate, flags)
        uv.setstate(flags)

    def sync_out(self, k, v, flags):
        uv = v.cpu_handle
        uv.getstate(flags)
        copy_groups(v.kstate, uv.state, flags)

    def inject(self, k, v, type_, vector, error):
        v.cpu_handle.inject(type_, vector, error)

    def run(self, k, v, out):
        uv = v.cpu_handle
        ex = uv.run()
        r = ex.reason
        out.reason = r
        if r == nvmm.VCPU_EXIT_MEMORY:
            out.u.mem.prot, out.u.mem.gpa = ex.mem.prot, ex.mem.gpa
            if k.backend == "svm":        # decode assists: the bytes at CS:RIP come with the exit
                st = uv.getstate(nvmm.X64_STATE_SEGS | nvmm.X64_STATE_GPRS)
                code = uv._read_linear(st.segs[nvmm.X64_SEG_CS].base + st.gprs[nvmm.X64_GPR_RIP], 15, partial=True)
                out.u.mem.inst_len = len(code)
                for i, b in enumerate(code):
                    out.u.mem.inst_bytes[i] = b
            else:                         # VMX: never any bytes
                out.u.mem.inst_len = 0
        elif r == nvmm.VCPU_EXIT_IO:
            io = ex.io
            assert io.count == 1, "the unicorn CPU performed I/O itself; the fake cannot report that"
            o = out.u.io
            setattr(o, "in", io.in_)
            o.port, o.address_size, o.operand_size = io.port, io.address_size, io.operand_size
            o.rep, o.str, o.npc = io.rep, io.str, io.npc
            o.seg = self._io_seg(uv, io) if k.backend == "vmx" else -1
        elif r == nvmm.VCPU_EXIT_RDMSR:
            out.u.rdmsr.msr, out.u.rdmsr.npc = ex.rdmsr.msr, ex.rdmsr.npc
        elif r == nvmm.VCPU_EXIT_WRMSR:
            out.u.wrmsr.msr, out.u.wrmsr.val, out.u.wrmsr.npc = ex.wrmsr.msr, ex.wrmsr.val, ex.wrmsr.npc
        elif r in (nvmm.VCPU_EXIT_CPUID, nvmm.VCPU_EXIT_MONITOR, nvmm.VCPU_EXIT_MWAIT):
            out.u.insn.npc = ex.insn.npc
        elif r == nvmm.VCPU_EXIT_STOPPED:
            out.reason = nvmm.VCPU_EXIT_NONE  # the fake's own stop: the kernel would say NONE
        es = out.exitstate
        es.rflags = ex.exitstate.rflags
        es.cr8 = ex.exitstate.cr8

    @staticmethod
    def _io_seg(uv, io):
        """VMX fills the segment of INS/OUTS from the instruction information: ES for INS, else DS
        unless a prefix overrides it."""
        if not io.str:
            return -1
        if io.in_:
            return nvmm.X64_SEG_ES
        st = uv.getstate(nvmm.X64_STATE_SEGS | nvmm.X64_STATE_GPRS)
        code = uv._read_linear(st.segs[nvmm.X64_SEG_CS].base + st.gprs[nvmm.X64_GPR_RIP], 5, partial=True)
        overrides = {0x26: nvmm.X64_SEG_ES, 0x2E: nvmm.X64_SEG_CS, 0x36: nvmm.X64_SEG_SS, 0x3E: nvmm.X64_SEG_DS,
                     0x64: nvmm.X64_SEG_FS, 0x65: nvmm.X64_SEG_GS}
        for b in code:
            if b in overrides:
                return overrides[b]
        return nvmm.X64_SEG_DS

    def vcpu_destroyed(self, k, v):
        pass


@contextlib.contextmanager
def nvmm_kernel(kernel):
    """The nvmm driver on `kernel` (a FakeNvmm; None: the real /dev/nvmm) for the duration; yields it."""
    prev = nvmm_driver.install_kernel(kernel)
    nvmmpy.machine._drivers.pop(nvmm_driver.Driver, None)
    try:
        yield kernel
    finally:
        nvmm_driver.install_kernel(prev)
        nvmmpy.machine._drivers.pop(nvmm_driver.Driver, None)


def fake_nvmm(**kw):
    """Install a FakeNvmm as the nvmm driver's kernel for the duration; yields it."""
    return nvmm_kernel(FakeNvmm(**kw))


FLAVOURS = [pytest.param(("netbsd", 2), id="netbsd-v2"), pytest.param(("netbsd", 1), id="netbsd-v1"),
            pytest.param(("dragonfly", 2), id="dragonfly-v2")]


# --- tests of the fake's own protocol --------------------------------------------------------------
def test_fake_rejects_unknown_requests_and_wrong_sizes():
    fake = FakeNvmm()
    with pytest.raises(OSError) as e:
        fake.ioctl(0x12345678, ffi.new("struct nvmm_ioc_capability *"))
    assert e.value.errno == errno.ENOTTY
    with pytest.raises(AssertionError):
        fake.ioctl(IOCTLS_NETBSD["CAPABILITY"], ffi.new("struct nvmm_ioc_machine_create *"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fake_comm_page_is_shared(flavour):
    os_name, version = flavour
    with fake_nvmm(os_name=os_name, version=version) as fake:
        with nvmmpy.Machine("nvmm") as mach:
            vcpu = mach.vcpu_create(0)
            kv = fake.vcpu(0)
            assert kv.mapped_by_user
            assert int(ffi.cast("uintptr_t", vcpu.state)) == kv.address + 32
            vcpu.state.gprs[nvmm.X64_GPR_RBX] = 0x1234
            assert kv.comm.state.gprs[nvmm.X64_GPR_RBX] == 0x1234
