"""The linux-boot section of a bench report (bench/linux_boot.py): its table, and the check that
every figure follows from runs that proved the boot reached /init and powered off."""
import statistics

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .linux_boot import FIGURES, MAIN_FIGURES, NVMMPY

GOAL = "goal <= 4x"


def _s(v, fmt=".2f"):
    return "-" if v is None else format(v, fmt)


def section_table(section: dict):
    """The section as a table with the notes that say how to read it."""
    took = f", {section['duration_s']:.0f} s" if "duration_s" in section else ""
    head = Text(f"linux-boot ({section['mode']}, {section['repetitions']} repetitions{took}): Debian's kernel to "
                f"/init and to poweroff, nvmmpy on unicorn vs QEMU 10 TCG", style="bold")
    if section["status"] == "unavailable":
        return Group(head, Text(f"not run: {section['reason']}", style="dim"))
    t = Table(title_justify="left")
    for name in ("kernel", "runner", "/init s", "poweroff s", "CPU s", "kernel's /init", "guest/VMM", "exits"):
        t.add_column(name, justify="left" if name in ("kernel", "runner") else "right",
                     no_wrap=name in ("kernel", "runner"))
    proofs = []
    for row in section["rows"]:
        m, r = row["median"], section["ratios"].get(row["kernel"], {}) if row["runner"] == NVMMPY else {}
        runner = Text(row["runner"], style="bold" if not row["peer"] else "")
        if row["status"] != "ok":
            runner.append(f"\nFAILED: {row['reason'][:160]}", style="bold red")
        shown = [_s(m.get(f)) + (f" x{r[f]:.2f}" if f in r else "") for f in MAIN_FIGURES]
        guest = f"{m['guest_s']:.1f}/{m['vmm_s']:.2f}" if "guest_s" in m else "-"
        t.add_row(row["kernel"], runner, *shown, _s(m.get("kernel_init_s")), guest, _s(m.get("exits"), ".0f"))
        proof = next((x["proof"] for x in reversed(row["runs"]) if "proof" in x), None)
        if proof:
            proofs.append(f"{row['kernel']} on {row['runner']}, last run: {proof}")
    notes = Text(f"Medians. Host seconds from spawn: to the serial line 'init: up' as it arrived, and to the "
                 f"process's exit after the guest's poweroff; CPU: the process's user + system time. xN: nvmmpy / qemu-tcg "
                 f"({GOAL}). vmlinux boots through PVH, bzImage through the "
                 f"64-bit boot protocol. Same kernel, initrd and command line ({section.get('cmdline', '')!r}), "
                 f"{section.get('memory_mb', '')} MiB; QEMU is -M pc with SeaBIOS, LAPIC/IOAPIC and its qemu64 CPU, "
                 f"nvmmpy loads the kernel itself on a PIC machine with unicorn's Intel CPU (the kernel turns on "
                 f"page-table isolation there). kernel's /init: when its log says 'Run /init', on its own clock. guest/VMM: nvmmpy's run "
                 f"account (time inside unicorn / in Python between exits).", style="dim")
    return Group(head, t, Text("\n".join(proofs)), notes)


def validate_section(section: dict) -> list:
    """Problems with the section (empty if none): each ok row's runs all proved the boot, and each
    median is the median of those runs."""
    if section.get("status") == "unavailable":
        return [] if section.get("reason") else ["linux-boot: unavailable without a reason"]
    problems = []
    for row in section.get("rows", []):
        where = f"linux-boot {row['kernel']}/{row['runner']}"
        if row["status"] != "ok":
            if not row["reason"]:
                problems.append(f"{where}: {row['status']} without a reason")
            continue
        if len(row["runs"]) != section["repetitions"]:
            problems.append(f"{where}: {len(row['runs'])} runs for {section['repetitions']} repetitions")
        for run in row["runs"]:
            if not run.get("proof") or "reboot: Power down" not in run["proof"]:
                problems.append(f"{where} rep {run.get('rep')}: no proof line")
            if not 0 < run.get("init_s", 0) <= run.get("poweroff_s", 0):
                problems.append(f"{where} rep {run.get('rep')}: /init not reached before poweroff")
        for k, v in row["median"].items():
            if k in FIGURES and abs(statistics.median(r[k] for r in row["runs"]) - v) > 1e-9 * max(1.0, abs(v)):
                problems.append(f"{where}: {k} is not the median of its runs")
    if section.get("status") == "ok" and any(r["status"] != "ok" for r in section.get("rows", [])):
        problems.append("linux-boot: status ok with a failed row")
    return problems
