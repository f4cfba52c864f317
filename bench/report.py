"""The benchmark report as a rich table: per workload and runner, the median with its min-max
range and the ratio to the baseline runner (native where it ran, else the fastest hardware one)."""
from rich.console import Group
from rich.table import Table
from rich.text import Text

SCALE = {"ms": 1e3, "us": 1e6}


def scale(w: dict) -> tuple:
    """(factor, unit): seconds per unit times factor is the figure shown, in unit."""
    if w["display"] == "x":
        return 1 / w["realtime"], "x rt"
    return SCALE[w["display"]], "µs" if w["display"] == "us" else w["display"]


def fmt(seconds: float, w: dict) -> str:
    """A per-unit figure in the workload's display unit."""
    k, unit = scale(w)
    v = seconds * k
    if w["display"] == "x":
        return f"{v:.3f}{unit}"
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def _cell(w: dict, runner: str):
    res = w["results"][runner]
    if res["status"] != "ok":
        style = {"unsupported": "dim", "unavailable": "dim", "failed": "bold red"}[res["status"]]
        label = {"unsupported": "n/a", "unavailable": "-", "failed": "FAILED"}[res["status"]]
        return Text(label, style=style)
    s = res["summary"]
    t = Text(fmt(s["median"], w), style="bold")
    t.append(f"\n{fmt(s['min'], w)}-{fmt(s['max'], w)}", style="dim")
    r = w["ratios"].get(runner)
    if r is not None and runner != w["baseline"]:
        t.append(f"\nx{r:.2f}" if abs(r) >= 0.1 else f"\nx{r:.2g}", style="yellow" if r > 1 else "green")
    elif runner == w["baseline"]:
        t.append("\nbaseline", style="cyan")
    return t


def table(report: dict) -> Table:
    runners = [n for n, r in report["runners"].items()]
    t = Table(title=f"nvmmpy bench ({report['mode']}, {report['repetitions']} repetitions, "
                    f"{report['duration_s']:.0f} s)", title_justify="left", show_lines=True)
    t.add_column("workload", no_wrap=True)
    for n in runners:
        t.add_column(n, justify="right", no_wrap=True)
    for w in report["workloads"]:
        label = Text(w["name"], style="bold")
        label.append(f"\nper {w['unit']}", style="dim")
        t.add_row(label, *[_cell(w, n) for n in runners])
    return t


def notes(report: dict):
    """Lines under the table: the machine, warnings, why runners or cells are missing."""
    m = report["machine"]
    kvm = m["kvm"]
    lines = [Text(f"machine: {m['cpu_model']}, {m['cores']} cores, load {m['loadavg'][0]:.2f}, {m['kernel']}; "
                  f"/dev/kvm: {kvm['backend'] or 'unusable'} ({kvm['detail']})", style="dim")]
    for warning in report["warnings"]:
        lines.append(Text(f"warning: {warning}", style="yellow"))
    for n, r in report["runners"].items():
        if not r["available"]:
            lines.append(Text(f"{n}: not run - {r['reason']}", style="dim"))
    reasons = {}
    for w in report["workloads"]:
        for n, res in w["results"].items():
            if res["status"] == "unsupported" and report["runners"][n]["available"]:
                reasons.setdefault(res["reason"], []).append(f"{w['name']} on {n}")
            elif res["status"] == "failed":
                lines.append(Text(f"{w['name']} on {n} FAILED: {res['reason']}", style="red"))
    for why, where in reasons.items():
        if why != "native only" and why != "not a native workload":
            lines.append(Text(f"n/a: {why} ({', '.join(where)})", style="dim"))
    if report["runners"].get("qemu-tcg", {}).get("available"):
        lines.append(Text("qemu-tcg: TCG handles port I/O, MMIO to its own devices and CPUID inside translated code, "
                          "with no exit, so its exit-storm figures are the cost of the instruction itself.", style="dim"))
    lines.append(Text("What each workload does: nvmmpy bench --list. Figures are per unit of work: the difference between a small and a large run divided by "
                      "the difference in size, so boot and process start cancel; ratios are medians against "
                      "the baseline (lower is faster).", style="dim"))
    return Group(*lines)
