/*
 * exits: a storm of VM exits for benchmarks. count=N (default 10000) byte writes
 * to port 0x80, then N 32-bit writes and N 32-bit reads of the scratch MMIO page
 * (each read checks it gets back what was written there).
 */
#include "runtime/bootinfo.h"
#include "runtime/io.h"
#include "runtime/rt.h"

#define SCRATCH_DEFAULT 0xC0000000u
#define SCRATCH_WORDS 1024 /* 4 KiB of 32-bit registers */

int main(struct boot_info *raw)
{
	struct boot_info *bi = bootinfo_parse(raw);
	if (!bi)
		return EXIT_BAD_BOOTINFO;
	uint64_t count = cmdline_u64(bootinfo_cmdline(bi), "count", 10000);
	const struct bootinfo_device *dev = bootinfo_find(bi, DEV_SCRATCH);
	volatile uint32_t *scratch = (volatile uint32_t *)(uintptr_t)(dev ? dev->base : SCRATCH_DEFAULT);

	for (uint64_t i = 0; i < count; i++)
		outb(0x80, (uint8_t)i);

	uint64_t bad = 0;
	for (uint64_t i = 0; i < count; i++) {
		uint32_t v = (uint32_t)(i * 0x9E3779B9u);
		scratch[i % SCRATCH_WORDS] = v;
		if (scratch[i % SCRATCH_WORDS] != v)
			bad++;
	}

	console_puts("io=");
	console_put_dec(count);
	console_puts(" mmio=");
	console_put_dec(2 * count);
	console_puts("\n");
	if (bad) {
		console_puts("scratch MMIO: ");
		console_put_dec(bad);
		console_puts(" reads did not return the value written\n");
		return 1;
	}
	return 0;
}
