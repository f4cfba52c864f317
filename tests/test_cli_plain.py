"""`nvmmpy run` prints its account without rich, and starts without importing rich or capstone
(rich ~16 ms and capstone ~16 ms of a ~100 ms start; issue 17's start-up goal), nor json, hashlib
(OpenSSL) or subprocess (~1, ~4 and ~3 ms; --json, and building unicorn's block hook, need them)."""
import subprocess
import sys

from nvmmpy.cli.plain import escape, render


def test_render_plain_and_styled():
    m = f"[bold green]{escape('hello [x]')}: exit[/] (exit status 0) - [dim]a[/] \\[b]"
    assert render(m, styled=False) == "hello [x]: exit (exit status 0) - a [b]"
    assert render(m, styled=True) == "\x1b[1;32mhello [x]: exit\x1b[0m (exit status 0) - \x1b[2ma\x1b[0m [b]"
    assert render("[not a style] kept", styled=False) == "[not a style] kept"
    assert render("[yellow]left open", styled=True) == "\x1b[33mleft open\x1b[0m"


NOT_AT_START = ("rich", "capstone", "json", "hashlib", "_hashlib", "subprocess")


def test_run_starts_without_what_it_does_not_use():
    for accel in ("unicorn", "kvm"):
        argv = [sys.executable, "-X", "importtime", "-m", "nvmmpy", "run", "hello", "--accel", accel]
        # twice: a first start after a change to a compiled piece's source builds it (nvmmpy/native.py,
        # with subprocess); what matters is the start that finds it in the cache
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if accel == "kvm" and p.returncode != 0 and "kvm" in p.stderr.lower() and "exit (exit status 0)" not in p.stderr:
            continue                                   # no usable /dev/kvm here: the unicorn run said enough
        assert "exit (exit status 0)" in p.stderr, p.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
        unused = {m for m in imported if m.split(".")[0] in NOT_AT_START}
        assert not unused, (accel, sorted(unused))
