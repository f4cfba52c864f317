/* A UC_HOOK_BLOCK callback: stop unicorn at the start of a translation block, from the vCPU's own
 * thread, where nothing of the block has run yet (see tbstop.py for why). Built by tbstop.py with the
 * system C compiler; it links against nothing: unicorn's functions come in as pointers. */
#include <stdint.h>

struct nvmmpy_tbstop {
    volatile int32_t pending;   /* set by any thread: stop at the next block start */
    volatile int32_t window;    /* set by the vCPU thread: stop at the first block start with IF=1 */
    volatile uint64_t stops;    /* stops this hook made (a stop the caller did not make is something else) */
    int (*stop)(void *uc);                              /* uc_emu_stop */
    int (*reg_read)(void *uc, int regid, void *value);  /* uc_reg_read */
    int32_t eflags_id;                                  /* UC_X86_REG_EFLAGS */
};

void nvmmpy_tbstop_block(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct nvmmpy_tbstop *c = user;
    (void)address;
    (void)size;
    if (c->pending) {
        c->pending = 0;
        c->stops++;
        c->stop(uc);
        return;
    }
    if (c->window) {
        uint64_t flags = 0;
        c->reg_read(uc, c->eflags_id, &flags);
        if (flags & 0x200) {
            c->window = 0;
            c->stops++;
            c->stop(uc);
        }
    }
}
