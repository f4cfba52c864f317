/* The 8254 PIT: channel 0 as a rate generator (mode 2) on IRQ 0. */
#include "io.h"
#include "rt.h"

#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define CMD_CH0_LOHI_MODE2 0x34 /* channel 0, low then high byte, mode 2, binary */

void pit_set_hz(unsigned hz)
{
	uint32_t div = hz ? (PIT_HZ + hz / 2) / hz : 0x10000;
	if (div < 2)
		div = 2; /* mode 2 needs a count of at least 2 */
	if (div > 0xFFFF)
		div = 0; /* 0 means 65536 */
	outb(PIT_CMD, CMD_CH0_LOHI_MODE2);
	outb(PIT_CH0, div & 0xFF);
	outb(PIT_CH0, (div >> 8) & 0xFF);
}
