"""virtio devices over the virtio-mmio transport: queues, transport, device base and devices.

Devices here see only GuestMemory and an IrqLine (devices/interfaces.py), plus their host backend.
"""
