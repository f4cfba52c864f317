"""The contracts between virtio devices, queues and transports: both ring layouts keep queue.Virtqueue,
both transports keep device.DeviceContext, and a device sees its transport only through it."""
import inspect

import pytest

from nvmmpy.devices.interfaces import BytearrayMemory, RecordingIrq
from nvmmpy.devices.virtio.chain import DescriptorChain
from nvmmpy.devices.virtio.device import DeviceContext, VirtioDevice
from nvmmpy.devices.virtio.errors import QueueError
from nvmmpy.devices.virtio.mmio import VirtioMmio
from nvmmpy.devices.virtio.packed_queue import PackedQueue
from nvmmpy.devices.virtio.queue import Virtqueue
from nvmmpy.devices.virtio.split_queue import SplitQueue
from nvmmpy.devices.virtio.vhost_user.transport import VhostUserTransport


def _members(proto) -> set:
    return {n for n in vars(proto) if not n.startswith("_")} | set(getattr(proto, "__annotations__", {}))


def _has(obj, name) -> bool:
    return hasattr(obj, name) or name in getattr(type(obj), "__dict__", {})


@pytest.mark.parametrize("cls", [SplitQueue, PackedQueue])
def test_both_rings_keep_the_virtqueue_contract(cls):
    q = cls(BytearrayMemory(1 << 16), 8, 0x1000, 0x2000, 0x3000)
    for name in _members(Virtqueue):
        assert _has(q, name), f"{cls.__name__} lacks {name}"
        if callable(getattr(Virtqueue, name, None)):
            params = [list(inspect.signature(getattr(c, name)).parameters) for c in (cls, Virtqueue)]
            assert params[0] == params[1], name


def _transports(dev):
    yield VirtioMmio(dev, BytearrayMemory(1 << 16), RecordingIrq())
    yield VhostUserTransport(dev)


def test_both_transports_keep_the_device_context_contract():
    for t in _transports(VirtioDevice()):  # one device, attached to each in turn
        for name in _members(DeviceContext):
            assert _has(t, name), f"{type(t).__name__} lacks {name}"


def test_the_device_sees_its_transport_only_through_the_context():
    for t in _transports(VirtioDevice()):
        dev = t.device
        assert dev.context is t and dev.queues is t.queues and dev.driver_features == 0
        assert not dev.active and not hasattr(dev, "transport") and not hasattr(dev, "memory")


def test_contain_puts_either_transport_into_needs_reset():
    mmio = VirtioMmio(VirtioDevice(), BytearrayMemory(1 << 16), RecordingIrq())
    vhost = VhostUserTransport(VirtioDevice())
    for t in (mmio, vhost):
        t.device.contain("poll", QueueError("a bad chain"))
        t.device.contain("poll", RuntimeError("a bug"))
        assert t.internal_errors == 1
    assert mmio.last_error == "virtio poll: internal error in virtio: RuntimeError: a bug"   # the last word
    assert vhost.broken == "virtio poll: a bad chain"


def test_a_detached_chain_is_not_refilled_by_a_later_pop():
    mem = BytearrayMemory(1 << 16)
    c = DescriptorChain()
    c.clear(3)
    c.add(mem.view, 0x100, 8, False, 0)
    c.add(mem.view, 0x200, 16, True, 1)
    d = c.detach()
    c.clear(3)
    assert (d.head, d.readable_len, d.writable_len) == (3, 8, 16)
    assert d.write(b"x" * 4) == 4 and bytes(mem.view(0x200, 4)) == b"xxxx"
