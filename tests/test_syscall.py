"""SYSCALL from CPL3 into a CPL0 handler and SYSRET back, many times: on unicorn, and on kvm with VMX/SVM.

The CPU does SYSCALL on kvm; on unicorn the driver does (unicorn only calls a hook: see
drivers/unicorn/syscall.py, which also learns the privilege change after the first entry and
applies it directly afterwards). The handler records what it sees at CPL0; the same guest must
see the same on both drivers: CS/SS from STAR, RCX the return address, R11 the user RFLAGS,
RFLAGS masked by FMASK, and SYSRET back at CPL3 each time.
"""
import pytest

from nvmmpy import constants as nvmm
from asm import assemble
from conftest import make_vm
from harness import kvm_runs_kernel_code
from nvmmpy.vmm.cpu_modes import SEL_CODE64, set_long_mode

CODE, HANDLER, STACK, KSTACK, DATA = 0x10000, 0x20000, 0x80000, 0x90000, 0x70000
N = 300
STAR = (0x18 << 48) | (SEL_CODE64 << 32)        # SYSRET: SS 0x20|3, CS 0x28|3; SYSCALL: CS 0x08, SS 0x10
FMASK = 0x4700                                  # TF, DF, IF, IOPL, NT, as Linux masks (IOPL: 0x3000)

USER = f"""
    sti
    mov ${N}, %r12
1:  mov %r12, %rax
    syscall
after:
    dec %r12
    jnz 1b
    mov $0x50, %dx
    out %al, (%dx)
    hlt
"""
KERNEL = f"""
    mov %cs, %ax
    mov %ax, {DATA:#x}
    mov %ss, %ax
    mov %ax, {DATA + 2:#x}
    pushfq
    pop %rbx
    mov %rbx, {DATA + 8:#x}
    mov %rcx, {DATA + 0x10:#x}
    mov %r11, {DATA + 0x18:#x}
    incq {DATA + 0x20:#x}
    sysretq
"""


# kvm only where SYSCALL is the CPU's: kvm_pvm routes a CPL3 SYSCALL through its own switcher (the
# guest shut down there, never reaching LSTAR), and faults STI at CPL3 whatever the IOPL
SYSCALL_DRIVERS = ["unicorn", *(["kvm"] if kvm_runs_kernel_code() else [])]


@pytest.fixture(params=SYSCALL_DRIVERS)
def vm(request):
    v = make_vm(request.param)
    yield v
    v.close()


def _setup(vm, star):
    """The user loop at CPL3 and the handler at LSTAR; returns the user code."""
    user = assemble(USER, bits=64, org=CODE)
    vm.load(user, CODE)
    vm.load(assemble(KERNEL, bits=64, org=HANDLER), HANDLER)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=3, iopl=3, kernel_stack=KSTACK)
    st = vm.vcpu.getstate(nvmm.X64_STATE_MSRS)
    st.msrs[nvmm.X64_MSR_EFER] |= 1                 # SCE
    st.msrs[nvmm.X64_MSR_STAR] = star
    st.msrs[nvmm.X64_MSR_LSTAR] = HANDLER
    st.msrs[nvmm.X64_MSR_SFMASK] = FMASK
    vm.vcpu.setstate(nvmm.X64_STATE_MSRS)
    return user


def test_syscall_sysret_round_trips(vm):
    user = _setup(vm, STAR)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x50
    mem = lambda off, n: int.from_bytes(vm.ram[DATA + off:DATA + off + n], "little")  # noqa: E731
    assert mem(0x20, 8) == N                        # every SYSCALL reached the handler once
    assert (mem(0, 2), mem(2, 2)) == (0x08, 0x10)   # CPL0 code and stack from STAR[47:32]
    kflags, uflags = mem(8, 8), mem(0x18, 8)
    assert uflags & 0x200 and uflags & 0x3000 == 0x3000     # R11: the user's RFLAGS (IF, IOPL 3)
    assert kflags & (FMASK | 0x10000) == 0          # masked by FMASK, RF clear
    assert mem(0x10, 8) == CODE + user.index(bytes.fromhex("0f05")) + 2    # RCX: behind the SYSCALL
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS | nvmm.X64_STATE_GPRS)
    assert st.segs[nvmm.X64_SEG_CS].selector == 0x28 | 3 and st.segs[nvmm.X64_SEG_SS].selector == 0x20 | 3
    assert nvmm.VCPU_EXIT_NONE not in vm.exits      # a SYSCALL is not an exit: the guest just goes on
    if hasattr(vm.vcpu, "_sys_learned"):            # unicorn: later entries took the learned path
        assert vm.vcpu._sys_learned is not None and vm.vcpu._sys_learned.table


@pytest.mark.parametrize("selector", [0x1F8, 0x20, 0])
def test_star_naming_no_ring0_descriptors_is_an_invalid_exit_on_unicorn(selector):
    """A CPU loads SYSCALL's descriptors without reading the GDT; unicorn can only load them from
    it. A guest whose STAR names selectors the GDT does not hold as ring-0 code and data (past its
    limit, user segments, null) gets an INVALID exit saying so, never an exception in the VMM."""
    vm = make_vm("unicorn")
    try:
        _setup(vm, star=(0x18 << 48) | (selector << 32))
        ex = vm.run(until=(nvmm.VCPU_EXIT_INVALID,))
        assert "SYSCALL: STAR selects CS" in ex.inv.detail and f"{selector:#x}" in ex.inv.detail
        st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS)
        assert st.segs[nvmm.X64_SEG_CS].selector == 0x28 | 3                          # still the user's
        assert vm.ram[st.gprs[nvmm.X64_GPR_RIP]:st.gprs[nvmm.X64_GPR_RIP] + 2] == b"\x0f\x05"  # at the SYSCALL
    finally:
        vm.close()
