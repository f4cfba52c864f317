/* The guests' tiny runtime: everything a guest may call. See guests/README.md. */
#ifndef RT_H
#define RT_H
#include <stddef.h>
#include <stdint.h>

/* Selectors of the runtime's own GDT (start.S): the same layout the VMM hands over. */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x23 /* 0x20 | RPL 3 */
#define SEL_UCODE 0x2B /* 0x28 | RPL 3 */
#define SEL_TSS 0x38

/* Exit codes through the debug-exit port (besides main's own return value). */
#define EXIT_BAD_BOOTINFO 2
#define EXIT_EXCEPTION 3

/* lib.c: memory, strings, number formatting; pure code, safe at any CPL */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int fmt_hex(char *buf, uint64_t v, int digits); /* digits = 0: as few as needed; no "0x" */
int fmt_dec(char *buf, uint64_t v);
/* value of "key=NUMBER" (decimal or 0x-hex) in a space-separated command line, or dflt */
uint64_t cmdline_u64(const char *cmdline, const char *key, uint64_t dflt);
/* the value of the first key=value word (it runs to the next space or the end), or 0 if absent */
const char *cmdline_find(const char *cmdline, const char *key);

/* console.c: COM1 16550A, polled (CPL0) */
void console_init(void);
void console_putc(char c);
void console_write(const char *s, size_t n);
void console_puts(const char *s);
void console_put_hex(uint64_t v, int digits); /* prints "0x" then the digits */
void console_put_dec(uint64_t v);

/* exit.c: the VM's exit code through the debug-exit port (CPL0) */
#define DEBUG_EXIT_PORT 0x501
__attribute__((noreturn)) void debug_exit(int code);

/* pic.c: the 8259A pair, remapped to vectors 0x20-0x2F; all lines start masked */
#define IRQ_VECTOR_BASE 0x20
void pic_remap(void);
void pic_mask(unsigned irq);
void pic_unmask(unsigned irq);
void pic_eoi(unsigned irq);

/* pit.c: 8254 channel 0, mode 2 (rate generator), on IRQ 0 */
#define PIT_HZ 1193182u
void pit_set_hz(unsigned hz);

/* trap.c: the C side of the IDT (start.S holds the stubs) */
struct trapframe {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;              /* pushed by the stub (error = 0 where the CPU has none) */
	uint64_t rip, cs, rflags, rsp, ss;   /* pushed by the CPU */
};
typedef void (*irq_handler)(unsigned irq);
void irq_set_handler(unsigned irq, irq_handler fn); /* the handler sends its own EOI */
void trap(struct trapframe *f);                     /* called by start.S for every vector */

/* user.c: CPL3 and the int $0x80 gate */
#define SYSCALL_VECTOR 0x80
#define SYS_EXIT 0  /* rdi = value: back to the CPL0 caller of user_run */
#define SYS_WRITE 1 /* rdi = buffer, rsi = length: to the console; returns the length */
/* Run fn(arg) at CPL3 on the runtime's user stack; returns fn's return value. */
long user_run(long (*fn)(long), long arg);
void user_syscall(struct trapframe *f);
/* CPL3 side: the only way user code reaches the console */
long sys_write(const char *buf, size_t n);
void u_puts(const char *s);
void u_put_hex(uint64_t v, int digits);
void u_put_dec(uint64_t v);

/* the guest's own entry, called by rt_main (entry.c) with the boot info block from the VMM, checked
 * (bootinfo.h), and its command line */
struct boot_info;
int main(struct boot_info *bi, const char *cmdline);
int rt_main(struct boot_info *raw);

/* linker script symbols */
extern char __image_start[], __bss_start[], __bss_end[], __image_end[];

#endif
