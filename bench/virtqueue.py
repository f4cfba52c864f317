"""Virtqueue throughput: requests per second through virtio devices, from a guest on each
driver, and from a Python driver on the host (the device's own cost, no vCPU).

  guest : the bundled virtio-rng and virtio-blk guests make `count` requests (blk: count sectors,
          each written and read back, so 2 requests and the guest's pattern work per sector), one at a time
          (add, notify, wait), polling the used ring (irq=0) or sleeping until the interrupt
          (irq=1). Each configuration runs with two counts and the rate is taken from the
          difference, so boot and set-up cancel out: requests/s = (n2 - n1) / (t2 - t1), t the
          guest's run wall time.
  host  : a Python driver over bytearray RAM posts batches of requests and notifies once per
          batch (batch 1 and 32): the device + queue cost alone.

    python bench/virtqueue.py [--drivers kvm,unicorn] [--counts 50,250] [--json out.json]
"""
import argparse
import json
import os
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq  # noqa: E402
from nvmmpy.devices.virtio import constants as virtio  # noqa: E402
from nvmmpy.devices.virtio.mmio import VirtioMmio  # noqa: E402

FEATURES = 1 << virtio.F_VERSION_1 | 1 << virtio.F_INDIRECT_DESC | 1 << virtio.F_EVENT_IDX


def guest_run(runner, guest: str, cmdline: str) -> float:
    """Wall seconds of one run of a bundled guest (VM set-up excluded), on a bench.runners.NvmmpyRunner."""
    r = runner.run_guest(guest, cmdline, timeout=600)
    if r.exit_code != 0:
        raise RuntimeError(f"{guest} {cmdline} on {runner.driver}: exit code {r.exit_code}: {r.output[-300:]}")
    return r.seconds


def guest_rates(drivers, counts, rounds) -> list:
    rows = []
    from nvmmpy.bench.runners import NvmmpyRunner
    with tempfile.TemporaryDirectory() as tmp:
        for driver in drivers:
            runner = NvmmpyRunner(driver, tmp)      # its virtio-blk disk: an 8 MiB scratch image in tmp
            for guest in ("virtio-rng", "virtio-blk"):
                for irq in (0, 1):
                    best = None
                    for _ in range(rounds):
                        t = [guest_run(runner, guest, f"count={n} irq={irq}") for n in counts]
                        per = 2 if guest == "virtio-blk" else 1   # blk: count= sectors, each written then read
                        rate = per * (counts[1] - counts[0]) / max(t[1] - t[0], 1e-9)
                        best = rate if best is None else max(best, rate)
                    rows.append(dict(where="guest", driver=driver, device=guest, mode="irq" if irq else "poll",
                                     requests_per_s=best))
                    print(f"  guest {driver:8} {guest:11} {'irq' if irq else 'poll':5} {best:10.0f} req/s",
                          flush=True)
    return rows


def host_rate(make_device, request, batch: int, seconds: float = 1.0) -> float:
    from nvmmpy.devices.testing.driver import MmioDriver
    mem = BytearrayMemory(4 << 20)
    drv = MmioDriver(VirtioMmio(make_device(), mem, RecordingIrq()), mem)
    drv.init(None, queue_size=64)   # all offered but RING_PACKED (blk: FLUSH, so writes are write-back)
    q = drv.queues[0]
    heads = [q.add(request, indirect=len(request) > 1) for _ in range(batch)]
    drv.notify(0)
    q.used()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            for h in heads:
                q.publish(h)
            drv.notify(0)
            n += batch
        q.last_used = q.mem.read(q.used_addr + 2, 2)[0] | q.mem.read(q.used_addr + 3, 1)[0] << 8
    return n / (time.perf_counter() - t0)


def host_rates() -> list:
    from nvmmpy.devices.virtio.blk import VirtioBlk
    from nvmmpy.devices.virtio.rng import VirtioRng
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(8 << 20)
        cases = [("virtio-rng 64 B", VirtioRng, [(64, True)]),
                 ("virtio-blk 4 KiB read", lambda: VirtioBlk(disk),
                  [((0).to_bytes(4, "little") + bytes(4) + (8).to_bytes(8, "little"), False), (4096, True), (1, True)]),
                 ("virtio-blk 4 KiB write", lambda: VirtioBlk(disk),
                  [((1).to_bytes(4, "little") + bytes(4) + (8).to_bytes(8, "little"), False), (bytes(4096), False),
                   (1, True)])]
        for name, make, req in cases:
            for batch in (1, 32):
                rate = host_rate(make, req, batch)
                rows.append(dict(where="host", device=name, batch=batch, requests_per_s=rate))
                print(f"  host  {name:24} batch {batch:2} {rate:10.0f} req/s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drivers", default="kvm,unicorn")
    ap.add_argument("--counts", default="50,250", help="two request counts per guest run (the rate is the slope)")
    ap.add_argument("--rounds", type=int, default=2, help="best of ROUNDS per configuration")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.counts.split(",")]
    print("virtqueue throughput")
    rows = host_rates()
    rows += guest_rates([d for d in a.drivers.split(",") if d], counts, a.rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
