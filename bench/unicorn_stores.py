"""Why unicorn 2.1 trails QEMU-TCG on guest code that stores to memory: its store slow path.

Bare unicorn (no driver), the driver's identity map (2 MiB pages, set_long_mode's layout), one
loop of 6 instructions around a memory operand, timed per iteration:
  alu    add %rbx,%rax          (no memory access: the translated-code baseline)
  load   mov (%rsi,%rbx),%al
  store  mov %cl,(%rsi,%rbx)
each with the data page executable or NX in the guest's page tables, mapped in unicorn with or
without UC_PROT_EXEC (the driver's scan mode maps data RW), and with or without one memory hook
(UC_HOOK_MEM_UNMAPPED, as every VMM on unicorn needs for MMIO).

In unicorn 2.1.4 a store leaves translated code for store_helper/notdirty_write (two memory-region
look-ups) unless its TLB entry was made clean, and it is made clean only when the page is not
executable in the guest's page tables AND no memory hook is installed (accel/tcg/cputlb.c,
notdirty_write). QEMU 10 clears it for every page that holds no translated code; so does unicorn
after its PR #2337 (unreleased as of 2.1.4) for pages mapped without UC_PROT_EXEC: run this with
LIBUNICORN_PATH pointing at such a build to see the RW rows drop.

    python -m nvmmpy.bench.unicorn_stores [--iterations 10000000] [--rounds 3]
"""
import argparse
import ctypes
import mmap
import os
import statistics
import time

os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

from unicorn import Uc, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, UC_HOOK_MEM_UNMAPPED  # noqa: E402
from unicorn import x86_const  # noqa: E402

from nvmmpy import constants as nvmm  # noqa: E402
from nvmmpy.vmm.cpu_modes import PD_ADDR, PML4_ADDR, write_identity_page_tables  # noqa: E402

RAM = 8 << 20
CODE = 0x100000
DATA = 0x400000                 # the third 2 MiB page: made NX on its own
EFER_NXE = 1 << 11
NX = 1 << 63
# mov %rdi,%rcx ; mov $DATA,%esi ; xor %ebx,%ebx ; 1: <op> ; inc %rbx ; and $0xffff,%rbx ; dec %rcx ; jnz 1b ; hlt
OPS = {"alu": bytes.fromhex("4801d8"), "load": bytes.fromhex("8a041e"), "store": bytes.fromhex("880c1e")}


def program(op: bytes) -> bytes:
    loop = op + bytes.fromhex("48ffc3" "4881e3ffff0000" "48ffc9")
    return bytes.fromhex("4889f9" "be") + DATA.to_bytes(4, "little") + bytes.fromhex("31db") + loop + \
        bytes([0x75, (-(len(loop) + 2)) & 0xFF, 0xF4])


def per_iteration_ns(op: str, nx: bool, hook: bool, iterations: int, rw: bool = False) -> float:
    code = program(OPS[op])
    mem = mmap.mmap(-1, RAM)
    mem[CODE:CODE + len(code)] = code
    write_identity_page_tables(memoryview(mem), 1 << 30)
    if nx:
        pde = PD_ADDR + 8 * (DATA >> 21)
        mem[pde:pde + 8] = (int.from_bytes(mem[pde:pde + 8], "little") | NX).to_bytes(8, "little")
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    uc.mem_map_ptr(0, DATA, UC_PROT_ALL, base)
    uc.mem_map_ptr(DATA, RAM - DATA, UC_PROT_READ | UC_PROT_WRITE if rw else UC_PROT_ALL, base + DATA)
    if hook:
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, lambda *a: False)
    uc.reg_write(x86_const.UC_X86_REG_CR3, PML4_ADDR)
    uc.reg_write(x86_const.UC_X86_REG_CR4, uc.reg_read(x86_const.UC_X86_REG_CR4) | nvmm.CR4_PAE)
    uc.msr_write(0xC0000080, uc.msr_read(0xC0000080) | EFER_NXE)
    uc.reg_write(x86_const.UC_X86_REG_CR0, uc.reg_read(x86_const.UC_X86_REG_CR0) | nvmm.CR0_PG)
    uc.reg_write(x86_const.UC_X86_REG_RDI, iterations)
    t0 = time.perf_counter()
    uc.emu_start(CODE, CODE + len(code))
    dt = time.perf_counter() - t0
    # the last store writes RCX's low byte (1) at index iterations-1 (mod 64 KiB)
    if uc.reg_read(x86_const.UC_X86_REG_RCX) != 0 or (op == "store" and mem[DATA + ((iterations - 1) & 0xFFFF)] != 1):
        raise RuntimeError(f"{op}: the loop did not run to its end")
    return dt / iterations * 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    rows = [(op, nx, rw) for op in OPS for nx in (False, True) for rw in (False, True)]
    res = {(*r, h): [] for r in rows for h in (False, True)}
    for _ in range(a.rounds):
        for c in res:
            res[c].append(per_iteration_ns(c[0], c[1], c[3], a.iterations, rw=c[2]))
    print(f"bare unicorn, {a.iterations:,} iterations x 6 instructions, median of {a.rounds} rounds (ns/iteration):")
    print(f"  {'op':<6} {'page tables':<12} {'unicorn map':<12} {'no hook':>8} {'mem hook':>9}")
    for op, nx, rw in rows:
        cells = [statistics.median(res[(op, nx, rw, h)]) for h in (False, True)]
        print(f"  {op:<6} {'NX' if nx else 'executable':<12} {'RW' if rw else 'RWX':<12} {cells[0]:8.2f} {cells[1]:9.2f}")
    return {f"{op}/{'nx' if nx else 'x'}/{'rw' if rw else 'rwx'}/{'hook' if h else 'nohook'}": statistics.median(v)
            for (op, nx, rw, h), v in res.items()}


if __name__ == "__main__":
    main()
