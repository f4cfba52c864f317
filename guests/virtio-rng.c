/*
 * virtio-rng: count=N (default 16) requests of bytes=B (default 64; a multiple of 8 in 16..4096)
 * random bytes from the virtio entropy device, irq=1 (default) sleeping until its interrupt,
 * irq=0 polling.
 * Checks that every answer is as long as asked, not all zero, and differs from the one before.
 * Prints "rng: N requests, M bytes"; exit 0, or 1 with the reason.
 */
#include "runtime/bootinfo.h"
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define MAX_BYTES 4096

static struct virtio_dev rng;
static uint64_t buf[2][MAX_BYTES / 8]; /* this request's answer and the one before */

/* word-wise: the guest's own work per request stays small (bytes= is a multiple of 8) */
static void zero(uint64_t *p, uint32_t n)
{
	for (uint32_t i = 0; i < n / 8; i++)
		p[i] = 0;
}

static int all_zero(const uint64_t *p, uint32_t n)
{
	for (uint32_t i = 0; i < n / 8; i++)
		if (p[i])
			return 0;
	return 1;
}

static int same(const uint64_t *p, const uint64_t *q, uint32_t n)
{
	for (uint32_t i = 0; i < n / 8; i++)
		if (p[i] != q[i])
			return 0;
	return 1;
}

static int failed(uint64_t request, const char *why)
{
	console_puts("rng: FAILED at request ");
	console_put_dec(request);
	console_puts(": ");
	console_puts(why);
	console_puts("\n");
	return 1;
}

int main(struct boot_info *bi, const char *cmdline)
{
	uint64_t count = cmdline_u64(cmdline, "count", 16);
	uint64_t bytes = cmdline_u64(cmdline, "bytes", 64);
	int use_irq = virtio_cmdline_irq(cmdline);
	if (bytes < 16 || bytes > MAX_BYTES || bytes % 8) {
		console_puts("rng: bytes= must be a multiple of 8 in 16..4096\n");
		return 1;
	}
	if (virtio_find(bi, VIRTIO_ID_RNG, &rng) || virtio_setup(&rng, 0, 1, use_irq))
		return 1;
	virtio_describe(&rng);

	uint64_t total = 0;
	for (uint64_t r = 0; r < count; r++) {
		uint64_t *cur = buf[r & 1], *prev = buf[~r & 1];
		zero(cur, (uint32_t)bytes);
		struct virtq_buf b = { cur, (uint32_t)bytes };
		uint32_t len = 0;
		if (virtq_request(&rng.vq[0], &b, 0, 1, &len) < 0)
			return failed(r, "the request did not complete");
		if (len != bytes) {
			console_puts("rng: the device wrote ");
			console_put_dec(len);
			console_puts(" bytes of ");
			console_put_dec(bytes);
			console_puts("\n");
			return failed(r, "short answer");
		}
		if (all_zero(cur, len))
			return failed(r, "all the bytes are zero");
		if (r && same(cur, prev, len))
			return failed(r, "the same bytes as the request before");
		total += len;
	}
	console_puts("rng: ");
	console_put_dec(count);
	console_puts(" requests, ");
	console_put_dec(total);
	console_puts(" bytes\n");
	if (use_irq)
		virtio_report_interrupts(&rng);
	return 0;
}
