"""`nvmmpy bench`: accelerated vs emulated vs QEMU vs native, on the bundled guests, in one run."""
import json
import os

import click

MODES = ("quick", "full")


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
@click.option("--quick", is_flag=True, help="Small sizes and 3 repetitions (about a minute or two).")
@click.option("--reps", type=click.IntRange(1, 100), default=None, help="Repetitions (default 3 quick, 5 full).")
@click.option("--workloads", "workload_list", default=None, metavar="LIST",
              help="Comma-separated workloads (default: all; see --list).")
@click.option("--runners", "runner_list", default=None, metavar="LIST",
              help="Comma-separated runners: nvmmpy-kvm, nvmmpy-unicorn, qemu-kvm, qemu-tcg, native (default: all).")
@click.option("--json", "json_path", default=None, metavar="FILE",
              help="Write the report as JSON (default for a full run: nvmmpy-bench.json; '-' for stdout).")
@click.option("--chart", "chart_path", default=None, metavar="FILE",
              help="Draw a PNG chart (needs matplotlib; default for a full run: nvmmpy-bench.png).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds one guest run may take.")
@click.option("--save-profile/--no-save-profile", default=True, show_default=True,
              help="Remember which driver was faster per guest mode, for `nvmmpy run --accel auto`.")
@click.option("--list", "list_only", is_flag=True, help="List the workloads and runners, and exit.")
def bench(quick, reps, workload_list, runner_list, json_path, chart_path, timeout, save_profile, list_only):
    """Benchmark nvmmpy on every driver against QEMU (TCG, KVM) and native code.

    Each workload runs a bundled guest at a small and a large size on every runner; the figure is
    the time per unit of work from the difference, repeated and interleaved across runners.
    """
    from nvmmpy.bench import workloads as W
    from nvmmpy.bench.runners import RUNNER_NAMES
    from .console import console, err_console

    if list_only:
        for w in W.WORKLOADS:
            console.print(f"[bold]{w.name:12}[/] {w.title} (per {w.unit}; {', '.join(sorted(w.runners))})",
                          highlight=False)
        console.print(f"runners: {', '.join(RUNNER_NAMES)}", highlight=False)
        return
    chosen = _names(workload_list, list(W.BY_NAME), "workload")
    runners_wanted = _names(runner_list, list(RUNNER_NAMES), "runner")
    if not quick:
        json_path = json_path or "nvmmpy-bench.json"
        chart_path = chart_path or "nvmmpy-bench.png"
    for p in (json_path, chart_path):
        if p and p != "-" and not os.path.isdir(os.path.dirname(os.path.abspath(p))):
            raise click.BadParameter(f"cannot write {p}: its directory does not exist")

    from nvmmpy.bench.suite import Suite, validate
    suite = Suite(workloads=chosen and [W.BY_NAME[n] for n in chosen], quick=quick, reps=reps, timeout=timeout,
                  runner_names=runners_wanted)
    try:
        report = _run_with_progress(suite, err_console)
    finally:
        suite.close()
    problems = validate(report)
    if problems:  # a bug in the bench itself: say so rather than print figures that lie
        raise click.ClickException("the report is inconsistent: " + "; ".join(problems[:3]))

    from nvmmpy.bench.report import notes, table
    out = err_console if json_path == "-" else console
    out.print(table(report))
    out.print(notes(report))
    if json_path:
        text = json.dumps(report, indent=2)
        if json_path == "-":
            click.echo(text)
        else:
            with open(json_path, "w") as f:
                f.write(text + "\n")
            out.print(f"[dim]JSON: {json_path}[/]", highlight=False)
    if chart_path:
        from nvmmpy.bench.chart import draw
        try:
            draw(report, chart_path)
            out.print(f"[dim]chart: {chart_path}[/]", highlight=False)
        except ImportError as e:
            out.print(f"[yellow]chart skipped: {e}[/]", highlight=False)
    if save_profile:
        _save_profile(report, out)
    if any(r["status"] == "failed" for w in report["workloads"] for r in w["results"].values()):
        raise click.exceptions.Exit(1)


def _run_with_progress(suite, err_console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=err_console, transient=True) as bar:
        task = bar.add_task("planning", total=None)

        def progress(done, total, text):
            bar.update(task, completed=done, total=total, description=text)
        return suite.run(progress)


def _save_profile(report, out):
    from nvmmpy.bench.learn import preferences
    from nvmmpy.drivers import profile
    prefs = preferences(report)
    if not prefs:
        return
    where = profile.save(prefs, report["started"])
    said = "; ".join(f"{mode}: {p['driver']} ({p['speedup']:.1f}x)" for mode, p in prefs.items())
    out.print(f"[dim]--accel auto will now pick {said} (profile {where})[/]", highlight=False)
