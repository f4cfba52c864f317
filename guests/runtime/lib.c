/* Freestanding basics. The compiler may call memset/memcpy itself, so they must exist. */
#include "rt.h"

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	if (p < q)
		return memcpy(d, s, n);
	while (n--)
		p[n] = q[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *p = a, *q = b;
	for (; n; n--, p++, q++)
		if (*p != *q)
			return *p - *q;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int fmt_hex(char *buf, uint64_t v, int digits)
{
	int n = 1;
	while (n < 16 && (v >> (4 * n)))
		n++;
	if (digits > n)
		n = digits > 16 ? 16 : digits;
	for (int i = n - 1; i >= 0; i--, v >>= 4)
		buf[i] = "0123456789abcdef"[v & 15];
	return n;
}

int fmt_dec(char *buf, uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (int i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

const char *cmdline_find(const char *s, const char *key)
{
	size_t klen = strlen(key);
	while (*s) {
		while (*s == ' ')
			s++;
		if (!memcmp(s, key, klen) && s[klen] == '=')
			return s + klen + 1;
		while (*s && *s != ' ')
			s++;
	}
	return 0;
}

uint64_t cmdline_u64(const char *s, const char *key, uint64_t dflt)
{
	const char *p = cmdline_find(s, key);
	if (!p)
		return dflt;
	uint64_t v = 0;
	int base = 10, any = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	for (;; p++, any = 1) {
		unsigned d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && (*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')
			d = (*p | 0x20) - 'a' + 10;
		else
			break;
		v = v * base + d;
	}
	if (any && (*p == ' ' || *p == 0))
		return v;
	return dflt; /* malformed: keep the default */
}
