"""Optional compiled pieces, built once per source version into the user's cache.

nvmmpy installs without a compiler. Where one is present ($CC, else cc), a few hot spots are built
on first use into $NVMMPY_CACHE/native (default ~/.cache/nvmmpy/native), named by a checksum of
their source, so an upgrade builds afresh and a stale build is never loaded. Each has a pure-Python
fallback that its caller takes, saying why, when the build fails.

Every start looks its builds up (tag, then a stat), so this module imports only os and zlib;
subprocess and the rest come with the first build. hashlib (OpenSSL) and subprocess cost ~7 ms of
each `nvmmpy run` start (issue 17).
"""
import os
import zlib


class BuildError(Exception):
    """The compiler is missing or refused the source; str() says which, in one line."""


def cache_root() -> str:
    """$NVMMPY_CACHE, else $XDG_CACHE_HOME/nvmmpy, else ~/.cache/nvmmpy."""
    return os.environ.get("NVMMPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nvmmpy")


def tag(*parts: bytes) -> str:
    """A short checksum naming one version of a build's inputs (and this machine's architecture):
    CRC-32 and Adler-32 of them with their lengths, 16 hex digits."""
    data = b"".join(len(p).to_bytes(8, "little") + p for p in (os.uname().machine.encode(), *parts))
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def cached(out_name: str) -> str:
    """Where build() puts `out_name`."""
    return os.path.join(cache_root(), "native", out_name)


def build(out_name: str, source: str, flags=()) -> str:
    """Compile C file `source` into a shared object `out_name` in the cache (unless it is there
    already) and return its path. Concurrent builders each install a whole file (os.replace)."""
    out = cached(out_name)
    if os.path.exists(out):
        return out
    import shlex
    import subprocess
    import tempfile
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    cc = shlex.split(os.environ.get("CC") or "cc")   # CC may carry flags ("ccache gcc")
    try:
        try:
            subprocess.run([*cc, "-O2", "-shared", "-fPIC", *flags, "-o", tmp, source], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        except FileNotFoundError:
            raise BuildError(f"no C compiler ({cc[0]} not found; set CC or install gcc)") from None
        except subprocess.CalledProcessError as e:
            lines = (e.stderr or b"").decode(errors="replace").strip().splitlines()
            raise BuildError(f"{cc[0]} failed on {os.path.basename(source)}: "
                             f"{lines[0] if lines else f'status {e.returncode}'}") from None
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"{cc[0]} could not build {os.path.basename(source)}: {e}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Optional:
    """One compiled piece, loaded at most once per process: get() returns what `load` returns, or
    None with the reason in unavailable() (an environment setting that turns the piece off, or why
    it could not be built or loaded)."""

    def __init__(self, source: str, load, off_env: str, off_value: str):
        self._source, self._load = source, load
        self._off = (off_env, off_value)
        self._value = self._error = None

    def get(self):
        if self._value is None and self._error is None:
            name, value = self._off
            if os.environ.get(name) == value:
                self._error = f"{name}={value}"
            else:
                try:
                    self._value = self._load()
                except (OSError, ImportError, BuildError) as e:
                    self._error = f"cannot build {os.path.basename(self._source)}: {e}"
        return self._value

    def unavailable(self):
        self.get()
        return self._error
