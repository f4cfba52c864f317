/*
 * CPL3: user_run() enters fn(arg) at CPL3 through iretq; the user side comes
 * back only through the int $0x80 gate (DPL 3): SYS_EXIT returns to user_run's
 * caller, SYS_WRITE prints. The identity map is user-accessible, so user code
 * sees all memory, but it must not use ports or privileged instructions.
 */
#include "rt.h"

#define USER_STACK_SIZE 16384
static char user_stack[USER_STACK_SIZE] __attribute__((aligned(16)));
uint64_t user_kernel_rsp; /* the CPL0 stack of user_run, while user code runs */

long user_enter(long (*fn)(long), long arg, void *stack_top);
__attribute__((noreturn)) void user_leave(long value);

__asm__(
	"	.text\n"
	/* long user_enter(fn %rdi, arg %rsi, stack_top %rdx) */
	"user_enter:\n"
	"	push %rbx\n	push %rbp\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	"	mov %rsp, user_kernel_rsp(%rip)\n"
	"	pushq $0x23\n"		/* SS: user data */
	"	pushq %rdx\n"		/* RSP: the user stack */
	"	pushfq\n"
	"	andq $~0x3000, (%rsp)\n"	/* IOPL 0 */
	"	pushq $0x2B\n"		/* CS: user code64 */
	"	lea user_trampoline(%rip), %rax\n"
	"	push %rax\n"
	"	iretq\n"
	/* at CPL3: fn(arg), then SYS_EXIT with its value */
	"user_trampoline:\n"
	"	mov %rdi, %rax\n"
	"	mov %rsi, %rdi\n"
	"	call *%rax\n"
	"	mov %rax, %rdi\n"
	"	xor %eax, %eax\n"	/* SYS_EXIT */
	"	int $0x80\n"
	"	ud2\n"
	/* back at CPL0 (from the syscall handler): drop the trap frame, resume user_enter's caller */
	"user_leave:\n"
	"	mov user_kernel_rsp(%rip), %rsp\n"
	"	mov $0x10, %eax\n"
	"	mov %eax, %ds\n	mov %eax, %es\n	mov %eax, %ss\n"
	"	mov %rdi, %rax\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbp\n	pop %rbx\n"
	"	ret\n");

long user_run(long (*fn)(long), long arg)
{
	return user_enter(fn, arg, user_stack + USER_STACK_SIZE);
}

void user_syscall(struct trapframe *f)
{
	if ((f->cs & 3) != 3) { /* only user code may use the gate */
		console_puts("\n*** int $0x80 from CPL0\n");
		debug_exit(EXIT_EXCEPTION);
	}
	switch (f->rax) {
	case SYS_EXIT:
		user_leave((long)f->rdi);
	case SYS_WRITE:
		console_write((const char *)f->rdi, f->rsi);
		f->rax = f->rsi;
		return;
	default:
		f->rax = (uint64_t)-1;
	}
}

/* ---- the user side ---- */

long sys_write(const char *buf, size_t n)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"((long)SYS_WRITE), "D"(buf), "S"(n) : "memory");
	return ret;
}

void u_puts(const char *s)
{
	sys_write(s, strlen(s));
}

void u_put_hex(uint64_t v, int digits)
{
	char buf[18] = "0x";
	sys_write(buf, 2 + fmt_hex(buf + 2, v, digits));
}

void u_put_dec(uint64_t v)
{
	char buf[20];
	sys_write(buf, fmt_dec(buf, v));
}
