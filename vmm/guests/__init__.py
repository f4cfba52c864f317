"""The bundled small guests: built images and what each one should print.

Sources (freestanding C and a little assembly) and their reproducible build live in
`guests/` at the top of the repository (`python3 guests/build.py` rewrites the images here);
the images ship in the package, so running them needs no compiler. Every image is a static
ELF64 linked at 1 MiB for the 64-bit entry of docs/guest-abi.md (RDI = boot info block).

`expect_output` and `expect_exit` hold when the guest runs with its `default_cmdline`.
Exit codes besides a guest's own: 2 = the boot info block was missing or wrong (the guest
says why on the console), 3 = a CPU exception (vector, error code and RIP on the console).
"""
import os
from dataclasses import dataclass, field

# The images here are byte-identical to a rebuild with this toolchain (Debian 12).
TOOLCHAIN = "gcc 12.2.0, ld 2.40"
EXIT_BAD_BOOTINFO = 2
EXIT_EXCEPTION = 3

# compute with its defaults (n=4000000 crc=2097152 mat=200): CRC-32 of the four results
# (283146 primes, largest 3999971, crc32 0xa5cb194b, matmul sum 0x3e24af69).
COMPUTE_DEFAULT_CHECKSUM = 0xDEA4B5FA

_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Guest:
    name: str
    description: str
    path: str
    format: str = "elf"
    expect_output: list = field(default_factory=list)  # substrings of the console output
    expect_exit: int = 0                                 # the debug-exit code
    mode: str = "cpl0"                                   # where the bulk of it runs: "cpl0" or "cpl3"
    default_cmdline: str = ""
    devices: tuple = ()                                  # virtio devices it needs: "console", "rng", "blk",
    #                                                      "sound" (cli/virtio_options.py DEFAULT_SOUND)


def _guest(name, description, **kw) -> Guest:
    return Guest(name, description, os.path.join(_HERE, f"{name}.elf"), **kw)


GUESTS = {g.name: g for g in (
    _guest("hello", "prints a greeting, the RAM size and the command line from the boot info block",
           expect_output=["Hello from nvmmpy guest!\n", "ram=", 'cmdline="console=ttyS0"'],
           default_cmdline="console=ttyS0"),
    _guest("compute", "CPU work at CPL3: sieve up to n, CRC-32 of crc bytes, mat x mat integer matrix "
           "multiply, and a checksum of the results (about 5e7 simple operations by default)",
           expect_output=["compute at CPL3", "primes<=n: count=283146 largest=3999971", "crc32=0xa5cb194b",
                          "matmul sum=0x3e24af69", f"checksum=0x{COMPUTE_DEFAULT_CHECKSUM:08x}"],
           mode="cpl3", default_cmdline="n=4000000 crc=2097152 mat=200"),
    _guest("exits", "exit storms: io byte writes to port 0x80, mmio 32-bit writes and reads of the scratch "
           "MMIO page at 0xC0000000 (each read checked), cpuid CPUIDs; count=N sets io and mmio, cpl=3 runs "
           "them at CPL3", expect_output=["io=10000 mmio=20000"], default_cmdline="count=10000"),
    _guest("interrupts", "remaps the PIC, runs the PIT at 1000 Hz and sleeps in HLT until IRQ 0 has "
           "fired ticks times",
           expect_output=["ticks=50"], default_cmdline="ticks=50"),
    _guest("virtio-console", "virtio console: a greeting and count lines out, then echo=N bytes in and back "
           "(irq=0 polls instead of taking interrupts)",
           expect_output=["console: greeting and 3 lines sent (67 bytes), 0 bytes echoed"],
           default_cmdline="count=3 irq=1", devices=("console",)),
    _guest("virtio-rng", "virtio-rng: count requests of bytes random bytes, each checked (irq=0 polls)",
           expect_output=["rng: 16 requests, 1024 bytes"], default_cmdline="count=16 bytes=64 irq=1",
           devices=("rng",)),
    _guest("virtio-blk", "virtio-blk: capacity, GET_ID, a seeded pattern written to count sectors from sector, "
           "FLUSH, read back and compared (irq=0 polls)",
           expect_output=["blk: 16 sectors from 0 written, flushed, read back and verified (seed 1)"],
           default_cmdline="count=16 sector=0 seed=1 depth=1 irq=1", devices=("blk",)),
    _guest("virtio-sound-play", "virtio-sound: JACK/PCM/CHMAP_INFO, then plays a deterministic sawtooth (frames at "
           "rate/format/channels, period-sized tx buffers) and reports statuses and latency_bytes (irq=0 polls)",
           expect_output=["sound: SET_PARAMS OK, PREPARE OK, START OK, STOP OK, RELEASE OK\n",
                          "sound: 10 buffers OK, 0 IO_ERR, 0 other; latency_bytes first 5760 ",
                          "sound: played 4800 frames (19200 bytes) of S16 x2 at 48000 Hz\n"],
           default_cmdline="rate=48000 format=s16 channels=2 frames=4800 period=480 periods=4 irq=1",
           devices=("sound",)),
    _guest("virtio-sound-record", "virtio-sound: records frames from the first input stream through the rxq, "
           "prints their CRC-32 and first bytes; disk=1 writes them to a virtio-blk disk (irq=0 polls)",
           expect_output=["sound: SET_PARAMS OK, PREPARE OK, START OK, STOP OK, RELEASE OK\n",
                          "sound: 10 buffers OK, 0 IO_ERR, 0 other\n",
                          "sound: recorded 4800 frames (19200 bytes) of S16 x2 at 48000 Hz, crc32 "],
           default_cmdline="rate=48000 format=s16 channels=2 frames=4800 period=480 periods=4 irq=1",
           devices=("sound",)),
)}


def guest_path(name: str) -> str:
    """The image of a bundled guest, e.g. guest_path("hello")."""
    try:
        path = GUESTS[name].path
    except KeyError:
        raise KeyError(f"no bundled guest {name!r}; there are: {', '.join(GUESTS)}") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: build the guests with `python3 guests/build.py`")
    return path
