"""vhost-user back-end: a virtio device of this package served to another VMM (QEMU, crosvm,
Cloud Hypervisor) over a Unix socket (QEMU's docs/interop/vhost-user.rst).

    messages.py   the wire format: header, payload layouts, reading one message with its fds
    memory.py     the front-end's memory regions, mmapped, as a GuestMemory (plus user-address lookup)
    rings.py      one vring's settings, and the queue (SplitQueue/PackedQueue) made from them
    transport.py  what the device sees of us (the part the mmio transport plays in the VMM)
    session.py    one connection: every request, checked, in protocol order
    server.py     the listening socket and the one I/O thread (selectors on socket and kick eventfds)

The device classes are the VMM's, unchanged. Everything the front-end sends is hostile input: a
bad message raises ProtocolError, which closes that connection; the server then waits for the next.
"""
