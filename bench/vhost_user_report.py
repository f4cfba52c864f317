"""The vhost-user section of a bench report (bench/vhost_user.py): its tables, and the check that
every figure follows from runs that proved their work."""
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .sections import check_rows, opening

GOALS = {"blk": "goal >= 0.5x qemu-storage-daemon", "rng": "", "sound": "goal: every frame, drift < 1 ms/min"}


def _num(v, fmt=".1f"):
    return "-" if v is None else format(v, fmt)


def _setup_cell(row):
    t = Text(row["setup"], style="bold" if row["setup"].startswith("nvmmpy") else "")
    if row["status"] != "ok":
        t.append(f"\nFAILED: {row['reason'][:120]}", style="bold red")
    return t


def _io_table(section, kind, title):
    t = Table(title=title, title_justify="left", show_lines=False)
    for name, justify in (("job", "left"), ("setup", "left"), ("MB/s", "right"), ("req/s", "right"),
                          ("vs peer", "right"), ("proof (last run)", "left")):
        t.add_column(name, justify=justify)
    rows = [r for r in section["rows"] if r["kind"] == kind]
    for row in rows:
        m = row["median"]
        ratio = section["ratios"].get(row["job"]) if row["setup"].startswith("nvmmpy") else None
        proof = next((r["proof"] for r in reversed(row["runs"]) if "proof" in r), "")
        main = m.get("bytes/s") if kind == "rng" else m.get("MB/s")
        t.add_row(row["job"], _setup_cell(row), _num(main / 1e6 if kind == "rng" and main else main, ".2f"),
                  "-" if kind == "rng" else _num(m.get("req/s"), ".0f"), "" if ratio is None else f"x{ratio:.2f}", proof)
    return t


def _sound_table(section):
    clip = section["clip"]
    t = Table(title=f"vhost-user sound: aplay of a {clip['seconds']:g} s {clip['rate'] // 1000} kHz {clip['format']} "
                    f"stereo clip ({clip['frames']} frames)", title_justify="left")
    for name in ("setup", "aplay s", "frames delivered", "drift ms/min", "jitter med ms", "jitter p99 ms",
                 "back-end CPU", "QEMU non-vCPU CPU"):
        t.add_column(name, justify="left" if name == "setup" else "right")
    for row in (r for r in section["rows"] if r["kind"] == "sound"):
        m = row["median"]
        frames = row.get("fewest_frames_delivered")
        t.add_row(_setup_cell(row), _num(m.get("aplay_s"), ".2f"),
                  "-" if frames is None else f"{frames} of {clip['frames']}",
                  _num(m.get("drift_ms_per_min"), "+.2f"), _num(m.get("jitter_median_ms"), ".2f"),
                  _num(m.get("jitter_p99_ms"), ".2f"),
                  "-" if "backend_cpu_pct" not in m else f"{m['backend_cpu_pct']:.1f}%",
                  _num(m.get("qemu_other_cpu_pct"), ".1f") + "%")
    return t


def section_table(section: dict):
    """The section as tables with the notes that say how to read them."""
    head, instead = opening(section, "vhost-user", "QEMU TCG + Debian's Linux")
    if instead:
        return instead
    parts = [head, _io_table(section, "blk", "vhost-user blk: dd O_DIRECT, sequential, in the guest"),
             _io_table(section, "rng", "vhost-user rng: dd from /dev/hwrng (MB/s)"), _sound_table(section)]
    r = section["ratios"]
    said = [f"{job}: x{v:.2f}" for job, v in r.items()]
    if said:
        parts.append(Text("nvmmpy / peer (median of the main figure; peer: qemu-storage-daemon for blk, QEMU's own "
                          "device for rng and sound): " + ", ".join(said) + f". {GOALS['blk']}; {GOALS['sound']}.",
                          style="dim"))
    parts.append(Text("frames delivered: the fewest over the runs, counted from the clip's first frame, byte for "
                      "byte. Drift and jitter: the sink file's growth (inotify) against the ideal 48 kHz clock from "
                      "its first audio. CPU: per second of audio; the back-end process for nvmmpy, QEMU's threads "
                      "other than its vCPUs for both (QEMU's own device runs there). Every run keeps the guest's proof "
                      "line in the JSON report.", style="dim"))
    return Group(*parts)


def validate_section(section: dict) -> list:
    """Problems with the section (empty if none): each ok row's runs all proved their work, and each
    median is the median of those runs."""
    from .vhost_user import FIGURES
    return check_rows(section, "vhost-user", FIGURES, lambda row: f"{row['job']}/{row['setup']}",
                      lambda run: [] if run.get("proof") else ["no proof line"])
