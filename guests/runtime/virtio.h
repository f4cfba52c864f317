/*
 * A tiny virtio-mmio driver (VIRTIO 1.2: sec. 4.2 virtio-mmio version 2, sec. 2.7 split
 * virtqueues, sec. 3.1.1 driver initialisation). See guests/README.md, "virtio".
 *
 *	struct virtio_dev dev;
 *	if (virtio_find(bi, VIRTIO_ID_RNG, &dev) || virtio_setup(&dev, 0, 1, use_irq))
 *		return 1;                                   // both print why
 *	struct virtq_buf b = { buf, 64 };
 *	virtq_add(&dev.vq[0], &b, 0, 1);                 // 0 device-readable, 1 device-writable
 *	virtq_notify(&dev.vq[0]);
 *	int head = virtq_wait(&dev.vq[0], &len);         // the chain's head, or -1 (device broken)
 *
 * Queues live in a static .bss pool (memory is identity mapped: a pointer is its guest-physical
 * address). With use_irq the driver remaps the PIC (once), makes the device's line
 * level-triggered in the ELCR, installs its handler, unmasks the line and turns interrupts on
 * (STI); virtq_wait then sleeps in HLT until a used buffer shows up. Without it the driver asks
 * the device for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT) and virtq_wait polls the used index.
 * Registers are accessed with 32-bit volatile loads and stores only (plain MOVs).
 */
#ifndef RT_VIRTIO_H
#define RT_VIRTIO_H
#include "bootinfo.h"
#include "rt.h"

/* Device IDs (sec. 5) */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_SOUND 25

/* Device status (sec. 2.1) */
#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER 2
#define VIRTIO_S_DRIVER_OK 4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_DEVICE_NEEDS_RESET 64
#define VIRTIO_S_FAILED 128

/* Reserved feature bits (sec. 6) */
#define VIRTIO_F_VERSION_1 32

/* virtio-mmio version 2 registers (sec. 4.2.2), byte offsets */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00C
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0A0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0A4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0FC
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_MMIO_VERSION_2 2

/* InterruptStatus bits */
#define VIRTIO_INT_USED_BUFFER 1
#define VIRTIO_INT_CONFIG_CHANGE 2

/* Split virtqueue layout (sec. 2.7); alignments 16 (descriptors), 2 (available), 4 (used) */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[]; /* size entries, then le16 used_event */
};
struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};
struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[]; /* size entries, then le16 avail_event */
};
_Static_assert(sizeof(struct virtq_desc) == 16, "a descriptor is 16 bytes");
_Static_assert(sizeof(struct virtq_used_elem) == 8, "a used element is 8 bytes");

#define VIRTQ_MAX_SIZE 64     /* the driver's cap on a queue's size (QueueNum) */
#define VIRTIO_MAX_QUEUES 4   /* queues one device may set up here (virtio-sound has 4) */

struct virtio_dev;

struct virtq {
	struct virtio_dev *dev;
	uint16_t index;      /* queue number (QueueSel, QueueNotify) */
	uint16_t size;       /* QueueNum: a power of two <= VIRTQ_MAX_SIZE */
	uint16_t num_free;   /* free descriptors */
	uint16_t free_head;  /* first free descriptor (free ones chain through .next) */
	uint16_t avail_idx;  /* next available index the driver publishes */
	uint16_t last_used;  /* used index the driver has consumed up to */
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	struct virtq_used *used;
	uint64_t requests;   /* chains completed (virtq_get) */
};

struct virtio_dev {
	uintptr_t base;      /* the register window (guest-physical == virtual) */
	uint32_t irq;        /* ISA line from the boot info block, or BOOTINFO_NO_IRQ */
	uint32_t device_id;
	uint64_t features;   /* negotiated (valid after virtio_setup) */
	unsigned nqueues;
	int use_irq;
	volatile uint64_t interrupts; /* handler runs that found InterruptStatus != 0 */
	volatile uint64_t spurious;   /* handler runs that found it 0 */
	volatile int broken;          /* 1: the device set DEVICE_NEEDS_RESET; 2: its used ring made no sense */
	struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* A buffer of a chain: device-readable ones first, then device-writable ones. */
struct virtq_buf {
	void *addr;
	uint32_t len;
};

/* Register access: 32-bit volatile loads and stores. */
static inline uint32_t virtio_read32(const struct virtio_dev *d, unsigned off)
{
	return *(volatile uint32_t *)(d->base + off);
}
static inline void virtio_write32(const struct virtio_dev *d, unsigned off, uint32_t v)
{
	*(volatile uint32_t *)(d->base + off) = v;
}
/* Device configuration space (offset within it); 8/16/32-bit accesses are allowed there. */
static inline uint8_t virtio_config8(const struct virtio_dev *d, unsigned off)
{
	return *(volatile uint8_t *)(d->base + VIRTIO_MMIO_CONFIG + off);
}
static inline uint32_t virtio_config32(const struct virtio_dev *d, unsigned off)
{
	return *(volatile uint32_t *)(d->base + VIRTIO_MMIO_CONFIG + off);
}
/* A 64-bit config field as two 32-bit reads, consistent by ConfigGeneration (sec. 4.2.3.1). */
uint64_t virtio_config64(const struct virtio_dev *d, unsigned off);

const char *virtio_device_name(uint32_t device_id);

/*
 * The first virtio-mmio device of the boot info table with DeviceID `device_id` into *dev.
 * Every virtio-mmio entry looked at must show MagicValue "virt" and Version 2. Returns 0, or -1
 * after printing why (no such device; a bad magic or version).
 */
int virtio_find(const struct boot_info *bi, uint32_t device_id, struct virtio_dev *dev);
/* The same for the nth (from 0) device with that DeviceID, e.g. a second disk. */
int virtio_find_nth(const struct boot_info *bi, uint32_t device_id, unsigned nth, struct virtio_dev *dev);

/*
 * Initialise the device (sec. 3.1.1): reset, ACKNOWLEDGE, DRIVER, features (VIRTIO_F_VERSION_1
 * plus whatever of `want` the device offers), FEATURES_OK (checked), queues 0..nqueues-1, the
 * interrupt (use_irq) and DRIVER_OK. Returns 0, or -1 after printing why (the device is then
 * left with FAILED set).
 */
int virtio_setup(struct virtio_dev *dev, uint64_t want, unsigned nqueues, int use_irq);

static inline int virtio_has_feature(const struct virtio_dev *d, unsigned bit)
{
	return (d->features >> bit) & 1;
}

/* One line: "virtio: <name> at 0x...: irq N, features 0x..., queues 64/64, interrupts|polling" */
void virtio_describe(const struct virtio_dev *dev);

/*
 * Make a chain of nout device-readable then nin device-writable buffers available (the index is
 * published; nothing is notified). Returns the head descriptor, or -1 if the queue has fewer
 * than nout + nin free descriptors.
 */
int virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned nout, unsigned nin);
/* Tell the device about new chains (QueueNotify), unless it asked not to be (VIRTQ_USED_F_NO_NOTIFY). */
void virtq_notify(struct virtq *q);
/* A used chain without waiting: its head (and the bytes the device wrote into *len), or -1. */
int virtq_get(struct virtq *q, uint32_t *len);
/* Wait for the next used chain (HLT with interrupts, else polling): its head, or -1 if the
 * device went into DEVICE_NEEDS_RESET (printed). */
int virtq_wait(struct virtq *q, uint32_t *len);
/* add + notify + wait: one request, synchronously. Returns the head, or -1 (printed). */
int virtq_request(struct virtq *q, const struct virtq_buf *bufs, unsigned nout, unsigned nin, uint32_t *len);

/*
 * A stream: `total` chains through one queue, at most `depth` (1..VIRTQ_MAX_SIZE) of them in
 * flight. The tx/rx loop of a driver that keeps a queue busy (disk sectors, sound periods):
 *
 *	struct virtq_stream s = { .q = q, .total = n, .depth = 4, .ctx = &state, .fill = fill,
 *				  .done = done, .failed = failed, .no_room = "...", .lost = "..." };
 *	if (virtq_stream_run(&s))
 *		return 1;                                   // printed by a callback or .failed
 *
 * fill(ctx, i, &chain) builds chain i (0..total-1) just before it is added; slot i % depth is
 * free for its buffers (the chain that used it last came back, if the device keeps the order).
 * After the notification for the first chains, started(ctx) runs once if given (a sound
 * stream's START). Each used chain goes to done(ctx, i, len, completed), `completed` being how
 * many came back before it (== i if the device keeps the order). With .batch, `depth` chains
 * go out per notification and the next batch once all of them came back; without, a new one
 * goes out as each comes back. Returns 0; a callback's non-zero return; or .failed(.no_room)
 * when the queue lacks free descriptors, .failed(.lost) when a chain does not come back (the
 * device is broken, or returned a chain that is not in flight: printed).
 */
#define VIRTQ_CHAIN_MAX 4
struct virtq_chain {
	struct virtq_buf buf[VIRTQ_CHAIN_MAX]; /* device-readable ones first */
	unsigned nout, nin;
};
struct virtq_stream {
	struct virtq *q;
	uint64_t total;
	unsigned depth;
	int batch;
	void *ctx;
	void (*fill)(void *ctx, uint64_t i, struct virtq_chain *c);
	int (*started)(void *ctx);
	int (*done)(void *ctx, uint64_t i, uint32_t len, uint64_t completed);
	int (*failed)(const char *why);
	const char *no_room, *lost;
};
int virtq_stream_run(const struct virtq_stream *s);

/* "virtio: N interrupts on irq I" (with spurious ones if any): for the end of a run */
void virtio_report_interrupts(const struct virtio_dev *dev);

/* "irq" on the command line: 1 (default) = interrupts, 0 = polling */
static inline int virtio_cmdline_irq(const char *cmdline)
{
	return cmdline_u64(cmdline, "irq", 1) != 0;
}
#endif
