/*
 * virtio-console: a greeting through the transmit queue, then count=N (default 3) short lines,
 * then, with echo=N, N bytes read from the receive queue written back after "echo: ".
 * irq=1 (default) sleeps until the device's interrupt, irq=0 polls. Prints a summary on COM1:
 * "console: greeting and N lines sent (M bytes), K bytes echoed"; exit 0, or 1 with the reason.
 */
#include "runtime/bootinfo.h"
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define RXQ 0 /* receiveq0: host to guest */
#define TXQ 1 /* transmitq0: guest to host */
#define RX_CHUNK 256

static const char greeting[] = "Hello from the virtio console!\n";
static struct virtio_dev con;
static uint8_t rxbuf[RX_CHUNK];
static uint64_t sent;

static int failed(const char *why)
{
	console_puts("console: FAILED: ");
	console_puts(why);
	console_puts("\n");
	return 1;
}

static int tx(const void *data, uint32_t n)
{
	struct virtq_buf b = { (void *)data, n };
	if (virtq_request(&con.vq[TXQ], &b, 1, 0, 0) < 0)
		return -1;
	sent += n;
	return 0;
}

int main(struct boot_info *bi, const char *cmdline)
{
	uint64_t count = cmdline_u64(cmdline, "count", 3);
	uint64_t echo = cmdline_u64(cmdline, "echo", 0);
	int use_irq = virtio_cmdline_irq(cmdline);
	if (virtio_find(bi, VIRTIO_ID_CONSOLE, &con) || virtio_setup(&con, 0, 2, use_irq))
		return 1;
	virtio_describe(&con);

	if (tx(greeting, sizeof(greeting) - 1))
		return failed("the greeting was not sent");
	for (uint64_t i = 1; i <= count; i++) {
		char line[64];
		int n = 0;
		memcpy(line, "line ", 5);
		n = 5 + fmt_dec(line + 5, i);
		memcpy(line + n, " of ", 4);
		n += 4;
		n += fmt_dec(line + n, count);
		line[n++] = '\n';
		if (tx(line, (uint32_t)n))
			return failed("a line was not sent");
	}

	uint64_t greeting_and_lines = sent, echoed = 0;
	if (echo) {
		if (tx("echo: ", 6))
			return failed("the echo prefix was not sent");
		while (echoed < echo) {
			uint32_t want = echo - echoed < RX_CHUNK ? (uint32_t)(echo - echoed) : RX_CHUNK;
			struct virtq_buf b = { rxbuf, want };
			uint32_t len = 0;
			if (virtq_request(&con.vq[RXQ], &b, 0, 1, &len) < 0)
				return failed("a receive buffer did not come back");
			if (len == 0 || len > want)
				return failed("the device reported a receive length of 0 or more than the buffer");
			if (tx(rxbuf, len))
				return failed("the echo was not sent");
			echoed += len;
		}
	}

	console_puts("console: greeting and ");
	console_put_dec(count);
	console_puts(" lines sent (");
	console_put_dec(greeting_and_lines);
	console_puts(" bytes), ");
	console_put_dec(echoed);
	console_puts(" bytes echoed\n");
	if (use_irq)
		virtio_report_interrupts(&con);
	return 0;
}
