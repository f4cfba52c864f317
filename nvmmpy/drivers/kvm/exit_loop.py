"""The kvm vCPU's compiled exit loop: KVM_RUN and the port I/O / MMIO exit dispatch in C.

Why: a port or MMIO exit through the NVMM-style path (run() fills the Exit, the VMM calls
assist_io(), which fills an IoAccess for the callback) costs about 2 µs of Python per exit beyond
KVM_RUN on this kvm_pvm host, and an exit-heavy guest spends most of its VMM time there. The loop
in exit_loop.c goes from one KVM_RUN to the next in C and calls Python once per exit with the port
(or address), the direction and a view of the data in kvm_run, so only the VMM's own handler runs
in Python. Any other exit (HLT, MSRs, windows, string I/O, failures) returns to Python and is
decoded by the same code as run().

It is a plain CPython extension, not a cffi callback: the loop keeps the GIL except inside
KVM_RUN and calls the handler with vectorcall. Measured on the same guest (bench/exit_latency.py
style, a handler that only counts): cffi `extern "Python"` 11.8 µs per port exit, this 10.7 µs,
fcntl.ioctl alone in a Python loop 10.2 µs, C alone 9.5 µs.

It is built once per source version with the system compiler into the user's cache
(nvmmpy.native), against Python's C headers (Debian: python3-dev). Without them, or with
NVMMPY_KVM_EXIT_LOOP=python, `unavailable()` says why and the VMM keeps the Python path, which
stays the reference (the tests run both).
"""
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig

from ... import native

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exit_loop.c")


def _build():
    """Import the compiled module from the cache, building it first if needed."""
    with open(_SOURCE, "rb") as f:
        src = f.read()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    name = "_nvmmpy_kvm_exit_loop_" + native.tag(src, suffix.encode(), sys.version.encode())
    path = native.cached(name + suffix)
    if not os.path.exists(path):
        include = sysconfig.get_paths()["include"]
        if not os.path.exists(os.path.join(include, "Python.h")):
            raise native.BuildError(f"Python's C headers are missing ({include}/Python.h; "
                                    f"Debian: apt-get install python3-dev)")
        path = native.build(name + suffix, _SOURCE,
                            ["-I" + include, f"-DNVMMPY_NAME=\"{name}\"", f"-DNVMMPY_INIT=PyInit_{name}"])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_piece = native.Optional(_SOURCE, _build, "NVMMPY_KVM_EXIT_LOOP", "python")
module = _piece.get                 # the compiled module (new, run, account, YIELD), or None
unavailable = _piece.unavailable    # why the compiled loop is not used (None when it is)
