"""The linux-boot section of a bench report (bench/linux_boot.py): its table, and the check that
every figure follows from runs that proved the boot reached /init and powered off."""
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .linux_boot import FIGURES, MAIN_FIGURES, NVMMPY
from .sections import check_rows, opening

GOAL = "goal <= 4x"


def _s(v, fmt=".2f"):
    return "-" if v is None else format(v, fmt)


def section_table(section: dict):
    """The section as a table with the notes that say how to read it."""
    head, instead = opening(section, "linux-boot", "Debian's kernel to /init and to poweroff, nvmmpy on "
                                                   "unicorn vs QEMU 10 TCG")
    if instead:
        return instead
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
    return check_rows(section, "linux-boot", FIGURES, lambda row: f"{row['kernel']}/{row['runner']}", _unproved)


def _unproved(run: dict) -> list:
    out = [] if "reboot: Power down" in run.get("proof", "") else ["no proof line"]
    if not 0 < run.get("init_s", 0) <= run.get("poweroff_s", 0):
        out.append("/init not reached before poweroff")
    return out
