/*
 * virtio-blk (VIRTIO 1.2 sec. 5.2) for the bundled guests virtio-blk.c and virtio-sound-record.c
 * (which writes its recording to a disk), on the runtime's virtio-mmio driver: the numbers of the
 * spec and a request's chain (header, data, status).
 *
 * Header-only (static functions): build.py compiles one C file per guest.
 */
#ifndef GUEST_VIRTIO_BLK_H
#define GUEST_VIRTIO_BLK_H
#include "runtime/rt.h"
#include "runtime/virtio.h"

#define BLK_FN static __attribute__((unused))

#define SECTOR 512
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_CONFIG_CAPACITY 0 /* le64, in 512-byte sectors */
#define VIRTIO_BLK_NO_STATUS 0xFF    /* no status byte is this: the device must overwrite it */

struct blk_req_header {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

/*
 * The chain of one request into *c: the header (device-readable), the data if any (device-readable
 * for OUT, device-writable for IN and GET_ID) and the status byte (device-writable, set to
 * VIRTIO_BLK_NO_STATUS here).
 */
BLK_FN void blk_chain(struct virtq_chain *c, struct blk_req_header *hdr, uint32_t type, uint64_t sector,
		      void *data, uint32_t len, volatile uint8_t *status)
{
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	*status = VIRTIO_BLK_NO_STATUS;
	unsigned n = 0;
	c->buf[n++] = (struct virtq_buf){ hdr, sizeof(*hdr) };
	if (data)
		c->buf[n++] = (struct virtq_buf){ data, len };
	c->buf[n++] = (struct virtq_buf){ (void *)status, 1 };
	c->nout = data && type == VIRTIO_BLK_T_OUT ? 2 : 1;
	c->nin = n - c->nout;
}

/* One request on its own (add, notify, wait): the status byte the device wrote, or -1 if the
 * request did not complete (printed by the runtime). */
BLK_FN int blk_request(struct virtq *q, uint32_t type, uint64_t sector, void *data, uint32_t len, uint32_t *used)
{
	static struct blk_req_header hdr;
	static volatile uint8_t status;
	struct virtq_chain c;
	blk_chain(&c, &hdr, type, sector, data, len, &status);
	if (virtq_request(q, c.buf, c.nout, c.nin, used) < 0)
		return -1;
	return status;
}
#endif
