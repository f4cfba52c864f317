/*
 * compute: CPU work at CPL3 (where kvm_pvm runs guest code natively; cpl=0 runs it at
 * CPL0 instead, for comparison). A sieve of
 * Eratosthenes up to n, CRC-32 of a generated buffer of crc bytes, and a mat x mat
 * integer matrix multiply; then checksum = CRC-32 of the four results.
 * Defaults (n=4000000 crc=2097152 mat=200) are about 5e7 simple operations. The kernels
 * live in compute_kernel.h, which bench/native/compute.c runs on the host too.
 */
#include "runtime/bootinfo.h"
#include "runtime/io.h"
#include "runtime/rt.h"
#include "compute_kernel.h"

struct job {
	uint64_t n, crc_bytes, mat;
	uint8_t *composite; /* n + 1 bytes */
	uint8_t *buf;       /* crc_bytes */
	int32_t *a, *b, *c; /* mat * mat each */
};

static void out(const char *s) /* the console from whichever CPL the kernels run at */
{
	if (cpl() == 0)
		console_puts(s);
	else
		u_puts(s);
}

static void put_result(const char *label, uint64_t v, int hex)
{
	char buf[24] = "0x";
	int n = hex ? 2 + fmt_hex(buf + 2, v, 8) : fmt_dec(buf, v);
	buf[n] = 0;
	out(label);
	out(buf);
}

static long compute(long arg) /* runs at CPL3 (or CPL0 with cpl=0) */
{
	struct job *j = (struct job *)arg;
	struct compute_results r;

	put_result("compute at CPL", cpl(), 0);
	put_result(": n=", j->n, 0);
	put_result(" crc=", j->crc_bytes, 0);
	put_result(" mat=", j->mat, 0);
	out("\n");

	compute_sieve(j->composite, j->n, &r);
	put_result("primes<=n: count=", r.primes, 0);
	put_result(" largest=", r.largest, 0);
	out("\n");

	compute_crc(j->buf, j->crc_bytes, &r);
	put_result("crc32=", r.crc, 1);
	out("\n");

	compute_matmul(j->a, j->b, j->c, j->mat, &r);
	put_result("matmul sum=", r.matsum, 1);
	out("\n");

	compute_checksum(&r);
	put_result("checksum=", r.checksum, 1);
	out("\n");
	return 0;
}

static uint64_t heap; /* a bump allocator over the RAM above the image, from the next 2 MiB boundary */

/*
 * The heap is data: map its 2 MiB pages no-execute, as an operating system maps its data
 * (W^X). Where the CPU has NX; EFER.NXE is turned on if the loader left it off. A software CPU
 * that watches code pages for writes (unicorn, QEMU's TCG) can then keep the kernels' stores on its
 * fast path. The identity map is walked from CR3; anything but a present 2 MiB page is left as it is.
 */
static void heap_no_execute(uint64_t start, uint64_t end)
{
	const uint64_t big = 2ull << 20, addr_mask = 0x000FFFFFFFFFF000ull;
	uint32_t a, b, c, d, lo, hi;
	uint64_t cr3;

	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000000u), "c"(0));
	if (a < 0x80000001u)
		return;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000001u), "c"(0));
	if (!(d & (1u << 20))) /* NX */
		return;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xC0000080u));
	if (!(lo & (1u << 11))) /* EFER.NXE */
		__asm__ volatile("wrmsr" : : "a"(lo | (1u << 11)), "d"(hi), "c"(0xC0000080u));
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	for (uint64_t va = (start + big - 1) & ~(big - 1); va + big <= end; va += big) {
		uint64_t e4 = ((uint64_t *)(cr3 & addr_mask))[(va >> 39) & 511];
		if (!(e4 & 1))
			break;
		uint64_t e3 = ((uint64_t *)(e4 & addr_mask))[(va >> 30) & 511];
		if (!(e3 & 1) || (e3 & 0x80)) /* absent, or a 1 GiB page */
			break;
		uint64_t *e2 = &((uint64_t *)(e3 & addr_mask))[(va >> 21) & 511];
		if ((*e2 & 0x81) == 0x81) /* present 2 MiB page */
			*e2 |= 1ull << 63;
	}
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

static void *alloc(uint64_t size)
{
	void *p = (void *)heap;
	heap = (heap + size + 4095) & ~4095ull;
	return p;
}

int main(struct boot_info *bi, const char *cmd)
{
	static struct job j;
	j.n = cmdline_u64(cmd, "n", 4000000);
	j.crc_bytes = cmdline_u64(cmd, "crc", 2097152);
	j.mat = cmdline_u64(cmd, "mat", 200);
	if (j.n > (1ull << 36) || j.crc_bytes > (1ull << 36) || j.mat > 8192) {
		console_puts("compute: parameters too large\n");
		return 1;
	}

	/* the heap starts on a 2 MiB page of its own, which heap_no_execute can map NX whole */
	const uint64_t big = 2ull << 20;
	const uint64_t heap_start = ((uint64_t)__image_end + big - 1) & ~(big - 1);
	heap = heap_start;
	j.composite = alloc(j.n + 1);
	j.buf = alloc(j.crc_bytes);
	j.a = alloc(j.mat * j.mat * 4);
	j.b = alloc(j.mat * j.mat * 4);
	j.c = alloc(j.mat * j.mat * 4);
	if (heap > bi->ram_size) {
		console_puts("compute: needs ");
		console_put_dec(heap >> 20);
		console_puts(" MiB of RAM for these parameters; give the VM more memory\n");
		return 1;
	}
	heap_no_execute(heap_start, (heap + big - 1) & ~(big - 1));
	/* cpl=0 runs the kernels at CPL0 (where kvm_pvm emulates every instruction) */
	if (cmdline_u64(cmd, "cpl", 3) == 0)
		return (int)compute((long)&j);
	return (int)user_run(compute, (long)&j);
}
