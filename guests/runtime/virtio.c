/* The virtio-mmio driver of virtio.h: discovery, initialisation, split virtqueues, interrupts. */
#include "io.h"
#include "rt.h"
#include "virtio.h"

#define ELCR_MASTER 0x4D0 /* PIIX edge/level control: one bit per IRQ, 1 = level-triggered */
#define ELCR_SLAVE 0x4D1

/* the compiler must not move ring or buffer accesses across this (x86 keeps stores in order) */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* a full fence: the available index is visible before the used ring's flags are read */
static inline void full_barrier(void) { __asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory", "cc"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/*
 * --- queue memory: a static pool in .bss -------------------------------------------------------
 * start.S zeroes .bss and nothing is ever given back, so every area comes out zeroed (as sec.
 * 4.2.3.2 wants) without a memset, which would cost thousands of instructions per queue.
 */
#define VIRTQ_BYTES(n) (16 * (n) + 8 + 2 * (n) + 8 + 8 * (n) + 16) /* areas, padding included */
#define VIRTQ_POOL_SIZE (8 * VIRTQ_BYTES(VIRTQ_MAX_SIZE)) /* e.g. virtio-sound's 4 queues and a disk */
static uint8_t vq_pool[VIRTQ_POOL_SIZE] __attribute__((aligned(4096)));
static size_t vq_pool_used;

static void *pool_alloc(size_t size, size_t align)
{
	size_t at = (vq_pool_used + align - 1) & ~(align - 1);
	if (at + size > sizeof(vq_pool))
		return 0;
	vq_pool_used = at + size;
	return vq_pool + at;
}

/* --- naming and messages ----------------------------------------------------------------- */
const char *virtio_device_name(uint32_t id)
{
	switch (id) {
	case VIRTIO_ID_NET: return "net";
	case VIRTIO_ID_BLOCK: return "blk";
	case VIRTIO_ID_CONSOLE: return "console";
	case VIRTIO_ID_RNG: return "rng";
	case VIRTIO_ID_SOUND: return "sound";
	default: return "device";
	}
}

static const char *cli_option(uint32_t id)
{
	switch (id) {
	case VIRTIO_ID_BLOCK: return "--virtio-blk IMAGE";
	case VIRTIO_ID_CONSOLE: return "--virtio-console stdio";
	case VIRTIO_ID_RNG: return "--virtio-rng";
	case VIRTIO_ID_SOUND: return "--sound SPEC";
	default: return 0;
	}
}

/* "virtio: rng at 0xd0000200: " */
static void say(const struct virtio_dev *d)
{
	console_puts("virtio: ");
	console_puts(virtio_device_name(d->device_id));
	console_puts(" at ");
	console_put_hex(d->base, 0);
	console_puts(": ");
}

/* --- discovery ----------------------------------------------------------------------------- */
int virtio_find(const struct boot_info *bi, uint32_t device_id, struct virtio_dev *dev)
{
	return virtio_find_nth(bi, device_id, 0, dev);
}

int virtio_find_nth(const struct boot_info *bi, uint32_t device_id, unsigned nth, struct virtio_dev *dev)
{
	unsigned seen = 0, matches = 0;
	for (uint32_t i = 0; i < bi->ndevices; i++) {
		const struct bootinfo_device *e = &bi->devices[i];
		if (e->type != DEV_VIRTIO_MMIO)
			continue;
		seen++;
		struct virtio_dev probe = { .base = (uintptr_t)e->base, .irq = e->irq };
		uint32_t magic = virtio_read32(&probe, VIRTIO_MMIO_MAGIC_VALUE);
		if (magic != VIRTIO_MMIO_MAGIC) {
			console_puts("virtio: the virtio-mmio device at ");
			console_put_hex(e->base, 0);
			console_puts(" has MagicValue ");
			console_put_hex(magic, 8);
			console_puts(", not 0x74726976 (\"virt\"): not a virtio-mmio register window\n");
			return -1;
		}
		uint32_t version = virtio_read32(&probe, VIRTIO_MMIO_VERSION);
		if (version != VIRTIO_MMIO_VERSION_2) {
			console_puts("virtio: the virtio-mmio device at ");
			console_put_hex(e->base, 0);
			console_puts(" has Version ");
			console_put_dec(version);
			console_puts(version == 1 ? " (legacy)" : "");
			console_puts(": this driver speaks virtio-mmio version 2 only\n");
			return -1;
		}
		uint32_t id = virtio_read32(&probe, VIRTIO_MMIO_DEVICE_ID);
		if (id != device_id || matches++ != nth) /* DeviceID 0 = a placeholder */
			continue;
		memset(dev, 0, sizeof(*dev));
		dev->base = probe.base;
		dev->irq = e->irq;
		dev->device_id = id;
		return 0;
	}
	console_puts("virtio: no ");
	console_puts(virtio_device_name(device_id));
	console_puts(" device (DeviceID ");
	console_put_dec(device_id);
	console_puts(")");
	if (nth) {
		console_puts(" number ");
		console_put_dec(nth);
		console_puts(" (counting from 0)");
	}
	console_puts(" among the ");
	console_put_dec(seen);
	console_puts(" virtio-mmio devices of the boot info block");
	if (cli_option(device_id)) {
		console_puts(" (nvmmpy run ");
		console_puts(cli_option(device_id));
		console_puts(" adds one)");
	}
	console_puts("\n");
	return -1;
}

uint64_t virtio_config64(const struct virtio_dev *d, unsigned off)
{
	uint32_t gen, lo, hi;
	do {
		gen = virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
		lo = virtio_config32(d, off);
		hi = virtio_config32(d, off + 4);
	} while (gen != virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION));
	return (uint64_t)hi << 32 | lo;
}

/* --- interrupts ----------------------------------------------------------------------------- */
static struct virtio_dev *irq_owner[16];
static int pic_ready;

static void virtio_irq(unsigned irq)
{
	struct virtio_dev *d = irq_owner[irq];
	if (d) {
		uint32_t status = virtio_read32(d, VIRTIO_MMIO_INTERRUPT_STATUS);
		if (status) {
			/* acknowledge first: the line is level-triggered and drops with InterruptStatus */
			virtio_write32(d, VIRTIO_MMIO_INTERRUPT_ACK, status);
			d->interrupts++;
			if ((status & VIRTIO_INT_CONFIG_CHANGE) &&
			    (virtio_read32(d, VIRTIO_MMIO_STATUS) & VIRTIO_S_DEVICE_NEEDS_RESET))
				d->broken = 1;
		} else {
			d->spurious++;
		}
	}
	pic_eoi(irq);
}

static int setup_irq(struct virtio_dev *d)
{
	unsigned irq = d->irq;
	if (!pic_ready) {
		pic_remap(); /* every line masked but the cascade */
		pic_ready = 1;
	}
	uint16_t port = irq < 8 ? ELCR_MASTER : ELCR_SLAVE;
	uint8_t bit = 1 << (irq & 7);
	outb(port, inb(port) | bit);
	if (!(inb(port) & bit)) {
		say(d);
		console_puts("the ELCR keeps irq ");
		console_put_dec(irq);
		console_puts(" edge-triggered; going on with edges\n");
	}
	irq_owner[irq] = d;
	irq_set_handler(irq, virtio_irq);
	pic_unmask(irq);
	return 0;
}

/* --- initialisation ------------------------------------------------------------------------- */
static int fail(struct virtio_dev *d, const char *why, uint64_t value, int show_value)
{
	say(d);
	console_puts(why);
	if (show_value) {
		console_puts(" ");
		console_put_hex(value, 0);
	}
	console_puts("\n");
	virtio_write32(d, VIRTIO_MMIO_STATUS, virtio_read32(d, VIRTIO_MMIO_STATUS) | VIRTIO_S_FAILED);
	return -1;
}

static int setup_queue(struct virtio_dev *d, unsigned i)
{
	struct virtq *q = &d->vq[i];
	virtio_write32(d, VIRTIO_MMIO_QUEUE_SEL, i);
	if (virtio_read32(d, VIRTIO_MMIO_QUEUE_READY))
		return fail(d, "QueueReady is already 1 after reset on queue", i, 1);
	uint32_t max = virtio_read32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (!max)
		return fail(d, "QueueNumMax is 0 (the device has no such queue): queue", i, 1);
	uint32_t size = VIRTQ_MAX_SIZE;
	while (size > max)
		size >>= 1;
	q->desc = pool_alloc(16 * size, 16);
	q->avail = pool_alloc(6 + 2 * size, 2);
	q->used = pool_alloc(6 + 8 * size, 4);
	if (!q->desc || !q->avail || !q->used)
		return fail(d, "out of static queue memory (VIRTQ_POOL_SIZE) for queue", i, 1);
	q->dev = d;
	q->index = (uint16_t)i;
	q->size = (uint16_t)size;
	q->num_free = (uint16_t)size;
	q->free_head = 0;
	q->avail_idx = q->last_used = 0;
	q->requests = 0;
	for (uint32_t j = 0; j < size; j++)
		q->desc[j].next = (uint16_t)(j + 1);
	/* polling: ask the device not to interrupt at all */
	q->avail->flags = d->use_irq ? 0 : VIRTQ_AVAIL_F_NO_INTERRUPT;

	uint64_t desc = (uintptr_t)q->desc, drv = (uintptr_t)q->avail, dev = (uintptr_t)q->used;
	virtio_write32(d, VIRTIO_MMIO_QUEUE_NUM, size);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)drv);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(drv >> 32));
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)dev);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(dev >> 32));
	barrier(); /* the zeroed rings before the device may look at them */
	virtio_write32(d, VIRTIO_MMIO_QUEUE_READY, 1);
	if (virtio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 1)
		return fail(d, "the device did not take QueueReady = 1 on queue", i, 1);
	return 0;
}

int virtio_setup(struct virtio_dev *d, uint64_t want, unsigned nqueues, int use_irq)
{
	d->use_irq = use_irq;
	d->nqueues = nqueues;
	d->interrupts = d->spurious = 0;
	d->broken = 0;
	if (nqueues > VIRTIO_MAX_QUEUES)
		return fail(d, "more queues asked for than VIRTIO_MAX_QUEUES:", nqueues, 1);
	if (use_irq && d->irq >= 16)
		return fail(d, "no interrupt line in the boot info block (use irq=0 to poll); irq", d->irq, 1);

	/* 1. reset, and wait until the device says it is done */
	virtio_write32(d, VIRTIO_MMIO_STATUS, 0);
	for (int tries = 0; virtio_read32(d, VIRTIO_MMIO_STATUS) != 0; tries++)
		if (tries > 1000)
			return fail(d, "Status does not read back 0 after reset:", virtio_read32(d, VIRTIO_MMIO_STATUS), 1);
	/* 2, 3. we noticed it, and we can drive it */
	uint32_t status = VIRTIO_S_ACKNOWLEDGE;
	virtio_write32(d, VIRTIO_MMIO_STATUS, status);
	status |= VIRTIO_S_DRIVER;
	virtio_write32(d, VIRTIO_MMIO_STATUS, status);
	/* 4. features: 64 bits through DeviceFeaturesSel */
	virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t offered = virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered |= (uint64_t)virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	if (!(offered >> VIRTIO_F_VERSION_1 & 1))
		return fail(d, "the device does not offer VIRTIO_F_VERSION_1 (bit 32); features", offered, 1);
	uint64_t accept = offered & (want | 1ull << VIRTIO_F_VERSION_1);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)accept);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(accept >> 32));
	/* 5, 6. FEATURES_OK, and read it back: the device may refuse the combination */
	status |= VIRTIO_S_FEATURES_OK;
	virtio_write32(d, VIRTIO_MMIO_STATUS, status);
	if (!(virtio_read32(d, VIRTIO_MMIO_STATUS) & VIRTIO_S_FEATURES_OK))
		return fail(d, "the device refused FEATURES_OK for features", accept, 1);
	d->features = accept;
	/* 7. device-specific setup: the queues and the interrupt */
	for (unsigned i = 0; i < nqueues; i++)
		if (setup_queue(d, i))
			return -1;
	if (use_irq)
		setup_irq(d);
	/* 8. DRIVER_OK: the device is live */
	status |= VIRTIO_S_DRIVER_OK;
	virtio_write32(d, VIRTIO_MMIO_STATUS, status);
	uint32_t now = virtio_read32(d, VIRTIO_MMIO_STATUS);
	if (now & VIRTIO_S_DEVICE_NEEDS_RESET)
		return fail(d, "the device set DEVICE_NEEDS_RESET during initialisation; Status", now, 1);
	if (!(now & VIRTIO_S_DRIVER_OK))
		return fail(d, "DRIVER_OK did not stick; Status", now, 1);
	if (use_irq)
		sti(); /* from here on the device's interrupts are taken as they come */
	return 0;
}

void virtio_describe(const struct virtio_dev *d)
{
	say(d);
	console_puts("irq ");
	if (d->irq < 16)
		console_put_dec(d->irq);
	else
		console_puts("none");
	console_puts(", features ");
	console_put_hex(d->features, 0);
	console_puts(", queue sizes");
	for (unsigned i = 0; i < d->nqueues; i++) {
		console_puts(i ? "/" : " ");
		console_put_dec(d->vq[i].size);
	}
	console_puts(d->use_irq ? ", interrupts\n" : ", polling\n");
}

void virtio_report_interrupts(const struct virtio_dev *d)
{
	console_puts("virtio: ");
	console_puts(virtio_device_name(d->device_id));
	console_puts(": ");
	console_put_dec(d->interrupts);
	console_puts(" interrupts");
	if (d->irq < 16) {
		console_puts(" on irq ");
		console_put_dec(d->irq);
	}
	if (d->spurious) {
		console_puts(" (and ");
		console_put_dec(d->spurious);
		console_puts(" with InterruptStatus 0)");
	}
	console_puts("\n");
}

/* --- split virtqueues ---------------------------------------------------------------------- */
int virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned nout, unsigned nin)
{
	unsigned n = nout + nin;
	if (n == 0 || n > q->num_free)
		return -1;
	uint16_t head = q->free_head, i = head;
	for (unsigned k = 0; k < n; k++) {
		struct virtq_desc *dd = &q->desc[i];
		dd->addr = (uintptr_t)bufs[k].addr; /* identity mapped: the pointer is the address */
		dd->len = bufs[k].len;
		dd->flags = (uint16_t)((k >= nout ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		i = dd->next; /* free descriptors chain through .next: the chain follows it */
	}
	q->free_head = i;
	q->num_free = (uint16_t)(q->num_free - n);
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	barrier(); /* descriptors and ring entry before the index that publishes them */
	q->avail_idx++;
	*(volatile uint16_t *)&q->avail->idx = q->avail_idx;
	return head;
}

void virtq_notify(struct virtq *q)
{
	full_barrier(); /* the published index before we look at the device's flags */
	if (!(*(volatile uint16_t *)&q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		virtio_write32(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

static inline uint16_t used_idx(const struct virtq *q)
{
	return *(volatile uint16_t *)&q->used->idx;
}

int virtq_get(struct virtq *q, uint32_t *len)
{
	if (used_idx(q) == q->last_used)
		return -1;
	barrier(); /* the element (and the data the device wrote) after the index */
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
	uint32_t id = e->id, n = e->len;
	q->last_used++;
	if (id >= q->size) {
		say(q->dev);
		console_puts("the used ring returned descriptor ");
		console_put_dec(id);
		console_puts(", outside the table\n");
		q->dev->broken = 2; /* the driver's own check; not DEVICE_NEEDS_RESET */
		return -1;
	}
	/* give the chain back to the free list */
	uint16_t i = (uint16_t)id, count = 1;
	while (q->desc[i].flags & VIRTQ_DESC_F_NEXT) {
		i = q->desc[i].next;
		count++;
	}
	q->desc[i].next = q->free_head;
	q->free_head = (uint16_t)id;
	q->num_free = (uint16_t)(q->num_free + count);
	q->requests++;
	if (len)
		*len = n;
	return (int)id;
}

int virtq_wait(struct virtq *q, uint32_t *len)
{
	struct virtio_dev *d = q->dev;
	if (d->use_irq) {
		for (;;) {
			cli();
			if (used_idx(q) != q->last_used || d->broken)
				break;
			sti_hlt(); /* woken by the device's interrupt, handled before we look again */
		}
		sti();
	} else {
		for (unsigned spins = 0; used_idx(q) == q->last_used; spins++) {
			if ((spins & 0x3FF) == 0 &&
			    (virtio_read32(d, VIRTIO_MMIO_STATUS) & VIRTIO_S_DEVICE_NEEDS_RESET)) {
				d->broken = 1;
				break;
			}
			cpu_relax();
		}
	}
	int head = virtq_get(q, len);
	if (head < 0 && d->broken == 1) {
		say(d);
		console_puts("the device set DEVICE_NEEDS_RESET (it refused a descriptor or ring of queue ");
		console_put_dec(q->index);
		console_puts(")\n");
	}
	return head;
}

int virtq_request(struct virtq *q, const struct virtq_buf *bufs, unsigned nout, unsigned nin, uint32_t *len)
{
	int head = virtq_add(q, bufs, nout, nin);
	if (head < 0) {
		say(q->dev);
		console_puts("no room for a chain of ");
		console_put_dec(nout + nin);
		console_puts(" descriptors in queue ");
		console_put_dec(q->index);
		console_puts("\n");
		return -1;
	}
	virtq_notify(q);
	int got = virtq_wait(q, len);
	if (got >= 0 && got != head) {
		say(q->dev);
		console_puts("the device returned chain ");
		console_put_dec((uint64_t)got);
		console_puts(", expected ");
		console_put_dec((uint64_t)head);
		console_puts("\n");
		return -1;
	}
	return got;
}

/* --- streams: a queue kept busy ---------------------------------------------------------------- */
#define NOT_IN_FLIGHT (~0ull)

int virtq_stream_run(const struct virtq_stream *s)
{
	struct virtq *q = s->q;
	uint64_t item_of_head[VIRTQ_MAX_SIZE]; /* the item of each chain in flight, else NOT_IN_FLIGHT */
	uint64_t sent = 0, completed = 0;
	int started = 0, r;
	for (unsigned i = 0; i < VIRTQ_MAX_SIZE; i++)
		item_of_head[i] = NOT_IN_FLIGHT;
	while (completed < s->total) {
		if (!s->batch || sent == completed) {
			int added = 0;
			while (sent < s->total && sent - completed < s->depth) {
				struct virtq_chain c;
				s->fill(s->ctx, sent, &c);
				int head = virtq_add(q, c.buf, c.nout, c.nin);
				if (head < 0)
					return s->failed(s->no_room);
				item_of_head[head] = sent++;
				added = 1;
			}
			if (added)
				virtq_notify(q);
		}
		if (!started) {
			started = 1;
			if (s->started && (r = s->started(s->ctx)))
				return r;
		}
		uint32_t len = 0;
		int head = virtq_wait(q, &len);
		if (head < 0)
			return s->failed(s->lost);
		uint64_t item = item_of_head[head];
		if (item == NOT_IN_FLIGHT) {
			say(q->dev);
			console_puts("the used ring returned descriptor ");
			console_put_dec((uint64_t)head);
			console_puts(", which heads no chain in flight\n");
			return s->failed(s->lost);
		}
		item_of_head[head] = NOT_IN_FLIGHT;
		if ((r = s->done(s->ctx, item, len, completed)))
			return r;
		completed++;
	}
	return 0;
}
