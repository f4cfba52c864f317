"""Event injection on /dev/kvm: interrupts through the IVT and the IDT, exceptions with error
codes, NMIs, interrupt windows (INT_READY), triple faults."""
import pytest

from nvmmpy import constants as nvmm
from nvmmpy.errors import NvmmError
from asm import assemble
from nvmmpy.vmm.cpu_modes import set_long_mode

pytestmark = pytest.mark.kvm

CODE = 0x10000
HANDLERS = 0x20000
IDT = 0x30000
STACK = 0x80000
KSTACK = 0x90000


def idt_gate(handler: int, dpl: int = 0) -> bytes:
    """64-bit interrupt gate to selector 0x08."""
    low = (handler & 0xFFFF) | (0x08 << 16) | ((0x8E | dpl << 5) << 40) | (((handler >> 16) & 0xFFFF) << 48)
    return low.to_bytes(8, "little") + (handler >> 32).to_bytes(8, "little")


def load_idt(vm, handlers: dict) -> None:
    for vector, addr in handlers.items():
        vm.ram[IDT + 16 * vector:IDT + 16 * vector + 16] = idt_gate(addr)
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    st.segs[nvmm.X64_SEG_IDT].base = IDT
    st.segs[nvmm.X64_SEG_IDT].limit = 16 * 256 - 1
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)


def handler(port: int, value: int, error_code: bool = False) -> bytes:
    """A handler that OUTs `value` to `port`; for exceptions it first OUTs the error code to
    port 0x44, pops it and returns past the 2-byte instruction the exception was raised on."""
    if not error_code:
        return assemble(f"""
            push %rax
            push %rdx
            mov ${port}, %dx
            mov ${value}, %al
            out %al, (%dx)
            pop %rdx
            pop %rax
            iretq
        """, bits=64)
    return assemble(f"""
        push %rax
        push %rdx
        mov 16(%rsp), %eax
        mov $0x44, %dx
        outl %eax, (%dx)
        mov ${port}, %dx
        mov ${value}, %al
        out %al, (%dx)
        pop %rdx
        pop %rax
        add $8, %rsp
        add $2, (%rsp)
        iretq
    """, bits=64)


def long_mode_guest(vm, body: str, cpl: int = 0):
    vm.load(assemble(body, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=cpl, kernel_stack=KSTACK)


def install(vm, vector: int, code: bytes, slot: int):
    addr = HANDLERS + 0x100 * slot
    vm.load(code, addr)
    return addr


def test_interrupt_through_idt_at_cpl0(vm):
    long_mode_guest(vm, """
        sti
    1:  mov $0x50, %dx
        mov $1, %al
        out %al, (%dx)
        jmp 1b
    """)
    h = install(vm, 0x40, handler(0x60, 0x40), 0)
    load_idt(vm, {0x40: h})
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)                     # first OUT, after STI: interrupts are open
    vm.vcpu.inject(nvmm.VCPU_EVENT_INTR, 0x40)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x60                      # the handler ran first
    vm.mach.assist_io(vm.vcpu)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x50                      # iretq went back to the loop
    assert bytes(vm.out[0x60]) == b"\x40"


def test_interrupt_at_cpl3_switches_stack(vm):
    long_mode_guest(vm, """
    1:  mov $0x50, %dx
        out %al, (%dx)
        jmp 1b
    """, cpl=3)
    vm.load(assemble("""
        mov %rsp, %rax
        mov $0x64, %dx
        outl %eax, (%dx)
        mov 8(%rsp), %rax      # interrupted CS
        out %al, (%dx)
        iretq
    """, bits=64, org=HANDLERS), HANDLERS)
    load_idt(vm, {0x41: HANDLERS})
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    st.gprs[nvmm.X64_GPR_RFLAGS] |= nvmm.RFLAGS_IF
    vm.vcpu.setstate(nvmm.X64_STATE_GPRS)
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    ex = vm.interrupt(0x41, report_port=0x64)
    assert ex.io.port == 0x50                      # back at CPL3
    out = bytes(vm.out[0x64])
    assert len(out) == 5                           # the handler's two reports
    rsp = int.from_bytes(out[:4], "little")
    assert KSTACK - 0x40 <= rsp < KSTACK          # on RSP0 from the TSS, 5 words pushed
    assert out[4] == 0x2B                          # came from the CPL3 code selector


def test_interrupt_through_real_mode_ivt(vm):
    # IVT entry 0x30 -> 0000:0600 (the handler), main code at 0000:0700
    vm.ram[0x30 * 4:0x30 * 4 + 4] = (0x0600).to_bytes(2, "little") + (0).to_bytes(2, "little")
    vm.load(assemble("""
        push %ax
        push %dx
        mov $0x61, %dx
        mov $0x30, %al
        out %al, (%dx)
        pop %dx
        pop %ax
        iret
    """, bits=16, org=0x600), 0x600)
    vm.start_real_mode_loop(0, 0x700)
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    ex = vm.interrupt(0x30, report_port=0x61)
    assert ex.io.port == 0x51 and bytes(vm.out[0x61]) == b"\x30"   # the handler ran once, then the loop


def test_interrupt_window_gives_int_ready(vm):
    long_mode_guest(vm, """
        mov $0x52, %dx
        out %al, (%dx)          # IF=0 here
        mov $200, %ecx
    1:  dec %ecx
        jnz 1b
        sti
        nop
    2:  jmp 2b
    """)
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)
    st = vm.vcpu.getstate(nvmm.X64_STATE_INTR | nvmm.X64_STATE_GPRS)
    assert not st.gprs[nvmm.X64_GPR_RFLAGS] & nvmm.RFLAGS_IF
    st.intr.int_window_exiting = 1
    vm.vcpu.setstate(nvmm.X64_STATE_INTR)
    assert vm.vcpu.getstate(nvmm.X64_STATE_INTR).intr.int_window_exiting == 1
    ex = vm.run(until=(nvmm.VCPU_EXIT_INT_READY,))
    assert ex.reason == nvmm.VCPU_EXIT_INT_READY
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_INTR)
    assert st.gprs[nvmm.X64_GPR_RFLAGS] & nvmm.RFLAGS_IF     # only after STI
    assert st.gprs[nvmm.X64_GPR_RCX] & 0xFFFFFFFF == 0     # and after the loop
    assert st.intr.int_window_exiting == 0               # cleared by the exit, as on NVMM


@pytest.mark.parametrize("vector", [13, 29])
def test_exception_with_error_code(vm, vector):
    """#GP, and AMD's #VC: vectors that push an error code (emulator/arch.py) get it on the stack."""
    long_mode_guest(vm, """
        mov $0x53, %dx
        out %al, (%dx)
        nop
        nop
        mov $0x54, %dx
        out %al, (%dx)
        hlt
    """)
    h = install(vm, vector, handler(0x62, vector, error_code=True), 0)
    load_idt(vm, {vector: h})
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)
    vm.vcpu.inject(nvmm.VCPU_EVENT_EXCP, vector, error=0x1234)    # e.g. #GP(0x1234) "at" the nops
    ex = vm.run()
    assert ex.reason == nvmm.VCPU_EXIT_HALTED
    assert bytes(vm.out[0x44]) == (0x1234).to_bytes(4, "little")
    assert bytes(vm.out[0x62]) == bytes((vector,))
    assert 0x54 in vm.out


def test_nmi_injection(vm):
    long_mode_guest(vm, """
    1:  mov $0x55, %dx
        out %al, (%dx)
        jmp 1b
    """)                                                   # IF=0: NMIs still arrive
    h = install(vm, 2, handler(0x63, 2), 0)
    load_idt(vm, {2: h})
    vm.run(until=(nvmm.VCPU_EXIT_IO,))
    vm.mach.assist_io(vm.vcpu)
    vm.vcpu.inject(nvmm.VCPU_EVENT_INTR, 2)
    ex = vm.run(until=(nvmm.VCPU_EXIT_IO,))
    assert ex.io.port == 0x63


def test_triple_fault_is_shutdown(vm):
    long_mode_guest(vm, "ud2")                             # no IDT: #UD -> #DF -> shutdown
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    st.segs[nvmm.X64_SEG_IDT].limit = 0
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)
    assert vm.run(until=(nvmm.VCPU_EXIT_SHUTDOWN,)).reason == nvmm.VCPU_EXIT_SHUTDOWN


@pytest.mark.parametrize("etype,vector", [(nvmm.VCPU_EVENT_EXCP, 2), (nvmm.VCPU_EVENT_EXCP, 3), (nvmm.VCPU_EVENT_EXCP, 0),
                                          (nvmm.VCPU_EVENT_EXCP, 32), (7, 1)])
def test_invalid_events_rejected(vm, etype, vector):
    with pytest.raises(NvmmError) as e:
        vm.vcpu.inject(etype, vector)
    assert e.value.errno == 22


def test_timer_interrupts_during_mmio_same_on_every_driver():
    """A VMM-side timer injects an interrupt every few exits (through an interrupt window when
    IF=0) while the guest counts through an MMIO register; both drivers end in the same state."""
    from conftest import make_vm
    from harness import MMIO_BASE
    results = {}
    for driver in ("kvm", "unicorn"):
        vm = make_vm(driver)
        try:
            long_mode_guest(vm, f"""
                movabs ${MMIO_BASE:#x}, %rdi
                mov $40, %ecx
                sti
            1:  movl (%rdi), %eax           # read the device counter
                incl %eax
                movl %eax, (%rdi)           # write it back
                cli                         # a critical section: interrupts wait for the window
                addl $1, 4(%rdi)
                sti
                dec %ecx
                jnz 1b
                cli
                mov 0x7000, %eax            # interrupts the handler counted
                mov $0x72, %dx
                outl %eax, (%dx)
                hlt
            """)
            vm.load(assemble("""
                incl 0x7000
                push %rax
                push %rdx
                mov $0x71, %dx
                mov $0x20, %al
                out %al, (%dx)
                pop %rdx
                pop %rax
                iretq
            """, bits=64), HANDLERS)
            load_idt(vm, {0x20: HANDLERS})
            vcpu, mach = vm.vcpu, vm.mach
            injected = windows = exits = seen = 0
            pending = waiting = False
            while True:
                ex = vcpu.run()
                exits += 1
                if ex.reason == nvmm.VCPU_EXIT_HALTED:
                    break
                if ex.reason == nvmm.VCPU_EXIT_IO:
                    mach.assist_io(vcpu)
                elif ex.reason == nvmm.VCPU_EXIT_MEMORY:
                    mach.assist_mem(vcpu)
                elif ex.reason == nvmm.VCPU_EXIT_INT_READY:
                    windows += 1
                    waiting = False
                elif ex.reason != nvmm.VCPU_EXIT_NONE:
                    raise AssertionError(f"{driver}: unexpected {ex!r}")
                for write, off, _, value in vm.mmio_log[seen:]:
                    if write and off == 4 and value % 3 == 0:  # written inside the cli section
                        pending = True        # the device raises its interrupt on every third count
                seen = len(vm.mmio_log)
                if pending and not waiting:
                    if ex.exitstate.rflags & nvmm.RFLAGS_IF:
                        vcpu.inject(nvmm.VCPU_EVENT_INTR, 0x20)
                        injected += 1
                        pending = False
                    else:                     # interrupts are off: ask to be told when they are on
                        st = vcpu.getstate(nvmm.X64_STATE_INTR)
                        st.intr.int_window_exiting = 1
                        vcpu.setstate(nvmm.X64_STATE_INTR)
                        waiting = True
                assert exits < 5000
            handled = int.from_bytes(bytes(vm.out[0x72]), "little")
            results[driver] = dict(counter=int.from_bytes(vm.mmio[0:4], "little"),
                                   critical=int.from_bytes(vm.mmio[4:8], "little"),
                                   handled=handled, injected=injected, beeps=len(vm.out.get(0x71, b"")),
                                   mmio=[(w, o, s) for w, o, s, _ in vm.mmio_log])
            assert injected > 5 and windows > 0, (driver, injected, windows)
        finally:
            vm.close()
    assert results["kvm"] == results["unicorn"]
    assert results["kvm"]["counter"] == 40 and results["kvm"]["critical"] == 40
    assert results["kvm"]["handled"] == results["kvm"]["injected"] == results["kvm"]["beeps"]
