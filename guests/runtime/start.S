/*
 * 64-bit entry of every bundled guest (docs/guest-abi.md, "nvmmpy64"):
 * long mode, CPL0, identity paging, RDI = boot info block, interrupts off.
 *
 * _start zeroes .bss, takes its own stack, loads its own GDT (the VMM's layout,
 * plus a TSS whose RSP0 is a trap stack and whose I/O bitmap allows every port),
 * an IDT (exceptions 0-31, IRQs 0x20-0x2F, the int $0x80 gate of DPL 3), then
 * runs rt_main(boot info) (entry.c: checks the block, calls main) and exits
 * with its return value through port 0x501.
 */
#define KSTACK_SIZE 16384
#define TRAP_STACK_SIZE 8192
#define TSS_SIZE 104
#define IOMAP_SIZE 8192                 /* one bit per port, 0 = allowed */
#define TSS_LIMIT (TSS_SIZE + IOMAP_SIZE) /* includes the 0xFF terminator byte */
#define GATE_KERNEL 0x8E                /* present, DPL0, 64-bit interrupt gate */
#define GATE_USER 0xEE                  /* present, DPL3, 64-bit interrupt gate */
#define NSTUBS 48                       /* vectors 0-31 exceptions, 0x20-0x2F IRQs */

	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	mov	%rdi, %r12			/* boot info: callee-saved until main */

	/* .bss (stacks, TSS, IDT) must be zero; the loader may not have cleared it */
	lea	__bss_start(%rip), %rdi
	lea	__bss_end(%rip), %rcx
	sub	%rdi, %rcx
	shr	$3, %rcx			/* the linker script keeps .bss 8-byte granular */
	xor	%eax, %eax
	rep stosq
	lea	kstack_top(%rip), %rsp

	/* TSS: RSP0 = trap stack (used on traps from CPL3), I/O bitmap right after the TSS */
	lea	tss(%rip), %rdi
	lea	trap_stack_top(%rip), %rax
	mov	%rax, 4(%rdi)
	movw	$TSS_SIZE, 102(%rdi)
	movb	$0xFF, TSS_LIMIT(%rdi)

	/* patch the TSS base into its GDT descriptor (bits scattered over 16 bytes) */
	mov	%rdi, %rax
	lea	gdt_tss(%rip), %rsi
	mov	%ax, 2(%rsi)			/* base 15:0 */
	shr	$16, %rax
	mov	%al, 4(%rsi)			/* base 23:16 */
	mov	%ah, 7(%rsi)			/* base 31:24 */
	shr	$16, %rax
	mov	%eax, 8(%rsi)			/* base 63:32 */

	lgdt	gdtr(%rip)
	pushq	$0x08				/* reload CS with a far return */
	lea	1f(%rip), %rax
	push	%rax
	lretq
1:	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	xor	%eax, %eax
	mov	%eax, %fs
	mov	%eax, %gs
	mov	$0x38, %eax
	ltr	%ax

	/* IDT: stubs for vectors 0..NSTUBS-1, and the user-callable gate at 0x80 */
	xor	%ebx, %ebx
2:	mov	%rbx, %rdi
	lea	stub_table(%rip), %rax
	mov	(%rax,%rbx,8), %rsi
	mov	$GATE_KERNEL, %edx
	call	set_gate
	inc	%ebx
	cmp	$NSTUBS, %ebx
	jb	2b
	mov	$0x80, %edi
	lea	stub_128(%rip), %rsi
	mov	$GATE_USER, %edx
	call	set_gate
	lidt	idtr(%rip)

	call	console_init
	mov	%r12, %rdi
	call	rt_main
	mov	%eax, %edi
	call	debug_exit			/* does not return */
3:	hlt
	jmp	3b

/* set_gate(vector %rdi, handler %rsi, type/attributes %dl): one 16-byte IDT entry */
set_gate:
	lea	idt(%rip), %rax
	shl	$4, %rdi
	add	%rdi, %rax
	mov	%si, 0(%rax)			/* offset 15:0 */
	movw	$0x08, 2(%rax)			/* kernel code selector */
	movb	$0, 4(%rax)			/* no IST */
	mov	%dl, 5(%rax)
	shr	$16, %rsi
	mov	%si, 6(%rax)			/* offset 31:16 */
	shr	$16, %rsi
	mov	%esi, 8(%rax)			/* offset 63:32 */
	movl	$0, 12(%rax)
	ret

/*
 * One stub per vector: push a 0 where the CPU pushes no error code, push the
 * vector, and share trap_common. The frame is struct trapframe (rt.h).
 */
	.text
	.macro	stub v
stub_\v:
	.if !(\v == 8 || (\v >= 10 && \v <= 14) || \v == 17 || \v == 21 || \v == 29 || \v == 30)
	pushq	$0
	.endif
	pushq	$\v
	jmp	trap_common
	.endm

	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	stub	\v
	.endr
	.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	stub	\v
	.endr
	stub	128

trap_common:
	push	%rax
	push	%rbx
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%rbp
	push	%r8
	push	%r9
	push	%r10
	push	%r11
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	mov	%rsp, %rdi			/* 22 quadwords on a 16-byte aligned CPU frame: aligned */
	cld
	call	trap
	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rbp
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rbx
	pop	%rax
	add	$16, %rsp			/* vector, error code */
	iretq

	.section .rodata
	.balign 8
stub_table:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	stub_\v
	.endr
	.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.quad	stub_\v
	.endr

/* The VMM's GDT layout (docs/guest-abi.md), in the guest's own memory. */
	.data
	.balign 16
gdt:
#include "gdt.inc"
gdt_tss:					/* 0x38 available 64-bit TSS; base patched by _start */
	.quad	0x0000890000000000 | TSS_LIMIT
	.quad	0
gdt_end:
	.balign 8
	.short	0, 0, 0				/* so that the base below is 8-byte aligned */
gdtr:
	.short	gdt_end - gdt - 1
	.quad	gdt
	.short	0, 0, 0
idtr:
	.short	256 * 16 - 1
	.quad	idt

	.bss
	.balign 4096
idt:
	.skip	256 * 16
	.balign 16
tss:
	.skip	TSS_LIMIT + 1
	.balign 16
trap_stack:
	.skip	TRAP_STACK_SIZE
trap_stack_top:
kstack:
	.skip	KSTACK_SIZE
kstack_top:

	.section .note.GNU-stack, "", @progbits
