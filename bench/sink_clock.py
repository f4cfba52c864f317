"""When audio reaches a sink file: the time of every growth of a file, from inotify, for any writer.

    growth = FileGrowth("/tmp/x/play.wav")     # before the writer starts (the file may not exist yet)
    ...                                        # a back-end or QEMU's wav audiodev writes it
    points = growth.stop()                     # [(monotonic seconds, file size)], size growing
    figures = sink_timing(audio_points(points, clip_bytes), bytes_per_second=192000)

The same measurement serves nvmmpy's WAV sink (a write per period, in another process) and QEMU's
wav audiodev (stdio-buffered writes inside QEMU), which cannot be instrumented from the inside. A
thread waits on an inotify descriptor (no polling) watching the directory, so the file may be
created after the watch starts.
"""
import ctypes
import os
import select
import struct
import threading
import time

from .stats import timing_figures

IN_MODIFY, IN_CREATE = 0x2, 0x100
_EVENT = struct.Struct("iIII")     # wd, mask, cookie, len (then the name, padded)
WAV_HEADER = 44


class FileGrowth:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self._fd, os.path.dirname(self.path).encode(), IN_MODIFY | IN_CREATE) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {os.path.dirname(self.path)}")
        self._name = os.path.basename(self.path).encode()
        self._stop_r, self._stop_w = os.pipe()
        self.points: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while True:
            ready = select.select([self._fd, self._stop_r], [], [])[0]
            now = time.monotonic()
            if self._fd in ready:
                buf = os.read(self._fd, 65536)
                if not any(self._is_ours(buf)):
                    continue
                try:
                    size = os.stat(self.path).st_size
                except OSError:
                    continue
                if size > last:
                    self.points.append((now, size))
                    last = size
            if self._stop_r in ready:
                return

    def _is_ours(self, buf: bytes):
        off = 0
        while off + _EVENT.size <= len(buf):
            _, _, _, n = _EVENT.unpack_from(buf, off)
            yield buf[off + _EVENT.size:off + _EVENT.size + n].rstrip(b"\0") == self._name
            off += _EVENT.size + n

    def stop(self) -> list:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        return self.points


def audio_points(points, limit: int, header: int = WAV_HEADER) -> list:
    """[(time, audio bytes)] of the growths that carried the first `limit` bytes of audio (what
    came after, padding or silence, is not the clip's)."""
    return [(t, size - header) for t, size in points if header < size <= header + limit]


def sink_timing(audio, bytes_per_second: float) -> dict | None:
    """Drift and jitter of a sink's arrivals (audio_points) against the ideal clock that starts
    with its first audio: each point's error is (t - t0) - (bytes since then) / rate; positive is
    late. None if fewer than 3 points."""
    if len(audio) < 3:
        return None
    t0, b0 = audio[0]
    xs = [(b - b0) / bytes_per_second for _, b in audio]
    return timing_figures(xs, [(t - t0) - x for (t, _), x in zip(audio, xs)])
