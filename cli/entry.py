"""The nvmmpy process's entry (the `nvmmpy` script, python -m nvmmpy and python -m nvmmpy.cli), and
what it does with the cyclic garbage collector during start-up and at exit.

Why: start-up (some 150 modules imported, the command line parsed, the VM built) makes tens of
thousands of long-lived objects and next to no garbage, yet CPython's collector ran some 20 times
over them (~3 ms of `nvmmpy run hello`'s ~75 ms); and at exit it collects again, over everything,
while it tears the modules down (~8 ms), memory the OS takes back anyway. So the process starts
with the collector off; started(), called when the command's own work begins, freezes what
start-up made (gc.freeze: kept, never scanned again) and turns it back on, so a long run collects
as usual; at exit everything is frozen, leaving the teardown nothing to scan. Objects are still
freed by reference counting at exit as before; only cyclic garbage left at exit is not finalized.
main() called in-process (tests) leaves the caller's collector alone.
"""
import gc

_paused = False   # program() turned the collector off and started() has not turned it back on


def program() -> None:
    """Run `nvmmpy` as this process: main() with the collector off through start-up, everything
    frozen at exit."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True
    try:
        from .main import main   # most of start-up is imports: made with the collector off
        main()
    finally:
        gc.freeze()


def started() -> None:
    """The command's work begins: start-up's objects frozen, and collection as usual from here."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
