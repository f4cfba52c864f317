"""Debian's kernel booted to /init and to poweroff: nvmmpy on unicorn vs QEMU 10 TCG, the same
kernel, initrd and command line, in one run: the `linux-boot` section of `nvmmpy bench` (and
`python -m nvmmpy.bench.linux_boot`).

    section = measure(reps=3, quick=False)      # a dict for the report; report: linux_boot_report

Each run is a child process, timed from spawn on the host's monotonic clock:
    init_s      when the guest's "init: up <version>" line arrives on the serial console (read as it
                comes, a chunk at a time; the stamp is that of the chunk that completes the line)
    poweroff_s  when the process has exited (the guest ran `poweroff -f`; status 0 required)
A run counts only with its proof: the init line, the kernel's "reboot: Power down" and status 0.
Also kept per run: the process's CPU time (wait4), the kernel's own timestamp of "Run /init", and
for nvmmpy its account (guest and VMM time, exits).

What differs between the two machines (the same files and command line otherwise):
    nvmmpy   no firmware: the VMM loads the kernel (PVH entry or the 64-bit boot protocol);
             PIC + PIT, no APIC; ACPI tables from vmm/acpi.py; unicorn's CPU model (Intel: the
             kernel turns on page-table isolation)
    QEMU     `-M pc` (i440FX): SeaBIOS and its option ROM load the kernel (pvh.bin or
             linuxboot_dma.bin), LAPIC + IOAPIC + HPET, the default qemu64 CPU (AMD: no PTI)
Repetitions are the outer loop and the order of the two runners alternates, so machine noise
and first-run effects land on both alike.
"""
import argparse
import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time

from nvmmpy.bench import linux_image
from nvmmpy.bench import qemu_linux
from nvmmpy.vmm.linux import DEFAULT_CMDLINE

NVMMPY, PEER = "nvmmpy-unicorn", "qemu-tcg"
RUNNERS = (NVMMPY, PEER)
KERNELS = {True: ("vmlinux",), False: ("vmlinux", "bzImage")}     # quick, full
PROTOCOL = {"vmlinux": "PVH", "bzImage": "64-bit boot protocol"}
MEMORY_MB = 256
CMDLINE = DEFAULT_CMDLINE        # what `nvmmpy run --kernel` gives a kernel by default
INIT_LINE = re.compile(rb"init: up (\S+)\r?\n")
POWER_LINE = b"reboot: Power down"
FIGURES = ("init_s", "poweroff_s", "cpu_s", "kernel_init_s", "guest_s", "vmm_s", "exits")
MAIN_FIGURES = ("init_s", "poweroff_s", "cpu_s")     # the ratios


def command(runner: str, kernel: str, initrd: str, cmdline: str = CMDLINE, memory_mb: int = MEMORY_MB) -> list:
    if runner == NVMMPY:
        return [sys.executable, "-m", "nvmmpy", "run", "--accel", "unicorn", "--kernel", kernel, "--initrd", initrd,
                "--append", cmdline, "--memory", f"{memory_mb}M"]
    return [qemu_linux.qemu_binary(), "-accel", "tcg", "-M", "pc", "-m", str(memory_mb), "-nographic", "-no-reboot",
            "-nic", "none", "-kernel", kernel, "-initrd", initrd, "-append", cmdline]


def timed_boot(argv: list, timeout: float) -> dict:
    """One boot: host seconds from spawn to the init line and to exit, the serial output, the exit
    status and CPU time; stderr goes to a file (nvmmpy's account is there)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        out, init_at, killed = bytearray(), None, False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = t0 + timeout - time.monotonic()
                if left <= 0:
                    proc.kill()
                    killed = True
                    break
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                if init_at is None and INIT_LINE.search(out, max(0, len(out) - len(chunk) - 200)):
                    init_at = time.monotonic()
        _, status, usage = os.wait4(proc.pid, 0)
        exited = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return {"output": out.decode("utf-8", "replace"), "stderr": stderr, "exit_code": proc.returncode,
            "killed": killed, "init_s": None if init_at is None else init_at - t0, "poweroff_s": exited - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime}


ACCOUNT = re.compile(r"wall ([\d.]+) ms: guest ([\d.]+) ms, VMM ([\d.]+) ms; (\d+) exits")
KERNEL_INIT = re.compile(r"\[\s*([\d.]+)\] Run /init as init process")


def judge(boot: dict, timeout: float) -> dict:
    """The run as the report keeps it: its figures and proof line, or an error that says why not."""
    out = boot["output"]
    m = INIT_LINE.search(out.encode())
    if boot["killed"] or m is None or POWER_LINE.decode() not in out or boot["exit_code"] != 0:
        why = f"killed after {timeout:g} s" if boot["killed"] else f"exit status {boot['exit_code']}"
        return {"error": f"{why}, without the init line, 'reboot: Power down' and status 0 (needed); it ended: "
                         f"{(out + boot['stderr']).strip()[-300:]!r}"}
    run = {"init_s": boot["init_s"], "poweroff_s": boot["poweroff_s"], "cpu_s": boot["cpu_s"],
           "proof": f"init: up {m.group(1).decode()} at {boot['init_s']:.2f} s; reboot: Power down; "
                    f"exit 0 at {boot['poweroff_s']:.2f} s"}
    k = KERNEL_INIT.search(out)
    if k:
        run["kernel_init_s"] = float(k.group(1))
    a = ACCOUNT.search(boot["stderr"])
    if a:
        run.update(guest_s=float(a.group(2)) / 1e3, vmm_s=float(a.group(3)) / 1e3, exits=int(a.group(4)))
    return run


def unavailable() -> str | None:
    """Why the section cannot run here (QEMU 10, the unicorn driver, the guest image), or None."""
    why = qemu_linux.skip_reason(())
    if why is None:
        from nvmmpy.drivers import load
        from nvmmpy.errors import DriverUnavailable
        try:
            load("unicorn")
        except DriverUnavailable as e:
            why = f"the unicorn driver is not usable: {e}"
    return why


def measure(reps: int = 3, quick: bool = False, timeout: float = 600, progress=None, kernels=None,
            cmdline: str = CMDLINE) -> dict:
    """The section: each (kernel, runner)'s runs with their proof lines, medians and ratios."""
    kernels = kernels or KERNELS[quick]
    section = {"status": "ok", "reason": "", "repetitions": reps, "mode": "quick" if quick else "full",
               "cmdline": cmdline, "memory_mb": MEMORY_MB, "rows": []}
    why = unavailable()
    if why:
        section.update(status="unavailable", reason=why)
        return section
    paths = linux_image.ensure(build=False)
    files = {"vmlinux": paths.vmlinux, "bzImage": paths.bzimage}
    section["initrd"] = paths.initrd
    started = time.monotonic()
    rows = {(k, r): {"kernel": k, "protocol": PROTOCOL[k], "runner": r, "peer": r == PEER,
                     "command": command(r, files[k], paths.initrd, cmdline), "runs": []} for k in kernels for r in RUNNERS}
    total, done = reps * len(rows), 0
    for rep in range(reps):
        for k in kernels:
            for r in (RUNNERS if rep % 2 == 0 else RUNNERS[::-1]):
                if progress:
                    progress(done, total, f"linux-boot {k} on {r} ({rep + 1}/{reps})")
                row = rows[(k, r)]
                try:
                    run = judge(timed_boot(row["command"], timeout), timeout)
                except OSError as e:
                    run = {"error": f"could not start {row['command'][0]}: {e}"}
                row["runs"].append({"rep": rep, **run})
                done += 1
    if progress:
        progress(total, total, "done")
    for row in rows.values():
        row.update(summarize_row(row))
    section["duration_s"] = round(time.monotonic() - started, 1)
    section["rows"] = list(rows.values())
    section["ratios"] = ratios(section["rows"])
    bad = [r for r in section["rows"] if r["status"] != "ok"]
    if bad:
        section["status"] = "failed"
        section["reason"] = "; ".join(f"{r['kernel']} on {r['runner']}: {r['reason']}" for r in bad)[:500]
    return section


def summarize_row(row: dict) -> dict:
    """status, reason, and the median of each figure over the row's runs (all must have proved)."""
    bad = [r["error"] for r in row["runs"] if "error" in r]
    good = [r for r in row["runs"] if "error" not in r]
    median = {k: statistics.median(r[k] for r in good) for k in FIGURES if good and all(k in r for r in good)}
    return {"status": "failed" if bad else "ok", "reason": bad[0] if bad else "", "median": median}


def ratios(rows) -> dict:
    """{kernel: {figure: nvmmpy's median / QEMU's}} for the main figures, where both ran."""
    out = {}
    for row in rows:
        if row["runner"] != NVMMPY:
            continue
        peer = next((r for r in rows if r["kernel"] == row["kernel"] and r["peer"]), None)
        got = {f: round(row["median"][f] / peer["median"][f], 4) for f in MAIN_FIGURES
               if peer and f in row["median"] and peer["median"].get(f)}
        if got:
            out[row["kernel"]] = got
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per kernel and runner (default 3)")
    ap.add_argument("--kernels", default="vmlinux,bzImage", help="vmlinux, bzImage or both (default)")
    ap.add_argument("--append", default=CMDLINE, help=f"the kernel command line for both (default {CMDLINE!r})")
    ap.add_argument("--json", help="write the section as JSON to this file")
    args = ap.parse_args(argv)
    kernels = tuple(k for k in args.kernels.split(",") if k in PROTOCOL) or KERNELS[False]
    from nvmmpy.bench.linux_boot_report import section_table
    from nvmmpy.bench.sections import show
    return show(measure(max(1, args.repeat), kernels=kernels, cmdline=args.append), section_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
