/* rt_main: the C side of _start. Every guest checks the boot info block before anything else and
 * exits with EXIT_BAD_BOOTINFO when it is unusable, so that is done once here: a guest's main gets
 * the checked block and its command line ("" when there is none). */
#include "bootinfo.h"
#include "rt.h"

int rt_main(struct boot_info *raw)
{
	struct boot_info *bi = bootinfo_parse(raw);
	if (!bi)
		return EXIT_BAD_BOOTINFO;
	return main(bi, bootinfo_cmdline(bi));
}
