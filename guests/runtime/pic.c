/* The 8259A pair: master at 0x20/0x21, slave at 0xA0/0xA1 on master line 2. */
#include "io.h"
#include "rt.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define ICW1_INIT_ICW4 0x11
#define ICW4_8086 0x01
#define OCW2_EOI 0x20

void pic_remap(void)
{
	outb(PIC1_CMD, ICW1_INIT_ICW4);
	outb(PIC2_CMD, ICW1_INIT_ICW4);
	outb(PIC1_DATA, IRQ_VECTOR_BASE);     /* ICW2: IRQ 0-7 -> 0x20-0x27 */
	outb(PIC2_DATA, IRQ_VECTOR_BASE + 8); /* ICW2: IRQ 8-15 -> 0x28-0x2F */
	outb(PIC1_DATA, 1 << 2);              /* ICW3: a slave on line 2 */
	outb(PIC2_DATA, 2);                   /* ICW3: slave identity 2 */
	outb(PIC1_DATA, ICW4_8086);
	outb(PIC2_DATA, ICW4_8086);
	outb(PIC1_DATA, 0xFF & ~(1 << 2));    /* everything masked but the cascade */
	outb(PIC2_DATA, 0xFF);
}

static void set_mask_bit(unsigned irq, int masked)
{
	uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
	uint8_t bit = 1 << (irq & 7);
	uint8_t m = inb(port);
	outb(port, masked ? (m | bit) : (m & ~bit));
}

void pic_mask(unsigned irq) { set_mask_bit(irq, 1); }
void pic_unmask(unsigned irq) { set_mask_bit(irq, 0); }

void pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2_CMD, OCW2_EOI);
	outb(PIC1_CMD, OCW2_EOI);
}
