"""`nvmmpy bench`: accelerated vs emulated vs QEMU vs native, on the bundled guests, in one run."""
import importlib
import json
import os

import click

from nvmmpy.devices.host_paths import explain, output_problem

MODES = ("quick", "full")
# What a full run without --json or --chart keeps, in the current directory (said before it starts).
DEFAULT_JSON, DEFAULT_CHART = "nvmmpy-bench.json", "nvmmpy-bench.png"
# Sections of their own, each booting Linux (not slope workloads): part of a full run, of a quick one only
# when named in --workloads. name -> (key in the report, module measuring it, module showing it, title)
SECTIONS = {
    "vhost-user": ("vhost_user", "vhost_user", "vhost_user_report",
                   "Linux under QEMU 10: nvmmpy's vhost-user blk, rng and sound back-ends vs qemu-storage-daemon "
                   "and QEMU's own devices"),
    "linux-boot": ("linux_boot", "linux_boot", "linux_boot_report",
                   "Debian's kernel to /init and to poweroff: nvmmpy on unicorn vs QEMU 10 TCG, same kernel, initrd "
                   "and command line (PVH vmlinux; a full run adds the bzImage)"),
}


def _names(text, known, what):
    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise click.BadParameter(f"unknown {what} {', '.join(bad) or repr(text)}: choose from {', '.join(known)}",
                                 param_hint=f"--{what}s")
    return names


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes and 3 repetitions; the table only.")
@click.option("--reps", type=click.IntRange(1, 100), default=None, help="Repetitions (default 3 quick, 5 full).")
@click.option("--workloads", "workload_list", default=None, metavar="LIST",
              help="Comma-separated workloads (default: all; see --list). The sections `vhost-user` (Linux under "
                   "QEMU 10 against nvmmpy's vhost-user back-ends) and `linux-boot` (Linux booted by nvmmpy and "
                   "by QEMU TCG) are part of a full run by default, of a quick one only when named here.")
@click.option("--runners", "runner_list", default=None, metavar="LIST",
              help="Comma-separated runners: nvmmpy-kvm, nvmmpy-unicorn, qemu-kvm, qemu-tcg, native (default: all).")
@click.option("--json", "json_path", default=None, metavar="FILE",
              help=f"Write the report as JSON ('-' for stdout). A full run given neither --json nor --chart "
                   f"writes {DEFAULT_JSON} and {DEFAULT_CHART} in the current directory.")
@click.option("--chart", "chart_path", default=None, metavar="FILE",
              help="Draw a PNG chart (needs matplotlib).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds one guest run may take.")
@click.option("--save-profile/--no-save-profile", default=True, show_default=True,
              help="Remember which driver was faster per guest mode, for `nvmmpy run --accel auto`.")
@click.option("--list", "list_only", is_flag=True, help="List the workloads and runners, and exit.")
@click.option("--eventfd", "eventfd", is_flag=True,
              help="Instead: virtio requests/s and exits per request on kvm with each eventfd mode "
                   "(off, ioeventfd, irqchip) in one run (bench/eventfd.py).")
def bench(quick, reps, workload_list, runner_list, json_path, chart_path, timeout, save_profile, list_only, eventfd):
    """Benchmark nvmmpy on every driver against QEMU (TCG, KVM) and native code.

    Each workload runs a bundled guest at a small and a large size on every runner; the figure is
    the time per unit of work from the difference, repeated and interleaved across runners.
    """
    from nvmmpy.bench import workloads
    from nvmmpy.bench.runners import RUNNER_NAMES
    from .console import console, err_console

    if list_only:
        for w in workloads.WORKLOADS:
            console.print(f"[bold]{w.name:12}[/] {w.title} (per {w.unit}; {', '.join(sorted(w.runners))})",
                          highlight=False)
        for name, (_, _, _, title) in SECTIONS.items():
            console.print(f"[bold]{name:12}[/] {title} (full run, or named in --workloads)", highlight=False)
        console.print(f"runners: {', '.join(RUNNER_NAMES)}", highlight=False)
        return
    if eventfd:
        _eventfd(quick, reps, json_path, timeout, console, err_console)
        return
    chosen = _names(workload_list, [*workloads.BY_NAME, *SECTIONS], "workload")
    sections = [x for x in SECTIONS if (x in chosen if chosen else not quick)]
    if chosen:
        chosen = [c for c in chosen if c not in SECTIONS]
    runners_wanted = _names(runner_list, list(RUNNER_NAMES), "runner")
    json_path, chart_path, said = _outputs(quick, json_path, chart_path)
    n = reps or (3 if quick else 5)
    err_console.print(f"[dim]nvmmpy bench: {'quick' if quick else 'full'} mode, {n} repetition{'s' * (n != 1)}"
                      f"{said}[/]", highlight=False, soft_wrap=True)

    from nvmmpy.bench.suite import Suite, validate
    suite = Suite(workloads=None if chosen is None else [workloads.BY_NAME[n] for n in chosen], quick=quick, reps=reps,
                  timeout=timeout, runner_names=runners_wanted)
    try:
        report = _run_with_progress(suite.run, err_console)
    finally:
        suite.close()
    for name in sections:
        key, module = SECTIONS[name][:2]
        measure = importlib.import_module(f"nvmmpy.bench.{module}").measure
        report[key] = _run_with_progress(lambda progress: measure(n, quick, timeout, progress), err_console)
    problems = validate(report)
    if problems:  # a bug in the bench itself: say so rather than print figures that lie
        raise click.ClickException("the report is inconsistent: " + "; ".join(problems[:3]))

    from nvmmpy.bench.report import notes, table
    out = err_console if json_path == "-" else console
    if report["workloads"]:
        out.print(table(report))
        out.print(notes(report))
    for key, _, shown, _ in SECTIONS.values():
        if key in report:
            out.print(importlib.import_module(f"nvmmpy.bench.{shown}").section_table(report[key]))
    written = []
    if json_path == "-":
        click.echo(json.dumps(report, indent=2))
    elif json_path:
        try:
            with open(json_path, "w") as f:
                f.write(json.dumps(report, indent=2) + "\n")
        except OSError as e:    # checked before the run; something changed since
            raise click.ClickException(explain(json_path, e, writing=True)) from None
        written.append(json_path)
    if chart_path and not report["workloads"]:
        out.print("[dim]chart skipped: it draws the workloads, and only the Linux sections ran[/]",
                  highlight=False)
    elif chart_path:
        from nvmmpy.bench.chart import draw
        try:
            draw(report, chart_path)
            written.append(chart_path)
        except ImportError as e:
            out.print(f"[yellow]chart skipped: {e}[/]", highlight=False)
    if written:
        out.print(f"[dim]wrote {' and '.join(written)}[/]", highlight=False, soft_wrap=True)
    if save_profile:
        _save_profile(report, out)
    if any(r["status"] == "failed" for w in report["workloads"] for r in w["results"].values()) or \
            any(report.get(key, {}).get("status") == "failed" for key, *_ in SECTIONS.values()):
        raise click.exceptions.Exit(1)


def _eventfd(quick, reps, json_path, timeout, console, err_console):
    from nvmmpy.bench import eventfd as eventfd_bench
    from nvmmpy.bench.runners import BenchError
    n = reps or 3
    counts = (50, 300) if quick else (100, 1000)
    err_console.print(f"[dim]nvmmpy bench --eventfd: counts {counts[0]} and {counts[1]}, {n} repetitions[/]",
                      highlight=False)
    try:
        rows = eventfd_bench.measure(counts, n, timeout=timeout,
                         progress=lambda text: err_console.print(f"[dim]  done: {text}[/]", highlight=False))
    except BenchError as e:
        raise click.ClickException(str(e)) from None
    out = err_console if json_path == "-" else console
    out.print(eventfd_bench.table(rows), highlight=False)
    if json_path == "-":
        click.echo(json.dumps(rows, indent=2))
    elif json_path:
        with open(json_path, "w") as f:
            f.write(json.dumps(rows, indent=2) + "\n")


def _outputs(quick, json_path, chart_path):
    """(json path, chart path, what to say about them): only the files asked for; a full run asked
    for neither keeps DEFAULT_JSON and DEFAULT_CHART. Each path is checked now, not after the run."""
    said = ""
    if not quick and json_path is None and chart_path is None:
        json_path, chart_path = DEFAULT_JSON, DEFAULT_CHART
        said = f"; the report goes to {DEFAULT_JSON} and {DEFAULT_CHART} in {os.getcwd()}"
    if chart_path == "-":
        raise click.BadParameter("the chart is a PNG file: give a file name", param_hint="--chart")
    if chart_path and said == "":
        from nvmmpy.bench.chart import have_matplotlib
        if not have_matplotlib():
            raise click.BadParameter("drawing the chart needs matplotlib: pip install 'nvmmpy[bench]'",
                                     param_hint="--chart")
    for path, option in ((json_path, "--json"), (chart_path, "--chart")):
        why = path and path != "-" and output_problem(path)
        if why:
            raise click.BadParameter(why, param_hint=option)
    return json_path, chart_path, said


def _run_with_progress(run, err_console):
    """run(progress) under a progress bar; progress(done, total, text)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=err_console, transient=True) as bar:
        task = bar.add_task("planning", total=None)

        def progress(done, total, text):
            bar.update(task, completed=done, total=total, description=text)
        return run(progress)


def _save_profile(report, out):
    from nvmmpy.bench.learn import measured, preferences
    from nvmmpy.drivers import profile
    prefs = preferences(report)
    if not prefs:
        return
    try:
        where = profile.save(prefs, report["started"], measured=measured(report))
    except OSError as e:    # after a long run: say it, keep the report that was printed
        out.print(f"[yellow]profile not saved: {explain(profile.path(), e, writing=True)}[/]", highlight=False)
        return
    said = "; ".join(f"{mode}: {p['driver']} ({p['speedup']:.1f}x)" for mode, p in prefs.items())
    out.print(f"[dim]--accel auto will now pick {said} (profile {where})[/]", highlight=False)
