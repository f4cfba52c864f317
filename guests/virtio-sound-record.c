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
#include "virtio-sound.h"

#define MAX_SLOTS 16
#define SECTOR 512
#define BLK_CHUNK (64u << 10) /* bytes per virtio-blk write request */

struct slot {
	struct snd_pcm_xfer xfer;
	struct snd_pcm_status status;
	uint64_t index; /* which buffer of the recording */
	uint32_t bytes;
};

static struct snd snd;
static struct slot slots[MAX_SLOTS];
static int8_t slot_of_head[VIRTQ_MAX_SIZE];
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
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4

struct blk_req_header {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static struct virtio_dev blk;

static int blk_request(uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	static struct blk_req_header hdr;
	static volatile uint8_t status;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status = 0xFF;
	struct virtq_buf b[3] = { { &hdr, sizeof(hdr) }, { data, len }, { (void *)&status, 1 } };
	uint32_t used;
	int head = data ? virtq_request(&blk.vq[0], b, 2, 1, &used)
			: (b[1] = b[2], virtq_request(&blk.vq[0], b, 1, 1, &used));
	if (head < 0)
		return snd_failed("a virtio-blk request did not complete");
	if (status != 0) {
		put_fields("sound: virtio-blk request type ", type, 0);
		put_fields(" at sector ", sector, 0);
		put_fields(" returned status ", status, 0);
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
	uint64_t capacity = virtio_config64(&blk, 0);
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
		if (blk_request(VIRTIO_BLK_T_OUT, off / SECTOR, data + off, (uint32_t)n))
			return 1;
	}
	int flush = virtio_has_feature(&blk, VIRTIO_BLK_F_FLUSH);
	if (flush && blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, 0))
		return 1;
	put_fields("sound: wrote ", bytes, 0);
	put_fields(" bytes to disk ", disk, 0);
	put_fields(" (", sectors, 0);
	console_puts(flush ? " sectors from 0), flushed\n" : " sectors from 0)\n");
	return 0;
}

/* --- recording --------------------------------------------------------------------------------- */
int main(struct boot_info *raw)
{
	struct boot_info *bi = bootinfo_parse(raw);
	if (!bi)
		return EXIT_BAD_BOOTINFO;
	const char *cmdline = bootinfo_cmdline(bi);
	int use_irq = virtio_cmdline_irq(cmdline);
	struct snd_params p = { 0 };
	if (snd_params_from(&p, cmdline, MAX_SLOTS))
		return 1;
	uint32_t features = cmdline_u64(cmdline, "xruns", 0) ? 1u << SND_PCM_F_EVT_XRUNS : 0;
	uint64_t dump = cmdline_u64(cmdline, "dump", 16);
	uint64_t disk = cmdline_u64(cmdline, "disk", 0);
	if (dump > 64)
		dump = 64;
	uint64_t total = p.frames * p.frame_bytes;
	uint8_t *capture = snd_scratch(bi, total + SECTOR);
	if (!capture)
		return 1;
	crc_init();
	if (snd_open(&snd, bi, use_irq))
		return 1;
	int stream = snd_pick_stream(&snd, SND_D_INPUT, cmdline_u64(cmdline, "stream", ~0ull));
	if (stream < 0)
		return 1;
	snd_describe_params("record", stream, &p);

	struct snd_log log = { 0 };
	struct virtq *rx = &snd.dev.vq[SND_RXQ];
	if (rx->size < 3 * p.periods)
		return snd_failed("the rxq is too small for periods= buffers of 3 descriptors");
	if (snd_log(&log, "SET_PARAMS", snd_set_params(&snd, (uint32_t)stream, &p, features)) != SND_S_OK ||
	    snd_log(&log, "PREPARE", snd_pcm_command(&snd, SND_R_PCM_PREPARE, (uint32_t)stream)) != SND_S_OK) {
		snd_put_log(&log);
		return snd_failed("the stream could not be set up");
	}

	uint64_t nbuf = (p.frames + p.period - 1) / p.period, queued = 0, done = 0, got = 0;
	uint64_t ok = 0, io_err = 0, other = 0;
	int started = 0;
	while (done < nbuf) {
		int added = 0;
		while (queued < nbuf && queued - done < p.periods) {
			struct slot *s = &slots[queued % p.periods];
			uint64_t first = queued * p.period;
			uint32_t frames = p.frames - first < p.period ? (uint32_t)(p.frames - first) : (uint32_t)p.period;
			s->index = queued;
			s->bytes = frames * p.frame_bytes;
			s->xfer.stream_id = (uint32_t)stream;
			s->status.status = 0;
			s->status.latency_bytes = ~0u;
			struct virtq_buf b[3] = { { &s->xfer, sizeof(s->xfer) },
						  { capture + queued * p.period_bytes, s->bytes },
						  { &s->status, sizeof(s->status) } };
			int head = virtq_add(rx, b, 1, 2);
			if (head < 0)
				return snd_failed("no room in the rxq");
			slot_of_head[head] = (int8_t)(queued % p.periods);
			queued++;
			added = 1;
		}
		if (added)
			virtq_notify(rx);
		if (!started) {
			started = 1;
			if (snd_log(&log, "START", snd_pcm_command(&snd, SND_R_PCM_START, (uint32_t)stream)) != SND_S_OK) {
				snd_put_log(&log);
				return snd_failed("START was refused");
			}
		}
		uint32_t len = 0;
		int head = virtq_wait(rx, &len);
		if (head < 0)
			return snd_failed("an rx buffer did not complete");
		struct slot *s = &slots[slot_of_head[head]];
		if (s->index != done)
			return snd_failed("the rx buffers came back out of order");
		uint32_t st = s->status.status;
		if (st == SND_S_OK && len == s->bytes + sizeof(s->status)) {
			ok++; /* nothing more here: the guest must keep up with the stream */
			got += s->bytes;
		} else {
			if (st == SND_S_OK) {
				put_fields("sound: an rx buffer of ", s->bytes, 0);
				put_fields(" bytes came back with used length ", len, 0);
				console_puts("\n");
				return snd_failed("a short rx buffer before the end of the stream");
			}
			if (st == SND_S_IO_ERR)
				io_err++;
			else
				other++;
		}
		done++;
	}
	snd_log(&log, "STOP", snd_pcm_command(&snd, SND_R_PCM_STOP, (uint32_t)stream));
	snd_log(&log, "RELEASE", snd_pcm_command(&snd, SND_R_PCM_RELEASE, (uint32_t)stream));
	snd_take_events(&snd);
	uint32_t crc = crc_update(0, capture, got);

	snd_put_log(&log);
	put_fields("sound: ", ok, 0);
	put_fields(" buffers OK, ", io_err, 0);
	put_fields(" IO_ERR, ", other, 0);
	console_puts(" other\n");
	put_fields("sound: recorded ", got / p.frame_bytes, 0);
	put_fields(" frames (", got, 0);
	console_puts(" bytes) of ");
	console_puts(snd_format_name((unsigned)p.format));
	put_fields(" x", p.channels, 0);
	put_fields(" at ", p.rate_hz, 0);
	console_puts(" Hz, crc32 ");
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
	snd_report_events(&snd);
	if (use_irq)
		virtio_report_interrupts(&snd.dev);
	for (unsigned i = 0; i < log.n; i++)
		if (log.status[i] != SND_S_OK)
			return snd_failed("a command was refused");
	if (ok != nbuf)
		return snd_failed("not every buffer was filled");
	if (disk && write_to_disk(bi, disk, capture, got, use_irq))
		return 1;
	return 0;
}
