"""The linux-boot section of `nvmmpy bench` (bench/linux_boot.py): a boot counts only with its proof
(the init line, the kernel's power-down line, status 0), each time comes from the host's clock as
the serial output arrived, the medians and ratios follow from the runs, and the section reaches
the bench's JSON report and its check. The real boots run in `nvmmpy bench`, not here (a boot of
nvmmpy on unicorn takes 10-30 s of CPU)."""
import sys


from nvmmpy.bench import linux_boot
from nvmmpy.bench.linux_boot_report import section_table, validate_section

SERIAL = (b"[    0.000000] Linux version 6.12.118+deb12-amd64\r\n[    9.122584] Run /init as init process\r\n"
          b"init: up 6.12.118+deb12-amd64\r\ninit: no /test.sh\r\n[   11.038218] reboot: Power down\r\n")
ACCOUNT = "  driver unicorn (software); wall 11341.9 ms: guest 11091.2 ms, VMM 250.7 ms; 40145 exits\n"


def _boot(**changes):
    boot = {"output": SERIAL.decode(), "stderr": ACCOUNT, "exit_code": 0, "killed": False, "init_s": 10.5,
            "poweroff_s": 11.9, "cpu_s": 11.5}
    boot.update(changes)
    return boot


def test_a_boot_counts_only_with_init_power_down_and_status_0():
    run = linux_boot.judge(_boot(), 600)
    assert run["proof"] == ("init: up 6.12.118+deb12-amd64 at 10.50 s; reboot: Power down; exit 0 at 11.90 s")
    assert run["kernel_init_s"] == 9.122584 and run["exits"] == 40145
    assert run["guest_s"] == 11.0912 and run["vmm_s"] == 0.2507
    assert "error" in linux_boot.judge(_boot(exit_code=1), 600)
    assert "killed after 600 s" in linux_boot.judge(_boot(killed=True), 600)["error"]
    assert "error" in linux_boot.judge(_boot(output=SERIAL.decode().replace("reboot: Power down", "Kernel panic")), 600)
    assert "error" in linux_boot.judge(_boot(output=SERIAL.decode().replace("init: up", "init: down")), 600)


def test_the_init_time_is_when_the_line_arrived(tmp_path):
    """A child that prints the init line, waits, then powers off: /init is stamped before the exit."""
    child = tmp_path / "guest.py"
    child.write_text("import sys, time\nw = sys.stdout.buffer\nw.write(b'boot\\r\\ninit: up')\nw.flush()\n"
                     "time.sleep(0.3)\nw.write(b' 6.12\\r\\n')\nw.flush()\ntime.sleep(0.5)\n"
                     "w.write(b'reboot: Power down\\r\\n')\n")
    boot = linux_boot.timed_boot([sys.executable, str(child)], timeout=60)
    assert boot["exit_code"] == 0 and not boot["killed"]
    assert 0 < boot["init_s"] < boot["poweroff_s"] and boot["poweroff_s"] - boot["init_s"] >= 0.4
    assert "error" not in linux_boot.judge(boot, 60)
    hang = tmp_path / "hang.py"
    hang.write_text("import time\ntime.sleep(30)\n")
    boot = linux_boot.timed_boot([sys.executable, str(hang)], timeout=0.5)
    assert boot["killed"] and boot["init_s"] is None


def test_commands_share_kernel_initrd_and_command_line():
    ours = linux_boot.command("nvmmpy-unicorn", "/k/vmlinux", "/k/initrd.cpio")
    theirs = linux_boot.command("qemu-tcg", "/k/vmlinux", "/k/initrd.cpio")
    for argv in (ours, theirs):
        assert argv[argv.index("--kernel" if argv is ours else "-kernel") + 1] == "/k/vmlinux"
        assert argv[argv.index("--initrd" if argv is ours else "-initrd") + 1] == "/k/initrd.cpio"
        assert argv[argv.index("--append" if argv is ours else "-append") + 1] == linux_boot.CMDLINE
    assert ["-accel", "tcg"] == theirs[1:3] and "unicorn" in ours


def _section(**row_changes):
    rows = []
    for runner, t in (("nvmmpy-unicorn", 12.0), ("qemu-tcg", 3.0)):
        runs = [{"rep": r, "init_s": t + d, "poweroff_s": t + d + 0.3, "cpu_s": t, "kernel_init_s": 9.0,
                 "proof": f"init: up 6.12 at {t + d:.2f} s; reboot: Power down; exit 0 at {t + d + 0.3:.2f} s"}
                for r, d in enumerate((0.0, 0.4, 0.2))]
        row = {"kernel": "vmlinux", "protocol": "PVH", "runner": runner, "peer": runner == linux_boot.PEER, "command": [],
               "runs": runs}
        row.update(linux_boot.summarize_row(row))
        rows.append(row)
    rows[0].update(row_changes)
    return {"status": "ok", "reason": "", "repetitions": 3, "mode": "quick", "cmdline": linux_boot.CMDLINE, "memory_mb": 256,
            "rows": rows, "ratios": linux_boot.ratios(rows)}


def test_the_section_check_wants_proof_and_medians_of_the_runs():
    good = _section()
    assert good["rows"][0]["median"]["init_s"] == 12.2
    assert good["ratios"]["vmlinux"]["init_s"] == round(12.2 / 3.2, 4)
    assert validate_section(good) == []
    unproven = _section()
    del unproven["rows"][0]["runs"][1]["proof"]
    assert any("no proof line" in p for p in validate_section(unproven))
    assert any("not the median" in p for p in validate_section(_section(median={"init_s": 3.0})))
    assert validate_section({"status": "unavailable", "reason": "no QEMU 10"}) == []


def test_nvmmpy_bench_carries_the_section(tmp_path, monkeypatch):
    """`nvmmpy bench --workloads linux-boot`: the section alone, in the JSON report and the table;
    a quick run without it named does not start it."""
    from harness import bench_carries_section
    bench_carries_section(monkeypatch, tmp_path, linux_boot, "linux-boot", "linux_boot", _section(),
                          ["linux-boot", "reboot: Power down", "x3.81"])


def test_section_table_renders_a_failed_row():
    from rich.console import Console
    s = _section(status="failed", reason="exit status 1, without the init line")
    s["status"] = "failed"
    Console(file=open("/dev/null", "w"), width=120).print(section_table(s))
