/*
 * exits: storms of VM exits for benchmarks, each kind on its own so a benchmark can
 * time one kind by varying its count. io=N byte writes to port 0x80, mmio=M 32-bit
 * writes and M 32-bit reads of the scratch MMIO page (each read checks it gets back
 * what was written there), cpuid=K CPUID instructions (an exit the kernel answers
 * itself under KVM and NVMM). count=N sets io and mmio together (default 10000).
 * cpl=3 runs the storms at CPL3 (the TSS I/O bitmap allows the ports; the identity
 * map is user-accessible), where kvm_pvm runs the loop natively.
 */
#include "runtime/bootinfo.h"
#include "runtime/io.h"
#include "runtime/rt.h"

#define SCRATCH_DEFAULT 0xC0000000u
#define SCRATCH_WORDS 1024 /* 4 KiB of 32-bit registers */

struct storm {
	uint64_t io, mmio, cpuid;
	volatile uint32_t *scratch;
};

static long run_storm(long arg) /* at CPL0 or CPL3: returns the number of bad reads */
{
	const struct storm *s = (const struct storm *)arg;
	for (uint64_t i = 0; i < s->io; i++)
		outb(0x80, (uint8_t)i);

	long bad = 0;
	for (uint64_t i = 0; i < s->mmio; i++) {
		uint32_t v = (uint32_t)(i * 0x9E3779B9u);
		s->scratch[i % SCRATCH_WORDS] = v;
		if (s->scratch[i % SCRATCH_WORDS] != v)
			bad++;
	}

	for (uint64_t i = 0; i < s->cpuid; i++) {
		uint32_t a = 0, b, c = 0, d;
		__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	}
	return bad;
}

int main(struct boot_info *bi, const char *cmd)
{
	uint64_t count = cmdline_u64(cmd, "count", 10000);
	const struct bootinfo_device *dev = bootinfo_find(bi, DEV_SCRATCH);
	struct storm s; /* not static: its RIP-relative displacements held 0xF4 (HLT) bytes, each a unicorn exit candidate */
	s.io = cmdline_u64(cmd, "io", count);
	s.mmio = cmdline_u64(cmd, "mmio", count);
	s.cpuid = cmdline_u64(cmd, "cpuid", 0);
	s.scratch = (volatile uint32_t *)(uintptr_t)(dev ? dev->base : SCRATCH_DEFAULT);
	int user = cmdline_u64(cmd, "cpl", 0) == 3;

	long bad = user ? user_run(run_storm, (long)&s) : run_storm((long)&s);

	console_puts("io=");
	console_put_dec(s.io);
	console_puts(" mmio=");
	console_put_dec(2 * s.mmio);
	if (s.cpuid) {
		console_puts(" cpuid=");
		console_put_dec(s.cpuid);
	}
	if (user)
		console_puts(" at CPL3");
	console_puts("\n");
	if (bad) {
		console_puts("scratch MMIO: ");
		console_put_dec((uint64_t)bad);
		console_puts(" reads did not return the value written\n");
		return 1;
	}
	return 0;
}
