"""What a misbehaving driver makes the virtio code raise (never seen outside devices/virtio)."""


class QueueError(Exception):
    """The driver broke the virtqueue rules (a bad descriptor, index, chain or area): the device
    cannot trust this queue any more and sets DEVICE_NEEDS_RESET."""


class BadRequest(Exception):
    """One request is malformed (wrong size, wrong direction, unknown type): the device answers it
    with its error status when it can, and goes on."""
