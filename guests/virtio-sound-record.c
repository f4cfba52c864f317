/*
 * virtio-sound-record: capture frames=N frames from the first input stream of the virtio-sound
 * device (stream=N picks another one).
 *
 * Set-up as a driver does it (virtio-sound.h), then SET_PARAMS (rate=HZ format=NAME channels=N,
 * period=F frames a period, buffer_bytes = periods=P periods), PREPARE, P period buffers queued
 * in the rxq before START (the spec's advice), one more each time one comes back full until N
 * frames are in (the last buffer may be short), STOP, RELEASE. The buffers are consecutive
 * pieces of one capture area in RAM after the image, so it ends up holding the whole recording.
 * irq=1 (default) sleeps until the device's interrupt, irq=0 polls.
 *
 * Prints the command and I/O statuses, "sound: recorded N frames (B bytes) of FMT xC at R Hz,
 * crc32 0x..." (CRC-32 as zlib computes it, over the bytes in the guest's format) and the first
 * dump=D bytes (default 16, at most 64) in hex. With disk=K (K >= 1) it then writes the recording
 * to the Kth virtio-blk disk from sector 0 (the last sector padded with zeroes) and FLUSHes.
 * Exit 0, or 1 with the reason.
 */
#include "virtio-blk.h"
#include "virtio-sound.h"

#define MAX_SLOTS 16
#define BLK_CHUNK (64u << 10) /* bytes per virtio-blk write request */

struct slot {
	struct snd_pcm_xfer xfer;
	struct snd_pcm_status status;
	uint64_t index; /* which buffer of the recording */
	uint32_t bytes;
};

static struct snd snd;
static struct slot slots[MAX_SLOTS];
static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* running CRC-32 (IEEE 802.3, as zlib.crc32): start with 0 */
static uint32_t crc_update(uint32_t crc, const uint8_t *p, uint64_t n)
{
	crc = ~crc;
	for (uint64_t i = 0; i < n; i++)
		crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
	return ~crc;
}

/* --- writing the recording to a virtio-blk disk ------------------------------------------------ */
static struct virtio_dev blk;

static int blk_write(uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	int status = blk_request(&blk.vq[0], type, sector, data, len, 0);
	if (status < 0)
		return snd_failed("a virtio-blk request did not complete");
	if (status != VIRTIO_BLK_S_OK) {
		put_fields("sound: virtio-blk request type ", type, 0);
		put_fields(" at sector ", sector, 0);
		put_fields(" returned status ", (uint64_t)status, 0);
		console_puts("\n");
		return snd_failed("the disk refused the recording");
	}
	return 0;
}

static int write_to_disk(const struct boot_info *bi, uint64_t disk, uint8_t *data, uint64_t bytes, int use_irq)
{
	if (virtio_find_nth(bi, VIRTIO_ID_BLOCK, (unsigned)(disk - 1), &blk) ||
	    virtio_setup(&blk, 1ull << VIRTIO_BLK_F_FLUSH, 1, use_irq))
		return 1;
	uint64_t capacity = virtio_config64(&blk, VIRTIO_BLK_CONFIG_CAPACITY);
	uint64_t sectors = (bytes + SECTOR - 1) / SECTOR;
	if (sectors > capacity) {
		put_fields("sound: the recording needs ", sectors, 0);
		put_fields(" sectors, the disk has ", capacity, 0);
		console_puts("\n");
		return snd_failed("the disk is too small");
	}
	for (uint64_t i = bytes; i < sectors * SECTOR; i++)
		data[i] = 0;
	for (uint64_t off = 0; off < sectors * SECTOR; off += BLK_CHUNK) {
		uint64_t n = sectors * SECTOR - off < BLK_CHUNK ? sectors * SECTOR - off : BLK_CHUNK;
		if (blk_write(VIRTIO_BLK_T_OUT, off / SECTOR, data + off, (uint32_t)n))
			return 1;
	}
	int flush = virtio_has_feature(&blk, VIRTIO_BLK_F_FLUSH);
	if (flush && blk_write(VIRTIO_BLK_T_FLUSH, 0, 0, 0))
		return 1;
	put_fields("sound: wrote ", bytes, 0);
	put_fields(" bytes to disk ", disk, 0);
	put_fields(" (", sectors, 0);
	console_puts(flush ? " sectors from 0), flushed\n" : " sectors from 0)\n");
	return 0;
}

/* --- recording --------------------------------------------------------------------------------- */
static struct snd_pcm pcm;
static uint8_t *capture;
static uint64_t got;

/* period i: the next piece of the capture area */
static void record_fill(void *ctx, uint64_t i, struct virtq_chain *c)
{
	const struct snd_params *p = &((struct snd_pcm *)ctx)->p;
	struct slot *s = &slots[i % p->periods];
	uint64_t first = i * p->period;
	uint32_t frames = p->frames - first < p->period ? (uint32_t)(p->frames - first) : (uint32_t)p->period;
	s->index = i;
	s->bytes = frames * p->frame_bytes;
	snd_pcm_chain(ctx, c, &s->xfer, &s->status, capture + i * p->period_bytes, s->bytes);
}

static int record_done(void *ctx, uint64_t i, uint32_t len, uint64_t completed)
{
	struct snd_pcm *pcm = ctx;
	const struct slot *s = &slots[i % pcm->p.periods];
	if (s->index != completed)
		return snd_failed("the rx buffers came back out of order");
	uint32_t st = s->status.status;
	if (st == SND_S_OK && len != s->bytes + sizeof(s->status)) {
		put_fields("sound: an rx buffer of ", s->bytes, 0);
		put_fields(" bytes came back with used length ", len, 0);
		console_puts("\n");
		return snd_failed("a short rx buffer before the end of the stream");
	}
	if (snd_pcm_count(pcm, st))
		got += s->bytes; /* nothing more here: the guest must keep up with the stream */
	return 0;
}

int main(struct boot_info *bi, const char *cmdline)
{
	struct snd_params *p = &pcm.p;
	if (snd_params_from(p, cmdline, MAX_SLOTS))
		return 1;
	uint64_t dump = cmdline_u64(cmdline, "dump", 16);
	uint64_t disk = cmdline_u64(cmdline, "disk", 0);
	if (dump > 64)
		dump = 64;
	uint64_t total = p->frames * p->frame_bytes;
	capture = snd_scratch(bi, total + SECTOR);
	if (!capture)
		return 1;
	crc_init();
	if (snd_pcm_open(&pcm, &snd, bi, cmdline, 0))
		return 1;
	if (snd_pcm_prepare(&pcm) || snd_pcm_run(&pcm, record_fill, record_done))
		return 1;
	snd_pcm_stop(&pcm);
	uint32_t crc = crc_update(0, capture, got);

	snd_pcm_put_counts(&pcm);
	console_puts("\n");
	put_fields("sound: recorded ", got / p->frame_bytes, 0);
	put_fields(" frames (", got, 0);
	console_puts(" bytes) of ");
	snd_put_format(p);
	console_puts(", crc32 ");
	console_put_hex(crc, 8);
	console_puts("\n");
	put_fields("sound: first ", dump < got ? dump : got, 0);
	console_puts(" bytes:");
	for (uint64_t i = 0; i < dump && i < got; i++) {
		static const char hex[] = "0123456789abcdef";
		char t[4] = { ' ', hex[capture[i] >> 4], hex[capture[i] & 15], 0 };
		console_puts(t);
	}
	console_puts("\n");
	if (snd_pcm_verdict(&pcm, "not every buffer was filled"))
		return 1;
	if (disk && write_to_disk(bi, disk, capture, got, snd.dev.use_irq))
		return 1;
	return 0;
}
