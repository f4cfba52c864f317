"""`nvmmpy run` and `nvmmpy guests`: boot a guest and account for what happened."""
import os
import re
import sys
from types import SimpleNamespace

import click
from .plain import escape

from nvmmpy.devices.host_paths import explain
from nvmmpy.errors import DriverUnavailable

DEFAULT_GUEST = "hello"
LINUX_CMDLINE = "console=ttyS0 panic=-1 pci=off"   # vmm/linux.py DEFAULT_CMDLINE (not imported: start-up time)
ACCELS = ("auto", "kvm", "nvmm", "unicorn")
TRACES = ("exits", "mmio", "io")
EVENTFD_MODES = ("off", "ioeventfd", "irqchip", "auto")   # vmm/iothread.py MODES (not imported: start-up time)


MAX_RAM = 1 << 52  # x86-64's architectural guest-physical limit; the driver's own is checked when the VM is made


def parse_size(text: str) -> int:
    """--memory: 2M or more, a multiple of 4K. Host memory is reserved as the guest touches it, so
    more than the host has is allowed; the driver's guest-physical space (`nvmmpy identify`, max RAM)
    and the host's address space are checked when the VM is made."""
    m = re.fullmatch(r"\s*(\d+)\s*([KkMmGgTt]?)(i?[Bb])?\s*", text or "")
    if not m:
        raise click.BadParameter(f"{text!r} is not a size: use a number with K, M, G or T (e.g. 64M)",
                                 param_hint="--memory")
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    if n < 2 << 20 or n > MAX_RAM or n % 4096:
        raise click.BadParameter(f"{text} is not a usable RAM size: give 2M or more (up to what the driver's "
                                 "guest-physical space holds, see 'nvmmpy identify'), a multiple of 4K",
                                 param_hint="--memory")
    return n


def _resolve(guest: str | None):
    """(image bytes, display name, catalogue entry or None)."""
    from nvmmpy.vmm.guests import GUESTS, guest_path
    name = guest or DEFAULT_GUEST
    if name in GUESTS and not os.path.exists(name):
        path = guest_path(name)
        with open(path, "rb") as f:
            return f.read(), name, GUESTS[name]
    if not os.path.exists(name):
        raise click.UsageError(f"no bundled guest or file named {name!r} (bundled: {', '.join(GUESTS)}; "
                               "see 'nvmmpy guests')")
    if os.path.isdir(name):
        raise click.UsageError(f"{name!r} is a directory, not a guest image")
    try:
        with open(name, "rb") as f:
            return f.read(), name, None
    except OSError as e:
        raise click.UsageError(explain(name, e, writing=False)) from None


def _load_at(text: str | None):
    if text is None:
        return None
    m = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+):(0x[0-9a-fA-F]+|\d+)", text)
    if not m:
        raise click.BadParameter("use SEG:OFF, e.g. 0x1000:0", param_hint="--load")
    return int(m.group(1), 0), int(m.group(2), 0)


@click.command()
@click.argument("guest", required=False)
@click.option("--accel", type=click.Choice(ACCELS), default="auto", show_default=True,
              help="Driver: auto picks the fastest usable one for the guest's mode.")
@click.option("--memory", "memory", default=None,
              help="Guest RAM (K, M, G or T suffix; default 64M, 256M with --kernel); above 3 GiB it continues at 4 GiB.")
@click.option("--kernel", "kernel", metavar="FILE", default=None,
              help="Boot a Linux kernel instead of GUEST: a bzImage (64-bit boot protocol) or a vmlinux with a PVH note.")
@click.option("--initrd", "initrd", metavar="FILE", default=None, help="The initramfs for --kernel.")
@click.option("--append", "append", metavar="TEXT", default=None,
              help=f"The kernel command line for --kernel (default: {LINUX_CMDLINE!r}).")
@click.option("--format", "fmt", type=click.Choice(("auto", "raw16", "raw32", "raw64", "elf")), default="auto",
              show_default=True, help="Image format (auto recognises ELF).")
@click.option("--load", "load_at", metavar="SEG:OFF", help="Load address of a raw image (raw16: segment:offset).")
@click.option("--cpl3", is_flag=True, help="Start a 64-bit image at CPL3 (with --iopl).")
@click.option("--iopl", type=click.IntRange(0, 3), default=0, show_default=True, help="IOPL with --cpl3.")
@click.option("--cmdline", default=None, help="Guest command line (in the boot info block).")
@click.option("--serial", default="stdio", show_default=True, help="COM1 output: stdio or a file path.")
@click.option("--input", "serial_input", metavar="FILE|-", default=None,
              help="COM1 input: a file, or - for stdin (default: none).")
@click.option("--virtio-blk", "blk_images", metavar="IMAGE[,ro]", multiple=True,
              help="A virtio-blk disk on a raw image file (,ro: read-only). Repeatable.")
@click.option("--virtio-console", "vcon", metavar="stdio|FILE", default=None,
              help="A virtio console whose output goes to stdio or a file.")
@click.option("--virtio-console-input", "vcon_input", metavar="FILE|-", default=None,
              help="Input for the virtio console: a file, or - for stdin.")
@click.option("--virtio-rng", "rng", is_flag=True, help="A virtio-rng device fed from the host's os.urandom.")
@click.option("--sound", "--virtio-sound", "sound", metavar="SPEC", default=None,
              help="A virtio-sound device with this topology, e.g. out=wav:play.wav or "
                   "out=wav:play.wav,in=wav:voice.wav (items: out=, in=, fn, channels=, formats=, rates=, "
                   "jack=, chmap=, ctls=; backends: null, wav:FILE, wav+loop:FILE, tone:HZ, host).")
@click.option("--eventfd", type=click.Choice(EVENTFD_MODES), default="off", show_default=True,
              help="kvm: virtio notifications through ioeventfds served by I/O threads (ioeventfd), and "
                   "interrupts through KVM's in-kernel PIC too (irqchip); auto: the most the driver has "
                   "(docs/architecture.md, bench/eventfd.py).")
@click.option("--soft-exits", type=click.Choice(("hooks", "scan")), default="hooks", show_default=True,
              help="unicorn: port I/O performed in unicorn's instruction hooks (hooks: cheaper exits, and stores "
                   "to pages the guest maps NX stay on unicorn's fast path), or exits before each I/O, MSR and "
                   "HLT instruction found by scanning code pages (scan: NVMM's precise exits; stores slower "
                   "everywhere, but ~25% faster than hooks on guests that map all their data executable).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after SECONDS.")
@click.option("--trace", "traces", type=click.Choice(TRACES), multiple=True,
              help="Print every exit, MMIO access (with the instruction) or port access.")
@click.option("--check-mmio", is_flag=True, help="kvm: cross-check each MMIO exit with the emulator.")
@click.option("--stats", is_flag=True, help="Show exits by reason after the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's account as JSON on stdout.")
def run(guest, accel, memory, kernel, initrd, append, fmt, load_at, cpl3, iopl, cmdline, serial, serial_input,
        blk_images, vcon, vcon_input, rng, sound, eventfd, soft_exits, timeout, traces, check_mmio, stats, as_json):
    """Boot GUEST (a bundled guest name or an image file; default: hello), or a Linux kernel with
    --kernel, and report what happened."""
    from nvmmpy.vmm.loader import LoadError, guest_mode_of, load
    from nvmmpy.vmm.vm import VirtualMachine
    from nvmmpy.vmm.sigint import sigint_stops
    from .plain import err_console
    from .virtio_options import VirtioOptions

    size = parse_size(memory or ("256M" if kernel is not None else "64M"))
    if kernel is not None and soft_exits == "scan":
        raise click.BadParameter("scan mode cannot run a Linux kernel in useful time (its thousands of I/O "
                                 "sites would each be a registered exit): leave it at hooks", param_hint="--soft-exits")
    linux = _linux_files(guest, kernel, initrd, append, cmdline, fmt, load_at, cpl3, size)
    if linux:
        data, name, entry = linux[0], kernel, None
    else:
        data, name, entry = _resolve(guest)
    virtio = VirtioOptions.from_cli(blk_images, vcon, vcon_input, rng, as_json, sound)
    out_file = in_file = None
    try:    # every host file checked before the VM exists; nothing left behind if one is wrong
        if entry is not None:
            fmt = entry.format if fmt == "auto" else fmt
            if cmdline is None:
                cmdline = entry.default_cmdline
        if accel == "nvmm":
            raise DriverUnavailable("the nvmm driver needs NetBSD or DragonFly (/dev/nvmm); "
                                    "on Linux use --accel kvm or unicorn")
        try:
            if linux:
                mode = "cpl0"
            else:
                mode = guest_mode_of(data, fmt, cpl3) if entry is None else ("cpl3" if entry.mode == "cpl3" else "cpl0")
        except LoadError as e:
            raise click.UsageError(f"{name}: {e}") from None
        serial_out, out_file, in_file = _serial_files(serial, serial_input, as_json)
        if entry is not None:   # last: it says what it adds, which a later error would contradict
            virtio.add_defaults(entry.devices, err_console)
        try:
            vm = VirtualMachine(memory=size, driver=accel, guest_mode=mode, check_mmio=check_mmio, eventfd=eventfd,
                                soft_exits=soft_exits)
        except ValueError as e:   # an --eventfd mode this driver does not have
            raise click.BadParameter(str(e), param_hint="--eventfd") from None
    except BaseException:
        _close_all(virtio, out_file)
        raise
    cmdline = cmdline or ""
    restore_sigint = sigint_stops(vm)  # from here Ctrl-C stops the guest and the account is still printed
    try:   # the previous handler comes back however this ends (in-process callers keep theirs)
        try:
            vm.add_legacy_devices(serial_output=serial_out)
            if linux:
                vm.add_platform_devices()
            if in_file is not None:
                vm.attach_serial_input(in_file)
            virtio.attach(vm)
            if traces:
                wanted = set(traces)

                def trace(kind, text):
                    if kind in wanted:
                        err_console.print(f"[dim]{kind:>5}[/] {escape(text)}", highlight=False, soft_wrap=True)
                vm.trace = trace
            try:
                if linux:
                    info = _boot_linux(vm, linux, as_json, err_console)
                else:
                    info = load(vm, data, fmt, cmdline, _load_at(load_at), cpl3=cpl3, iopl=iopl)
            except LoadError as e:
                raise click.UsageError(f"{name}: {e}") from None
            result = vm.run(timeout=timeout)
        finally:
            vm.close()
            _close_all(virtio, out_file)
        if as_json:
            import json
            d = result.as_dict()
            d.update(guest=name, format=info.format, entry=info.entry, memory=size,
                     driver_reason=vm.machine.driver_reason)
            if check_mmio:
                d["mmio_disagreements"] = [repr(x) for x in vm.vcpu.mmio_disagreements]
            click.echo(json.dumps(d, indent=2))
        else:
            _summary(err_console, name, result, vm, stats)
    finally:
        restore_sigint()
    sys.exit(result.exit_code)


def _linux_files(guest, kernel, initrd, append, cmdline, fmt, load_at, cpl3, ram: int):
    """(kernel bytes, initrd bytes, command line) for --kernel, or None; the options that do not go
    together are refused before anything is read."""
    if kernel is None:
        for opt, v in (("--initrd", initrd), ("--append", append)):
            if v is not None:
                raise click.UsageError(f"{opt} goes with --kernel (a Linux kernel to boot)")
        return None
    if guest is not None:
        raise click.UsageError(f"give either a GUEST ({guest!r}) or --kernel, not both")
    for opt, given in (("--cmdline", cmdline is not None), ("--format", fmt != "auto"), ("--load", load_at is not None),
                       ("--cpl3", cpl3)):
        if given:
            raise click.UsageError(f"{opt} does not apply to --kernel" +
                                   (": give the kernel's command line with --append" if opt == "--cmdline" else ""))
    return _read(kernel, "--kernel", ram), (_read(initrd, "--initrd", ram) if initrd is not None else b""), \
        (LINUX_CMDLINE if append is None else append)


def _read(path: str, opt: str, ram: int) -> bytes:
    """The file's bytes; one larger than the guest's RAM is refused before it is read."""
    if os.path.isdir(path):
        raise click.BadParameter(f"{path!r} is a directory, not a file", param_hint=opt)
    try:
        with open(path, "rb") as f:
            n = os.fstat(f.fileno()).st_size
            if n > ram:
                raise click.BadParameter(f"{path} is {n >> 20} MiB, more than the guest's {ram >> 20} MiB of RAM: "
                                         "give a larger --memory", param_hint=opt)
            return f.read()
    except OSError as e:
        raise click.BadParameter(explain(path, e, writing=False), param_hint=opt) from None


def _boot_linux(vm, linux, as_json, console):
    """Load the kernel and say what is booting (on stderr: the guest's console has stdout)."""
    from nvmmpy.vmm import linux as boot
    kernel, initrd, cmdline = linux
    info = boot.boot(vm, kernel, initrd, cmdline)
    if not as_json:
        what = info.version.split(" (")[0] if info.version else "Linux"
        console.print(f"[dim]{escape(what)} ({info.protocol}), command line: {escape(cmdline)}[/]", highlight=False)
    return SimpleNamespace(format=f"linux-{info.protocol}", entry=info.entry)   # what the account reports


def _close_all(virtio, out_file):
    virtio.close()
    if out_file is not None:
        out_file.close()


def _serial_files(serial, serial_input, as_json):
    """(COM1 output callable, output file or None, input stream or None) for --serial/--input;
    a path that cannot be used is a one-line BadParameter naming it."""
    out_file = in_file = None
    if serial == "stdio":
        stream = sys.stderr.buffer if as_json else sys.stdout.buffer

        def serial_out(b):
            stream.write(b)
            stream.flush()
    else:
        try:
            out_file = open(serial, "wb")
        except OSError as e:
            raise click.BadParameter(explain(serial, e, writing=True), param_hint="--serial") from None

        def serial_out(b, f=out_file):   # flushed: a console log is read while the guest runs
            f.write(b)
            f.flush()
    if serial_input == "-":
        in_file = sys.stdin.buffer
    elif serial_input is not None:
        try:
            in_file = open(serial_input, "rb")
        except OSError as e:
            if out_file is not None:
                out_file.close()
            raise click.BadParameter(explain(serial_input, e, writing=False), param_hint="--input") from None
    return serial_out, out_file, in_file


def _summary(console, name, r, vm, stats):
    ok = r.reason in ("exit", "reset", "poweroff") and r.exit_code == 0
    colour = "green" if ok else "red"
    total = sum(r.exits.values())
    console.print(f"[bold {colour}]{escape(name)}: {r.reason}[/] (exit status {r.exit_code}) - {escape(r.detail)}",
                  highlight=False)
    console.print(f"  driver {r.driver} ({r.backend}); wall {r.wall * 1000:.1f} ms: guest {r.guest_time * 1000:.1f} ms, "
                  f"VMM {r.vmm_time * 1000:.1f} ms; {total} exits", highlight=False)
    if r.instruction or r.registers:
        console.print(f"  at rip {r.registers.get('rip', 0):#x}: {escape(r.instruction)}", highlight=False)
        regs = "  ".join(f"{k}={v:#x}" for k, v in r.registers.items())
        console.print(f"  {regs}", highlight=False, soft_wrap=True)
    if stats:
        from rich.table import Table
        console.print(f"  port and MMIO exits: {escape(r.exit_loop)}", highlight=False)
        t = Table(title="exits by reason", title_justify="left")
        t.add_column("reason")
        t.add_column("count", justify="right")
        for k, v in sorted(r.exits.items(), key=lambda kv: -kv[1]):
            t.add_row(k, str(v))
        from .console import err_console as rich_console
        rich_console.print(t)
    if vm.vcpu.__dict__.get("mmio_disagreements"):
        console.print(f"[yellow]  {len(vm.vcpu.mmio_disagreements)} MMIO exits where the emulator disagreed with KVM[/]")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def guests(as_json):
    """List the bundled guests."""
    from nvmmpy.vmm.guests import GUESTS
    from rich.table import Table
    from .console import console
    if as_json:
        import json
        click.echo(json.dumps({n: dict(description=g.description, mode=g.mode, cmdline=g.default_cmdline,
                                       exit=g.expect_exit) for n, g in GUESTS.items()}, indent=2))
        return
    t = Table(title="bundled guests (nvmmpy run NAME)", title_justify="left")
    for col in ("name", "runs at", "what it does", "default command line"):
        t.add_column(col)
    for n, g in GUESTS.items():
        t.add_row(n, g.mode, g.description, g.default_cmdline or "")
    console.print(t)
