/*
 * The compute guest's kernels run natively: the baseline `nvmmpy bench` measures the
 * guest runs against. Same kernels (guests/compute_kernel.h), same code-generation
 * flags as the guest build, same output lines. Usage: compute n=N crc=BYTES mat=M
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "compute_kernel.h"

static uint64_t arg(int argc, char **argv, const char *key, uint64_t dflt)
{
	size_t k = strlen(key);
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], key, k) && argv[i][k] == '=')
			return strtoull(argv[i] + k + 1, NULL, 0);
	return dflt;
}

int main(int argc, char **argv)
{
	uint64_t n = arg(argc, argv, "n", 4000000), bytes = arg(argc, argv, "crc", 2097152);
	uint64_t m = arg(argc, argv, "mat", 200);
	uint8_t *composite = malloc(n + 1), *buf = malloc(bytes ? bytes : 1);
	int32_t *a = malloc(m * m * 4 + 4), *b = malloc(m * m * 4 + 4), *c = malloc(m * m * 4 + 4);
	if (!composite || !buf || !a || !b || !c) {
		fprintf(stderr, "compute: out of memory\n");
		return 1;
	}
	struct compute_results r;
	printf("compute natively: n=%llu crc=%llu mat=%llu\n", (unsigned long long)n, (unsigned long long)bytes,
	       (unsigned long long)m);
	compute_sieve(composite, n, &r);
	printf("primes<=n: count=%llu largest=%llu\n", (unsigned long long)r.primes, (unsigned long long)r.largest);
	compute_crc(buf, bytes, &r);
	printf("crc32=0x%08x\n", r.crc);
	compute_matmul(a, b, c, m, &r);
	printf("matmul sum=0x%08x\n", r.matsum);
	compute_checksum(&r);
	printf("checksum=0x%08x\n", r.checksum);
	return 0;
}
