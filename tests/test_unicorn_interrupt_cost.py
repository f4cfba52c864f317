"""Behaviour the unicorn driver's cheap event delivery must keep (checked on every driver: kvm is
the reference). The unicorn driver reads only the registers a delivery needs and writes back only
what it changed: RIP, RSP and RFLAGS directly, CS and SS (and the data segments leaving
virtual-8086 mode) through a helper handle only when they change. These cover the cases where
they do change (a privilege change in long and in protected mode, a real-mode handler in another
segment, an exception the guest raises at CPL3), repeated so the segment cache is exercised, and
that nothing else of the vCPU (SSE registers, GPRs) is disturbed by a delivery or by setstate."""
import pytest

from nvmmpy import constants as nvmm
from asm import assemble
from nvmmpy.vmm import cpu_modes
from nvmmpy.vmm.cpu_modes import SEL_CODE32, SEL_DATA, TSS_ADDR, set_long_mode, set_protected_mode

CODE = 0x10000
HANDLERS = 0x20000
IDT = 0x30000
STACK = 0x80000
KSTACK = 0x90000

XMM = [bytes((17 * i + j) & 0xFF for j in range(16)) for i in range(16)]


def gate64(handler: int) -> bytes:
    low = (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)
    return low.to_bytes(8, "little") + (handler >> 32).to_bytes(8, "little")


def gate32(handler: int, selector: int = SEL_CODE32) -> bytes:
    return ((handler & 0xFFFF) | (selector << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)).to_bytes(8, "little")


def set_idt(vm, entries: dict, size: int) -> None:
    for vector, gate in entries.items():
        vm.ram[IDT + size * vector:IDT + size * (vector + 1)] = gate
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    st.segs[nvmm.X64_SEG_IDT].base = IDT
    st.segs[nvmm.X64_SEG_IDT].limit = size * 256 - 1
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)


def set_if(vm) -> None:
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    st.gprs[nvmm.X64_GPR_RFLAGS] |= nvmm.RFLAGS_IF
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)


def set_xmm(vm) -> None:
    st = vm.vcpu.getstate(nvmm.X64_STATE_FPU)
    for i in range(16):
        for j in range(16):
            st.fpu.fx_xmm[i].xmm_bytes[j] = XMM[i][j]
    vm.vcpu.setstate(nvmm.X64_STATE_FPU)


def xmm(vm) -> list:
    st = vm.vcpu.getstate(nvmm.X64_STATE_FPU)
    return [bytes(st.fpu.fx_xmm[i].xmm_bytes) for i in range(16)]


def words(data: bytes, size: int) -> list:
    return [int.from_bytes(data[i:i + size], "little") for i in range(0, len(data), size)]


def user_loop_64(vm) -> None:
    """CPL3 long-mode loop: OUT to 0x50 (allowed by the TSS I/O bitmap), RBX/R12 as markers."""
    vm.load(assemble("""
        mov $0x1111222233334444, %rbx
        mov $0x5555666677778888, %r12
    1:  mov $0x50, %dx
        out %al, (%dx)
        jmp 1b
    """, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=3, kernel_stack=KSTACK)


def test_long_mode_interrupts_at_cpl3_each_switch_to_rsp0_and_return(vm):
    user_loop_64(vm)
    vm.load(assemble("""
        mov %rsp, %rax
        mov $0x64, %dx
        out %eax, (%dx)         # RSP in the handler
        mov 8(%rsp), %rax
        out %eax, (%dx)         # interrupted CS
        mov 24(%rsp), %rax
        out %eax, (%dx)         # interrupted RSP
        mov 32(%rsp), %rax
        out %eax, (%dx)         # interrupted SS
        mov %ss, %eax
        out %eax, (%dx)         # SS in the handler: null, RPL 0
        iretq
    """, bits=64, org=HANDLERS), HANDLERS)
    set_idt(vm, {0x41: gate64(HANDLERS)}, 16)
    set_if(vm)
    set_xmm(vm)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    for round_ in range(3):
        assert ex.io.port == 0x50
        ex = vm.interrupt(0x41, report_port=0x64)
        assert ex.io.port == 0x50, round_                    # back in the CPL3 loop
        got = words(bytes(vm.out.pop(0x64)), 4)
        assert got == [KSTACK - 40, 0x2B, STACK, 0x23, 0], (round_, [hex(w) for w in got])
        st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS)
        assert st.segs[nvmm.X64_SEG_CS].selector == 0x2B and st.segs[nvmm.X64_SEG_SS].selector == 0x23
        assert st.gprs[nvmm.X64_GPR_RSP] == STACK
        assert st.gprs[nvmm.X64_GPR_RBX] == 0x1111222233334444 and st.gprs[nvmm.X64_GPR_R12] == 0x5555666677778888
        assert st.gprs[nvmm.X64_GPR_RFLAGS] & nvmm.RFLAGS_IF
    assert xmm(vm) == XMM


def test_long_mode_exception_raised_at_cpl3_returns_to_cpl3(vm):
    vm.load(assemble("""
        mov $0x50, %dx
        out %al, (%dx)
        ud2
        mov $0x51, %dx
        out %al, (%dx)
        ud2
        mov $0x52, %dx
        out %al, (%dx)
    1:  jmp 1b
    """, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=3, kernel_stack=KSTACK)
    vm.load(assemble("""
        mov %rsp, %rax
        mov $0x66, %dx
        out %eax, (%dx)
        mov 8(%rsp), %rax       # CS of the ud2
        out %eax, (%dx)
        addq $2, (%rsp)         # past the ud2
        iretq
    """, bits=64, org=HANDLERS), HANDLERS)
    set_idt(vm, {6: gate64(HANDLERS)}, 16)
    set_xmm(vm)
    ports = []
    while 0x52 not in ports:
        ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
        ports.append(ex.io.port)
        vm.mach.assist_io(vm.vcpu)
    assert ports == [0x50, 0x66, 0x66, 0x51, 0x66, 0x66, 0x52]
    assert words(bytes(vm.out[0x66]), 4) == [KSTACK - 40, 0x2B] * 2
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS | nvmm.X64_STATE_GPRS)
    assert st.segs[nvmm.X64_SEG_CS].selector == 0x2B and st.gprs[nvmm.X64_GPR_RSP] == STACK
    assert xmm(vm) == XMM


def test_protected_mode_interrupt_at_cpl3_uses_tss_ss0_esp0(vm):
    # kvm_pvm emulates CPL0 code in its kernel, which cannot run a 32-bit IRET: there the test
    # checks the delivery (the frame on the TSS stack) and stops before the handler returns.
    pvm = vm.mach.capability.backend == "pvm"
    vm.load(assemble("""
    1:  mov $0x50, %dx
        out %al, (%dx)
        jmp 1b
    """, bits=32, org=CODE), CODE)
    set_protected_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=3)
    vm.ram[TSS_ADDR + 4:TSS_ADDR + 8] = KSTACK.to_bytes(4, "little")      # ESP0
    vm.ram[TSS_ADDR + 8:TSS_ADDR + 10] = SEL_DATA.to_bytes(2, "little")   # SS0
    vm.load(assemble("""
        mov %esp, %eax
        mov $0x64, %dx
        out %eax, (%dx)
        mov 4(%esp), %eax       # interrupted CS
        out %eax, (%dx)
        mov 12(%esp), %eax      # interrupted ESP
        out %eax, (%dx)
        mov 16(%esp), %eax      # interrupted SS
        out %eax, (%dx)
        mov %ss, %eax
        out %eax, (%dx)
        iret
    """, bits=32, org=HANDLERS), HANDLERS)
    set_idt(vm, {0x41: gate32(HANDLERS)}, 8)
    set_if(vm)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    for round_ in range(2):
        assert ex.io.port == 0x50
        vm.mach.assist_io(vm.vcpu)
        vm.vcpu.inject(nvmm.VCPU_EVENT_INTR, 0x41)
        ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
        for _ in range(5):   # the handler's five reports
            assert ex.io.port == 0x64
            vm.mach.assist_io(vm.vcpu)
            if pvm and _ == 4:
                break        # the next instruction is the IRET
            ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
        got = words(bytes(vm.out.pop(0x64)), 4)
        assert got == [KSTACK - 20, cpu_modes.SEL_CODE32_USER, STACK, cpu_modes.SEL_DATA_USER, SEL_DATA], \
            (round_, [hex(w) for w in got])
        if pvm:
            return
        assert ex.io.port == 0x50
        st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS)
        assert st.segs[nvmm.X64_SEG_CS].selector == cpu_modes.SEL_CODE32_USER
        assert st.segs[nvmm.X64_SEG_SS].selector == cpu_modes.SEL_DATA_USER
        assert st.gprs[nvmm.X64_GPR_RSP] == STACK


def test_real_mode_interrupt_to_a_handler_in_another_segment(vm):
    vm.ram[0x30 * 4:0x30 * 4 + 4] = (0x0000).to_bytes(2, "little") + (0x0080).to_bytes(2, "little")  # 0080:0000
    vm.load(assemble("""
        mov %cs, %ax
        mov $0x61, %dx
        out %ax, (%dx)
        mov %sp, %ax
        out %ax, (%dx)
        iret
    """, bits=16, org=0), 0x800)
    vm.start_real_mode_loop(0x70, 0)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    for round_ in range(2):
        assert ex.io.port == 0x51
        ex = vm.interrupt(0x30, report_port=0x61)
        assert ex.io.port == 0x51
        assert words(bytes(vm.out.pop(0x61)), 2) == [0x80, 0x7000 - 6], round_
        st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS | nvmm.X64_STATE_GPRS)
        assert (st.segs[nvmm.X64_SEG_CS].selector, st.segs[nvmm.X64_SEG_CS].base) == (0x70, 0x700)
        assert st.gprs[nvmm.X64_GPR_RSP] & 0xFFFF == 0x7000


@pytest.mark.parametrize("cpl", [0, 3])
def test_injection_keeps_sse_registers(vm, cpl):
    if cpl:
        user_loop_64(vm)
    else:
        vm.load(assemble("""
        1:  mov $0x50, %dx
            out %al, (%dx)
            jmp 1b
        """, bits=64, org=CODE), CODE)
        set_long_mode(vm.vcpu, vm.ram, CODE, STACK, kernel_stack=KSTACK)
    vm.load(assemble("iretq", bits=64, org=HANDLERS), HANDLERS)
    set_idt(vm, {0x41: gate64(HANDLERS)}, 16)
    set_if(vm)
    set_xmm(vm)
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)
    vm.vcpu.inject(nvmm.VCPU_EVENT_INTR, 0x41)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x50
    assert xmm(vm) == XMM


def test_setstate_of_segments_alone_keeps_gprs(vm):
    vm.load(assemble("""
        mov $0x1234, %eax
        mov $0x50, %dx
        out %al, (%dx)
        mov $0x51, %dx
        out %al, (%dx)
        hlt
    """, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK)
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    st.segs[nvmm.X64_SEG_IDT].limit = 0x0FFF
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)
    assert vm.reg(nvmm.X64_GPR_RAX) == 0x1234
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x51                     # RIP kept too
    assert vm.vcpu.getstate(nvmm.X64_STATE_SEGS).segs[nvmm.X64_SEG_IDT].limit == 0x0FFF
