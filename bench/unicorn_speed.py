"""The unicorn driver against bare unicorn on the same code, and its cost per exit.

compute: a 64-bit guest loop (a few ALU instructions per iteration, N iterations, then HLT) run
  (a) on bare unicorn: one Uc, memory mapped, registers set, one emu_start (no hooks);
  (b) on bare unicorn with the same identity page tables our driver runs with;
  (c) on nvmmpy's unicorn driver through Machine/VCpu.run() until HALTED.
exits: per-exit cost of port I/O (OUT) and MMIO (a store to unmapped memory) exit loops on the
  unicorn driver, each exit completed by assist_io / assist_mem (the emulator) and a callback.
Rounds alternate the variants; medians with [min-max].

    python bench/unicorn_speed.py [--iterations 50000000] [--rounds 5] [--exits 20000] [--json out.json]
"""
import argparse
import ctypes
import json
import mmap
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

from unicorn import Uc, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL  # noqa: E402
from unicorn import x86_const  # noqa: E402

import nvmmpy  # noqa: E402
from nvmmpy import constants as nvmm  # noqa: E402
from nvmmpy.vmm.cpu_modes import PML4_ADDR, set_long_mode, write_identity_page_tables  # noqa: E402

RAM = 4 << 20
CODE = 0x100000
MMIO = 0x10000000

# mov %rdi,%rcx ; xor %eax,%eax ; 1: add %rcx,%rax ; rol $3,%rax ; xor $0x55,%al ; dec %rcx ; jnz 1b ; hlt
COMPUTE = bytes.fromhex("4889f9" "31c0" "4801c8" "48c1c003" "3455" "48ffc9" "75f2" "f4")
# mov $0x10,%dx ; 1: out %al,(%dx) ; jmp 1b
PIO_LOOP = bytes.fromhex("66ba1000" "ee" "ebfd")
# mov $MMIO,%edi ; 1: mov %al,(%rdi) ; jmp 1b
MMIO_LOOP = bytes.fromhex("bf00000010" "8807" "ebfc")


def bare(iterations: int, paging: bool) -> float:
    mem = mmap.mmap(-1, RAM)
    mem[CODE:CODE + len(COMPUTE)] = COMPUTE
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(mem)))
    if paging:
        write_identity_page_tables(memoryview(mem), 1 << 30)
        uc.reg_write(x86_const.UC_X86_REG_CR3, PML4_ADDR)
        uc.reg_write(x86_const.UC_X86_REG_CR4, uc.reg_read(x86_const.UC_X86_REG_CR4) | nvmm.CR4_PAE)
        uc.reg_write(x86_const.UC_X86_REG_CR0, uc.reg_read(x86_const.UC_X86_REG_CR0) | nvmm.CR0_PG)
    uc.reg_write(x86_const.UC_X86_REG_RDI, iterations)
    uc.reg_write(x86_const.UC_X86_REG_RSP, 0x80000)
    t0 = time.perf_counter()
    uc.emu_start(CODE, CODE + len(COMPUTE))
    dt = time.perf_counter() - t0
    assert uc.reg_read(x86_const.UC_X86_REG_RCX) == 0
    return dt


class DriverGuest:
    def __init__(self, code: bytes):
        self.mach = nvmmpy.Machine("unicorn")
        self.mem = nvmmpy.HostMemory(RAM)
        self.mach.hva_map(self.mem.address, RAM)
        self.mach.gpa_map(self.mem.address, 0, RAM, nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)
        self.vcpu = self.mach.vcpu_create(0)
        self.mem.view[CODE:CODE + len(code)] = code
        set_long_mode(self.vcpu, self.mem.view, CODE, 0x80000)
        self.sink = 0

        def on_io(io):
            self.sink = io.data[0]

        def on_mem(m):
            self.sink = m.data[0]

        self.vcpu.configure_callbacks(io=on_io, mem=on_mem)

    def close(self):
        self.mach.destroy()
        self.mem.close()


def driver_compute(iterations: int) -> float:
    g = DriverGuest(COMPUTE)
    st = g.vcpu.getstate(nvmm.X64_STATE_GPRS)
    st.gprs[nvmm.X64_GPR_RDI] = iterations
    g.vcpu.setstate(nvmm.X64_STATE_GPRS)
    t0 = time.perf_counter()
    while g.vcpu.run().reason != nvmm.VCPU_EXIT_HALTED:
        pass
    dt = time.perf_counter() - t0
    assert g.vcpu.getstate(nvmm.X64_STATE_GPRS).gprs[nvmm.X64_GPR_RCX] == 0
    g.close()
    return dt


def driver_exits(code: bytes, exits: int) -> float:
    g = DriverGuest(code)
    run, aio, amem = g.vcpu.run, g.vcpu.assist_io, g.vcpu.assist_mem
    IO, MEM = nvmm.VCPU_EXIT_IO, nvmm.VCPU_EXIT_MEMORY

    def loop(n):
        for _ in range(n):
            r = run().reason
            if r == IO:
                aio()
            elif r == MEM:
                amem()
            else:
                raise RuntimeError(f"unexpected exit {r:#x}")
    loop(200)
    t0 = time.perf_counter_ns()
    loop(exits)
    ns = (time.perf_counter_ns() - t0) / exits
    g.close()
    return ns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = {"bare": [], "bare_paging": [], "driver": [], "pio_ns": [], "mmio_ns": []}
    for _ in range(a.rounds):
        res["bare"].append(bare(a.iterations, False))
        res["bare_paging"].append(bare(a.iterations, True))
        res["driver"].append(driver_compute(a.iterations))
        res["pio_ns"].append(driver_exits(PIO_LOOP, a.exits))
        res["mmio_ns"].append(driver_exits(MMIO_LOOP, a.exits))
    med = {k: statistics.median(v) for k, v in res.items()}
    rng = {k: (min(v), max(v)) for k, v in res.items()}
    per_iter = {k: med[k] / a.iterations * 1e9 for k in ("bare", "bare_paging", "driver")}
    print(f"compute loop, {a.iterations:,} iterations x 6 instructions, {a.rounds} rounds (median [min-max] s):")
    for k, label in (("bare", "bare unicorn, no paging"), ("bare_paging", "bare unicorn, same page tables"),
                     ("driver", "nvmmpy unicorn driver")):
        print(f"  {label:<32} {med[k]:7.3f} [{rng[k][0]:.3f}-{rng[k][1]:.3f}]  {per_iter[k]:5.2f} ns/iter")
    print(f"  driver vs bare (same page tables): {med['driver'] / med['bare_paging'] - 1:+.1%}; "
          f"vs bare without paging: {med['driver'] / med['bare'] - 1:+.1%}")
    print(f"exits on the unicorn driver ({a.exits} per round, run + assist + callback):")
    print(f"  port I/O (OUT)  {med['pio_ns'] / 1000:7.1f} us/exit [{rng['pio_ns'][0] / 1000:.1f}-{rng['pio_ns'][1] / 1000:.1f}]")
    print(f"  MMIO (store)    {med['mmio_ns'] / 1000:7.1f} us/exit [{rng['mmio_ns'][0] / 1000:.1f}-{rng['mmio_ns'][1] / 1000:.1f}]")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(median=med, range=rng, per_iter_ns=per_iter, iterations=a.iterations), f, indent=2)
    return med


if __name__ == "__main__":
    main()
