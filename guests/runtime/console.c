/* COM1, a 16550A UART at 0x3F8, polled. 115200 8N1, FIFOs on, no interrupts. */
#include "io.h"
#include "rt.h"

#define COM1 0x3F8
#define THR 0 /* transmit holding (write) */
#define IER 1 /* interrupt enable */
#define FCR 2 /* FIFO control (write) */
#define LCR 3 /* line control */
#define MCR 4 /* modem control */
#define LSR 5 /* line status */
#define LSR_THRE 0x20
#define LCR_DLAB 0x80

void console_init(void)
{
	outb(COM1 + IER, 0x00);
	outb(COM1 + LCR, LCR_DLAB);
	outb(COM1 + 0, 1); /* divisor 1: 115200 baud */
	outb(COM1 + 1, 0);
	outb(COM1 + LCR, 0x03); /* 8 data bits, no parity, 1 stop bit */
	outb(COM1 + FCR, 0xC7); /* enable and clear the FIFOs */
	outb(COM1 + MCR, 0x03); /* DTR, RTS */
}

void console_putc(char c)
{
	/* wait for room, but not forever: a missing UART must not hang the guest */
	for (int tries = 0; tries < 100000 && !(inb(COM1 + LSR) & LSR_THRE); tries++)
		;
	outb(COM1 + THR, (uint8_t)c);
}

void console_write(const char *s, size_t n)
{
	while (n--)
		console_putc(*s++);
}

void console_puts(const char *s)
{
	while (*s)
		console_putc(*s++);
}

void console_put_hex(uint64_t v, int digits)
{
	char buf[20];
	console_puts("0x");
	console_write(buf, fmt_hex(buf, v, digits));
}

void console_put_dec(uint64_t v)
{
	char buf[24];
	console_write(buf, fmt_dec(buf, v));
}
