"""What `nvmmpy bench` measures: bundled guests at two sizes, so that fixed costs cancel.

A slope workload runs its guest at a small and a large size; the figure is
(t_large - t_small) / (size_large - size_small), the time per unit of work with boot, set-up
and process start subtracted. That holds for every runner alike (an in-process VM, a QEMU
process, a native process), which is what makes the ratios fair. A single workload (start-up)
is the whole run, spawn to exit.

The sizes are where a runner starts: one that finishes the difference in less than the target
time (QEMU's TCG handles a port write in a fraction of a microsecond) gets a larger large size,
up to the workload's limit, so that process start-up jitter cannot swamp the difference.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    guest: str | None               # bundled guest (None: native only)
    kind: str                       # "slope" or "single"
    unit: str                       # what one unit of size is, for the table
    display: str                    # "ms", "us" or "x": how the per-unit seconds are shown
    quick: tuple                    # (small, large) sizes for --quick; (size,) for single
    full: tuple
    runners: frozenset              # runner kinds that can run it: "nvmmpy", "qemu", "native"
    exits_per_unit: int = 1
    not_for_qemu: str = ""          # why QEMU cannot run it (shown in the table)
    realtime: float = 0.0           # display "x": seconds one unit lasts in real time
    limit: int = 0                  # the largest size the guest can take (0: never scale up)

    def cmdline(self, size: int) -> str:
        return GUEST_RUNS[self.name][0](size)

    def expect(self, size: int) -> str:
        """A line the guest prints only when the run at `size` did all its work correctly."""
        return GUEST_RUNS[self.name][1](size)

    def sizes(self, quick: bool) -> tuple:
        return self.quick if quick else self.full


# name -> (command line for a size, a line the guest prints only when that size's work was done).
# compute: one unit = a sieve up to 1,000,000 plus CRC-32 of 512 KiB; the 16x16 matmul is a
# fixed cost that cancels. compute-cpl0: the same kernels at CPL0, a hundredth of the unit.
GUEST_RUNS = {
    "startup": (lambda s: "console=ttyS0",
                lambda s: "Hello from nvmmpy guest!"),
    "compute": (lambda s: f"n={s * 1000000} crc={s * 524288} mat=16",
                lambda s: "checksum=0x"),
    "compute-cpl0": (lambda s: f"n={s * 10000} crc={s * 5243} mat=16 cpl=0",
                     lambda s: "checksum=0x"),
    "pio-cpl0": (lambda s: f"io={s} mmio=0",
                 lambda s: f"io={s} mmio=0\n"),
    "mmio-cpl0": (lambda s: f"io=0 mmio={s}",
                  lambda s: f"io=0 mmio={2 * s}\n"),
    "pio-cpl3": (lambda s: f"io={s} mmio=0 cpl=3",
                 lambda s: f"io={s} mmio=0 at CPL3\n"),
    "mmio-cpl3": (lambda s: f"io=0 mmio={s} cpl=3",
                  lambda s: f"io=0 mmio={2 * s} at CPL3\n"),
    "cpuid-cpl3": (lambda s: f"io=0 mmio=0 cpuid={s} cpl=3",
                   lambda s: f"io=0 mmio=0 cpuid={s} at CPL3\n"),
    "virtio-rng": (lambda s: f"count={s} bytes=64 irq=1",
                   lambda s: f"rng: {s} requests, {64 * s} bytes"),
    "virtio-blk": (lambda s: f"count={s} sector=0 seed=1 depth=1 irq=1",
                   lambda s: f"blk: {s} sectors from 0 written, flushed, read back and verified (seed 1)"),
    "sound": (lambda s: f"rate=48000 format=s16 channels=2 frames={s * 480} period=480 periods=4 irq=1",
              lambda s: f"sound: played {s * 480} frames"),
}

ALL = frozenset({"nvmmpy", "qemu", "native"})
GUESTS = frozenset({"nvmmpy", "qemu"})
NVMMPY = frozenset({"nvmmpy"})
NO_VIRTIO_MMIO = "QEMU's pc machine has no virtio-mmio transport"

WORKLOADS = [
    Workload("startup", "start-up: spawn to exit of the hello guest", "hello", "single", "run", "ms",
             (1,), (1,), GUESTS),
    Workload("compute", "compute at CPL3: sieve 1e6 + CRC-32 of 512 KiB", "compute", "slope", "step", "ms",
             (1, 3), (2, 10), ALL, limit=40),
    Workload("compute-cpl0", "compute at CPL0: sieve 1e4 + CRC-32 of 5 KiB", "compute", "slope", "step/100", "ms",
             (1, 2), (2, 6), ALL, limit=400),
    Workload("pio-cpl0", "port I/O exit (OUT 0x80) from CPL0", "exits", "slope", "exit", "us",
             (400, 2000), (2000, 12000), GUESTS, limit=4000000),
    Workload("mmio-cpl0", "MMIO exit (scratch page write or read) from CPL0", "exits", "slope", "exit", "us",
             (200, 1000), (1000, 6000), GUESTS, exits_per_unit=2, limit=2000000),
    Workload("pio-cpl3", "port I/O exit (OUT 0x80) from CPL3", "exits", "slope", "exit", "us",
             (400, 2000), (2000, 12000), GUESTS, limit=4000000),
    Workload("mmio-cpl3", "MMIO exit (scratch page write or read) from CPL3", "exits", "slope", "exit", "us",
             (200, 1000), (1000, 6000), GUESTS, exits_per_unit=2, limit=2000000),
    Workload("cpuid-cpl3", "CPUID from CPL3 (answered by the kernel under KVM)", "exits", "slope", "exit", "us",
             (400, 2000), (2000, 12000), GUESTS, limit=4000000),
    Workload("virtio-rng", "virtio-rng request (64 B, interrupt-driven)", "virtio-rng", "slope", "request", "us",
             (20, 100), (100, 600), NVMMPY, not_for_qemu=NO_VIRTIO_MMIO, limit=100000),
    Workload("virtio-blk", "virtio-blk sector written + read back (irq)", "virtio-blk", "slope", "sector", "us",
             (10, 50), (50, 300), NVMMPY, not_for_qemu=NO_VIRTIO_MMIO, limit=16000),
    Workload("sound", "virtio-sound playback: wall time per second of 48 kHz audio", "virtio-sound-play", "slope",
             "10 ms", "x", (10, 30), (20, 120), NVMMPY, not_for_qemu=NO_VIRTIO_MMIO + " nor virtio-snd in 7.2",
             realtime=0.010),
]

BY_NAME = {w.name: w for w in WORKLOADS}

