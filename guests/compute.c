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

static uint64_t heap; /* a bump allocator over the RAM above the image */

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

	heap = ((uint64_t)__image_end + 4095) & ~4095ull;
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
	/* cpl=0 runs the kernels at CPL0 (where kvm_pvm emulates every instruction) */
	if (cmdline_u64(cmd, "cpl", 3) == 0)
		return (int)compute((long)&j);
	return (int)user_run(compute, (long)&j);
}
