/*
 * virtio-blk: read the capacity (config space) and the device ID (GET_ID), write a pattern to
 * count=N (default 16) sectors from sector=S (default 0), FLUSH (when the device offers it), read
 * them back and compare. The pattern depends on seed=X (default 1) and the sector number (see
 * pattern_word). depth=D (default 1, at most 16) requests go to the device per notification;
 * disk=K (default 0) picks the Kth virtio-blk device of the boot info block. irq=1 (default)
 * sleeps until the device's interrupt, irq=0 polls.
 * Prints "blk: N sectors from S written, flushed, read back and verified (seed X)"; exit 0,
 * or 1 with the reason (a request's status other than OK, a mismatch, ...).
 */
#include "runtime/bootinfo.h"
#include "virtio-blk.h"

#define MAX_DEPTH 16 /* 3 descriptors a request: 48 of the queue's 64 */

struct slot {
	struct blk_req_header hdr;
	uint8_t status;
	uint64_t sector;
	uint64_t data[SECTOR / 8]; /* word-wise: the guest's own work per sector stays small */
};

static struct virtio_dev blk;
static struct slot slots[MAX_DEPTH];
static char id[VIRTIO_BLK_ID_BYTES + 1];

/* The pattern: 64-bit words of splitmix64's finaliser over seed, sector and word index. */
static uint64_t pattern_word(uint64_t seed, uint64_t sector, unsigned i)
{
	uint64_t z = seed * 0x9E3779B97F4A7C15ull + sector * (SECTOR / 8) + i;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void fill_pattern(uint64_t *p, uint64_t seed, uint64_t sector)
{
	for (unsigned i = 0; i < SECTOR / 8; i++)
		p[i] = pattern_word(seed, sector, i); /* little-endian, as x86 stores it */
}

static void fill_words(uint64_t *p, uint64_t v)
{
	for (unsigned i = 0; i < SECTOR / 8; i++)
		p[i] = v;
}

static const char *status_name(uint8_t s)
{
	switch (s) {
	case VIRTIO_BLK_S_OK: return "OK";
	case VIRTIO_BLK_S_IOERR: return "IOERR";
	case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
	case VIRTIO_BLK_NO_STATUS: return "none written";
	default: return "unknown";
	}
}

static int failed_status(const char *what, uint64_t sector, uint8_t status)
{
	console_puts("blk: FAILED: ");
	console_puts(what);
	if (sector != ~0ull) {
		console_puts(" of sector ");
		console_put_dec(sector);
	}
	console_puts(" returned status ");
	console_put_dec(status);
	console_puts(" (");
	console_puts(status_name(status));
	console_puts(")\n");
	return 1;
}

static int failed(const char *why)
{
	console_puts("blk: FAILED: ");
	console_puts(why);
	console_puts("\n");
	return 1;
}

/* A transfer of sectors first..first+n-1: OUT with the pattern, or IN (then compared with it). */
struct transfer {
	int write;
	uint64_t first, seed;
};

static void transfer_fill(void *ctx, uint64_t i, struct virtq_chain *c)
{
	const struct transfer *t = ctx;
	struct slot *s = &slots[i % MAX_DEPTH];
	s->sector = t->first + i;
	if (t->write)
		fill_pattern(s->data, t->seed, s->sector);
	else
		fill_words(s->data, 0xA5A5A5A5A5A5A5A5ull); /* not what the pattern has */
	blk_chain(c, &s->hdr, t->write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, s->sector, s->data, SECTOR, &s->status);
}

static int transfer_done(void *ctx, uint64_t i, uint32_t len, uint64_t completed)
{
	const struct transfer *t = ctx;
	const struct slot *s = &slots[i % MAX_DEPTH];
	(void)completed;
	if (s->status != VIRTIO_BLK_S_OK)
		return failed_status(t->write ? "write" : "read", s->sector, s->status);
	if (len != (t->write ? 1u : SECTOR + 1u)) {
		console_puts("blk: the device reported ");
		console_put_dec(len);
		console_puts(" bytes written for sector ");
		console_put_dec(s->sector);
		console_puts("\n");
		return failed("wrong used length");
	}
	if (t->write)
		return 0;
	for (unsigned i = 0; i < SECTOR / 8; i++) {
		uint64_t got = s->data[i], want = pattern_word(t->seed, s->sector, i);
		if (got == want)
			continue;
		unsigned b = 0;
		while (((got ^ want) >> (8 * b) & 0xFF) == 0)
			b++;
		console_puts("blk: sector ");
		console_put_dec(s->sector);
		console_puts(" byte ");
		console_put_dec(8 * i + b);
		console_puts(" reads ");
		console_put_hex(got >> (8 * b) & 0xFF, 2);
		console_puts(", wrote ");
		console_put_hex(want >> (8 * b) & 0xFF, 2);
		console_puts("\n");
		return failed("the data read back differs from what was written");
	}
	return 0;
}

/* `depth` requests per notification. Returns 0, or 1 after printing why. */
static int transfer(int write, uint64_t first, uint64_t n, unsigned depth, uint64_t seed)
{
	struct transfer t = { write, first, seed };
	struct virtq_stream s = { .q = &blk.vq[0], .total = n, .depth = depth, .batch = 1, .ctx = &t,
				  .fill = transfer_fill, .done = transfer_done, .failed = failed,
				  .no_room = "no room in the queue for a request", .lost = "a request did not complete" };
	return virtq_stream_run(&s);
}

int main(struct boot_info *bi, const char *cmdline)
{
	uint64_t count = cmdline_u64(cmdline, "count", 16);
	uint64_t first = cmdline_u64(cmdline, "sector", 0);
	uint64_t seed = cmdline_u64(cmdline, "seed", 1);
	uint64_t depth = cmdline_u64(cmdline, "depth", 1);
	uint64_t disk = cmdline_u64(cmdline, "disk", 0);
	int use_irq = virtio_cmdline_irq(cmdline);
	if (depth < 1 || depth > MAX_DEPTH)
		return failed("depth= must be 1..16");
	uint64_t want = 1ull << VIRTIO_BLK_F_RO | 1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH;
	if (virtio_find_nth(bi, VIRTIO_ID_BLOCK, (unsigned)disk, &blk) || virtio_setup(&blk, want, 1, use_irq))
		return 1;
	virtio_describe(&blk);
	if (blk.vq[0].size < 3 * depth)
		return failed("the queue is too small for depth= requests of 3 descriptors");

	uint64_t capacity = virtio_config64(&blk, VIRTIO_BLK_CONFIG_CAPACITY);
	int ro = virtio_has_feature(&blk, VIRTIO_BLK_F_RO), flush = virtio_has_feature(&blk, VIRTIO_BLK_F_FLUSH);
	console_puts("blk: capacity ");
	console_put_dec(capacity);
	console_puts(" sectors (");
	console_put_dec(capacity / 2);
	console_puts(" KiB), ");
	console_puts(ro ? "read-only" : "read-write");
	console_puts(flush ? ", flush\n" : ", no flush\n");

	memset(id, 0, sizeof(id));
	int status = blk_request(&blk.vq[0], VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES, 0);
	if (status < 0)
		return failed("GET_ID did not complete");
	if (status != VIRTIO_BLK_S_OK)
		return failed_status("GET_ID", ~0ull, status);
	for (unsigned i = 0; i < VIRTIO_BLK_ID_BYTES && id[i]; i++)
		if (id[i] < 0x20 || id[i] > 0x7E)
			id[i] = '.';
	console_puts("blk: id \"");
	console_puts(id);
	console_puts("\"\n");

	if (first > capacity || count > capacity - first) {
		console_puts("blk: sectors ");
		console_put_dec(first);
		console_puts("+");
		console_put_dec(count);
		console_puts(" are beyond the capacity of ");
		console_put_dec(capacity);
		console_puts(" sectors\n");
		return 1;
	}
	if (ro)
		console_puts("blk: the device is read-only (VIRTIO_BLK_F_RO); writing anyway: it should refuse\n");
	if (transfer(1, first, count, (unsigned)depth, seed))
		return 1;
	if (flush) {
		status = blk_request(&blk.vq[0], VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
		if (status < 0)
			return failed("FLUSH did not complete");
		if (status != VIRTIO_BLK_S_OK)
			return failed_status("FLUSH", ~0ull, status);
	}
	if (transfer(0, first, count, (unsigned)depth, seed))
		return 1;
	console_puts("blk: ");
	console_put_dec(count);
	console_puts(" sectors from ");
	console_put_dec(first);
	console_puts(flush ? " written, flushed, read back and verified (seed " :
			     " written, read back and verified (seed ");
	console_put_dec(seed);
	console_puts(")\n");
	if (use_irq)
		virtio_report_interrupts(&blk);
	return 0;
}
