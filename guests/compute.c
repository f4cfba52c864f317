/*
 * compute: CPU work at CPL3 (where kvm_pvm runs guest code natively). A sieve of
 * Eratosthenes up to n, CRC-32 of a generated buffer of crc bytes, and a mat x mat
 * integer matrix multiply; then checksum = CRC-32 of the four results.
 * Defaults (n=4000000 crc=2097152 mat=200) are about 5e7 simple operations.
 */
#include "runtime/bootinfo.h"
#include "runtime/io.h"
#include "runtime/rt.h"

struct job {
	uint64_t n, crc_bytes, mat;
	uint8_t *composite; /* n + 1 bytes */
	uint8_t *buf;       /* crc_bytes */
	int32_t *a, *b, *c; /* mat * mat each */
};

static uint32_t crc32(const uint8_t *p, uint64_t n) /* IEEE 802.3, bit by bit, as zlib's */
{
	uint32_t c = 0xFFFFFFFFu;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & -(c & 1));
	}
	return ~c;
}

static void put_result(const char *label, uint64_t v, int hex)
{
	u_puts(label);
	if (hex)
		u_put_hex(v, 8);
	else
		u_put_dec(v);
}

static long compute(long arg) /* runs at CPL3 */
{
	struct job *j = (struct job *)arg;
	uint32_t results[4];

	put_result("compute at CPL", cpl(), 0);
	put_result(": n=", j->n, 0);
	put_result(" crc=", j->crc_bytes, 0);
	put_result(" mat=", j->mat, 0);
	u_puts("\n");

	/* 1. sieve */
	uint64_t count = 0, largest = 0;
	memset(j->composite, 0, j->n + 1);
	for (uint64_t i = 2; i * i <= j->n; i++)
		if (!j->composite[i])
			for (uint64_t m = i * i; m <= j->n; m += i)
				j->composite[m] = 1;
	for (uint64_t i = 2; i <= j->n; i++)
		if (!j->composite[i]) {
			count++;
			largest = i;
		}
	put_result("primes<=n: count=", count, 0);
	put_result(" largest=", largest, 0);
	u_puts("\n");

	/* 2. CRC-32 of xorshift32 bytes */
	uint32_t x = 0x12345678u;
	for (uint64_t i = 0; i < j->crc_bytes; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		j->buf[i] = (uint8_t)(x >> 24);
	}
	uint32_t crc = crc32(j->buf, j->crc_bytes);
	put_result("crc32=", crc, 1);
	u_puts("\n");

	/* 3. C = A x B, then a position-dependent sum of C */
	uint64_t m = j->mat;
	for (uint64_t r = 0; r < m; r++)
		for (uint64_t k = 0; k < m; k++) {
			j->a[r * m + k] = (int32_t)((r * 3 + k * 7 + 1) % 17) - 8;
			j->b[r * m + k] = (int32_t)((r * 5 + k * 11 + 3) % 13) - 6;
		}
	for (uint64_t r = 0; r < m; r++)
		for (uint64_t col = 0; col < m; col++) {
			int32_t s = 0;
			for (uint64_t k = 0; k < m; k++)
				s += j->a[r * m + k] * j->b[k * m + col];
			j->c[r * m + col] = s;
		}
	uint32_t matsum = 0;
	for (uint64_t i = 0; i < m * m; i++)
		matsum = matsum * 31 + (uint32_t)j->c[i];
	put_result("matmul sum=", matsum, 1);
	u_puts("\n");

	results[0] = (uint32_t)count;
	results[1] = (uint32_t)largest;
	results[2] = crc;
	results[3] = matsum;
	put_result("checksum=", crc32((const uint8_t *)results, sizeof(results)), 1);
	u_puts("\n");
	return 0;
}

static uint64_t heap; /* a bump allocator over the RAM above the image */

static void *alloc(uint64_t size)
{
	void *p = (void *)heap;
	heap = (heap + size + 4095) & ~4095ull;
	return p;
}

int main(struct boot_info *raw)
{
	struct boot_info *bi = bootinfo_parse(raw);
	if (!bi)
		return EXIT_BAD_BOOTINFO;
	const char *cmd = bootinfo_cmdline(bi);
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
	return (int)user_run(compute, (long)&j);
}
