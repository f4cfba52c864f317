/* hello: the smallest useful guest. Prints a greeting, the RAM size and the command line. */
#include "runtime/bootinfo.h"
#include "runtime/rt.h"

int main(struct boot_info *bi, const char *cmdline)
{
	console_puts("Hello from nvmmpy guest!\n");
	console_puts("ram=");
	console_put_dec(bi->ram_size);
	console_puts(" bytes (");
	console_put_dec(bi->ram_size >> 20);
	console_puts(" MiB)\n");
	console_puts("cmdline=\"");
	console_puts(cmdline);
	console_puts("\"\n");
	console_puts("devices=");
	console_put_dec(bi->ndevices);
	console_puts("\n");
	return 0;
}
