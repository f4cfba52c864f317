/* The boot info block of docs/guest-abi.md (at RDI on entry), and a checking parser. */
#ifndef RT_BOOTINFO_H
#define RT_BOOTINFO_H
#include "rt.h"

#define BOOTINFO_MAGIC "NVMMPYBI"
#define BOOTINFO_VERSION 1

enum bootinfo_device_type {
	DEV_UART = 1, DEV_DEBUG_EXIT = 2, DEV_I8042 = 3, DEV_PIT = 4, DEV_PIC = 5,
	DEV_SCRATCH = 6, DEV_VIRTIO_MMIO = 16,
	DEV_RAM = 32, /* a RAM region: base = guest-physical start, size in bytes, irq = BOOTINFO_NO_IRQ */
};
#define BOOTINFO_NO_IRQ 0xFFFFFFFFu

struct bootinfo_device {
	uint32_t type;
	uint32_t irq;  /* ISA IRQ line or BOOTINFO_NO_IRQ */
	uint64_t base; /* port or guest-physical address */
	uint64_t size;
};

struct boot_info {
	char magic[8];        /* "NVMMPYBI", no NUL */
	uint32_t version;     /* 1 */
	uint32_t total_size;  /* header + device table */
	uint64_t ram_size;    /* total RAM; above 3 GiB it is not contiguous: see the DEV_RAM entries */
	uint64_t cmdline;     /* guest-physical address of a NUL-terminated string, or 0 */
	uint32_t cmdline_len; /* without the NUL */
	uint32_t ndevices;
	struct bootinfo_device devices[];
};
_Static_assert(sizeof(struct boot_info) == 40, "header is 40 bytes");
_Static_assert(sizeof(struct bootinfo_device) == 24, "a device entry is 24 bytes");
_Static_assert(__builtin_offsetof(struct boot_info, cmdline_len) == 32, "layout");

/*
 * Check the block the VMM passed; on a problem print what is wrong and return 0.
 * Guests exit with EXIT_BAD_BOOTINFO then. Memory is identity mapped, so the
 * guest-physical address is usable as a pointer.
 */
static inline struct boot_info *bootinfo_parse(struct boot_info *bi)
{
	if (!bi) {
		console_puts("boot info: RDI is 0 at entry; expected the address of the NVMMPYBI block\n");
		return 0;
	}
	if (memcmp(bi->magic, BOOTINFO_MAGIC, 8) != 0) {
		console_puts("boot info: bad magic at ");
		console_put_hex((uint64_t)bi, 0);
		console_puts(" (expected \"" BOOTINFO_MAGIC "\"): was this guest started by an nvmmpy64 loader?\n");
		return 0;
	}
	if (bi->version != BOOTINFO_VERSION) {
		console_puts("boot info: version ");
		console_put_dec(bi->version);
		console_puts(" is not supported (this guest knows version 1)\n");
		return 0;
	}
	if (bi->total_size < sizeof(*bi) + (uint64_t)bi->ndevices * sizeof(bi->devices[0])) {
		console_puts("boot info: total size ");
		console_put_dec(bi->total_size);
		console_puts(" is too small for ");
		console_put_dec(bi->ndevices);
		console_puts(" devices\n");
		return 0;
	}
	return bi;
}

static inline const char *bootinfo_cmdline(const struct boot_info *bi)
{
	return bi->cmdline ? (const char *)bi->cmdline : "";
}

/* The first device of a type, or 0. */
static inline const struct bootinfo_device *bootinfo_find(const struct boot_info *bi, uint32_t type)
{
	for (uint32_t i = 0; i < bi->ndevices; i++)
		if (bi->devices[i].type == type)
			return &bi->devices[i];
	return 0;
}
#endif
