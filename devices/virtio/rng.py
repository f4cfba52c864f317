"""virtio-rng (VIRTIO 1.2 sec. 5.4): one request queue; the device fills each writable buffer
with random bytes from the host (os.urandom by default)."""
import os

from . import constants as virtio
from .device import VirtioDevice

# Bytes one request gets at most: a guest asking for more gets a short (valid) answer.
MAX_BYTES_PER_REQUEST = 64 << 10


class VirtioRng(VirtioDevice):
    device_id = virtio.ID_RNG
    queue_sizes = (256,)
    name = "virtio-rng"

    def __init__(self, source=os.urandom):
        super().__init__()
        self.source = source
        self.bytes_served = 0
        self.requests = 0

    def process_queue(self, index: int) -> None:
        q = self.queues[index]
        pushed = False
        while (chain := q.pop()) is not None:
            n = min(chain.writable_len, MAX_BYTES_PER_REQUEST)
            written = chain.write(self.source(n)) if n else 0
            self.bytes_served += written
            self.requests += 1
            q.push(chain, written)
            pushed = True
        if pushed:
            self.signal_used(index)
