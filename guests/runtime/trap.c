/* Every vector lands here from start.S: exceptions end the VM, IRQs go to their handler. */
#include "io.h"
#include "rt.h"

static irq_handler irq_handlers[16];

static const char *const exception_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP",
	"#PF", "?15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?22", "?23", "?24", "?25", "?26", "?27",
	"#HV", "#VC", "#SX", "?31",
};

void irq_set_handler(unsigned irq, irq_handler fn)
{
	if (irq < 16)
		irq_handlers[irq] = fn;
}

static __attribute__((noreturn)) void exception(const struct trapframe *f)
{
	console_puts("\n*** exception ");
	console_put_dec(f->vector);
	console_puts(" ");
	console_puts(exception_names[f->vector]);
	console_puts(" error=");
	console_put_hex(f->error, 0);
	console_puts(" rip=");
	console_put_hex(f->rip, 0);
	console_puts(" cs=");
	console_put_hex(f->cs, 0);
	console_puts(" rsp=");
	console_put_hex(f->rsp, 0);
	if (f->vector == 14) {
		console_puts(" cr2=");
		console_put_hex(read_cr2(), 0);
	}
	console_puts("\n");
	debug_exit(EXIT_EXCEPTION);
}

/*
 * Some hosts cannot deliver "int n" from CPL3: kvm_pvm reports #UD at the
 * instruction instead (measured: int $0x80 and int $0x81 both). So a #UD from
 * CPL3 on the bytes CD 80 is taken as the int $0x80 it stands for.
 */
static int int80_reported_as_ud(struct trapframe *f)
{
	const uint8_t *insn = (const uint8_t *)f->rip;
	if (f->vector != 6 || (f->cs & 3) != 3 || insn[0] != 0xCD || insn[1] != SYSCALL_VECTOR)
		return 0;
	f->rip += 2; /* as if the CPU had executed it */
	return 1;
}

void trap(struct trapframe *f)
{
	if (int80_reported_as_ud(f))
		f->vector = SYSCALL_VECTOR;
	if (f->vector < 32)
		exception(f);
	if (f->vector < IRQ_VECTOR_BASE + 16) {
		unsigned irq = f->vector - IRQ_VECTOR_BASE;
		if (irq_handlers[irq])
			irq_handlers[irq](irq);
		else
			pic_eoi(irq); /* nobody asked for it: acknowledge and go on */
		return;
	}
	if (f->vector == SYSCALL_VECTOR)
		user_syscall(f);
}
