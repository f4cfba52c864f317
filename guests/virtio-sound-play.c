/*
 * virtio-sound-play: play a deterministic signal on the first output stream of the virtio-sound
 * device (stream=N picks another one).
 *
 * Set-up as a driver does it (virtio-sound.h: 4 queues, config, JACK_INFO, PCM_INFO,
 * CHMAP_INFO, event buffers), then SET_PARAMS (rate=HZ format=NAME channels=N, period=F frames
 * a period, buffer_bytes = periods=P periods; xruns=1 asks for EVT_XRUNS), PREPARE, P period
 * buffers queued before START, and one more each time one completes until frames=N frames went
 * out (the last buffer may be short); then STOP and RELEASE. irq=1 (default) sleeps until the
 * device's interrupt, irq=0 polls.
 *
 * The signal (tests/test_sound_guests.py regenerates it bit for bit): channel c is a sawtooth
 * with a 32-bit phase that starts at c << 28 and advances by
 * step_c = ((freq * (c + 2) / 2) << 32) / rate (integer divisions, mod 2^32) per frame, freq=
 * default 440 Hz. Its sample is x = (int32)phase >> 1 (half of full scale), stored as
 *   integer formats (b valid bits): v = x >> (32 - b) (arithmetic), unsigned ones add 2^(b-1)
 *     mod 2^b; the physical bytes of v, little-endian (so the padding of S20/S24/S18_3/S20_3 is
 *     the sign extension, of the unsigned ones zero: the canonical ALSA form)
 *   FLOAT: (x with its low 8 bits cleared) / 2^31 as an IEEE single (exact), FLOAT64: x / 2^31
 *   MU_LAW / A_LAW: the G.711 code of x >> 16 as ITU-T G.191 encodes it
 * all with integer arithmetic (the guest has no FPU code: -mgeneral-regs-only).
 *
 * Prints the command statuses, the I/O statuses and latency_bytes seen ("first" is that of the
 * first completed buffer), "sound: played N frames (B bytes) of FMT xC at R Hz" and the events
 * received; exit 0, or 1 with the reason.
 */
#include "virtio-sound.h"

#define MAX_SLOTS 16

struct slot {
	struct snd_pcm_xfer xfer;
	struct snd_pcm_status status;
	uint8_t *data;
	uint32_t bytes;
};

typedef uint16_t u16_any __attribute__((may_alias));
typedef uint32_t u32_any __attribute__((may_alias));
typedef uint64_t u64_any __attribute__((may_alias));

static struct snd snd;
static struct slot slots[MAX_SLOTS];
static uint32_t phase[18], step[18];

/* --- the signal ------------------------------------------------------------------------------ */
static uint32_t f32_bits(int32_t x) /* x / 2^31, exact: x has its low 8 bits clear */
{
	if (!x)
		return 0;
	uint32_t sign = x < 0 ? 0x80000000u : 0, m = x < 0 ? -(uint32_t)x : (uint32_t)x;
	int p = 31 - __builtin_clz(m);
	uint32_t mant = p >= 23 ? m >> (p - 23) : m << (23 - p);
	return sign | (uint32_t)(127 + p - 31) << 23 | (mant & 0x7FFFFFu);
}

static uint64_t f64_bits(int32_t x) /* x / 2^31, exact */
{
	if (!x)
		return 0;
	uint64_t sign = x < 0 ? 1ull << 63 : 0, m = x < 0 ? -(uint64_t)(int64_t)x : (uint64_t)x;
	int p = 63 - __builtin_clzll(m);
	return sign | (uint64_t)(1023 + p - 31) << 52 | ((m << (52 - p)) & ((1ull << 52) - 1));
}

static uint8_t mulaw(int32_t x) /* x: 16 bits; ITU-T G.191 g711 */
{
	int32_t m = ((x >= 0 ? x : ~x) >> 2) + 33;
	if (m > 0x1FFF)
		m = 0x1FFF;
	int seg = 26 - __builtin_clz((uint32_t)m);
	int code = seg << 4 | ((m >> (seg + 1)) & 0x0F);
	return (uint8_t)((x >= 0 ? 0xFF : 0x7F) - code);
}

static uint8_t alaw(int32_t x)
{
	int32_t m = (x >= 0 ? x : ~x) >> 4;
	if (m > 15) {
		int seg = 28 - __builtin_clz((uint32_t)m);
		m = seg << 4 | ((m >> (seg - 1)) & 0x0F);
	}
	if (x >= 0)
		m |= 0x80;
	return (uint8_t)(m ^ 0x55);
}

/* the loop around every store: x is the next sample, channel by channel, frame by frame */
#define EACH_SAMPLE(store)                                                      \
	for (uint32_t f = 0; f < frames; f++)                                   \
		for (unsigned c = 0; c < nch; c++) {                            \
			int32_t x = (int32_t)phase[c] >> 1;                     \
			phase[c] += step[c];                                    \
			store;                                                  \
		}

static void generate(uint8_t *p, uint32_t frames, int format, unsigned nch)
{
	const struct snd_format *f = &snd_formats[format];
	if (f->kind == SND_KIND_INT) {
		unsigned shift = 32 - f->bits;
		uint32_t flip = f->is_signed ? 0 : 1u << (f->bits - 1);
		uint32_t mask = f->is_signed || f->bits == 32 ? ~0u : (1u << f->bits) - 1;
		switch (f->bytes) {
		case 1:
			EACH_SAMPLE(*p++ = (uint8_t)(((uint32_t)(x >> shift) ^ flip) & mask));
			break;
		case 2:
			EACH_SAMPLE(uint32_t v = ((uint32_t)(x >> shift) ^ flip) & mask;
				    *(u16_any *)p = (uint16_t)v; p += 2);
			break;
		case 3:
			EACH_SAMPLE(uint32_t v = ((uint32_t)(x >> shift) ^ flip) & mask;
				    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p += 3);
			break;
		default:
			EACH_SAMPLE(*(u32_any *)p = ((uint32_t)(x >> shift) ^ flip) & mask; p += 4);
		}
	} else if (f->kind == SND_KIND_FLOAT && f->bytes == 4) {
		EACH_SAMPLE(*(u32_any *)p = f32_bits(x & ~0xFF); p += 4);
	} else if (f->kind == SND_KIND_FLOAT) {
		EACH_SAMPLE(*(u64_any *)p = f64_bits(x); p += 8);
	} else if (f->kind == SND_KIND_MULAW) {
		EACH_SAMPLE(*p++ = mulaw(x >> 16));
	} else {
		EACH_SAMPLE(*p++ = alaw(x >> 16));
	}
}

/* --- playing --------------------------------------------------------------------------------- */
static struct snd_pcm pcm;
static uint8_t *buffers;
static uint64_t sent_frames, bytes;
static uint32_t lat_first, lat_min = ~0u, lat_max, lat_last;

/* period i: the next frames of the signal */
static void play_fill(void *ctx, uint64_t i, struct virtq_chain *c)
{
	const struct snd_params *p = &((struct snd_pcm *)ctx)->p;
	struct slot *s = &slots[i % p->periods];
	uint32_t frames = p->frames - sent_frames < p->period ? (uint32_t)(p->frames - sent_frames) : (uint32_t)p->period;
	s->data = buffers + (i % p->periods) * p->period_bytes;
	s->bytes = frames * p->frame_bytes;
	generate(s->data, frames, p->format, (unsigned)p->channels);
	snd_pcm_chain(ctx, c, &s->xfer, &s->status, s->data, s->bytes);
	sent_frames += frames;
}

static int play_done(void *ctx, uint64_t i, uint32_t len, uint64_t completed)
{
	struct snd_pcm *pcm = ctx;
	const struct slot *s = &slots[i % pcm->p.periods];
	if (len != sizeof(s->status)) {
		put_fields("sound: a tx buffer came back with used length ", len, 0);
		console_puts("\n");
		return snd_failed("wrong used length");
	}
	uint32_t lat = s->status.latency_bytes;
	if (snd_pcm_count(pcm, s->status.status))
		bytes += s->bytes;
	if (!completed)
		lat_first = lat;
	lat_min = lat < lat_min ? lat : lat_min;
	lat_max = lat > lat_max ? lat : lat_max;
	lat_last = lat;
	return 0;
}

int main(struct boot_info *bi, const char *cmdline)
{
	struct snd_params *p = &pcm.p;
	if (snd_params_from(p, cmdline, MAX_SLOTS))
		return 1;
	uint64_t freq = cmdline_u64(cmdline, "freq", 440);
	buffers = snd_scratch(bi, (uint64_t)p->period_bytes * p->periods);
	if (!buffers)
		return 1;
	if (snd_pcm_open(&pcm, &snd, bi, cmdline, 1))
		return 1;
	for (unsigned c = 0; c < p->channels; c++) {
		phase[c] = (uint32_t)c << 28;
		step[c] = (uint32_t)(((freq * (c + 2) / 2) << 32) / p->rate_hz);
	}
	if (snd_pcm_prepare(&pcm) || snd_pcm_run(&pcm, play_fill, play_done))
		return 1;
	snd_pcm_stop(&pcm);

	snd_pcm_put_counts(&pcm);
	put_fields("; latency_bytes first ", lat_first, 0);
	put_fields(" min ", lat_min, 0);
	put_fields(" max ", lat_max, 0);
	put_fields(" last ", lat_last, 0);
	console_puts("\n");
	put_fields("sound: played ", bytes / p->frame_bytes, 0);
	put_fields(" frames (", bytes, 0);
	console_puts(" bytes) of ");
	snd_put_format(p);
	console_puts("\n");
	return snd_pcm_verdict(&pcm, "not every buffer was played");
}
