/*
 * virtio-sound (VIRTIO 1.2/1.3 sec. 5.14) for the bundled guests virtio-sound-play.c and
 * virtio-sound-record.c, on the runtime's virtio-mmio driver: the structures and numbers of the
 * spec, the device set-up every driver does first (4 queues, config, JACK_INFO, PCM_INFO,
 * CHMAP_INFO, event buffers), synchronous control requests and the format table.
 *
 * Header-only (static functions): build.py compiles one C file per guest.
 */
#ifndef GUEST_VIRTIO_SOUND_H
#define GUEST_VIRTIO_SOUND_H
#include "runtime/bootinfo.h"
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define SND_FN static __attribute__((unused))

/* queues */
#define SND_CONTROLQ 0
#define SND_EVENTQ 1
#define SND_TXQ 2
#define SND_RXQ 3

/* config space: jacks, streams, chmaps, controls (the last only with VIRTIO_SND_F_CTLS) */
#define SND_CONFIG_JACKS 0
#define SND_CONFIG_STREAMS 4
#define SND_CONFIG_CHMAPS 8

/* request codes, event codes, status codes */
#define SND_R_JACK_INFO 0x0001
#define SND_R_PCM_INFO 0x0100
#define SND_R_PCM_SET_PARAMS 0x0101
#define SND_R_PCM_PREPARE 0x0102
#define SND_R_PCM_RELEASE 0x0103
#define SND_R_PCM_START 0x0104
#define SND_R_PCM_STOP 0x0105
#define SND_R_CHMAP_INFO 0x0200
#define SND_EVT_JACK_CONNECTED 0x1000
#define SND_EVT_JACK_DISCONNECTED 0x1001
#define SND_EVT_PCM_PERIOD_ELAPSED 0x1100
#define SND_EVT_PCM_XRUN 0x1101
#define SND_EVT_CTL_NOTIFY 0x1200
#define SND_S_OK 0x8000
#define SND_S_BAD_MSG 0x8001
#define SND_S_NOT_SUPP 0x8002
#define SND_S_IO_ERR 0x8003

#define SND_D_OUTPUT 0
#define SND_D_INPUT 1

/* PCM stream features (bits) */
#define SND_PCM_F_MSG_POLLING 2
#define SND_PCM_F_EVT_XRUNS 4

struct snd_query_info {
	uint32_t code, start_id, count, size;
};
struct snd_jack_info {
	uint32_t hda_fn_nid, features, hda_reg_defconf, hda_reg_caps;
	uint8_t connected, padding[7];
};
struct snd_pcm_info {
	uint32_t hda_fn_nid, features;
	uint64_t formats, rates;
	uint8_t direction, channels_min, channels_max, padding[5];
};
struct snd_chmap_info {
	uint32_t hda_fn_nid;
	uint8_t direction, channels, positions[18];
};
struct snd_pcm_hdr {
	uint32_t code, stream_id;
};
struct snd_pcm_set_params {
	uint32_t code, stream_id, buffer_bytes, period_bytes, features;
	uint8_t channels, format, rate, padding;
};
struct snd_pcm_xfer {
	uint32_t stream_id;
};
struct snd_pcm_status {
	uint32_t status, latency_bytes;
};
struct snd_event {
	uint32_t code, data;
};
_Static_assert(sizeof(struct snd_jack_info) == 24, "virtio_snd_jack_info");
_Static_assert(sizeof(struct snd_pcm_info) == 32, "virtio_snd_pcm_info");
_Static_assert(sizeof(struct snd_chmap_info) == 24, "virtio_snd_chmap_info");
_Static_assert(sizeof(struct snd_pcm_set_params) == 24, "virtio_snd_pcm_set_params");

/* --- formats and rates ------------------------------------------------------------------------ */
enum { SND_KIND_INT, SND_KIND_FLOAT, SND_KIND_MULAW, SND_KIND_ALAW, SND_KIND_OTHER };

struct snd_format {
	const char *name;
	uint8_t bytes;   /* physical bytes per sample (0: not whole bytes) */
	uint8_t bits;    /* valid bits */
	uint8_t is_signed;
	uint8_t kind;
};
/* value = bit in virtio_snd_pcm_info.formats */
static const struct snd_format snd_formats[] = {
	{ "IMA_ADPCM", 0, 4, 1, SND_KIND_OTHER }, { "MU_LAW", 1, 8, 1, SND_KIND_MULAW },
	{ "A_LAW", 1, 8, 1, SND_KIND_ALAW },      { "S8", 1, 8, 1, SND_KIND_INT },
	{ "U8", 1, 8, 0, SND_KIND_INT },          { "S16", 2, 16, 1, SND_KIND_INT },
	{ "U16", 2, 16, 0, SND_KIND_INT },        { "S18_3", 3, 18, 1, SND_KIND_INT },
	{ "U18_3", 3, 18, 0, SND_KIND_INT },      { "S20_3", 3, 20, 1, SND_KIND_INT },
	{ "U20_3", 3, 20, 0, SND_KIND_INT },      { "S24_3", 3, 24, 1, SND_KIND_INT },
	{ "U24_3", 3, 24, 0, SND_KIND_INT },      { "S20", 4, 20, 1, SND_KIND_INT },
	{ "U20", 4, 20, 0, SND_KIND_INT },        { "S24", 4, 24, 1, SND_KIND_INT },
	{ "U24", 4, 24, 0, SND_KIND_INT },        { "S32", 4, 32, 1, SND_KIND_INT },
	{ "U32", 4, 32, 0, SND_KIND_INT },        { "FLOAT", 4, 32, 1, SND_KIND_FLOAT },
	{ "FLOAT64", 8, 64, 1, SND_KIND_FLOAT },  { "DSD_U8", 1, 8, 0, SND_KIND_OTHER },
	{ "DSD_U16", 2, 16, 0, SND_KIND_OTHER },  { "DSD_U32", 4, 32, 0, SND_KIND_OTHER },
	{ "IEC958_SUBFRAME", 4, 32, 0, SND_KIND_OTHER },
};
#define SND_FORMAT_COUNT (sizeof(snd_formats) / sizeof(snd_formats[0]))

/* value = bit in virtio_snd_pcm_info.rates (12000/24000: bits 14/15, queued for VIRTIO 1.4) */
static const uint32_t snd_rates[] = { 5512,  8000,  11025,  16000,  22050,  32000,  44100, 48000,
				      64000, 88200, 96000, 176400, 192000, 384000, 12000, 24000 };
#define SND_RATE_COUNT (sizeof(snd_rates) / sizeof(snd_rates[0]))

SND_FN int snd_rate_value(uint64_t hz)
{
	for (unsigned i = 0; i < SND_RATE_COUNT; i++)
		if (snd_rates[i] == hz)
			return (int)i;
	return -1;
}

/* "value" of key=value in the command line into buf (NUL-terminated); 0, or -1 if absent */
SND_FN int cmdline_word(const char *s, const char *key, char *buf, size_t size)
{
	const char *p = cmdline_find(s, key);
	if (!p)
		return -1;
	size_t n = 0;
	while (p[n] && p[n] != ' ' && n + 1 < size) {
		buf[n] = p[n];
		n++;
	}
	buf[n] = 0;
	return 0;
}

SND_FN char upper(char c) { return c >= 'a' && c <= 'z' ? (char)(c - 32) : c; }

SND_FN int same_name(const char *a, const char *b) /* case-insensitive, '-' as '_' */
{
	for (; *a && *b; a++, b++) {
		char x = upper(*a) == '-' ? '_' : upper(*a), y = upper(*b) == '-' ? '_' : upper(*b);
		if (x != y)
			return 0;
	}
	return *a == *b;
}

/* format=NAME (s16, float, s24_3, mu_law, ...; also f32, f64, mulaw, alaw) or a number */
SND_FN int snd_format_value(const char *name)
{
	if (name[0] >= '0' && name[0] <= '9') {
		unsigned v = 0;
		for (const char *p = name; *p; p++) {
			if (*p < '0' || *p > '9')
				return -1;
			v = v * 10 + (unsigned)(*p - '0');
			if (v > 255)
				return -1;
		}
		return (int)v;
	}
	static const struct { const char *alias; uint8_t value; } aliases[] = {
		{ "F32", 19 }, { "FLOAT32", 19 }, { "F64", 20 }, { "MULAW", 1 }, { "ALAW", 2 },
	};
	for (unsigned i = 0; i < SND_FORMAT_COUNT; i++)
		if (same_name(name, snd_formats[i].name))
			return (int)i;
	for (unsigned i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
		if (same_name(name, aliases[i].alias))
			return aliases[i].value;
	return -1;
}

SND_FN const char *snd_format_name(unsigned fmt)
{
	return fmt < SND_FORMAT_COUNT ? snd_formats[fmt].name : "undefined";
}

SND_FN void snd_put_status(uint32_t status)
{
	switch (status) {
	case SND_S_OK: console_puts("OK"); break;
	case SND_S_BAD_MSG: console_puts("BAD_MSG"); break;
	case SND_S_NOT_SUPP: console_puts("NOT_SUPP"); break;
	case SND_S_IO_ERR: console_puts("IO_ERR"); break;
	default: console_put_hex(status, 0);
	}
}

/* --- the device ------------------------------------------------------------------------------- */
#define SND_MAX_JACKS 16
#define SND_MAX_STREAMS 16
#define SND_MAX_CHMAPS 32
#define SND_EVENTS 8 /* device-writable event buffers kept in the eventq */

struct snd {
	struct virtio_dev dev;
	uint32_t jacks, streams, chmaps; /* config space */
	struct snd_jack_info jack[SND_MAX_JACKS];
	struct snd_pcm_info pcm[SND_MAX_STREAMS];
	struct snd_chmap_info chmap[SND_MAX_CHMAPS];
	struct snd_event events[SND_EVENTS];
	uint64_t ev_xrun, ev_jack, ev_ctl, ev_other;
};

SND_FN int snd_failed(const char *why)
{
	console_puts("sound: FAILED: ");
	console_puts(why);
	console_puts("\n");
	return 1;
}

/*
 * One control request: `req` (device-readable) then a response of `resp_len` bytes
 * (device-writable, starting with the le32 status). Returns the status, 0 if the request did
 * not complete (printed), or SND_S_BAD_MSG-like codes as the device gives them.
 */
SND_FN uint32_t snd_request(struct snd *s, const void *req, uint32_t req_len, void *resp, uint32_t resp_len)
{
	*(volatile uint32_t *)resp = 0; /* the device must overwrite it */
	struct virtq_buf b[2] = { { (void *)req, req_len }, { resp, resp_len } };
	uint32_t used = 0;
	if (virtq_request(&s->dev.vq[SND_CONTROLQ], b, 1, 1, &used) < 0)
		return 0;
	if (used < 4) {
		console_puts("sound: a control request came back with used length ");
		console_put_dec(used);
		console_puts("\n");
		return 0;
	}
	return *(volatile uint32_t *)resp;
}

/* PREPARE, START, STOP, RELEASE */
SND_FN uint32_t snd_pcm_command(struct snd *s, uint32_t code, uint32_t stream)
{
	static struct snd_pcm_hdr req;
	static uint32_t status;
	req.code = code;
	req.stream_id = stream;
	return snd_request(s, &req, sizeof(req), &status, sizeof(status));
}

/* One query-info request for items 0..count-1 of `size` bytes into `out` (after the status). */
SND_FN uint32_t snd_query(struct snd *s, uint32_t code, uint32_t count, uint32_t size, void *out)
{
	static struct snd_query_info req;
	static uint8_t resp[4 + SND_MAX_CHMAPS * 24];
	req.code = code;
	req.start_id = 0;
	req.count = count;
	req.size = size;
	uint32_t st = snd_request(s, &req, sizeof(req), resp, 4 + count * size);
	if (st == SND_S_OK)
		memcpy(out, resp + 4, count * size);
	return st;
}

SND_FN void put_fields(const char *name, uint64_t v, int hex)
{
	console_puts(name);
	if (hex)
		console_put_hex(v, 0);
	else
		console_put_dec(v);
}

SND_FN uint32_t cap(uint32_t n, uint32_t max, const char *what)
{
	if (n <= max)
		return n;
	console_puts("sound: only the first ");
	console_put_dec(max);
	console_puts(" ");
	console_puts(what);
	console_puts(" are looked at\n");
	return max;
}

/* Make an event buffer available again. */
SND_FN void snd_event_buffer(struct snd *s, unsigned i)
{
	struct virtq_buf b = { &s->events[i], sizeof(s->events[i]) };
	virtq_add(&s->dev.vq[SND_EVENTQ], &b, 0, 1);
}

/*
 * Find and set up the first virtio-sound device (4 queues), read its configuration and every
 * jack, stream and channel map (one query each, as Linux does), fill the eventq. Prints a line
 * per item. Returns 0, or 1 after printing why.
 */
SND_FN int snd_open(struct snd *s, const struct boot_info *bi, int use_irq)
{
	if (virtio_find(bi, VIRTIO_ID_SOUND, &s->dev) || virtio_setup(&s->dev, 0, 4, use_irq))
		return 1;
	virtio_describe(&s->dev);
	s->jacks = virtio_config32(&s->dev, SND_CONFIG_JACKS);
	s->streams = virtio_config32(&s->dev, SND_CONFIG_STREAMS);
	s->chmaps = virtio_config32(&s->dev, SND_CONFIG_CHMAPS);
	put_fields("sound: ", s->jacks, 0);
	put_fields(" jacks, ", s->streams, 0);
	put_fields(" streams, ", s->chmaps, 0);
	console_puts(" chmaps\n");
	uint32_t nj = cap(s->jacks, SND_MAX_JACKS, "jacks");
	uint32_t ns = cap(s->streams, SND_MAX_STREAMS, "streams");
	uint32_t nc = cap(s->chmaps, SND_MAX_CHMAPS, "chmaps");
	uint32_t st;
	if (nj && (st = snd_query(s, SND_R_JACK_INFO, nj, sizeof(struct snd_jack_info), s->jack)) != SND_S_OK)
		goto bad;
	if (ns && (st = snd_query(s, SND_R_PCM_INFO, ns, sizeof(struct snd_pcm_info), s->pcm)) != SND_S_OK)
		goto bad;
	if (nc && (st = snd_query(s, SND_R_CHMAP_INFO, nc, sizeof(struct snd_chmap_info), s->chmap)) != SND_S_OK)
		goto bad;
	for (uint32_t i = 0; i < nj; i++) {
		const struct snd_jack_info *j = &s->jack[i];
		put_fields("sound: jack ", i, 0);
		put_fields(": fn ", j->hda_fn_nid, 0);
		put_fields(", defconf ", j->hda_reg_defconf, 1);
		put_fields(", caps ", j->hda_reg_caps, 1);
		put_fields(", features ", j->features, 1);
		console_puts(j->connected ? ", connected\n" : ", disconnected\n");
	}
	for (uint32_t i = 0; i < ns; i++) {
		const struct snd_pcm_info *p = &s->pcm[i];
		put_fields("sound: stream ", i, 0);
		console_puts(p->direction == SND_D_OUTPUT ? ": output" : p->direction == SND_D_INPUT ? ": input" : ": ?");
		put_fields(", fn ", p->hda_fn_nid, 0);
		put_fields(", channels ", p->channels_min, 0);
		put_fields("-", p->channels_max, 0);
		put_fields(", formats ", p->formats, 1);
		put_fields(", rates ", p->rates, 1);
		put_fields(", features ", p->features, 1);
		console_puts("\n");
	}
	for (uint32_t i = 0; i < nc; i++) {
		const struct snd_chmap_info *c = &s->chmap[i];
		put_fields("sound: chmap ", i, 0);
		console_puts(c->direction == SND_D_OUTPUT ? ": output" : ": input");
		put_fields(", fn ", c->hda_fn_nid, 0);
		console_puts(", positions");
		for (unsigned k = 0; k < c->channels && k < 18; k++)
			put_fields(" ", c->positions[k], 0);
		console_puts("\n");
	}
	struct virtq *eq = &s->dev.vq[SND_EVENTQ];
	for (unsigned i = 0; i < SND_EVENTS && i < eq->size; i++)
		snd_event_buffer(s, i);
	virtq_notify(eq);
	return 0;
bad:
	console_puts("sound: FAILED: a query request returned ");
	snd_put_status(st);
	console_puts("\n");
	return 1;
}

/* Take the events the device has sent so far (counted by kind) and give their buffers back. */
SND_FN void snd_take_events(struct snd *s)
{
	struct virtq *eq = &s->dev.vq[SND_EVENTQ];
	uint32_t len;
	int head, any = 0;
	while ((head = virtq_get(eq, &len)) >= 0) {
		/* a one-descriptor chain: its head is the buffer's descriptor; find the buffer */
		for (unsigned i = 0; i < SND_EVENTS; i++) {
			if (eq->desc[head].addr != (uintptr_t)&s->events[i])
				continue;
			uint32_t code = len >= 8 ? s->events[i].code : 0;
			if (code == SND_EVT_PCM_XRUN)
				s->ev_xrun++;
			else if (code == SND_EVT_JACK_CONNECTED || code == SND_EVT_JACK_DISCONNECTED)
				s->ev_jack++;
			else if (code == SND_EVT_CTL_NOTIFY)
				s->ev_ctl++;
			else
				s->ev_other++;
			snd_event_buffer(s, i);
			any = 1;
		}
	}
	if (any)
		virtq_notify(eq);
}

SND_FN void snd_report_events(const struct snd *s)
{
	put_fields("sound: events: ", s->ev_xrun, 0);
	put_fields(" xrun, ", s->ev_jack, 0);
	put_fields(" jack, ", s->ev_ctl, 0);
	put_fields(" ctl, ", s->ev_other, 0);
	console_puts(" other\n");
}

/* The first stream of `direction`, or `want` if given (< 2^32) and of that direction; -1 (printed) */
SND_FN int snd_pick_stream(const struct snd *s, int direction, uint64_t want)
{
	uint32_t n = s->streams < SND_MAX_STREAMS ? s->streams : SND_MAX_STREAMS;
	const char *what = direction == SND_D_OUTPUT ? "output" : "input";
	if (want != ~0ull) {
		if (want < n && s->pcm[want].direction == direction)
			return (int)want;
		put_fields("sound: FAILED: stream ", want, 0);
		console_puts(" is not an ");
		console_puts(what);
		console_puts(" stream of this device\n");
		return -1;
	}
	for (uint32_t i = 0; i < n; i++)
		if (s->pcm[i].direction == direction)
			return (int)i;
	console_puts("sound: FAILED: the device has no ");
	console_puts(what);
	console_puts(" stream (nvmmpy run --sound ");
	console_puts(direction == SND_D_OUTPUT ? "out=wav:FILE" : "in=wav:FILE");
	console_puts(")\n");
	return -1;
}

/*
 * The stream parameters from the command line: rate=HZ format=NAME channels=N frames=N
 * period=FRAMES periods=N xruns=0|1. Checked for what this guest can do (not against the device: a
 * SET_PARAMS the device refuses is reported with its status). Returns 0, or 1 (printed).
 */
struct snd_params {
	uint64_t rate_hz, channels, frames, period, periods;
	int rate, format;
	uint32_t frame_bytes, period_bytes;
	uint32_t features; /* xruns=1: SND_PCM_F_EVT_XRUNS */
};

SND_FN int snd_params_from(struct snd_params *p, const char *cmdline, unsigned max_periods)
{
	char word[24];
	p->rate_hz = cmdline_u64(cmdline, "rate", 48000);
	p->rate = snd_rate_value(p->rate_hz);
	if (p->rate < 0)
		return snd_failed("rate= is not a virtio-sound rate (5512, 8000, 11025, 12000, 16000, 22050, 24000, "
				  "32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000, 384000)");
	p->format = 5; /* S16 */
	if (!cmdline_word(cmdline, "format", word, sizeof(word))) {
		p->format = snd_format_value(word);
		if (p->format < 0 || p->format >= (int)SND_FORMAT_COUNT)
			return snd_failed("format= is no virtio-sound format (u8, s16, s24_3, s32, float, float64, ...)");
	}
	const struct snd_format *f = &snd_formats[p->format];
	if (f->kind == SND_KIND_OTHER)
		return snd_failed("this guest makes and checks linear, G.711 and float samples only");
	p->channels = cmdline_u64(cmdline, "channels", 2);
	if (p->channels < 1 || p->channels > 18)
		return snd_failed("channels= must be 1..18");
	p->frames = cmdline_u64(cmdline, "frames", p->rate_hz / 10);
	p->period = cmdline_u64(cmdline, "period", p->rate_hz / 100);
	p->periods = cmdline_u64(cmdline, "periods", 4);
	if (p->frames < 1 || p->frames > 0xFFFFFFFFull)
		return snd_failed("frames= must be 1..2^32-1");
	if (p->period < 1 || p->periods < 1 || p->periods > max_periods)
		return snd_failed("period= must be at least 1 frame, periods= 1..16");
	p->frame_bytes = (uint32_t)(f->bytes * p->channels);
	uint64_t pb = p->period * p->frame_bytes;
	if (pb > (1u << 20) || pb * p->periods > (16u << 20))
		return snd_failed("period= too large: a period is at most 1 MiB, the buffer 16 MiB");
	p->period_bytes = (uint32_t)pb;
	p->features = cmdline_u64(cmdline, "xruns", 0) ? 1u << SND_PCM_F_EVT_XRUNS : 0;
	return 0;
}

/* "S16 x2 at 48000 Hz" */
SND_FN void snd_put_format(const struct snd_params *p)
{
	console_puts(snd_format_name((unsigned)p->format));
	put_fields(" x", p->channels, 0);
	put_fields(" at ", p->rate_hz, 0);
	console_puts(" Hz");
}

SND_FN void snd_describe_params(const char *verb, int stream, const struct snd_params *p)
{
	console_puts("sound: ");
	console_puts(verb);
	put_fields(" stream ", (uint64_t)stream, 0);
	console_puts(": ");
	snd_put_format(p);
	put_fields(", ", p->frames, 0);
	put_fields(" frames, period ", p->period, 0);
	put_fields(" frames (", p->period_bytes, 0);
	put_fields(" bytes), ", p->periods, 0);
	console_puts(" periods\n");
}

/* SET_PARAMS for the stream (buffer_bytes = periods x period_bytes) */
SND_FN uint32_t snd_set_params(struct snd *s, uint32_t stream, const struct snd_params *p)
{
	static struct snd_pcm_set_params req;
	static uint32_t status;
	req.code = SND_R_PCM_SET_PARAMS;
	req.stream_id = stream;
	req.period_bytes = p->period_bytes;
	req.buffer_bytes = (uint32_t)(p->period_bytes * p->periods);
	req.features = p->features;
	req.channels = (uint8_t)p->channels;
	req.format = (uint8_t)p->format;
	req.rate = (uint8_t)p->rate;
	req.padding = 0;
	return snd_request(s, &req, sizeof(req), &status, sizeof(status));
}

/* Scratch memory for sample buffers: RAM after the image (identity mapped, not cleared). */
SND_FN uint8_t *snd_scratch(const struct boot_info *bi, uint64_t bytes)
{
	uintptr_t at = ((uintptr_t)__image_end + 4095) & ~(uintptr_t)4095;
	if (at + bytes > bi->ram_size) {
		console_puts("sound: FAILED: ");
		console_put_dec(bytes);
		console_puts(" bytes of sample buffers do not fit in RAM after the image (give more --memory "
			     "or fewer frames)\n");
		return 0;
	}
	return (uint8_t *)at;
}

/* "SET_PARAMS OK, PREPARE OK, ..." as far as the commands went */
struct snd_log {
	const char *names[6];
	uint32_t status[6];
	unsigned n;
};

SND_FN uint32_t snd_log(struct snd_log *l, const char *name, uint32_t status)
{
	if (l->n < 6) {
		l->names[l->n] = name;
		l->status[l->n++] = status;
	}
	return status;
}

SND_FN void snd_put_log(const struct snd_log *l)
{
	console_puts("sound: ");
	for (unsigned i = 0; i < l->n; i++) {
		console_puts(i ? ", " : "");
		console_puts(l->names[i]);
		console_puts(" ");
		snd_put_status(l->status[i]);
	}
	console_puts("\n");
}
/* --- a PCM stream played or recorded through the txq or the rxq --------------------------------- */
struct snd_pcm {
	struct snd *snd;
	uint32_t stream;
	int output;              /* 1: play (txq), 0: record (rxq) */
	struct snd_params p;
	struct snd_log log;
	uint64_t nbuf;           /* period buffers in all (the last one may be short) */
	uint64_t ok, io_err, other;
};

/*
 * Open the device (snd_open; irq= on the command line), pick the stream of the PCM's direction (stream= on the command line,
 * else the first one) and describe the parameters already in pcm->p. Returns 0, or 1 (printed).
 */
SND_FN int snd_pcm_open(struct snd_pcm *pcm, struct snd *s, const struct boot_info *bi, const char *cmdline,
			int output)
{
	if (snd_open(s, bi, virtio_cmdline_irq(cmdline)))
		return 1;
	int stream = snd_pick_stream(s, output ? SND_D_OUTPUT : SND_D_INPUT, cmdline_u64(cmdline, "stream", ~0ull));
	if (stream < 0)
		return 1;
	snd_describe_params(output ? "play" : "record", stream, &pcm->p);
	pcm->snd = s;
	pcm->stream = (uint32_t)stream;
	pcm->output = output;
	return 0;
}

/* The txq/rxq checked for `periods` chains of 3 descriptors, SET_PARAMS, PREPARE: 0, or 1 (printed). */
SND_FN int snd_pcm_prepare(struct snd_pcm *pcm)
{
	struct snd *s = pcm->snd;
	if (s->dev.vq[pcm->output ? SND_TXQ : SND_RXQ].size < 3 * pcm->p.periods)
		return snd_failed(pcm->output ? "the txq is too small for periods= buffers of 3 descriptors"
					      : "the rxq is too small for periods= buffers of 3 descriptors");
	if (snd_log(&pcm->log, "SET_PARAMS", snd_set_params(s, pcm->stream, &pcm->p)) != SND_S_OK ||
	    snd_log(&pcm->log, "PREPARE", snd_pcm_command(s, SND_R_PCM_PREPARE, pcm->stream)) != SND_S_OK) {
		snd_put_log(&pcm->log);
		return snd_failed("the stream could not be set up");
	}
	pcm->nbuf = (pcm->p.frames + pcm->p.period - 1) / pcm->p.period;
	return 0;
}

/* START, once the first buffers are queued (the virtq_stream's started callback; ctx: the snd_pcm) */
SND_FN int snd_pcm_start(void *ctx)
{
	struct snd_pcm *pcm = ctx;
	if (snd_log(&pcm->log, "START", snd_pcm_command(pcm->snd, SND_R_PCM_START, pcm->stream)) != SND_S_OK) {
		snd_put_log(&pcm->log);
		return snd_failed("START was refused");
	}
	return 0;
}

/* The chain of one period: the header, the samples (device-readable to play, device-writable to
 * record) and the status (device-writable, cleared here). */
SND_FN void snd_pcm_chain(const struct snd_pcm *pcm, struct virtq_chain *c, struct snd_pcm_xfer *xfer,
			  struct snd_pcm_status *status, void *data, uint32_t bytes)
{
	xfer->stream_id = pcm->stream;
	status->status = 0;
	status->latency_bytes = ~0u;
	c->buf[0] = (struct virtq_buf){ xfer, sizeof(*xfer) };
	c->buf[1] = (struct virtq_buf){ data, bytes };
	c->buf[2] = (struct virtq_buf){ status, sizeof(*status) };
	c->nout = pcm->output ? 2 : 1;
	c->nin = 3 - c->nout;
}

/* Count a period buffer's I/O status; 1 if it is OK. */
SND_FN int snd_pcm_count(struct snd_pcm *pcm, uint32_t status)
{
	if (status == SND_S_OK)
		pcm->ok++;
	else if (status == SND_S_IO_ERR)
		pcm->io_err++;
	else
		pcm->other++;
	return status == SND_S_OK;
}

/* The stream's nbuf period buffers, `periods` of them queued at a time (all before START). */
SND_FN int snd_pcm_run(struct snd_pcm *pcm, void (*fill)(void *, uint64_t, struct virtq_chain *),
		       int (*done)(void *, uint64_t, uint32_t, uint64_t))
{
	struct virtq_stream st = {
		.q = &pcm->snd->dev.vq[pcm->output ? SND_TXQ : SND_RXQ], .total = pcm->nbuf,
		.depth = (unsigned)pcm->p.periods, .ctx = pcm, .fill = fill, .started = snd_pcm_start,
		.done = done, .failed = snd_failed,
		.no_room = pcm->output ? "no room in the txq" : "no room in the rxq",
		.lost = pcm->output ? "a tx buffer did not complete" : "an rx buffer did not complete",
	};
	return virtq_stream_run(&st);
}

/* STOP, RELEASE, and the events that came meanwhile. */
SND_FN void snd_pcm_stop(struct snd_pcm *pcm)
{
	snd_log(&pcm->log, "STOP", snd_pcm_command(pcm->snd, SND_R_PCM_STOP, pcm->stream));
	snd_log(&pcm->log, "RELEASE", snd_pcm_command(pcm->snd, SND_R_PCM_RELEASE, pcm->stream));
	snd_take_events(pcm->snd);
}

/* "sound: SET_PARAMS OK, ..." then "sound: N buffers OK, N IO_ERR, N other" (no newline) */
SND_FN void snd_pcm_put_counts(const struct snd_pcm *pcm)
{
	snd_put_log(&pcm->log);
	put_fields("sound: ", pcm->ok, 0);
	put_fields(" buffers OK, ", pcm->io_err, 0);
	put_fields(" IO_ERR, ", pcm->other, 0);
	console_puts(" other");
}

/* The events and interrupts seen, then the verdict: 0, or 1 if a command was refused or a buffer
 * was not OK (`short_of` says that). */
SND_FN int snd_pcm_verdict(const struct snd_pcm *pcm, const char *short_of)
{
	snd_report_events(pcm->snd);
	if (pcm->snd->dev.use_irq)
		virtio_report_interrupts(&pcm->snd->dev);
	for (unsigned i = 0; i < pcm->log.n; i++)
		if (pcm->log.status[i] != SND_S_OK)
			return snd_failed("a command was refused");
	if (pcm->ok != pcm->nbuf)
		return snd_failed(short_of);
	return 0;
}
#endif
