"""A guest whose code and MMIO sit at virtual addresses that are not their physical ones, and
that takes page faults back to back: what a kernel such as Linux does from its first
instructions. Same exits and same exception frames on every driver.

Layout (4 MiB of RAM): physical 0-2 MiB identity-mapped (page tables, IDT, stack, handler);
physical 2-4 MiB mapped only at virtual 1 GiB (the code); MMIO_BASE mapped only at virtual
1 GiB + 2 MiB; physical 0-2 MiB again, read-only, at 1 GiB + 4 MiB.
"""
import struct

import pytest

from nvmmpy import constants as nvmm
from asm import assemble
from harness import MMIO_BASE
from conftest import make_vm
from nvmmpy.vmm.cpu_modes import PDPT_ADDR, set_long_mode

PD_HIGH = 0x7000            # page directory for virtual 1-2 GiB
IDT, HANDLER, LOG, STACK = 0x30000, 0x20000, 0x40000, 0x80000
CODE_PHYS, CODE_VIRT = 0x200000, 0x40000000
MMIO_VIRT, RO_VIRT, ABSENT = 0x40200000, 0x40400000, 0x40600000
PAGE_2M = 0x87             # present, writable, user, 2 MiB
PAGE_2M_RO = 0x85


@pytest.fixture(params=["kvm", "unicorn"])
def vm(request):
    v = make_vm(request.param, ram_size=4 << 20)
    yield v
    v.close()


def guest(vm, body: str):
    vm.load(assemble(body, bits=64, org=CODE_VIRT), CODE_PHYS)
    set_long_mode(vm.vcpu, vm.ram, CODE_VIRT, STACK, map_size=2 << 20)
    ram = vm.ram
    ram[PDPT_ADDR + 8:PDPT_ADDR + 16] = struct.pack("<Q", PD_HIGH | 7)
    ram[PD_HIGH:PD_HIGH + 0x1000] = bytes(0x1000)
    for i, entry in enumerate((CODE_PHYS | PAGE_2M, MMIO_BASE | PAGE_2M, 0 | PAGE_2M_RO)):
        ram[PD_HIGH + 8 * i:PD_HIGH + 8 * i + 8] = struct.pack("<Q", entry)


def test_code_and_mmio_at_remapped_virtual_addresses(vm):
    guest(vm, f"""
        mov $0x5a, %al
        out %al, $0x80
        movl $0x11223344, %eax
        movl %eax, {MMIO_VIRT + 0x10:#x}
        movl {MMIO_VIRT + 0x10:#x}, %ebx
        mov %bl, %al
        out %al, $0x81
        hlt
    """)
    vm.run()
    assert vm.out == {0x80: bytearray(b"\x5a"), 0x81: bytearray(b"\x44")}
    assert vm.mmio_log == [(True, 0x10, 4, 0x11223344), (False, 0x10, 4, 0x11223344)]
    assert vm.reg(nvmm.X64_GPR_RIP) & ~0xFFF == CODE_VIRT


def test_page_faults_carry_their_error_codes_and_never_escalate(vm):
    """Three faults in a row, each handled and skipped: a not-present read (error 0), a write to a
    read-only page (3: present, write), the first again. A CPU that still counted the first as
    in flight would turn the third into a double fault."""
    vm.load(assemble("""
        pop %rax
        mov %rax, (%rdi)
        mov %cr2, %rax
        mov %rax, 8(%rdi)
        add $16, %rdi
        addq $3, (%rsp)
        iretq
    """, bits=64, org=HANDLER), HANDLER)
    guest(vm, f"""
        mov ${LOG}, %rdi
        mov ${ABSENT + 0x18:#x}, %rbx
        mov ${RO_VIRT + 0x100:#x}, %rcx
        mov (%rbx), %rax
        mov %rax, (%rcx)
        mov (%rbx), %rax
        mov %rdi, %rax
        out %al, $0x82
        hlt
    """)
    gate = (HANDLER & 0xFFFF) | 0x08 << 16 | 0x8E << 40 | (HANDLER >> 16 & 0xFFFF) << 48
    vm.ram[IDT + 16 * 14:IDT + 16 * 15] = struct.pack("<QQ", gate, HANDLER >> 32)
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    st.segs[nvmm.X64_SEG_IDT].base, st.segs[nvmm.X64_SEG_IDT].limit = IDT, 16 * 256 - 1
    vm.vcpu.setstate(nvmm.X64_STATE_SEGS)
    vm.run()
    log = [struct.unpack_from("<QQ", vm.ram, LOG + 16 * i) for i in range(3)]
    assert log == [(0, ABSENT + 0x18), (3, RO_VIRT + 0x100), (0, ABSENT + 0x18)]
    assert vm.out[0x82] == bytearray([(LOG + 48) & 0xFF])
    assert vm.vcpu.getstate(nvmm.X64_STATE_CRS).crs[nvmm.X64_CR_CR2] == ABSENT + 0x18


@pytest.mark.parametrize("soft_exits", ["scan", "hooks"])
def test_unicorn_exit_modes_give_the_same_exits(soft_exits):
    """Machine(soft_exits=): scanning code pages or instruction hooks, the VMM sees the same port
    I/O, MMIO and HLT exits (hooks report I/O as completed exits)."""
    from harness import TestVM
    import nvmmpy
    vm = TestVM("unicorn", ram_size=4 << 20, soft_exits=soft_exits)
    try:
        guest(vm, f"""
            mov $3, %ecx
        1:  mov %cl, %al
            out %al, $0x80
            movl %ecx, {MMIO_VIRT:#x}
            loop 1b
            hlt
        """)
        vm.run()
        assert vm.out == {0x80: bytearray(b"\x03\x02\x01")}
        assert [v for w, _, _, v in vm.mmio_log if w] == [3, 2, 1]
        assert vm.exits[nvmm.VCPU_EXIT_IO] == 3 and vm.exits[nvmm.VCPU_EXIT_MEMORY] == 3
        assert vm.exits[nvmm.VCPU_EXIT_HALTED] == 1
    finally:
        vm.close()
    with pytest.raises(ValueError, match="soft_exits"):
        nvmmpy.Machine("unicorn", soft_exits="fast")


def test_unicorn_hides_the_bmi_instructions_it_cannot_run_without_osfxsr():
    """unicorn's TCG raises #UD for shlx/andn while CR4.OSFXSR is clear (Linux's bzImage
    decompressor runs with CR4 = PAE only): its CPUID must not offer BMI1/BMI2."""
    vm = make_vm("unicorn", ram_size=4 << 20)
    try:
        guest(vm, """
            mov $7, %eax
            xor %ecx, %ecx
            cpuid
            mov %ebx, %eax
            out %eax, $0x84
            hlt
        """)
        vm.run()
        ebx = int.from_bytes(vm.out[0x84], "little")
        assert not ebx & (1 << 3 | 1 << 8) and ebx & 1  # BMI1, BMI2 hidden; FSGSBASE still there
    finally:
        vm.close()
