"""CPU time of a process, split into its vCPU threads and the rest, sampled until it exits.

QEMU's own virtio-sound runs in its main-loop thread next to everything else QEMU does outside the
guest's CPU; the vCPU threads (named "CPU n/TCG" or "CPU n/KVM") are the guest's own work. The sum
of the other threads is therefore an upper bound on what a built-in device costs, and the same
figure for a QEMU whose device lives in a vhost-user back-end is what that QEMU still spends.

    sampler = ThreadCPU(pid)        # samples every 0.1 s on a thread
    ...
    sampler.stop()                  # {"vcpu": seconds, "other": seconds}, the whole run
    sampler.between(t0, t1)         # the same over a stretch of time.monotonic() (at least it)
"""
import os
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        out[tid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICK)
    return out


class ThreadCPU:
    def __init__(self, pid: int, period: float = 0.1):
        self.pid, self.period = pid, period
        self.seen: dict = {}           # tid -> (name, seconds), the last sample of each thread
        self.samples: list = []        # (monotonic time, vcpu seconds, other seconds)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.seen.update(_threads(self.pid))
            self.samples.append((time.monotonic(), *self._split()))
            if self._done.wait(self.period):
                return

    def stop(self) -> dict:
        self._done.set()
        self._thread.join(5)
        vcpu, other = self._split()
        return {"vcpu": vcpu, "other": other}

    def _split(self) -> tuple:
        vcpu = sum(s for name, s in self.seen.values() if name.startswith("CPU "))
        return vcpu, sum(s for _, s in self.seen.values()) - vcpu

    def between(self, t0: float, t1: float) -> dict:
        """CPU from the last sample at or before t0 to the first at or after t1 (after stop())."""
        before = [s for s in self.samples if s[0] <= t0] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= t1] or self.samples[-1:]
        a, b = before[-1], after[0]
        return {"vcpu": b[1] - a[1], "other": b[2] - a[2], "seconds": b[0] - a[0]}
