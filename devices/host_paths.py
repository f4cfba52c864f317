"""What is wrong with a host file a device or the VMM will write or read, in words a user can act on.

Backends check their paths when they are set up (WavSink, WavSource, VirtioBlk, the CLI's own
output files), so a missing directory is one clear error before the guest starts rather than an
I/O error status the guest reports mid-run. The checks have no side effects (nothing is created);
`explain()` words an OSError from an actual open() the same way.
"""
import os


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) or "/"


def _missing_dir(path: str) -> str | None:
    """The problem with the directory that would hold `path`, or None if it is a usable directory."""
    parent = _parent(path)
    if not os.path.exists(parent):
        return f"directory {parent} does not exist"
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    return None


def output_problem(path) -> str | None:
    """Why a file cannot be created or overwritten at `path` ("cannot write PATH: ..."), or None."""
    path = os.fspath(path)
    if not path:
        return "cannot write to an empty path"
    if os.path.isdir(path):
        return f"cannot write {path}: it is a directory"
    why = _missing_dir(path)
    if why is None:
        if os.path.exists(path):
            if not os.access(path, os.W_OK):
                why = "it is not writable (permission denied)"
        elif not os.access(_parent(path), os.W_OK | os.X_OK):
            why = f"directory {_parent(path)} is not writable"
    return f"cannot write {path}: {why}" if why else None


def input_problem(path, what: str = "file") -> str | None:
    """Why `path` cannot be read as a `what` ("cannot read PATH: ..."), or None."""
    path = os.fspath(path)
    if not path:
        return "cannot read an empty path"
    if os.path.isdir(path):
        why = f"it is a directory, not a {what}"
    elif not os.path.exists(path):
        why = _missing_dir(path) or f"no such {what}"
    elif not os.access(path, os.R_OK):
        why = "it is not readable (permission denied)"
    else:
        return None
    return f"cannot read {path}: {why}"


def explain(path, err: OSError, writing: bool) -> str:
    """One line for an OSError from opening `path`: what the checks above find, else the
    error's own words."""
    found = output_problem(path) if writing else input_problem(path)
    return found or f"cannot {'write' if writing else 'read'} {os.fspath(path)}: {err.strerror or err}"
