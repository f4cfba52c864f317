/* The debug-exit device: the byte written to port 0x501 is the VM's exit code. */
#include "io.h"
#include "rt.h"

void debug_exit(int code)
{
	cli();
	outb(DEBUG_EXIT_PORT, (uint8_t)code);
	for (;;) /* a VMM without the device: stop here */
		hlt();
}
