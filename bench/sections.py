"""What the Linux sections of `nvmmpy bench` (vhost_user, linux_boot) share: their heading, the
check that each figure follows from runs that proved their work, and the output of their own
command lines."""
import json
import statistics

from rich.console import Group
from rich.text import Text


def check_rows(section: dict, name: str, figures, where, run_problems) -> list:
    """Problems with a section (empty if none). `where(row)` names a row; `run_problems(run)` lists
    what a run lacks to count (its proof line). An unavailable section needs its reason, a failed
    row too; an ok row has one proved run per repetition and medians that are its runs' medians."""
    if section.get("status") == "unavailable":
        return [] if section.get("reason") else [f"{name}: unavailable without a reason"]
    problems = []
    for row in section.get("rows", []):
        at = f"{name} {where(row)}"
        if row["status"] != "ok":
            if not row["reason"]:
                problems.append(f"{at}: {row['status']} without a reason")
            continue
        if len(row["runs"]) != section["repetitions"]:
            problems.append(f"{at}: {len(row['runs'])} runs for {section['repetitions']} repetitions")
        for run in row["runs"]:
            problems += [f"{at} rep {run.get('rep')}: {p}" for p in run_problems(run)]
        for k, v in row["median"].items():
            if k in figures and abs(statistics.median(r[k] for r in row["runs"]) - v) > 1e-9 * max(1.0, abs(v)):
                problems.append(f"{at}: {k} is not the median of its runs")
    if section.get("status") == "ok" and any(r["status"] != "ok" for r in section.get("rows", [])):
        problems.append(f"{name}: status ok with a failed row")
    return problems


def show(section: dict, table, json_path: str | None) -> int:
    """Print the section's table, write its JSON where asked; the exit status of its command."""
    from rich.console import Console
    Console().print(table(section))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(section, f, indent=2)
    return 0 if section["status"] == "ok" else 1


def opening(section: dict, name: str, what: str):
    """(the section's heading, or None; what to show instead of its tables when it did not run)."""
    took = f", {section['duration_s']:.0f} s" if "duration_s" in section else ""
    head = Text(f"{name} ({section['mode']}, {section['repetitions']} repetitions{took}): {what}", style="bold")
    if section["status"] == "unavailable":
        return None, Group(head, Text(f"not run: {section['reason']}", style="dim"))
    return head, None
