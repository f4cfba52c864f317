"""libnvmm conformance: h_mem_assist rebuilt (64-bit cases 1-19, 16-bit real-mode cases 1-7).

Every guest accesses the unmapped page at GPA 0x1000, so each access is an MMIO exit completed by
assist_mem through the mem callback; the result is the 8 bytes at the case's offset of the 4 KiB
buffer behind that page, compared with the value the reference gives for the case. Cases with
branches write 0xBAD00 + the number of the failed step instead of their success value, so a
mismatch says which check failed. Guest code is written here from the description of each case.
"""
from dataclasses import dataclass, field

import pytest

from conformance import DRIVERS, open_vm


@dataclass
class Case:
    name: str
    source: str
    offset: int                 # of the result in the MMIO page
    expected: int               # 8 bytes, little endian
    extra: dict = field(default_factory=dict)    # other offset -> 8-byte value the guest leaves
    regs: dict = field(default_factory=dict)     # GPR index -> value at the final RDMSR
    writes: dict = field(default_factory=dict)   # MMIO offset -> number of write callbacks touching it


# GPR indices, as nvmm_x86.h
RSI, RDI, R8 = 6, 7, 8

# Branchy cases: "step N" sets the failure code, "fail" stores it at the result offset.
def _fail_tail(result: str, success: str) -> str:
    return f"""
        movq ${success}, {result}
        jmp 9f
    fail:
        or $0xBAD00, %r15d
        mov %r15, {result}
    9:
    """


CASES_64 = [
    Case("01_mov", """
        mov $0x1000, %ebx
        mov $0x10, %ecx
        movq $0x3000, 0x20(%rbx)        # C7 /0 imm32, disp8
        mov 0x20(%rbx), %rax            # 8B m->r, disp8
        mov %rax, (%rbx,%rcx,1)         # 89 r->m, SIB
        movb $0x04, (%rbx,%rcx,1)       # C6 /0 imm8 byte store, SIB
    """, 0x10, 0x3004, extra={0x20: 0x3000}),

    Case("02_or", """
        mov $0x1000, %ebx
        movq $0x1000, (%rbx)
        mov $0x0F, %al
        orb %al, (%rbx)                 # 08: 0x100F
        mov $0x02F0, %ax
        orw %ax, (%rbx)                 # 66 09: 0x12FF
        mov $0x0400, %ecx
        orq (%rbx), %rcx                # 48 0B m->r: 0x16FF
        mov %rcx, 8(%rbx)
    """, 0x8, 0x16FF, extra={0x0: 0x12FF}),

    Case("03_and", """
        mov $0x1000, %ebx
        movq $-1, (%rbx)
        mov $0xC0, %al
        andb %al, (%rbx)                # 20: ...FFC0
        mov $0x3FFF, %ax
        andw %ax, (%rbx)                # 66 21: ...FFFF3FC0
        mov $0x1FFF, %ecx
        andq (%rbx), %rcx               # 48 23 m->r: 0x1FC0
        mov %rcx, 8(%rbx)
    """, 0x8, 0x1FC0, extra={0x0: 0xFFFFFFFFFFFF3FC0}),

    Case("04_xor", """
        mov $0x1000, %ebx
        movq $0x10F0, (%rbx)
        mov $0x3F, %al
        xorb %al, (%rbx)                # 30: 0x10CF
        mov $0x0300, %ax
        xorw %ax, (%rbx)                # 66 31: 0x13CF
        mov $0x0300, %ecx
        xorq (%rbx), %rcx               # 48 33 m->r: 0x10CF
        mov %rcx, 8(%rbx)
    """, 0x8, 0x10CF, extra={0x0: 0x13CF}),

    Case("05_address_size_override", """
        movabs $0xFFFFFFFF00001000, %rax   # high bits set: only EAX may be used
        movabs $0x1234567800000010, %rbx
        movb $0x1F, 1(%eax)             # 67 C6: [0x1001]
        mov (%eax), %rdx                # 67 48 8B: 0x1F00
        mov %rdx, (%eax,%ebx,1)         # 67 48 89, SIB: [0x1010]
    """, 0x10, 0x1F00),

    Case("06_moffs", """
        xor %eax, %eax
        mov $0xAB, %al
        movabs %al, 0x1008              # A2 moffs64
        mov $0xFF, %al
        movabs %al, 0x1009
        movabs 0x1008, %rax             # 48 A1: 0xFFAB
        movabs %rax, 0x1010             # 48 A3
    """, 0x10, 0xFFAB, extra={0x8: 0xFFAB}),

    Case("07_stos", """
        cld
        mov $0x1010, %edi
        mov $0x56, %al
        mov $1, %ecx
        rep stosb                       # count 1
        mov $0x1234, %ax
        stosw
    """, 0x10, 0x00123456, regs={RDI: 0x1013}),

    Case("08_lods", """
        cld
        mov $0x1000, %ebx
        movl $0x12345678, (%rbx)
        mov %rbx, %rsi
        lodsw                           # 0x5678
        movzwl %ax, %ecx
        lodsb                           # 0x34
        movzbl %al, %edx
        shl $16, %edx
        or %edx, %ecx
        lodsb                           # 0x12
        movzbl %al, %edx
        shl $24, %edx
        or %edx, %ecx
        mov %rcx, 0x10(%rbx)
    """, 0x10, 0x12345678, regs={RSI: 0x1004}),

    Case("09_movs_mmio_to_mmio", """
        cld
        mov $0x1000, %ebx
        movl $0x12345678, (%rbx)
        mov $0x1000, %esi
        mov $0x1010, %edi
        mov $4, %ecx
        rep movsb                       # 0x1000 -> 0x1010, 4 bytes
        mov $0x1010, %esi
        mov $0x1020, %edi
        mov $2, %ecx
        rep movsw                       # 0x1010 -> 0x1020, 2 words
        mov %rcx, %r8
    """, 0x20, 0x12345678, extra={0x10: 0x12345678}, regs={RSI: 0x1014, RDI: 0x1024, R8: 0}),

    Case("10_movzxb", """
        mov $0x1000, %ebx
        movl $0x12345678, (%rbx)
        mov $-1, %rax
        movzbq (%rbx), %rax             # 48 0F B6
        mov %rax, 0x10(%rbx)
    """, 0x10, 0x78),

    Case("11_movzxw", """
        mov $0x1000, %ebx
        movl $0x12345678, (%rbx)
        mov $-1, %rax
        movzwq (%rbx), %rax             # 48 0F B7
        mov %rax, 0x10(%rbx)
    """, 0x10, 0x5678),

    Case("12_cmp", """
        mov $0x1000, %ebx
        movq $0x1234, (%rbx)
        mov $1, %r15d
        cmpb $0x34, (%rbx)              # 80 /7
        jne fail
        mov $2, %r15d
        cmpw $0x1235, (%rbx)            # 66 81 /7
        jl 1f
        jmp fail
    1:  mov $3, %r15d
        cmpl $0x1233, (%rbx)            # 81 /7
        jg 2f
        jmp fail
    2:  mov $4, %r15d
        cmpq $0x1234, (%rbx)            # 48 81 /7
        jne fail
        mov $5, %r15d
        cmpq $0x12, (%rbx)              # 48 83 /7
        jg 3f
        jmp fail
    3:  mov $6, %r15d
        cmpq $0x12340, (%rbx)
        jl 4f
        jmp fail
    4:
    """ + _fail_tail("0x10(%rbx)", 1), 0x10, 1),

    Case("13_sub", """
        mov $0x1000, %ebx
        movq $0x300, (%rbx)
        mov $0x01, %al
        subb %al, (%rbx)                # 28: byte borrow stays in the byte: 0x3FF
        mov $0x0200, %ax
        subw %ax, (%rbx)                # 66 29: 0x1FF
        movabs $0x0000000F0000A2FE, %rcx
        subq (%rbx), %rcx               # 48 2B m->r
        mov %rcx, 8(%rbx)
    """, 0x8, 0x0000000F0000A0FF, extra={0x0: 0x1FF}),

    Case("14_test", """
        mov $0x1000, %ebx
        movl $0x80018080, (%rbx)
        mov $1, %r15d
        testb $0x80, (%rbx)             # F6 /0: nonzero
        jz fail
        mov $2, %r15d
        testw $0x8000, (%rbx)           # 66 F7 /0: sign set
        jns fail
        mov $3, %r15d
        testl $0x7FFE7F7F, (%rbx)       # F7 /0: zero
        jnz fail
        mov $4, %r15d
        testb $0x01, 1(%rbx)            # byte 1 is 0x80: zero
        jnz fail
    """ + _fail_tail("0x10(%rbx)", 1), 0x10, 1, extra={0x0: 0x80018080}),

    Case("15_xchg", """
        mov $0x1000, %ebx
        movl $0xDEADBEEF, (%rbx)
        mov $0x12ABCD, %ecx
        xchg %rcx, (%rbx)               # 48 87: mem 0x12ABCD, rcx 0xDEADBEEF
        mov $0x3400, %edx
        xchg %dx, (%rbx)                # 66 87: mem 0x123400, dx 0xABCD
        mov $0x1156, %eax
        xchg %al, (%rbx)                # 86: mem 0x123456, al 0
        mov %rcx, 0x10(%rbx)
        mov %rdx, 0x18(%rbx)
        mov %rax, 0x20(%rbx)
    """, 0x0, 0x123456, extra={0x10: 0xDEADBEEF, 0x18: 0xABCD, 0x20: 0x1100}),

    Case("16_xchg_32bit_address", """
        movabs $0xABCDEF0000001000, %rsi   # high bits set: only ESI may be used
        movl $0xDEADBEEF, (%esi)
        mov $0x12ABCD, %ecx
        xchg %rcx, (%esi)               # 67 48 87
        mov $0x3400, %edx
        xchg %dx, (%esi)                # 67 66 87
        mov $0x1156, %eax
        xchg %al, (%esi)                # 67 86
        mov %rcx, 0x10(%esi)
        mov %rdx, 0x18(%esi)
        mov %rax, 0x20(%esi)
    """, 0x0, 0x123456, extra={0x10: 0xDEADBEEF, 0x18: 0xABCD, 0x20: 0x1100}),

    # NetBSD's case 17
    Case("17a_cmps", """
        cld
        mov $0x1000, %ebx
        movabs $0x1122334455667788, %rax
        mov %rax, (%rbx)                # source at 0x1000
        mov %rax, 0x10(%rbx)            # destination at 0x1010
        mov $1, %r15d
        mov $0x1000, %esi
        mov $0x1010, %edi
        cmpsq                           # equal
        jne fail
        mov $2, %r15d
        cmp $0x1008, %rsi
        jne fail
        cmp $0x1018, %rdi
        jne fail
        mov $3, %r15d
        mov $0x1000, %esi
        mov $0x1010, %edi
        mov $8, %ecx
        repe cmpsb                      # all 8 equal
        jne fail
        mov $4, %r15d
        test %rcx, %rcx
        jnz fail
        mov $5, %r15d
        movb $0x99, 0x13(%rbx)          # destination byte 3: 0x55 -> 0x99
        mov $0x1000, %esi
        mov $0x1010, %edi
        mov $8, %ecx
        repe cmpsb                      # stops after byte 3: 0x55 < 0x99
        je fail
        mov $6, %r15d
        jae fail
        mov $7, %r15d
        cmp $4, %rcx
        jne fail
        cmp $0x1004, %rsi
        jne fail
        mov $8, %r15d
        mov $0x1000, %esi
        mov $0x1010, %edi
        cmpsl                           # 0x55667788 vs 0x99667788
        jae fail
        mov $9, %r15d
        mov $0x1010, %esi
        mov $0x1000, %edi
        cmpsw                           # 0x7788 vs 0x7788
        jne fail
    """ + _fail_tail("0x20(%rbx)", 1), 0x20, 1),

    # DragonFly's case 17: REP on a non-string instruction is ignored (one write, RCX untouched)
    Case("17b_rep_mov_writes_once", """
        mov $0x1000, %ebx
        mov $4, %eax
        mov $9, %ecx
        .byte 0xF3                      # REP prefix
        mov %rax, (%rbx)                # F3 48 89
        mov %rcx, 8(%rbx)
    """, 0x0, 4, extra={0x8: 9}, writes={0x0: 1}),

    Case("18_cmp_imm_sign_extension", """
        mov $0x1000, %ebx
        movq $-1, (%rbx)                # C7 imm32 sign-extended: all ones
        mov $1, %r15d
        cmpq $-1, (%rbx)                # 48 83 /7 imm8
        jne fail
        mov $2, %r15d
        .byte 0x48, 0x81, 0x3B, 0xFF, 0xFF, 0xFF, 0xFF   # cmpq $-1, (%rbx) with imm32
        jne fail
        mov $3, %r15d
        cmpl $-1, (%rbx)                # 83 /7 imm8
        jne fail
        mov $4, %r15d
        cmpw $-1, (%rbx)                # 66 83 /7 imm8
        jne fail
        mov $5, %r15d
        cmpb $-1, (%rbx)                # 80 /7
        jne fail
        mov $6, %r15d
        cmpq $0, (%rbx)                 # signed: -1 < 0
        jge fail
        mov $7, %r15d
        cmpq $0, (%rbx)                 # unsigned: all ones > 0
        jbe fail
        mov $8, %r15d
        cmpq $-2, (%rbx)                # imm8: -1 > -2
        jle fail
        mov $9, %r15d
        .byte 0x48, 0x81, 0x3B, 0xFE, 0xFF, 0xFF, 0xFF   # cmpq $-2, (%rbx) with imm32
        jle fail
    """ + _fail_tail("0x10(%rbx)", 1), 0x10, 1, extra={0x0: 0xFFFFFFFFFFFFFFFF}),

    Case("19_bt", """
        mov $0x1000, %ebx
        movabs $0x8000000080008001, %rax   # bits 0, 15, 31, 63 set; bit 1 clear
        mov %rax, (%rbx)
        mov $1, %r15d
        btw $0, (%rbx)
        jnc fail
        mov $2, %r15d
        btw $1, (%rbx)
        jc fail
        mov $3, %r15d
        btw $255, (%rbx)                # offset mod 16: bit 15
        jnc fail
        mov $4, %r15d
        btl $0, (%rbx)
        jnc fail
        mov $5, %r15d
        btl $1, (%rbx)
        jc fail
        mov $6, %r15d
        btl $255, (%rbx)                # mod 32: bit 31
        jnc fail
        mov $7, %r15d
        btq $0, (%rbx)
        jnc fail
        mov $8, %r15d
        btq $1, (%rbx)
        jc fail
        mov $9, %r15d
        btq $255, (%rbx)                # mod 64: bit 63
        jnc fail
        mov $10, %r15d
        mov (%rbx), %rdx                # memory unchanged
        cmp %rax, %rdx
        jne fail
    """ + _fail_tail("0x10(%rbx)", 1), 0x10, 1, extra={0x0: 0x8000000080008001}, writes={0x0: 1}),
]


# 16-bit real mode: CS = DS = SS = 0, code at 0x2000; offsets below are MMIO-page offsets of the
# reference's addresses (0x10F1 -> 0xF1, 0x1234 -> 0x234).
CASES_16 = [
    Case("01_mov_bx", """
        mov $0x10F1, %bx
        mov $0x23, %dl
        mov %dl, (%bx)
    """, 0x0F1, 0x23),

    Case("02_bx_di", """
        mov $0x1000, %bx
        mov $0xF3, %di
        mov $0x123, %dx
        mov %dx, (%bx,%di)
    """, 0x0F3, 0x123),

    Case("03_disp_bp_si", """
        mov $0x10F0, %bp
        mov $3, %si
        mov $0x678, %dx
        mov %dx, -2(%bp,%si)            # SS:BP+SI-2 = 0x10F1
    """, 0x0F1, 0x678),

    Case("04_mixed_sizes_negative_disp", """
        mov $0x1100, %bx
        movw $0x0011, -0xA(%bx)         # 16-bit operand, 16-bit address: 0x10F6
        movb $0x10, -9(%bx)             # 0x10F7: word now 0x1011
        movl -0xA(%bx), %edx            # 66: 32-bit operand, 16-bit address
        movl $0, -0xA(%bx)              # 66 C7 imm32: clear 0x10F6-0x10F9
        mov $0x20F6, %esi
        movl %edx, -0x1000(%esi)        # 66 67: 32-bit operand and address, disp32 < 0
    """, 0x0F6, 0x1011),

    Case("05_disp16_only", """
        movw $0x0012, 0x1240            # C7 06 disp16
        movw 0x1240, %cx                # 8B 0E disp16
        mov %cl, 0x1234                 # 88 0E disp16
    """, 0x234, 0x12, extra={0x240: 0x12}),

    Case("06_xchg", """
        movw $0xABCD, 0x1234
        mov $0x1234, %ax
        xchg %ax, 0x1234                # 87 06 disp16
        mov %ax, 0x1240
    """, 0x234, 0x1234, extra={0x240: 0xABCD}),

    # DragonFly's case 7
    Case("07_bt", """
        movw $0x8001, 0x1234
        mov $1, %si
        btw $0, 0x1234
        jnc fail
        mov $2, %si
        btw $1, 0x1234
        jc fail
        mov $3, %si
        btw $15, 0x1234
        jnc fail
        mov $4, %si
        btw $255, 0x1234                # offset mod 16: bit 15
        jnc fail
        mov $5, %si
        btl $31, 0x1234                 # dword 0x00008001: bit 31 clear
        jc fail
        mov $6, %si
        cmpw $0x8001, 0x1234            # memory unchanged
        jne fail
        movw $1, 0x1234
        jmp 9f
    fail:
        or $0xBA00, %si
        mov %si, 0x1234
    9:
    """, 0x234, 1),
]


def _check(vm, case: Case) -> None:
    got = vm.mmio_u64(case.offset)
    assert got == case.expected, (
        f"{case.name}: MMIO[{case.offset:#x}] = {got:#x}, expected {case.expected:#x} (exits {vm.exits})")
    for off, want in case.extra.items():
        val = vm.mmio_u64(off)
        assert val == want, f"{case.name}: MMIO[{off:#x}] = {val:#x}, expected {want:#x}"
    if case.regs:
        gprs = vm.gprs()
        for idx, want in case.regs.items():
            assert gprs[idx] == want, f"{case.name}: GPR {idx} = {gprs[idx]:#x}, expected {want:#x}"
    for off, n in case.writes.items():
        got_n = vm.mmio_writes_at(off)
        assert got_n == n, f"{case.name}: {got_n} MMIO writes touched offset {off:#x}, expected {n}"


@pytest.mark.parametrize("case", CASES_64, ids=lambda c: c.name)
@pytest.mark.parametrize("driver", DRIVERS)
def test_mem_assist_64(driver, case):
    with open_vm(driver) as vm:
        vm.start_long_mode(case.source)
        vm.run()
        _check(vm, case)


@pytest.mark.parametrize("case", CASES_16, ids=lambda c: c.name)
@pytest.mark.parametrize("driver", DRIVERS)
def test_mem_assist_16(driver, case):
    with open_vm(driver) as vm:
        vm.start_real_mode(case.source)
        vm.run()
        _check(vm, case)
