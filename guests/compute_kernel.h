/*
 * The compute guest's kernels, pure C with no runtime calls, so that the same code runs
 * in the guest (guests/compute.c, at CPL3) and natively on the host (bench/native/compute.c)
 * and `nvmmpy bench` compares like with like. The includer declares memset.
 */
#ifndef COMPUTE_KERNEL_H
#define COMPUTE_KERNEL_H
#include <stdint.h>

struct compute_results {
	uint64_t primes, largest; /* sieve of Eratosthenes up to n */
	uint32_t crc;             /* CRC-32 of crc_bytes xorshift32 bytes */
	uint32_t matsum;          /* position-dependent sum of A x B (mat x mat) */
	uint32_t checksum;        /* CRC-32 of the four 32-bit results */
};

static uint32_t compute_crc32(const uint8_t *p, uint64_t n) /* IEEE 802.3, bit by bit, as zlib's */
{
	uint32_t c = 0xFFFFFFFFu;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & -(c & 1));
	}
	return ~c;
}

static void compute_sieve(uint8_t *composite, uint64_t n, struct compute_results *r) /* n + 1 bytes */
{
	uint64_t count = 0, largest = 0;
	memset(composite, 0, n + 1);
	for (uint64_t i = 2; i * i <= n; i++)
		if (!composite[i])
			for (uint64_t m = i * i; m <= n; m += i)
				composite[m] = 1;
	for (uint64_t i = 2; i <= n; i++)
		if (!composite[i]) {
			count++;
			largest = i;
		}
	r->primes = count;
	r->largest = largest;
}

static void compute_crc(uint8_t *buf, uint64_t bytes, struct compute_results *r)
{
	uint32_t x = 0x12345678u;
	for (uint64_t i = 0; i < bytes; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)(x >> 24);
	}
	r->crc = compute_crc32(buf, bytes);
}

static void compute_matmul(int32_t *a, int32_t *b, int32_t *c, uint64_t m, struct compute_results *r)
{
	for (uint64_t row = 0; row < m; row++)
		for (uint64_t k = 0; k < m; k++) {
			a[row * m + k] = (int32_t)((row * 3 + k * 7 + 1) % 17) - 8;
			b[row * m + k] = (int32_t)((row * 5 + k * 11 + 3) % 13) - 6;
		}
	for (uint64_t row = 0; row < m; row++)
		for (uint64_t col = 0; col < m; col++) {
			int32_t s = 0;
			for (uint64_t k = 0; k < m; k++)
				s += a[row * m + k] * b[k * m + col];
			c[row * m + col] = s;
		}
	uint32_t matsum = 0;
	for (uint64_t i = 0; i < m * m; i++)
		matsum = matsum * 31 + (uint32_t)c[i];
	r->matsum = matsum;
}

static void compute_checksum(struct compute_results *r)
{
	uint32_t results[4] = {(uint32_t)r->primes, (uint32_t)r->largest, r->crc, r->matsum};
	r->checksum = compute_crc32((const uint8_t *)results, sizeof(results));
}

#endif
