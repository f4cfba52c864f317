"""One front-end connection: each request checked (payload size, fds, protocol order, ranges) and
applied to the transport. Anything wrong raises ProtocolError; the server logs it and closes.

What the back-end offers: virtio features VERSION_1, INDIRECT_DESC, EVENT_IDX, RING_PACKED, the
device's own bits, and PROTOCOL_FEATURES (bit 30); protocol features MQ, REPLY_ACK, CONFIG,
RESET_DEVICE, CONFIGURE_MEM_SLOTS and STATUS (CONFIG only where the device has a config space).
No logging (LOG_ALL), no IOMMU, no back-end channel, no inflight tracking, no in-band
notifications: a front-end that sends their requests is refused.
"""
import os
import socket

from .. import constants as virtio
from . import messages
from .memory import MAX_REGIONS, FrontendMemory, map_region
from .messages import ProtocolError
from .rings import check_base
from .transport import close_fd

TRANSPORT_FEATURES = ((1 << virtio.F_VERSION_1) | (1 << virtio.F_INDIRECT_DESC) | (1 << virtio.F_EVENT_IDX)
                      | (1 << virtio.F_RING_PACKED) | (1 << messages.F_PROTOCOL_FEATURES))
PROTOCOL_FEATURES = ((1 << messages.PF_MQ) | (1 << messages.PF_REPLY_ACK) | (1 << messages.PF_CONFIG) | (1 << messages.PF_RESET_DEVICE)
                     | (1 << messages.PF_CONFIGURE_MEM_SLOTS) | (1 << messages.PF_STATUS))
# Requests that need a negotiated protocol feature.
GATED = {messages.GET_QUEUE_NUM: messages.PF_MQ, messages.GET_CONFIG: messages.PF_CONFIG, messages.SET_CONFIG: messages.PF_CONFIG,
         messages.RESET_DEVICE: messages.PF_RESET_DEVICE, messages.GET_MAX_MEM_SLOTS: messages.PF_CONFIGURE_MEM_SLOTS,
         messages.ADD_MEM_REG: messages.PF_CONFIGURE_MEM_SLOTS, messages.REM_MEM_REG: messages.PF_CONFIGURE_MEM_SLOTS,
         messages.SET_STATUS: messages.PF_STATUS, messages.GET_STATUS: messages.PF_STATUS}


class Session:
    def __init__(self, sock: socket.socket, transport, log=None):
        self.sock = sock
        self.t = transport
        self.device = transport.device
        self.log = log or (lambda msg: None)
        self.offered = (self.device.device_features | TRANSPORT_FEATURES) & ~(1 << virtio.F_ADMIN_VQ)
        # CONFIG only for a device with a config space (QEMU warns about it for one without).
        self.protocol_offered = PROTOCOL_FEATURES & ~(0 if self.device.config_space() else 1 << messages.PF_CONFIG)
        self.protocol = 0            # negotiated protocol features
        self.protocol_set = False
        self.owner = False
        self.status = 0
        self.messages = 0
        self._config_short_logged = False
        self.handlers = {
            messages.GET_FEATURES: self.get_features, messages.SET_FEATURES: self.set_features,
            messages.GET_PROTOCOL_FEATURES: self.get_protocol_features,
            messages.SET_PROTOCOL_FEATURES: self.set_protocol_features,
            messages.SET_OWNER: self.set_owner, messages.RESET_OWNER: self.reset_owner,
            messages.SET_MEM_TABLE: self.set_mem_table, messages.GET_MAX_MEM_SLOTS: self.get_max_mem_slots,
            messages.ADD_MEM_REG: self.add_mem_reg, messages.REM_MEM_REG: self.rem_mem_reg,
            messages.SET_VRING_NUM: self.set_vring_num, messages.SET_VRING_ADDR: self.set_vring_addr,
            messages.SET_VRING_BASE: self.set_vring_base, messages.GET_VRING_BASE: self.get_vring_base,
            messages.SET_VRING_KICK: self.set_vring_fd, messages.SET_VRING_CALL: self.set_vring_fd,
            messages.SET_VRING_ERR: self.set_vring_fd, messages.SET_VRING_ENABLE: self.set_vring_enable,
            messages.GET_QUEUE_NUM: self.get_queue_num, messages.GET_CONFIG: self.get_config, messages.SET_CONFIG: self.set_config,
            messages.RESET_DEVICE: self.reset_device, messages.SET_STATUS: self.set_status, messages.GET_STATUS: self.get_status,
        }

    # --- dispatch -----------------------------------------------------------------------------
    def handle(self, msg: messages.Message) -> None:
        """Apply one request and send its reply (explicit, or the REPLY_ACK one)."""
        self.messages += 1
        try:
            fn = self.handlers.get(msg.request)
            if fn is None:
                raise ProtocolError(f"{msg.name} is not supported by this back-end")
            gate = GATED.get(msg.request)
            if gate is not None and not self.protocol >> gate & 1:
                raise ProtocolError(f"{msg.name} without protocol feature {gate} negotiated")
            if msg.request not in (messages.SET_MEM_TABLE, messages.ADD_MEM_REG, messages.REM_MEM_REG,
                                   messages.SET_VRING_KICK, messages.SET_VRING_CALL, messages.SET_VRING_ERR):
                msg.expect_fds(0)
            answer = fn(msg)
        finally:
            msg.close()
        if answer is not None:
            self.send(messages.reply(msg, answer))
        elif msg.need_reply and self.protocol >> messages.PF_REPLY_ACK & 1:
            self.send(messages.reply(msg, messages.U64.pack(0)))

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(messages.MESSAGE_TIMEOUT)
            self.sock.sendall(data)
        except OSError as e:
            raise ProtocolError(f"cannot send a reply: {e}") from None
        finally:
            self.sock.settimeout(None)

    def _ring(self, index: int, msg):
        if not 0 <= index < len(self.t.rings):
            raise ProtocolError(f"{msg.name} for ring {index}: the device has {len(self.t.rings)}")
        return self.t.rings[index]

    # --- features -----------------------------------------------------------------------------
    def get_features(self, msg):
        msg.expect_size(0)
        return messages.U64.pack(self.offered)

    def set_features(self, msg):
        f = msg.u64()
        if f & ~self.offered:
            raise ProtocolError(f"SET_FEATURES {f:#x} has bits that were not offered ({f & ~self.offered:#x})")
        if not f >> virtio.F_VERSION_1 & 1:
            raise ProtocolError("SET_FEATURES without VIRTIO_F_VERSION_1: legacy devices are not supported")
        if any(r.started for r in self.t.rings) and (f ^ self.t.features) & ~(1 << messages.F_PROTOCOL_FEATURES):
            raise ProtocolError("SET_FEATURES changes the ring layout while rings are running")
        device_bits = f & ~(1 << messages.F_PROTOCOL_FEATURES)
        if not self.device.validate_features(device_bits):
            raise ProtocolError(f"{self.device.name} refuses features {device_bits:#x}")
        self.t.set_features(f, device_bits)

    def get_protocol_features(self, msg):
        msg.expect_size(0)
        return messages.U64.pack(self.protocol_offered)

    def set_protocol_features(self, msg):
        f = msg.u64()
        if f & ~self.protocol_offered:
            raise ProtocolError(f"SET_PROTOCOL_FEATURES {f:#x} has bits that were not offered "
                                f"({f & ~self.protocol_offered:#x})")
        self.protocol = f
        self.protocol_set = True

    def set_owner(self, msg):
        msg.expect_size(0)
        if self.owner:
            raise ProtocolError("SET_OWNER twice on one connection")
        self.owner = True

    def reset_owner(self, msg):
        msg.expect_size(0)   # deprecated; the spec asks back-ends to ignore it or disable the rings
        for ring in self.t.rings:
            self.t.enable_ring(ring.index, False)

    def get_queue_num(self, msg):
        msg.expect_size(0)
        return messages.U64.pack(len(self.t.rings))

    # --- memory ---------------------------------------------------------------------------------
    def set_mem_table(self, msg):
        regions = msg.mem_table()
        msg.expect_fds(len(regions))
        mem = FrontendMemory()
        for (gpa, size, uva, offset), fd in zip(regions, msg.fds):
            mem.add(map_region(fd, gpa, size, uva, offset))
        self.t.set_memory(mem)

    def get_max_mem_slots(self, msg):
        msg.expect_size(0)
        return messages.U64.pack(MAX_REGIONS)

    def _copy_memory(self) -> FrontendMemory:
        mem = FrontendMemory()
        for r in (self.t.memory.regions if self.t.memory is not None else ()):
            mem.add(r)
        return mem

    def add_mem_reg(self, msg):
        gpa, size, uva, offset = msg.mem_region()
        msg.expect_fds(1)
        mem = self._copy_memory()
        mem.add(map_region(msg.fds[0], gpa, size, uva, offset))
        self.t.set_memory(mem)

    def rem_mem_reg(self, msg):
        gpa, size, uva, _ = msg.mem_region()
        if len(msg.fds) > 1:   # the spec tolerates one (closed unused) for old front-ends
            msg.expect_fds(0)
        mem = self._copy_memory()
        mem.remove(gpa, size, uva)
        self.t.set_memory(mem)

    # --- rings ------------------------------------------------------------------------------------
    def set_vring_num(self, msg):
        index, num = msg.vring_state()
        ring = self._ring(index, msg)
        if ring.started:
            raise ProtocolError(f"SET_VRING_NUM on running ring {index}")
        if not 0 < num <= ring.size_max:
            raise ProtocolError(f"ring {index}: size {num} is not in 1..{ring.size_max}")
        ring.num = num

    def set_vring_addr(self, msg):
        index, flags, desc, used, avail, _log = msg.vring_addr()
        ring = self._ring(index, msg)
        if flags & ~messages.VRING_F_LOG:
            raise ProtocolError(f"ring {index}: unknown SET_VRING_ADDR flags {flags:#x}")
        if flags & messages.VRING_F_LOG:
            raise ProtocolError(f"ring {index}: dirty logging was requested but not offered")
        if ring.started and (desc, used, avail) != ring.addrs:
            raise ProtocolError(f"SET_VRING_ADDR moves running ring {index}")
        ring.addrs = (desc, used, avail)

    def set_vring_base(self, msg):
        index, num = msg.vring_state()
        ring = self._ring(index, msg)
        if ring.started:
            raise ProtocolError(f"SET_VRING_BASE on running ring {index}")
        check_base(ring, num, self.t.features)
        ring.base = num

    def get_vring_base(self, msg):
        index, _ = msg.vring_state()
        self._ring(index, msg)
        base = self.t.stop_ring(index)
        ring = self.t.rings[index]
        self.t.retire_kick(ring)     # stopped: a restart sends a new kick fd
        return messages.VRING_STATE.pack(index, base)

    def set_vring_fd(self, msg):
        v = msg.u64()
        if v & ~(messages.VRING_IDX_MASK | messages.VRING_NOFD):
            raise ProtocolError(f"{msg.name} payload {v:#x} has bits beyond the ring index and no-fd flag")
        index = v & messages.VRING_IDX_MASK
        ring = self._ring(index, msg)
        if v & messages.VRING_NOFD:
            msg.expect_fds(0)
            if msg.request == messages.SET_VRING_KICK:
                raise ProtocolError(f"ring {index}: polling instead of a kick fd is not supported")
            fd = None
        else:
            msg.expect_fds(1)
            fd = msg.take_fd()
            try:   # a call/err fd that could block (a full pipe) must not stop the I/O thread
                os.set_blocking(fd, False)
            except OSError as e:
                close_fd(fd)
                raise ProtocolError(f"{msg.name} fd of ring {index}: {e.strerror}") from None
        attr = {messages.SET_VRING_KICK: "kick", messages.SET_VRING_CALL: "call", messages.SET_VRING_ERR: "err"}[msg.request]
        if attr == "kick":
            self.t.retire_kick(ring)
        else:
            close_fd(getattr(ring, attr))
        setattr(ring, attr, fd)
        if msg.request == messages.SET_VRING_KICK:
            if not self.protocol_set and not self.t.features >> messages.F_PROTOCOL_FEATURES & 1:
                self.t.enable_ring(index, True)   # without protocol features a ring starts enabled
            if ring.num and ring.addrs is not None and self.t.memory is not None:
                self.t.start_ring(index)          # set up: start now (QEMU's order), else at the first kick

    def set_vring_enable(self, msg):
        index, num = msg.vring_state()
        self._ring(index, msg)
        if num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE of ring {index} with {num}, not 0 or 1")
        self.t.enable_ring(index, bool(num))

    # --- config, status, reset --------------------------------------------------------------------
    def get_config(self, msg):
        offset, size, flags, _ = msg.config()
        cfg = self.device.config_space()
        if offset == 0 and size < len(cfg) and not self._config_short_logged:
            self._config_short_logged = True
            self.log(f"the front-end reads only {size} of the {len(cfg)} config bytes of {self.device.name}: "
                     "the guest cannot see the rest")
        if offset + size > len(cfg):
            # The spec's error answer: an empty config payload (QEMU asks for the size it was told).
            self.log(f"GET_CONFIG of {size} bytes at {offset}: the config space has {len(cfg)}")
            return messages.CONFIG_HEAD.pack(offset, 0, flags)
        return messages.CONFIG_HEAD.pack(offset, size, flags) + bytes(cfg[offset:offset + size])

    def set_config(self, msg):
        offset, size, flags, data = msg.config()
        cfg_len = len(self.device.config_space())
        if offset + size > cfg_len or size == 0:
            raise ProtocolError(f"SET_CONFIG of {size} bytes at {offset}: the config space has {cfg_len}")
        with self.device.lock:
            self.device.write_config(offset, bytes(data))

    def reset_device(self, msg):
        msg.expect_size(0)
        self.t.reset(full=False)
        self.status = 0

    def set_status(self, msg):
        s = msg.u64()
        if s > 0xFF:
            raise ProtocolError(f"SET_STATUS {s:#x} is wider than the 8-bit device status")
        if s == 0:
            self.t.reset(full=False)
            self.status = 0
            return
        if s & virtio.S_FEATURES_OK and not self.status & virtio.S_FEATURES_OK:
            if not self.device.validate_features(self.device.driver_features):
                s &= ~virtio.S_FEATURES_OK
        self.status = s
        if s & virtio.S_DRIVER_OK:   # QEMU sends ACKNOWLEDGE|DRIVER|DRIVER_OK once the rings run
            self.t.activate()

    def get_status(self, msg):
        msg.expect_size(0)
        return messages.U64.pack(self.status | (virtio.S_DEVICE_NEEDS_RESET if self.t.broken else 0))
