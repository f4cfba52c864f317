"""What a misbehaving driver makes the virtio code raise (never seen outside devices/virtio)."""


class QueueError(Exception):
    """The driver broke the virtqueue rules (a bad descriptor, index, chain or area): the device
    cannot trust this queue any more and sets DEVICE_NEEDS_RESET."""


class BadRequest(Exception):
    """One request is malformed or asks for what the device does not offer (wrong size, wrong
    direction, unknown type, a feature not negotiated): the device answers it with `status`, its
    error code for the case, counts it (VirtioDevice.bad_request) and goes on."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
