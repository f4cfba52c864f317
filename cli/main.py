"""The `nvmmpy` command line: the group, `identify`, and main() turning errors into one line."""
import importlib
import sys

import click

from nvmmpy.errors import NvmmError
from . import entry

# command -> (module, attribute), imported when the command is used: `nvmmpy run` loads neither
# bench nor vhost-user, nor rich's tables, which cost start-up time every run paid
SUBCOMMANDS = {"run": (".run", "run"), "guests": (".run", "guests"), "bench": (".bench", "bench"),
               "vhost-user": (".vhost_user", "vhost_user")}


class LazyGroup(click.Group):
    """A click group whose SUBCOMMANDS are imported on first use."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx, name):
        if name in SUBCOMMANDS and name not in self.commands:
            module, attr = SUBCOMMANDS[name]
            self.add_command(getattr(importlib.import_module(module, __package__), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nvmmpy", prog_name="nvmmpy")
def cli():
    """nvmmpy: run small guests on /dev/kvm, NVMM or a software CPU, through libnvmm's API."""
    entry.started()   # the subcommand is chosen and imported: its work begins (cli/entry.py)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:g} {unit}"
        n /= 1024
    return str(n)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def identify(as_json):
    """Show every driver's capability, like NetBSD's `nvmmctl identify`."""
    from rich.table import Table

    from nvmmpy.drivers import probe_all, profile
    from nvmmpy.machine import capability
    from .console import console

    report = []
    for name, ok, reason in probe_all():
        entry = {"driver": name, "available": ok, "reason": reason}
        if ok:
            try:
                entry["capability"] = capability(name).as_dict()
                entry["measured"] = profile.measured_here(name)  # {} until `nvmmpy bench` ran here
            except NvmmError as e:
                entry.update(available=False, reason=str(e))
        report.append(entry)
    if as_json:
        import json
        click.echo(json.dumps(report, indent=2))
        return
    for entry in report:
        if not entry["available"]:
            console.print(f"[bold]{entry['driver']}[/]: [yellow]not available[/] - {entry['reason']}", highlight=False)
            continue
        cap = entry["capability"]
        t = Table(title=f"driver {cap['driver']}", show_header=False, title_justify="left", box=None, pad_edge=False)
        t.add_column(style="bold cyan", no_wrap=True)
        t.add_column(overflow="fold")
        t.add_row("backend", f"{cap['backend']}: {cap['backend_detail']}")
        t.add_row("nvmm version", str(cap["version"]))
        t.add_row("state size", f"{cap['state_size']} bytes")
        t.add_row("max machines", str(cap["max_machines"] or "no fixed limit"))
        t.add_row("max vCPUs", str(cap["max_vcpus"]))
        t.add_row("max RAM", _size(cap["max_ram"]))
        conf = []
        if cap["vcpu_conf_support"] & 1:
            conf.append("CPUID masks" + (" and exits" if cap["cpuid_exits"] else " (no CPUID exits)"))
        if cap["vcpu_conf_support"] & 2:
            conf.append("TPR exits")
        t.add_row("vCPU conf", ", ".join(conf) or "none")
        t.add_row("xcr0 mask", hex(cap["xcr0_mask"]))
        t.add_row("expected speed", cap["speed_note"])
        for label, text in (entry["measured"] or {"measured here": profile.UNMEASURED}).items():
            t.add_row(label, text)
        for k, v in cap["extra"].items():
            t.add_row(k.replace("_", " "), str(v))
        console.print(t)
        console.print()


def fail(message: str, code: int = 1):
    from .console import fail as rich_fail   # rich only when there is something to say
    rich_fail(message, code)


def main(argv=None):
    try:
        rv = cli.main(args=argv, prog_name="nvmmpy", standalone_mode=False)
    except click.UsageError as e:   # the help of the command it was given to: 'nvmmpy run --help'
        where = e.ctx.command_path if e.ctx is not None else "nvmmpy"
        fail(f"{e.format_message()} (see '{where} --help')", 2)
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except click.ClickException as e:
        fail(e.format_message(), e.exit_code)
    except NvmmError as e:
        fail(e.strerror or str(e), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
