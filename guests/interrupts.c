/*
 * interrupts: remap the PIC, run the PIT at 1000 Hz on IRQ 0 and sleep (hlt)
 * until the IRQ 0 handler has counted ticks=N (default 50) interrupts.
 */
#include "runtime/bootinfo.h"
#include "runtime/io.h"
#include "runtime/rt.h"

static volatile uint64_t ticks;
static uint64_t target;

static void timer_irq(unsigned irq)
{
	if (++ticks >= target)
		pic_mask(0); /* enough: no more timer interrupts */
	pic_eoi(irq);
}

int main(struct boot_info *bi, const char *cmdline)
{
	(void)bi; /* it needs no device */
	target = cmdline_u64(cmdline, "ticks", 50);

	console_puts("waiting for ");
	console_put_dec(target);
	console_puts(" timer interrupts at 1000 Hz\n");
	pic_remap();
	irq_set_handler(0, timer_irq);
	pit_set_hz(1000);
	if (target)
		pic_unmask(0);
	for (;;) {
		cli();
		if (ticks >= target)
			break;
		sti_hlt(); /* woken by the next interrupt, handled before we look again */
	}
	console_puts("ticks=");
	console_put_dec(ticks);
	console_puts("\n");
	return 0;
}
