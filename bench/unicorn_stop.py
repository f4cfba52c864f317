"""How a unicorn vCPU can be stopped from another thread, measured: correctness and cost.

    python -m nvmmpy.bench.unicorn_stop [--iterations N] [--every-ms MS]

A 64-bit loop of N iterations of `add rax, rcx; mov [m], rax; inc qword [m+8]` runs on a bare
unicorn engine while another thread asks it to stop every MS milliseconds; each stop returns from
emu_start and the loop is resumed where unicorn says it stopped. After N iterations the counter
at m+8 must be exactly N. Three ways to stop:

    emu_stop     uc_emu_stop from the other thread (what a VMM naturally does)
    block-hook   nvmmpy's C block hook (drivers/unicorn/tbstop.py): the other thread sets a word,
                 the vCPU thread stops itself at the next translation-block start
    count        emu_start(count=100000) slices; the other thread's request is seen between them

and a run with no stops at all for the cost. The emu_stop row is the evidence for tbstop.py: the
counter comes out above N (instructions that ran twice).
"""
import argparse
import threading
import time

ITERATIONS = 100_000_000
LOOP = bytes.fromhex(    # preceded by mov rcx, N
    "4831c0"            # xor rax, rax
    "4801c8"            # loop: add rax, rcx
    "48890425" "00100000"   # mov [0x1000], rax
    "48ff0425" "08100000"   # inc qword [0x1008]
    "4883e901"          # sub rcx, 1
    "75ea"              # jnz loop
    "f4")               # hlt
BASE, SLICE = 0x2000, 100_000


def _engine(n: int):
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_64
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(BASE, b"\x48\xc7\xc1" + n.to_bytes(4, "little") + LOOP)     # mov rcx, N
    return uc


def run(way: str, n: int, every_ms: float) -> dict:
    from unicorn import x86_const as x86
    uc = _engine(n)
    tb = None
    if way == "block-hook":
        from nvmmpy.drivers.unicorn import tbstop
        tb = tbstop.attach(uc)
        if tb is None:
            return {"way": way, "skipped": tbstop.unavailable()}
    done = threading.Event()

    def ask():
        while not done.wait(every_ms / 1000):
            if way == "emu_stop":
                uc.emu_stop()
            elif tb is not None:
                tb.request()
    other = None if way == "none" else threading.Thread(target=ask, daemon=True)
    rip, slices = BASE, 0
    t0 = time.perf_counter()
    if other is not None:
        other.start()
    while True:
        uc.emu_start(rip, 0, 0, SLICE if way == "count" else 0)
        slices += 1
        rip = uc.reg_read(x86.UC_X86_REG_RIP)
        if uc.mem_read(rip - 1, 1) == b"\xf4":
            break
    wall = time.perf_counter() - t0
    done.set()
    if other is not None:
        other.join()
    counter = int.from_bytes(uc.mem_read(0x1008, 8), "little")
    return {"way": way, "seconds": wall, "emu_starts": slices, "counter": counter, "extra": counter - n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=ITERATIONS)
    ap.add_argument("--every-ms", type=float, default=4.0)
    a = ap.parse_args(argv)
    rows = [run(w, a.iterations, a.every_ms) for w in ("none", "emu_stop", "block-hook", "count")]
    base = rows[0]["seconds"]
    print(f"{a.iterations:,} iterations of 'inc qword [m]'; a stop asked every {a.every_ms} ms")
    print(f"{'way':<11} {'seconds':>8} {'vs none':>8} {'emu_starts':>10} {'counter - N':>12}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['way']:<11} skipped: {r['skipped']}")
            continue
        print(f"{r['way']:<11} {r['seconds']:8.2f} {r['seconds'] / base:7.2f}x {r['emu_starts']:10d} {r['extra']:12d}")
    bad = [r["way"] for r in rows if r.get("extra") and r["way"] != "emu_stop"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
