/*
 * qemu-shim: starts an nvmmpy64 guest (docs/guest-abi.md) from a multiboot loader.
 *
 * QEMU's `-kernel` multiboot loader takes only 32-bit images, so bench/qemu.py wraps a
 * guest's ELF64 segments in an ELF32 file with this shim as one more segment, placed
 * page-aligned above the guest's highest segment end, and the ELF entry pointing here.
 * The multiboot loader enters in 32-bit protected mode, paging off, EAX = 0x2BADB002,
 * EBX = the multiboot information structure. The shim then builds exactly what
 * nvmmpy's loader (vmm/loader.py, vmm/cpu_modes.py) gives a 64-bit guest:
 *
 *   0x0500  GDT (0x08 code64, 0x10 data, 0x18 code32, 0x23 data DPL3, 0x2B code64 DPL3,
 *           0x33 code32 DPL3, 0x38 64-bit TSS), loaded
 *   0x0600  TSS: RSP0 = 0x70000, I/O bitmap right after it allowing every port; in TR
 *   0x4000  PML4, 0x5000 PDPT, 0x6000-0x9FFF page directories: identity map of the first
 *           4 GiB with 2 MiB pages (present, writable, user, executable)
 *   0xA000  boot info block "NVMMPYBI" v1: RAM size (QEMU's -m, see below), the command line
 *           (the multiboot one without its first word, which QEMU makes the image's path)
 *           copied to 0xA800, and the devices QEMU's pc machine has (info_template below)
 *   the local APIC in virtual-wire mode (the PIC's INTR reaches the CPU, as on nvmmpy),
 *   long mode, CPL0, IDT limit 0, RFLAGS = 0x2, RSP = 0x80000, RDI = 0xA000, RSI = 0,
 *   the other general registers 0, RIP = the guest's entry (the parameter block below,
 *   which bench/qemu.py fills in).
 *
 * The code is position-independent (it finds itself with call/pop, then RIP-relative
 * addressing) and assembles without relocations; guests/build.py checks that and
 * writes the raw bytes to vmm/guests/qemu-shim.bin. Everything the multiboot loader
 * handed over is read before low memory is written. On a problem the shim prints
 * "qemu-shim: ..." on COM1 and exits with 2 through the debug-exit port.
 */
#define MB_BOOT_MAGIC 0x2BADB002
#define MBI_FLAG_MEM (1 << 0)
#define MBI_FLAG_CMDLINE (1 << 2)

#define INFO_ADDR 0xA000
#define CMDLINE_ADDR 0xA800
#define CMDLINE_MAX 2047
#define GDT_ADDR 0x500
#define TSS_ADDR 0x600
#define TSS_LIMIT (104 + 8192)		/* the I/O bitmap's 0xFF terminator is the last byte */
#define PML4_ADDR 0x4000
#define PDPT_ADDR 0x5000
#define PD_ADDR 0x6000
#define STACK_TOP 0x80000
#define KERNEL_STACK_TOP 0x70000

#define FW_CFG_PORT_SEL 0x510		/* QEMU's firmware configuration interface */
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000		/* "QEMU" */
#define FW_CFG_QEMU 0x554D4551
#define FW_CFG_RAM_SIZE 0x0003		/* u64, little-endian: -m */

#define COM1 0x3F8

/* %ecx 8-byte page table entries from %edi: %eax, %eax + step, ... (high halves 0) */
.macro fill_entries step
1:	mov	%eax, (%edi)
	movl	$0, 4(%edi)
	add	$\step, %eax
	add	$8, %edi
	loop	1b
.endm
#define DEBUG_EXIT 0x501
#define EXIT_BAD_BOOTINFO 2

/* The devices of `qemu-system-x86_64 -machine pc -device isa-debug-exit,iobase=0x501,iosize=2
 * -device pc-testdev`, in the order nvmmpy lists its own. */
#define NO_IRQ 0xFFFFFFFF
#define SCRATCH_BASE 0xFF000000		/* pc-testdev's memory window: reads return what was written */
#define SCRATCH_SIZE 0x1000
#define NDEVICES 6

#define CR0_PE 0x1
#define CR0_MP 0x2
#define CR0_ET 0x10
#define CR0_NE 0x20
#define CR0_WP 0x10000
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define CR4_OSFXSR 0x200
#define CR4_OSXMMEXCPT 0x400
#define MSR_EFER 0xC0000080
#define EFER_SCE 0x1
#define EFER_LME 0x100
#define EFER_NXE 0x800
#define MSR_APIC_BASE 0x1B
#define APIC_SVR 0xF0
#define APIC_LINT0 0x350
#define APIC_LINT1 0x360

#define OFF(sym) ((sym) - shim)		/* offset from the shim's first byte (in %ebp) */

	.text
	.code32
shim:
	jmp	start
	.balign 8
/* Parameter block at offset 8: magic, then the guest's 64-bit entry (bench/qemu.py writes it). */
params:
	.ascii	"NVMMSHIM"
guest_entry:
	.quad	0

start:
	cli
	cld
	mov	$STACK_TOP - 16, %esp		/* a stack in low RAM, until the guest's own */
	call	1f
1:	pop	%ebp
	sub	$OFF(1b), %ebp			/* %ebp = where the shim was loaded */

	cmp	$MB_BOOT_MAGIC, %eax
	lea	OFF(msg_magic)(%ebp), %esi
	jne	fail
	mov	%ebx, %edi			/* the multiboot information structure */

	/* the CPU must have long mode; keep its extended features for EFER */
	mov	$0x80000000, %eax
	cpuid
	cmp	$0x80000001, %eax
	lea	OFF(msg_lm)(%ebp), %esi
	jb	fail
	mov	$0x80000001, %eax
	cpuid
	bt	$29, %edx
	jnc	fail
	push	%edx				/* 0(%esp): CPUID 0x80000001 EDX */

	/* RAM size: 1 MiB + mem_upper KiB, which under QEMU lacks the 128 KiB SeaBIOS keeps at
	 * the top of RAM; so QEMU's own figure (fw_cfg) where it is at most 1 MiB more, as the
	 * RAM is then one region from 0 (-m up to 3 GiB on the pc machine) */
	testl	$MBI_FLAG_MEM, (%edi)
	lea	OFF(msg_mem)(%ebp), %esi
	jz	fail
	mov	8(%edi), %eax
	add	$1024, %eax
	mov	$1024, %ecx
	mul	%ecx
	push	%edx				/* 4(%esp): RAM size, high */
	push	%eax				/* 0(%esp): RAM size, low */
	mov	$FW_CFG_SIGNATURE, %eax
	call	fw_cfg_select
	call	fw_cfg_u32
	cmp	$FW_CFG_QEMU, %eax
	jne	2f
	mov	$FW_CFG_RAM_SIZE, %eax
	call	fw_cfg_select
	call	fw_cfg_u32
	mov	%eax, %esi
	call	fw_cfg_u32
	mov	%eax, %ebx			/* %ebx:%esi = QEMU's RAM size */
	mov	%esi, %eax
	mov	%ebx, %edx
	sub	0(%esp), %eax
	sbb	4(%esp), %edx			/* %edx:%eax = how much more that is */
	jc	2f
	test	%edx, %edx
	jnz	2f
	cmp	$0x100000, %eax
	ja	2f
	mov	%esi, 0(%esp)
	mov	%ebx, 4(%esp)
2:

	/* the command line after its first word, copied to CMDLINE_ADDR; %ecx = its length */
	xor	%ecx, %ecx
	testl	$MBI_FLAG_CMDLINE, (%edi)
	jz	3f
	mov	16(%edi), %esi
	test	%esi, %esi
	jz	3f
2:	lodsb					/* skip the first word (the image) and one space */
	test	%al, %al
	jz	3f
	cmp	$' ', %al
	jne	2b
	mov	$CMDLINE_ADDR, %edi
4:	lodsb
	test	%al, %al
	jz	3f
	cmp	$CMDLINE_MAX, %ecx
	jae	3f
	stosb
	inc	%ecx
	jmp	4b
3:	movb	$0, CMDLINE_ADDR(%ecx)

	/* Local APIC in virtual-wire mode (LINT0 ExtINT, LINT1 NMI), as a PC BIOS hands it over:
	 * the 8259A's interrupts then reach the CPU as on nvmmpy, which has no APIC. SeaBIOS
	 * does this itself, qboot does not (and without it IRQ 0 never arrives). */
	push	%ecx				/* the command line's length */
	mov	$1, %eax
	cpuid
	bt	$9, %edx			/* APIC */
	jnc	14f
	mov	$MSR_APIC_BASE, %ecx
	rdmsr
	bt	$11, %eax			/* globally enabled */
	jnc	14f
	and	$0xFFFFF000, %eax
	movl	$0x1FF, APIC_SVR(%eax)		/* software-enabled, spurious vector 0xFF */
	movl	$0x700, APIC_LINT0(%eax)	/* ExtINT, unmasked */
	movl	$0x400, APIC_LINT1(%eax)	/* NMI */
14:	pop	%edx
	/* the boot info block: the template, then RAM size and command line */
	lea	OFF(info_template)(%ebp), %esi
	mov	$INFO_ADDR, %edi
	mov	$(info_end - info_template), %ecx
	rep movsb
	pop	%eax
	mov	%eax, INFO_ADDR + 16
	pop	%eax
	mov	%eax, INFO_ADDR + 20
	test	%edx, %edx
	jz	5f
	movl	$CMDLINE_ADDR, INFO_ADDR + 24
	mov	%edx, INFO_ADDR + 32
5:
	/* GDT */
	lea	OFF(gdt_template)(%ebp), %esi
	mov	$GDT_ADDR, %edi
	mov	$(gdt_end - gdt_template), %ecx
	rep movsb

	/* TSS and its I/O bitmap: all zero (every port allowed) but RSP0, the bitmap offset
	 * and the terminator */
	mov	$TSS_ADDR, %edi
	mov	$(TSS_LIMIT + 1), %ecx
	xor	%eax, %eax
	rep stosb
	movl	$KERNEL_STACK_TOP, TSS_ADDR + 4
	movw	$104, TSS_ADDR + 102
	movb	$0xFF, TSS_ADDR + TSS_LIMIT

	/* page tables: PML4 and PDPT zeroed, one PML4 entry, four PDPT entries, 2048 PDEs */
	mov	$PML4_ADDR, %edi
	mov	$(2 * 4096 / 4), %ecx
	xor	%eax, %eax
	rep stosl
	movl	$(PDPT_ADDR | 0x7), PML4_ADDR
	mov	$PDPT_ADDR, %edi
	mov	$(PD_ADDR | 0x7), %eax
	mov	$4, %ecx
	fill_entries 0x1000
	mov	$PD_ADDR, %edi
	mov	$0x87, %eax			/* present, writable, user, 2 MiB */
	mov	$2048, %ecx
	fill_entries 0x200000

	/* long mode: PAE, CR3, EFER.LME (+ SCE, NXE where the CPU has them), paging */
	mov	$(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	mov	%eax, %cr4
	mov	$PML4_ADDR, %eax
	mov	%eax, %cr3
	pop	%ebx				/* CPUID 0x80000001 EDX */
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	bt	$11, %ebx			/* SYSCALL */
	jnc	8f
	or	$EFER_SCE, %eax
8:	bt	$20, %ebx			/* NX */
	jnc	9f
	or	$EFER_NXE, %eax
9:	wrmsr
	lgdt	OFF(gdtr)(%ebp)
	mov	$(CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG), %eax
	mov	%eax, %cr0
	push	$0x08
	lea	OFF(long64)(%ebp), %eax
	push	%eax
	lret

/* fail: print "qemu-shim: " and the NUL-terminated message at %esi on COM1, exit 2 */
fail:
	mov	%esi, %ebx
	lea	OFF(msg_prefix)(%ebp), %esi
	call	puts
	mov	%ebx, %esi
	call	puts
	mov	$DEBUG_EXIT, %dx
	mov	$EXIT_BAD_BOOTINFO, %al
	outb	%al, %dx
10:	hlt
	jmp	10b

/* fw_cfg_select: select the fw_cfg item %ax; fw_cfg_u32: %eax = its next 4 bytes (LE) */
fw_cfg_select:
	mov	$FW_CFG_PORT_SEL, %dx
	outw	%ax, %dx
	ret
fw_cfg_u32:
	mov	$FW_CFG_PORT_DATA, %dx
	mov	$4, %ecx
13:	inb	%dx, %al
	ror	$8, %eax
	loop	13b
	ret

puts:
	lodsb
	test	%al, %al
	jz	12f
	mov	%al, %ah
	mov	$(COM1 + 5), %dx
	mov	$100000, %ecx			/* wait for room, not forever */
11:	inb	%dx, %al
	test	$0x20, %al
	loopz	11b
	mov	$COM1, %dx
	mov	%ah, %al
	outb	%al, %dx
	jmp	puts
12:	ret

	.code64
long64:
	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	mov	%eax, %fs
	mov	%eax, %gs
	mov	$0x38, %eax
	ltr	%ax
	lidt	idtr_none(%rip)
	mov	$STACK_TOP, %esp
	mov	$INFO_ADDR, %edi
	xor	%esi, %esi
	xor	%eax, %eax
	xor	%ebx, %ebx
	xor	%ecx, %ecx
	xor	%edx, %edx
	xor	%ebp, %ebp
	xor	%r8d, %r8d
	xor	%r9d, %r9d
	xor	%r10d, %r10d
	xor	%r11d, %r11d
	xor	%r12d, %r12d
	xor	%r13d, %r13d
	xor	%r14d, %r14d
	xor	%r15d, %r15d
	pushq	$0x2
	popfq
	jmp	*guest_entry(%rip)

	.balign 8
gdt_template:
#include "runtime/gdt.inc"
	.quad	0x0000890000000000 | (TSS_ADDR << 16) | TSS_LIMIT /* 0x38 available 64-bit TSS */
	.quad	0
gdt_end:
	.balign 8
	.short	0, 0, 0				/* so that the base below is 4-byte aligned */
gdtr:
	.short	gdt_end - gdt_template - 1
	.long	GDT_ADDR
	.balign 8
	.short	0, 0, 0
idtr_none:
	.short	0
	.quad	0

	.balign 8
info_template:
	.ascii	"NVMMPYBI"
	.long	1				/* version */
	.long	40 + 24 * NDEVICES		/* total size */
	.quad	0				/* RAM size: filled in */
	.quad	0				/* command line address: filled in (0 if empty) */
	.long	0				/* command line length: filled in */
	.long	NDEVICES
	/*	type, irq;           base, size */
	.long	5, NO_IRQ;	.quad	0x20, 2			/* PIC (master; slave at 0xA0) */
	.long	4, 0;		.quad	0x40, 4			/* PIT, IRQ 0 */
	.long	1, 4;		.quad	0x3F8, 8		/* COM1 16550A, IRQ 4 */
	.long	2, NO_IRQ;	.quad	DEBUG_EXIT, 2		/* isa-debug-exit */
	.long	3, 1;		.quad	0x60, 1			/* i8042 (status/command at 0x64) */
	.long	6, NO_IRQ;	.quad	SCRATCH_BASE, SCRATCH_SIZE /* pc-testdev memory */
info_end:

msg_prefix:	.asciz	"qemu-shim: "
msg_magic:	.asciz	"not started by a multiboot loader (EAX is not 0x2BADB002)\n"
msg_lm:		.asciz	"the CPU has no long mode (use -cpu qemu64 or host)\n"
msg_mem:	.asciz	"the multiboot information has no memory size\n"

	.section .note.GNU-stack, "", @progbits
