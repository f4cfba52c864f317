"""The process entry's garbage collection (cli/entry.py): off through start-up, on again for the
command's work (a long guest run must still collect cycles), and left alone by in-process main()."""
import gc
import subprocess
import sys

import pytest

from nvmmpy.cli.main import main

PROBE = """
import gc, sys
from nvmmpy.cli import entry
seen = []
gc.callbacks.append(lambda phase, info: phase == "stop" and seen.append(info["generation"]))
started = entry.started
def check():
    print(f"started: {len(seen)} collections before, enabled={gc.isenabled()}", file=sys.stderr)
    started()
    print(f"then enabled={gc.isenabled()}", file=sys.stderr)
entry.started = check
sys.argv = ["nvmmpy", "run", "hello", "--accel", "unicorn"]
entry.program()
"""


def test_program_collects_nothing_in_start_up_and_as_usual_after():
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert "exit (exit status 0)" in p.stderr, p.stderr[-2000:]
    assert "started: 0 collections before, enabled=False" in p.stderr, p.stderr[-2000:]
    assert "then enabled=True" in p.stderr


def test_main_in_process_leaves_the_collector_alone(capsys):
    frozen = gc.get_freeze_count()
    with pytest.raises(SystemExit) as e:
        main(["guests", "--json"])
    assert e.value.code == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
