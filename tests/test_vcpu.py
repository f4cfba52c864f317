"""MSR and CPUID exits/masks, stop() from another thread, state round trips, on /dev/kvm."""
import threading
import time

import pytest

from nvmmpy import constants as nvmm
from nvmmpy import CpuidConf
from nvmmpy.errors import NvmmError
from asm import assemble
from nvmmpy.vmm.cpu_modes import set_long_mode
from test_events_injection import CODE, STACK, KSTACK, handler, install, load_idt

pytestmark = pytest.mark.kvm

MSR = 0xC0DE0001  # unknown to KVM: accesses exit to the VMM


def long_guest(vm, body):
    vm.load(assemble(body, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, kernel_stack=KSTACK)


def test_rdmsr_wrmsr_exits_completed_nvmm_style(vm):
    long_guest(vm, f"""
        mov ${MSR}, %ecx
        rdmsr
        mov %eax, %r8d
        mov %edx, %r9d
        mov $0xaabbccdd, %eax
        mov $0x11223344, %edx
        wrmsr
        mov $0x70, %dx
        out %al, (%dx)
        hlt
    """)
    vcpu = vm.vcpu
    ex = vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_RDMSR and ex.rdmsr.msr == MSR
    st = vcpu.getstate(nvmm.X64_STATE_GPRS)
    rip_at_exit = st.gprs[nvmm.X64_GPR_RIP]
    assert ex.rdmsr.npc == rip_at_exit + 2
    st.gprs[nvmm.X64_GPR_RAX] = 0x87654321
    st.gprs[nvmm.X64_GPR_RDX] = 0x0FEDCBA9
    st.gprs[nvmm.X64_GPR_RIP] = ex.rdmsr.npc
    vcpu.setstate(nvmm.X64_STATE_GPRS)
    ex = vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_WRMSR
    assert (ex.wrmsr.msr, ex.wrmsr.val) == (MSR, 0x11223344AABBCCDD)
    st = vcpu.getstate(nvmm.X64_STATE_GPRS)
    assert st.gprs[nvmm.X64_GPR_R8] == 0x87654321 and st.gprs[nvmm.X64_GPR_R9] == 0x0FEDCBA9
    assert st.gprs[nvmm.X64_GPR_RIP] == ex.wrmsr.npc - 2
    st.gprs[nvmm.X64_GPR_RIP] = ex.wrmsr.npc
    vcpu.setstate(nvmm.X64_STATE_GPRS)
    assert vm.run().reason == nvmm.VCPU_EXIT_HALTED
    assert 0x70 in vm.out


def test_msr_exit_not_completed_repeats(vm):
    """As on NVMM: if the VMM does not advance RIP, the guest executes RDMSR again."""
    long_guest(vm, f"mov ${MSR}, %ecx\n rdmsr\n hlt")
    ex = vm.vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_RDMSR
    ex = vm.vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_RDMSR
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    st.gprs[nvmm.X64_GPR_RIP] = ex.rdmsr.npc
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
    assert vm.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED


def test_msr_exit_failed_with_gp(vm):
    long_guest(vm, f"mov ${MSR}, %ecx\n rdmsr\n mov $0x71, %dx\n out %al, (%dx)\n hlt")
    load_idt(vm, {13: install(vm, 13, handler(0x62, 13, error_code=True), 0)})
    assert vm.vcpu.run().reason == nvmm.VCPU_EXIT_RDMSR
    vm.vcpu.inject(nvmm.VCPU_EVENT_EXCP, 13, error=0)
    assert vm.run().reason == nvmm.VCPU_EXIT_HALTED
    assert bytes(vm.out[0x62]) == b"\x0d" and 0x71 in vm.out


def test_cpuid_masks(vm):
    long_guest(vm, """
        mov $1, %eax
        xor %ecx, %ecx
        cpuid
        mov %ecx, %r8d
        mov %edx, %r9d
        mov $0x40000000, %eax
        cpuid
        mov %ebx, %r10d
        hlt
    """)
    vcpu = vm.vcpu
    # clear SSE3 (ecx bit 0) and set a reserved-for-software bit pattern in leaf 0x40000000 ebx
    vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, mask=True, del_=(0, 0, 1, 0), set=(0, 0, 0, 0)))
    vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(0x40000000, mask=True, set=(0, 0x4E564D4D, 0, 0),
                                                del_=(0, 0xFFFFFFFF & ~0x4E564D4D, 0, 0)))
    assert vm.run().reason == nvmm.VCPU_EXIT_HALTED
    st = vcpu.getstate(nvmm.X64_STATE_GPRS)
    assert st.gprs[nvmm.X64_GPR_R10] & 0xFFFFFFFF == 0x4E564D4D  # "MMVN"
    if vm.mach.capability.backend != "pvm":
        # kvm_pvm replaces the standard leaves with the host's own values (see capability.extra)
        assert st.gprs[nvmm.X64_GPR_R8] & 1 == 0
        assert st.gprs[nvmm.X64_GPR_R8] & (1 << 31)             # hypervisor bit


def test_cpuid_conf_errors(kvm_vm):
    vcpu = kvm_vm.vcpu
    with pytest.raises(NvmmError) as e:
        vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, mask=True, set=(1, 0, 0, 0), del_=(1, 0, 0, 0)))
    assert e.value.errno == 22
    with pytest.raises(NvmmError) as e:
        vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, mask=True, exit=True))
    assert e.value.errno == 22
    with pytest.raises(NvmmError, match="cannot exit on CPUID"):
        vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, exit=True))


def test_cpuid_conf_after_run_is_refused_clearly(kvm_vm):
    vm = kvm_vm
    long_guest(vm, "hlt")
    vm.run()
    with pytest.raises(NvmmError, match="before the vCPU first runs"):
        vm.vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, mask=True, del_=(0, 0, 1, 0)))


@pytest.mark.parametrize("spin_at", ["inside", "before"])
def test_stop_from_another_thread(vm, spin_at):
    long_guest(vm, "1: jmp 1b")
    vcpu = vm.vcpu
    result = []
    if spin_at == "before":
        vcpu.stop()                        # a stop before run() makes the next run() return STOPPED
        result.append(vcpu.run().reason)
    else:
        t = threading.Thread(target=lambda: result.append(vcpu.run().reason))
        t.start()
        time.sleep(0.2)
        assert t.is_alive(), "the guest should be spinning"
        vcpu.stop()
        t.join(5)
        assert not t.is_alive(), "stop() did not kick the vCPU out of the guest"
    assert result == [nvmm.VCPU_EXIT_STOPPED]
    # and the vCPU runs on afterwards
    t = threading.Thread(target=lambda: result.append(vcpu.run().reason))
    t.start()
    time.sleep(0.1)
    vcpu.stop()
    t.join(5)
    assert result[-1] == nvmm.VCPU_EXIT_STOPPED


def _fill(st):
    """Non-default, architecturally valid values in every group (long mode, CPL0)."""
    for i in range(16):
        st.gprs[i] = 0x1111111111111111 * (i % 15 + 1) & 0xFFFFFFFFFFFFFFFF
    st.gprs[nvmm.X64_GPR_RIP] = 0x123456
    st.gprs[nvmm.X64_GPR_RFLAGS] = 0x2 | nvmm.RFLAGS_CF | nvmm.RFLAGS_DF
    st.segs[nvmm.X64_SEG_FS].base = 0x7FFF00001000
    st.segs[nvmm.X64_SEG_GS].base = 0xFFFF800000002000
    st.segs[nvmm.X64_SEG_IDT].base = 0x3000
    st.segs[nvmm.X64_SEG_IDT].limit = 0xFFF
    st.crs[nvmm.X64_CR_CR2] = 0xDEADB000
    st.crs[nvmm.X64_CR_CR8] = 5
    st.crs[nvmm.X64_CR_XCR0] = 0x3
    for i in range(4):
        st.drs[i] = 0x1000 * (i + 1)
    st.drs[nvmm.X64_DR_DR7] = 0x400 | 0x1  # L0 enabled
    st.msrs[nvmm.X64_MSR_STAR] = 0x0023001000000000
    st.msrs[nvmm.X64_MSR_LSTAR] = 0xFFFFFFFF81000000
    st.msrs[nvmm.X64_MSR_CSTAR] = 0xFFFFFFFF81000100
    st.msrs[nvmm.X64_MSR_SFMASK] = 0x47700
    st.msrs[nvmm.X64_MSR_KERNELGSBASE] = 0xFFFF888000000000
    st.msrs[nvmm.X64_MSR_SYSENTER_CS] = 0x10
    st.msrs[nvmm.X64_MSR_SYSENTER_ESP] = 0x8000
    st.msrs[nvmm.X64_MSR_SYSENTER_EIP] = 0x9000
    st.msrs[nvmm.X64_MSR_PAT] = 0x0007010600070106
    st.fpu.fx_cw = 0x27F
    st.fpu.fx_mxcsr = 0x1FA0
    for i in range(16):
        for j in range(16):
            st.fpu.fx_xmm[i].xmm_bytes[j] = (i * 16 + j) & 0xFF
    for j in range(8):
        st.fpu.fx_87_ac[3].fp_bytes[j] = j + 1


GROUPS = {
    "GPRS": (nvmm.X64_STATE_GPRS, lambda s: [s.gprs[i] for i in range(18)]),
    "SEGS": (nvmm.X64_STATE_SEGS, lambda s: [(s.segs[i].base, s.segs[i].limit, s.segs[i].selector) for i in range(10)]
             + [(s.segs[i].attrib.type, s.segs[i].attrib.l, s.segs[i].attrib.dpl) for i in range(6)]),
    "CRS": (nvmm.X64_STATE_CRS, lambda s: [s.crs[i] for i in range(6)]),
    "DRS": (nvmm.X64_STATE_DRS, lambda s: [s.drs[i] for i in range(4)] + [s.drs[5]]),
    "MSRS": (nvmm.X64_STATE_MSRS, lambda s: [s.msrs[i] for i in range(10)]),
    "INTR": (nvmm.X64_STATE_INTR, lambda s: [s.intr.int_window_exiting]),
    "FPU": (nvmm.X64_STATE_FPU, lambda s: [s.fpu.fx_cw, s.fpu.fx_mxcsr,
                                         bytes(s.fpu.fx_xmm[i].xmm_bytes[j] for i in range(16) for j in range(16)),
                                         bytes(s.fpu.fx_87_ac[3].fp_bytes[j] for j in range(10))]),
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_state_round_trip(vm, group):
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK)
    flag, view = GROUPS[group]
    st = vm.vcpu.getstate(nvmm.X64_STATE_ALL)
    _fill(st)
    if group == "INTR":
        st.intr.int_shadow = 1
        st.intr.int_window_exiting = 1
    wanted = view(st)
    vm.vcpu.setstate(flag)
    # scribble over the local copy, then read back from the vCPU
    from nvmmpy.state import reset_state
    reset_state(st)
    got = view(vm.vcpu.getstate(flag))
    assert got == wanted
    if group == "INTR" and "int_shadow" not in vm.mach.capability.extra:
        assert vm.vcpu.state.intr.int_shadow == 1  # drivers that do not track it say so in capability.extra


def test_tsc_set_and_kept(kvm_vm):
    vcpu = kvm_vm.vcpu
    st = vcpu.getstate(nvmm.X64_STATE_MSRS)
    before = st.msrs[nvmm.X64_MSR_TSC]
    st.msrs[nvmm.X64_MSR_TSC] = 1 << 40
    vcpu.setstate(nvmm.X64_STATE_MSRS)
    tsc = vcpu.getstate(nvmm.X64_STATE_MSRS).msrs[nvmm.X64_MSR_TSC]
    if kvm_vm.mach.capability.backend == "pvm":
        assert tsc >= before          # kvm_pvm guests read the host TSC; writes are ignored
    else:
        assert 1 << 40 <= tsc < (1 << 40) + (1 << 36)
    vcpu.setstate(nvmm.X64_STATE_MSRS)                 # the value just read: TSC not rewound
    assert vcpu.getstate(nvmm.X64_STATE_MSRS).msrs[nvmm.X64_MSR_TSC] >= tsc


def test_cpuid_exit_on_unicorn():
    """The software driver offers NVMM's CPUID exits: the VMM answers the leaf and sets RIP = npc."""
    from conftest import make_vm
    vm = make_vm("unicorn")
    try:
        assert vm.mach.capability.cpuid_exits
        long_guest(vm, """
            mov $0x40000001, %eax
            cpuid
            mov %ebx, %r8d
            mov $1, %eax
            cpuid
            mov %ecx, %r9d
            hlt
        """)
        vcpu = vm.vcpu
        vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(0x40000001, exit=True))
        vcpu.configure(nvmm.VCPU_CONF_CPUID, CpuidConf(1, mask=True, del_=(0, 0, 1, 0)))
        ex = vcpu.run()
        assert ex.reason == nvmm.VCPU_EXIT_CPUID
        st = vcpu.getstate(nvmm.X64_STATE_GPRS)
        assert st.gprs[nvmm.X64_GPR_RAX] & 0xFFFFFFFF == 0x40000001
        assert ex.insn.npc == st.gprs[nvmm.X64_GPR_RIP] + 2
        st.gprs[nvmm.X64_GPR_RBX] = 0xC0FFEE
        st.gprs[nvmm.X64_GPR_RIP] = ex.insn.npc
        vcpu.setstate(nvmm.X64_STATE_GPRS)
        assert vcpu.run().reason == nvmm.VCPU_EXIT_HALTED
        st = vcpu.getstate(nvmm.X64_STATE_GPRS)
        assert st.gprs[nvmm.X64_GPR_R8] == 0xC0FFEE
        assert st.gprs[nvmm.X64_GPR_R9] & 1 == 0 and st.gprs[nvmm.X64_GPR_R9] & (1 << 31)
    finally:
        vm.close()
