"""The C declarations of nvmmpy's ABIs, pre-parsed into plain Python modules (cffi out-of-line ABI mode).

Parsing C declarations with cffi (pycparser) cost ~20 ms of every start, so the parsed form is
generated once and committed: `python scripts/build_ffi.py` rewrites the modules after an ABI's CDEF
changes, and tests/test_ffi_build.py fails while they are stale. Installing needs no compiler (the
modules hold no C), and importing them needs only cffi's `_cffi_backend`. An ABI module whose
generated module is missing parses its declarations at import instead (`load`, `inline`).
"""
import importlib
import io
import os
import sys
import types

# generated module -> (ABI module holding CDEF, generated module it includes)
MODULES = {
    "nvmmpy._nvmm_ffi": ("nvmmpy.nvmm_abi", None),
    "nvmmpy.drivers.kvm._ffi": ("nvmmpy.drivers.kvm.abi", None),
    "nvmmpy.drivers.nvmm._ffi": ("nvmmpy.drivers.nvmm.abi", "nvmmpy._nvmm_ffi"),
}
_ROOT = os.path.dirname(os.path.abspath(__file__))


def builder(name: str, cdef: str = None):
    """A cffi.FFI with `name`'s declarations parsed, set up to emit `name` (no C source: ABI mode)."""
    import cffi
    abi, include = MODULES[name]
    ffi = cffi.FFI()
    if include:
        ffi.include(builder(include))
    ffi.cdef(importlib.import_module(abi).CDEF if cdef is None else cdef)
    ffi.set_source(name, None, compiler_verbose=False)
    return ffi


def source(name: str, cdef: str = None) -> str:
    """The text of generated module `name`."""
    out = io.StringIO()
    builder(name, cdef).emit_python_code(out)
    return out.getvalue()


def load(name: str, cdef: str):
    """The FFI of generated module `name`, or, if the module is missing, `cdef` parsed now."""
    try:
        return importlib.import_module(name).ffi
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return inline(name, cdef)


def inline(name: str, cdef: str):
    """The fallback for an install without generated module `name`: make it now, in memory.

    It is registered under its name, so a module that includes it imports this one and shares its
    types, as with the generated modules.
    """
    module = types.ModuleType(name)
    exec(compile(source(name, cdef), f"<{name}, parsed at import>", "exec"), module.__dict__)
    sys.modules[name] = module
    return module.ffi


def path_of(name: str) -> str:
    """Where the generated module `name` lives in this source tree."""
    return os.path.join(_ROOT, *name.split(".")[1:]) + ".py"


def main() -> None:
    for name in MODULES:
        text = source(name)  # before opening: making it imports the ABI, which imports the old file
        with open(path_of(name), "w") as f:
            f.write(text)
        print(f"wrote {path_of(name)}")
