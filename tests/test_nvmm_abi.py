"""The nvmm driver's cffi declarations against NVMM's ABI as reference/nvmm.md records it.

Expected numbers are copied from the reference (sections 1-3: sizes, offsets, ioctl values);
actual numbers come from cffi (ffi.sizeof / ffi.offsetof) and from the driver's ioctl tables,
never restated in Python. Runs everywhere: no /dev/nvmm needed.
"""
import pytest

from nvmmpy.drivers.nvmm import abi
from nvmmpy.drivers.nvmm.abi import ffi

# (struct, size, {field: offset}) -- reference/nvmm.md sections 1 and 2
LAYOUTS = [
    ("struct nvmm_x64_state", 1008,
     {"segs": 0, "gprs": 160, "crs": 304, "drs": 352, "msrs": 400, "intr": 488, "fpu": 496}),
    ("struct nvmm_x64_state_seg", 16, {"selector": 0, "limit": 4, "base": 8}),
    ("struct nvmm_x64_state_intr", 8, {}),
    ("struct nvmm_x64_state_fpu", 512, {}),
    ("struct nvmm_capability", 104,
     {"version": 0, "state_size": 4, "max_machines": 8, "max_vcpus": 12, "max_ram": 16, "arch": 24}),
    ("struct nvmm_cap_md", 80,
     {"mach_conf_support": 0, "vcpu_conf_support": 8, "xcr0_mask": 16, "mxcsr_mask": 24,
      "conf_cpuid_maxops": 28, "rsvd": 32}),
    ("struct nvmm_vcpu_exit", 64, {"reason": 0, "u": 8, "exitstate": 40}),
    ("struct nvmm_x86_exit_memory", 32, {"prot": 0, "gpa": 8, "inst_len": 16, "inst_bytes": 17}),
    ("struct nvmm_x86_exit_io", 24,
     {"in": 0, "port": 2, "seg": 4, "address_size": 5, "operand_size": 6, "rep": 7, "str": 8, "npc": 16}),
    ("struct nvmm_x86_exit_rdmsr", 16, {"msr": 0, "npc": 8}),
    ("struct nvmm_x86_exit_wrmsr", 24, {"msr": 0, "val": 8, "npc": 16}),
    ("struct nvmm_x86_exit_insn", 8, {"npc": 0}),
    ("struct nvmm_x86_exit_invalid", 8, {"hwcode": 0}),
    ("struct nvmm_x86_exitstate", 24, {"rflags": 0, "cr8": 8}),
    ("struct nvmm_vcpu_event", 16, {"type": 0, "vector": 4, "u": 8}),
    ("struct nvmm_vcpu_conf_cpuid", 40, {"leaf": 4, "u": 8}),
    ("struct nvmm_vcpu_conf_tpr", 4, {}),
    # comm page, NetBSD version 2 (with stop)
    ("struct nvmm_comm_page_v2", 1072,
     {"state_wanted": 0, "state_cached": 8, "state_commit": 16, "state": 32, "event_commit": 1040,
      "event": 1048, "stop": 1064}),
    # section 3: ioctl argument structs
    ("struct nvmm_ioc_capability", 104, {"cap": 0}),
    ("struct nvmm_ioc_machine_create", 4, {"machid": 0}),
    ("struct nvmm_ioc_machine_destroy", 4, {"machid": 0}),
    ("struct nvmm_ioc_machine_configure", 24, {"machid": 0, "op": 8, "conf": 16}),
    ("struct nvmm_ioc_vcpu_create_netbsd", 8, {"machid": 0, "cpuid": 4}),
    ("struct nvmm_ioc_vcpu_create_dragonfly", 16, {"machid": 0, "cpuid": 4, "comm": 8}),
    ("struct nvmm_ioc_vcpu_destroy", 8, {"machid": 0, "cpuid": 4}),
    ("struct nvmm_ioc_vcpu_configure", 24, {"machid": 0, "cpuid": 4, "op": 8, "conf": 16}),
    ("struct nvmm_ioc_vcpu_setstate", 8, {"machid": 0, "cpuid": 4}),
    ("struct nvmm_ioc_vcpu_getstate", 8, {"machid": 0, "cpuid": 4}),
    ("struct nvmm_ioc_vcpu_inject", 8, {"machid": 0, "cpuid": 4}),
    ("struct nvmm_ioc_vcpu_run", 72, {"machid": 0, "cpuid": 4, "exit": 8}),
    ("struct nvmm_ioc_gpa_map", 40, {"machid": 0, "hva": 8, "gpa": 16, "size": 24, "prot": 32}),
    ("struct nvmm_ioc_gpa_unmap", 24, {"machid": 0, "gpa": 8, "size": 16}),
    ("struct nvmm_ioc_hva_map", 32, {"machid": 0, "hva": 8, "size": 16, "flags": 24}),
    ("struct nvmm_ioc_hva_unmap", 32, {"machid": 0, "hva": 8, "size": 16, "flags": 24}),
    ("struct nvmm_ioc_ctl", 24, {"op": 0, "data": 8, "size": 16}),
    ("struct nvmm_ctl_mach_info", 32, {"machid": 0}),
]

# reference/nvmm.md section 3, "value" column
IOCTLS_NETBSD = {
    "CAPABILITY": 0x40684e00, "MACHINE_CREATE": 0xc0044e01, "MACHINE_DESTROY": 0x80044e02,
    "MACHINE_CONFIGURE": 0x80184e03, "VCPU_CREATE": 0x80084e04, "VCPU_DESTROY": 0x80084e05,
    "VCPU_CONFIGURE": 0x80184e06, "VCPU_SETSTATE": 0x80084e07, "VCPU_GETSTATE": 0x80084e08,
    "VCPU_INJECT": 0x80084e09, "VCPU_RUN": 0xc0484e0a, "GPA_MAP": 0x80284e0b, "GPA_UNMAP": 0x80184e0c,
    "HVA_MAP": 0x80204e0d, "HVA_UNMAP": 0x80204e0e, "CTL": 0x80184e14,
}
IOCTLS_DRAGONFLY = dict(IOCTLS_NETBSD, VCPU_CREATE=0xc0104e04)
del IOCTLS_DRAGONFLY["VCPU_INJECT"]          # "9: was INJECT"


@pytest.mark.parametrize("ctype,size,fields", LAYOUTS, ids=[x[0].split()[-1] for x in LAYOUTS])
def test_struct_layout(ctype, size, fields):
    assert ffi.sizeof(ctype) == size
    for name, off in fields.items():
        assert ffi.offsetof(ctype, name) == off, f"{ctype}.{name}"


def test_state_array_lengths():
    st = ffi.new("struct nvmm_x64_state *")
    assert (len(st.segs), len(st.gprs), len(st.crs), len(st.drs), len(st.msrs)) == (10, 18, 6, 6, 11)
    ex = ffi.new("struct nvmm_vcpu_exit *")
    assert len(ex.u.mem.inst_bytes) == 15


def test_comm_page_v1_has_no_stop_and_same_offsets():
    """NetBSD version 1 and DragonFly: same layout as v2 up to the event, no stop field."""
    for f in ("state_wanted", "state_cached", "state_commit", "state", "event_commit", "event"):
        assert ffi.offsetof("struct nvmm_comm_page_v1", f) == ffi.offsetof("struct nvmm_comm_page_v2", f)
    with pytest.raises(KeyError):
        ffi.offsetof("struct nvmm_comm_page_v1", "stop")
    assert ffi.sizeof("struct nvmm_comm_page_v2") <= abi.PAGE_SIZE


@pytest.mark.parametrize("flavour,table", [("netbsd", IOCTLS_NETBSD), ("dragonfly", IOCTLS_DRAGONFLY)])
def test_ioctl_numbers(flavour, table):
    fl = abi.Flavour(flavour, 2)
    got = {name: fl.request(name) for name in fl.ioctls}
    assert got == table
    for name, (num, ctype) in fl.ioctls.items():
        assert abi.iocparm_len(num) == ffi.sizeof(ctype), name


def test_flavour_differences():
    nb1, nb2, df = abi.Flavour("netbsd", 1), abi.Flavour("netbsd", 2), abi.Flavour("dragonfly", 2)
    assert nb1.comm_mmap and nb2.comm_mmap and not df.comm_mmap
    assert (nb1.comm_stop, nb2.comm_stop, df.comm_stop) == (False, True, False)
    assert nb2.comm_type == "struct nvmm_comm_page_v2"
    assert nb1.comm_type == df.comm_type == "struct nvmm_comm_page_v1"
    assert "VCPU_INJECT" not in df.ioctls
    with pytest.raises(ValueError):
        abi.Flavour("freebsd", 1)


def test_comm_off():
    # NVMM_COMM_OFF(machid, cpuid) = (machid & 0xFF) << 20 | (cpuid & 0xFF) << 12
    assert abi.comm_off(0, 0) == 0
    assert abi.comm_off(1, 2) == 0x102000
    assert abi.comm_off(0x1FF, 0x1FF) == 0xFFFF000


def test_comm_state_is_the_shared_state_type():
    """vcpu.state points into the comm page and is the same cffi type every driver uses."""
    from nvmmpy.nvmm_abi import ffi as shared
    comm = ffi.new("struct nvmm_comm_page_v2 *")
    assert ffi.typeof(ffi.addressof(comm, "state")) is shared.typeof("struct nvmm_x64_state *")
