"""`nvmmpy vhost-user sound|blk|rng --socket PATH ...`: serve one of our virtio devices to QEMU (or
any vhost-user front-end) over a Unix socket, until Ctrl-C or SIGTERM.

One device per socket; one front-end at a time; a front-end that goes away (even kill -9) leaves
the back-end waiting for the next one with a freshly reset device. Status lines go to stderr;
--json prints each event as one JSON object per line on stdout instead.
"""
import json
import os
import signal
import stat
import sys
import time

import click

from .console import err_console
from .virtio_options import parse_sound


def _stats(device) -> dict:
    """The device's own counters, for the disconnect line (what this connection did)."""
    name = device.name
    if name == "virtio-rng":
        return {"requests": device.requests, "bytes": device.bytes_served}
    if name == "virtio-blk":
        return {k: getattr(device, k) for k in ("reads", "writes", "flushes", "bytes_read", "bytes_written",
                                                "bad_requests", "io_errors")}
    if name == "virtio-sound":
        return {"streams": [{"id": s.id, "completed": getattr(s, "completed", 0),
                             "bytes": getattr(s, "bytes_played", 0), "xruns": getattr(s, "xruns", 0)}
                            for s in device.streams],
                "bad_requests": device.bad_requests}
    return {}


def _serve(device, socket_path: str, as_json: bool, what: str) -> None:
    from nvmmpy.devices.virtio.vhost_user.server import Server, ServerError

    def on_event(ev):
        if ev["event"] == "disconnected":
            ev["stats"] = _stats(device)
        if as_json:
            ev["time"] = round(time.time(), 3)
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
            return
        kind = ev["event"]
        if kind == "listening":
            line = f"vhost-user {what}: listening on {ev['socket']} (Ctrl-C to stop)"
        elif kind == "connected":
            line = f"vhost-user {what}: front-end connected (connection {ev['connection']})"
        elif kind == "disconnected":
            stats = ", ".join(f"{k} {v}" for k, v in ev["stats"].items() if not isinstance(v, list))
            line = f"vhost-user {what}: front-end gone ({ev['reason']}; {ev['messages']} messages, {ev['ring']} rings" \
                   + (f"; {stats})" if stats else ")")
        elif kind == "error":
            line = f"vhost-user {what}: protocol error, closing the connection: {ev['message']}"
        elif kind == "refused":
            line = f"vhost-user {what}: refused a second front-end ({ev['reason']})"
        else:
            line = f"vhost-user {what}: {ev.get('message', kind)}"
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)

    # SIGTERM asks the loop to stop (no exception thrown into whatever the I/O thread is doing).
    pending = {"server": None, "term": False}

    def on_term(signum, frame):
        pending["term"] = True
        if pending["server"] is not None:
            pending["server"].stop()

    old = signal.signal(signal.SIGTERM, on_term)   # before the socket exists: a stop is never lost
    try:
        server = Server(device, socket_path, on_event=on_event)
    except ServerError as e:
        signal.signal(signal.SIGTERM, old)
        _close(device)
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:   # stopped while binding: the socket is ours if it is there
        signal.signal(signal.SIGTERM, old)
        if os.path.exists(socket_path) and stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            os.unlink(socket_path)
        _close(device)
        sys.exit(130)
    pending["server"] = server
    if pending["term"]:
        server.stop()
    code = 0
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        code = 130
    finally:
        signal.signal(signal.SIGTERM, old)
        server.close()
        _close(device)
        if not as_json:
            err_console.print(f"vhost-user {what}: stopped, {socket_path} removed", highlight=False, markup=False)
    sys.exit(code)


def _close(device) -> None:
    close = getattr(device, "close", None)
    if close is not None:
        close()


_socket = click.option("--socket", "socket_path", required=True, metavar="PATH",
                       help="Unix socket to create and listen on (must not exist; removed on exit).")
_json = click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines on stdout.")


@click.group("vhost-user")
def vhost_user():
    """Serve a virtio device to QEMU (or another VMM) as a vhost-user back-end."""


@vhost_user.command()
@_socket
@click.option("--sound", "spec", default="out=wav:nvmmpy-sound.wav,in=tone:440", show_default=True,
              metavar="SPEC", help="virtio-sound topology and backends, as for `nvmmpy run --sound`.")
@_json
def sound(socket_path, spec, as_json):
    """virtio-sound (QEMU: -device vhost-user-snd-pci)."""
    from nvmmpy.devices.virtio.sound.device import VirtioSound
    topo = parse_sound(spec)
    try:
        dev = VirtioSound(topo)
    except ValueError as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="--sound") from None
    _serve(dev, socket_path, as_json, "sound")


@vhost_user.command()
@_socket
@click.argument("image", metavar="IMAGE[,ro]")
@click.option("--serial", default=None, help="GET_ID answer (default: the image's file name).")
@_json
def blk(socket_path, image, serial, as_json):
    """virtio-blk over a raw image (QEMU: -device vhost-user-blk-pci)."""
    from nvmmpy.devices.virtio.blk import VirtioBlk
    path, _, flag = image.rpartition(",") if image.endswith(",ro") else (image, "", "")
    try:
        dev = VirtioBlk(path, read_only=flag == "ro", serial=serial)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="IMAGE") from None
    _serve(dev, socket_path, as_json, "blk")


@vhost_user.command()
@_socket
@_json
def rng(socket_path, as_json):
    """virtio-rng from os.urandom (QEMU: -device vhost-user-rng-pci)."""
    from nvmmpy.devices.virtio.rng import VirtioRng
    _serve(VirtioRng(), socket_path, as_json, "rng")
