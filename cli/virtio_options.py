"""The virtio devices `nvmmpy run` was asked for (--virtio-blk/-console/-rng, --sound), checked up
front so that a bad path or spec is a one-line usage error before the VM exists: disks and sound
backends are made here (their own constructors check their files), attached later."""
import os
import sys

import click

from nvmmpy.devices.host_paths import explain

SCRATCH_DISK_SIZE = 1 << 20
# The virtio-sound topology a bundled guest that needs one gets without --sound: playback into a
# WAV in the current directory, capture from a 440 Hz tone.
DEFAULT_SOUND = "out=wav:nvmmpy-sound.wav,in=tone:440"


def parse_sound(spec: str):
    """A devices.virtio.sound Topology from --sound SPEC, or a one-line click.BadParameter."""
    from nvmmpy.devices.virtio.sound.topology import Topology
    try:
        return Topology.parse(spec)
    except ValueError as e:
        why = (str(e).strip().splitlines() or ["invalid topology"])[0]
        prefix = f"virtio-snd topology {spec!r}: "        # the user has just typed the spec
        why = why[len(prefix):] if why.startswith(prefix) else why
        raise click.BadParameter(why, param_hint="--sound") from None


class VirtioOptions:
    def __init__(self):
        self.disks = []            # VirtioBlk devices, image open
        self.console = None        # output callable, or None for no virtio console
        self.console_input = None  # binary stream
        self.rng = False
        self.sound = None          # a virtio-sound Topology, or None for no sound device
        self.as_json = False
        self._files = []
        self._scratch = None

    @classmethod
    def from_cli(cls, blk_images, console, console_input, rng, as_json, sound=None):
        o = cls()
        o.as_json = as_json
        if sound is not None:
            o.sound = parse_sound(sound)
        if console_input is not None and console is None:
            raise click.UsageError("--virtio-console-input needs --virtio-console")
        try:
            for spec in blk_images:
                path, _, flag = spec.partition(",")
                if flag not in ("", "ro"):
                    raise click.BadParameter(f"{spec!r}: use IMAGE or IMAGE,ro", param_hint="--virtio-blk")
                o._add_disk(path, flag == "ro", "--virtio-blk")
            if console is not None:
                o.console = o._output(console, as_json)
            if console_input is not None:
                try:
                    o.console_input = sys.stdin.buffer if console_input == "-" else o._open(console_input, "rb")
                except OSError as e:
                    raise click.BadParameter(explain(console_input, e, writing=False),
                                             param_hint="--virtio-console-input") from None
        except BaseException:
            o.close()
            raise
        o.rng = rng
        return o

    def _add_disk(self, path, read_only, option) -> None:
        from nvmmpy.devices.virtio.blk import VirtioBlk
        try:
            self.disks.append(VirtioBlk(path, read_only=read_only))   # opens and checks the image now
        except ValueError as e:
            raise click.BadParameter(str(e).removeprefix("virtio-blk: "), param_hint=option) from None

    def _open(self, path, mode):
        f = open(path, mode)
        self._files.append(f)
        return f

    def _output(self, where, as_json):
        if where == "stdio":
            stream = sys.stderr.buffer if as_json else sys.stdout.buffer

            def write(b):
                stream.write(b)
                stream.flush()
            return write
        try:
            f = self._open(where, "wb")
        except OSError as e:
            raise click.BadParameter(explain(where, e, writing=True), param_hint="--virtio-console") from None

        def write_through(b):       # a console log is read while the guest runs (tail -f, a test)
            f.write(b)
            f.flush()
        return write_through

    def add_defaults(self, needed, console) -> None:
        """What a bundled guest needs and the user did not give: stdio console, rng, a scratch disk,
        a sound device (DEFAULT_SOUND)."""
        if "console" in needed and self.console is None:
            self.console = self._output("stdio", self.as_json)
        if "rng" in needed:
            self.rng = True
        if "blk" in needed and not self.disks:
            import tempfile   # only for a scratch disk: not a cost of every `nvmmpy run`
            fd, path = tempfile.mkstemp(prefix="nvmmpy-scratch-", suffix=".img")
            os.ftruncate(fd, SCRATCH_DISK_SIZE)
            os.close(fd)
            self._scratch = path
            self._add_disk(path, False, "the scratch disk")
            console.print(f"[dim]virtio-blk: no --virtio-blk given; using a scratch {SCRATCH_DISK_SIZE >> 20} MiB "
                          "image (deleted after the run)[/]", highlight=False)
        if "sound" in needed and self.sound is None:
            try:
                self.sound = parse_sound(DEFAULT_SOUND)
            except click.BadParameter as e:     # the current directory is not writable, say
                raise click.UsageError(f"this guest needs a sound device and the default ({DEFAULT_SOUND}) "
                                       f"cannot be used: {e.message}; give --sound") from None
            from rich.markup import escape
            wav = escape(os.path.join(os.getcwd(), "nvmmpy-sound.wav"))
            console.print(f"[dim]virtio-sound: no --sound given; using {DEFAULT_SOUND} (playback goes to {wav})[/]",
                          highlight=False, soft_wrap=True)

    def attach(self, vm) -> None:
        from nvmmpy.vmm.vm import VIRTIO_IRQS
        n = (self.console is not None) + bool(self.rng) + len(self.disks) + (self.sound is not None)
        if n > len(VIRTIO_IRQS):
            raise click.UsageError(f"{n} virtio devices asked for, but at most {len(VIRTIO_IRQS)} fit "
                                   "(one interrupt line each)")
        if self.console is not None:
            from nvmmpy.devices.virtio.console import VirtioConsole
            con = VirtioConsole(output=self.console)
            vm.add_virtio_device(con)
            if self.console_input is not None:
                vm.attach_serial_input(self.console_input, sink=con.feed)
        if self.rng:
            from nvmmpy.devices.virtio.rng import VirtioRng
            vm.add_virtio_device(VirtioRng())
        for disk in self.disks:
            vm.add_virtio_device(disk)
        if self.sound is not None:
            from nvmmpy.devices.virtio.sound.device import VirtioSound
            vm.add_virtio_device(VirtioSound(self.sound))    # vm.close() closes it: WAVs finalised

    def close(self) -> None:
        for f in self._files:
            f.close()
        for disk in self.disks:     # also those never attached (vm.close() closes the others)
            disk.close()
        self._files = []
        if self._scratch:
            os.unlink(self._scratch)
            self._scratch = None
