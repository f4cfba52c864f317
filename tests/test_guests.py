"""Real tiny guests on /dev/kvm: every CPU mode, port I/O both ways, MMIO, HLT."""
import pytest

from nvmmpy import constants as nvmm
from asm import assemble
from harness import MMIO_BASE
from nvmmpy.vmm.cpu_modes import set_long_mode, set_protected_mode, set_real_mode

pytestmark = pytest.mark.kvm

CODE = 0x10000
STACK = 0x80000


REAL_MODE_IO = """
    mov $0x10, %dx
    mov $0x41, %al
    out %al, (%dx)          # OUT imm byte
    in (%dx), %al           # IN byte
    mov %al, %bl
    mov $0x12, %dx
    in (%dx), %ax           # IN word
    mov %ax, %cx
    mov %cx, %bp
    mov $0x10, %dx
    mov $0x200, %si
    mov $5, %cx
    cld
    rep outsb               # REP OUTSB x5
    mov $0x300, %di
    mov $3, %cx
    mov $0x12, %dx
    rep insw                # REP INSW x3
    hlt
"""


def test_real_mode_port_io_and_strings(vm):
    code = assemble(REAL_MODE_IO, bits=16, org=0x100)
    vm.load(code, 0x1100)
    vm.ram[0x1200:0x1205] = b"hello"
    vm.in_data[0x10] = bytearray(b"Z")
    vm.in_data[0x12] = bytearray(b"\x34\x12abcdef")
    set_real_mode(vm.vcpu, 0x100, 0x100)   # CS=0x100: code at linear 0x1100
    ex = vm.run()
    assert ex.reason == nvmm.VCPU_EXIT_HALTED
    assert bytes(vm.out[0x10]) == b"Ahello"
    assert vm.reg(nvmm.X64_GPR_RBX) & 0xFF == ord("Z")
    assert vm.reg(nvmm.X64_GPR_RBP) & 0xFFFF == 0x1234
    assert bytes(vm.ram[0x1300:0x1306]) == b"abcdef"
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    assert st.gprs[nvmm.X64_GPR_RCX] & 0xFFFF == 0
    assert st.gprs[nvmm.X64_GPR_RSI] & 0xFFFF == 0x205
    assert st.gprs[nvmm.X64_GPR_RDI] & 0xFFFF == 0x306
    assert st.gprs[nvmm.X64_GPR_RIP] == 0x100 + len(code)   # HLT leaves RIP after it, as NVMM's HALTED


def test_protected_mode_mmio_widths(vm):
    vm.mmio[0x40:0x48] = bytes.fromhex("8877665544332211")
    vm.load(assemble(f"""
        movb $0xab, {MMIO_BASE:#x}
        movw $0xcdef, {MMIO_BASE + 2:#x}
        movl $0x12345678, {MMIO_BASE + 4:#x}
        movb {MMIO_BASE + 0x40:#x}, %al
        movw {MMIO_BASE + 0x40:#x}, %bx
        movl {MMIO_BASE + 0x40:#x}, %ecx
        mov $0x20, %dx
        outl %eax, (%dx)
        hlt
    """, bits=32, org=CODE), CODE)
    set_protected_mode(vm.vcpu, vm.ram, CODE, STACK)
    assert vm.run().reason == nvmm.VCPU_EXIT_HALTED
    assert vm.mmio[0:8] == bytes.fromhex("ab00efcd78563412")
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    assert st.gprs[nvmm.X64_GPR_RAX] & 0xFF == 0x88
    assert st.gprs[nvmm.X64_GPR_RBX] & 0xFFFF == 0x7788
    assert st.gprs[nvmm.X64_GPR_RCX] & 0xFFFFFFFF == 0x55667788
    assert [(w, o, s) for w, o, s, _ in vm.mmio_log] == [
        (True, 0, 1), (True, 2, 2), (True, 4, 4), (False, 0x40, 1), (False, 0x40, 2), (False, 0x40, 4)]
    assert bytes(vm.out[0x20]) == bytes.fromhex("88000000")


LONG_MMIO = f"""
    movabs ${MMIO_BASE:#x}, %rdi
    movq $0x1122334455667788, %rax
    movq %rax, 8(%rdi)           # 8-byte write
    movb $0x5a, 1(%rdi)          # 1-byte write
    movw $0xbeef, 2(%rdi)        # 2-byte write
    movl $0xcafef00d, 4(%rdi)    # 4-byte write
    movq 0x40(%rdi), %rbx        # 8-byte read
    movl 0x40(%rdi), %ecx        # 4-byte read
    movzwl 0x40(%rdi), %edx      # 2-byte read
    movzbl 0x40(%rdi), %esi      # 1-byte read
    mov $0x30, %dx
    mov $0x99, %al
    out %al, (%dx)
    hlt
"""


@pytest.mark.parametrize("cpl", [0, 3])
def test_long_mode_mmio_and_io(vm, cpl):
    vm.mmio[0x40:0x48] = bytes.fromhex("efcdab8967452301")
    vm.load(assemble(LONG_MMIO, bits=64, org=CODE), CODE)
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK, cpl=cpl, iopl=3 if cpl else 0)
    expected_end = nvmm.VCPU_EXIT_HALTED if cpl == 0 else nvmm.VCPU_EXIT_SHUTDOWN
    if cpl == 3:
        # HLT at CPL3 raises #GP; with no IDT that ends in a triple fault (SHUTDOWN)
        ex = vm.run(until=(nvmm.VCPU_EXIT_HALTED, nvmm.VCPU_EXIT_SHUTDOWN))
    else:
        ex = vm.run()
    assert ex.reason == expected_end
    assert vm.mmio[0:16] == bytes.fromhex("005aefbe0df0feca8877665544332211")
    st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS)
    assert st.gprs[nvmm.X64_GPR_RBX] == 0x0123456789ABCDEF
    assert st.gprs[nvmm.X64_GPR_RCX] == 0x89ABCDEF
    assert st.gprs[nvmm.X64_GPR_RSI] == 0xEF
    assert bytes(vm.out[0x30]) == b"\x99"
    assert vm.mmio_log[0][:3] == (True, 8, 8)
    st = vm.vcpu.getstate(nvmm.X64_STATE_SEGS)
    assert st.segs[nvmm.X64_SEG_CS].attrib.dpl == cpl and st.segs[nvmm.X64_SEG_CS].attrib.l == 1


def test_gva_to_gpa_follows_guest_page_tables(vm):
    set_long_mode(vm.vcpu, vm.ram, CODE, STACK)
    assert vm.mach.gva_to_gpa(vm.vcpu, 0x12345) == (0x12345, nvmm.PROT_ALL)
    # remap the 2 MiB page at 1 GiB - 2 MiB onto physical 0 and make it read-only, no-exec, supervisor
    from nvmmpy.vmm.cpu_modes import PD_ADDR
    entry = 511
    vm.ram[PD_ADDR + 8 * entry:PD_ADDR + 8 * entry + 8] = (0x81 | 1 << 63).to_bytes(8, "little")
    gpa, prot = vm.mach.gva_to_gpa(vm.vcpu, (511 << 21) + 0x1234)
    assert gpa == 0x1234 and prot == nvmm.PROT_READ
    from nvmmpy.errors import NvmmError
    with pytest.raises(NvmmError, match="does not translate") as e:
        vm.mach.gva_to_gpa(vm.vcpu, 1 << 40)          # beyond the identity map: not present
    assert e.value.errno == 14
    set_real_mode(vm.vcpu, 0, 0x1000)
    assert vm.mach.gva_to_gpa(vm.vcpu, 0xABCDE) == (0xABCDE, nvmm.PROT_ALL)


def test_read_only_mapping_gives_memory_exit_on_write(vm):
    """A gpa_map without PROT_WRITE is ROM: reads hit memory, writes come back as MEMORY exits."""
    import nvmmpy
    rom = nvmmpy.HostMemory(nvmm.PAGE_SIZE)
    rom.view[0:4] = b"\x78\x56\x34\x12"
    vm.mach.hva_map(rom.address, rom.size)
    vm.mach.gpa_map(rom.address, 0x400000, rom.size, nvmm.PROT_READ | nvmm.PROT_EXEC)
    vm.load(assemble("""
        movl 0x400000, %eax
        movl $0xdeadbeef, 0x400000
        hlt
    """, bits=32, org=CODE), CODE)
    set_protected_mode(vm.vcpu, vm.ram, CODE, STACK)
    ex = vm.vcpu.run()
    assert ex.reason == nvmm.VCPU_EXIT_MEMORY
    assert (ex.mem.gpa, ex.mem.prot, ex.mem.size) == (0x400000, nvmm.PROT_WRITE, 4)
    seen = []
    vm.vcpu.configure_callbacks(mem=lambda m: seen.append(bytes(m.data)))
    vm.mach.assist_mem(vm.vcpu)
    assert seen == [(0xDEADBEEF).to_bytes(4, "little")]
    assert vm.vcpu.run().reason == nvmm.VCPU_EXIT_HALTED
    assert vm.reg(nvmm.X64_GPR_RAX) & 0xFFFFFFFF == 0x12345678
    assert rom.view[0:4] == b"\x78\x56\x34\x12"        # ROM unchanged
    vm.mach.gpa_unmap(rom.address, 0x400000, rom.size)


def test_check_mmio_agrees_with_kvm():
    """Cross-check mode: the emulator decodes every MMIO exit KVM took and agrees with it."""
    from conftest import make_vm
    vm = make_vm("kvm", check_mmio=True)
    try:
        vm.mmio[0x40:0x48] = bytes.fromhex("efcdab8967452301")
        vm.load(assemble(LONG_MMIO + "\n", bits=64, org=CODE), CODE)
        set_long_mode(vm.vcpu, vm.ram, CODE, STACK)
        assert vm.run().reason == nvmm.VCPU_EXIT_HALTED
        assert len(vm.mmio_log) == 8
        assert vm.vcpu.mmio_disagreements == []
        # now make the emulator see different memory than KVM did: a disagreement is reported
        vm.vcpu._cross_check(MMIO_BASE + 8, 8, True, b"\x00" * 8)
        assert len(vm.vcpu.mmio_disagreements) == 1
    finally:
        vm.close()
