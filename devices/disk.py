"""Disk backends: the host I/O under a block device, apart from any device protocol.

    disk = RawImage("disk.img", read_only=False, device="virtio-blk")

A device (virtio-blk today) parses requests and answers with its own status values; the backend
only moves bytes, so another one (a file over another API, a remote disk) can take its place.
As kvmtool's disk/, Firecracker's io/ and rust-vmm's executors keep image I/O apart from virtio.

A backend offers
  path, size, read_only   what it is (size in bytes, fixed when opened)
  can_unmap               whether discard / write_zeroes(unmap=True) may deallocate space
  read_at(offset, views, nbytes)    fill `views` (nbytes in all, e.g. guest memory) from offset
  write_at(offset, views, nbytes)   write them there
  flush(data_only=False)  make completed writes durable (fsync; fdatasync with data_only)
  discard(offset, length) a hint: deallocate, or nothing where the host cannot
  write_zeroes(offset, length, unmap)   the range reads as zeroes after (unmap: may deallocate)
  close()                 idempotent; I/O after it fails with EBADF
Host errors are OSError: the device turns them into its own status. Ranges are the device's
to check.

RawImage reads and writes straight between the image and the caller's buffers (os.preadv /
os.pwritev, short transfers continued, at most IOV_MAX buffers a call); zeroes come from one
shared block, so nothing is allocated in proportion to a request.
"""
import ctypes
import ctypes.util
import errno
import os
import stat

from .host_paths import input_problem

__all__ = ["RawImage", "punch_hole"]

_ZEROES = memoryview(bytes(64 << 10))   # the one block write_zeroes writes from
_ZERO_IOV = 16                          # ...up to 16 times per pwritev (1 MiB)
try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (ValueError, OSError, AttributeError):
    _IOV_MAX = 1024

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2
_NO_PUNCH = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)


def _load_fallocate():
    """libc's fallocate(2), for punching holes (os has only posix_fallocate); None where absent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate [offset, offset+length) keeping the file size (reads then give zeroes);
    OSError (EOPNOTSUPP where the file system or platform cannot)."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _after(views: list, n: int) -> list:
    """`views` without their first n bytes (after a short transfer)."""
    i = 0
    while n >= len(views[i]):
        n -= len(views[i])
        i += 1
    return [views[i][n:]] + views[i + 1:]


class RawImage:
    """A raw image file or host block device, opened once: O_RDONLY when `read_only`, else O_RDWR.

    Opening problems are ValueError in words a user can act on, starting with `device` (the
    name of the device the image is for)."""

    def __init__(self, path, read_only: bool = False, device: str = "disk"):
        self.path = os.fspath(path)
        self.read_only = bool(read_only)
        self.fd = self._open(device)
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.close()
            raise ValueError(f"{device} image {self.path!r}: cannot find its size ({e.strerror})") from None
        self.can_unmap = _fallocate is not None

    def _open(self, device: str) -> int:
        flags = (os.O_RDONLY if self.read_only else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        why = input_problem(self.path, "disk image")   # missing, in a missing directory, a directory
        if why:
            hint = f" (make one with: truncate -s 64M {self.path})" if why.endswith("no such disk image") else ""
            raise ValueError(f"{device}: {why}{hint}")
        try:
            fd = os.open(self.path, flags)
        except OSError as e:
            hint = "check the path"
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not self.read_only:
                hint = "check its permissions, or attach it read-only"
            elif e.errno in (errno.EACCES, errno.EPERM):
                hint = "check its permissions"
            raise ValueError(f"{device} cannot open image {self.path!r}: {e.strerror}; {hint}") from None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(fd)
            raise ValueError(f"{device} image {self.path!r} is not a regular file or block device")
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _fd(self) -> int:
        if self.fd < 0:
            raise OSError(errno.EBADF, "the image is closed")
        return self.fd

    # --- I/O ----------------------------------------------------------------------------------
    def read_at(self, offset: int, views: list, nbytes: int) -> None:
        self._vectored(os.preadv, offset, views, nbytes, "the image ended early (it shrank beneath the device)")

    def write_at(self, offset: int, views: list, nbytes: int) -> None:
        self._vectored(os.pwritev, offset, views, nbytes, "the image took no more data")

    def _vectored(self, call, offset: int, views: list, nbytes: int, short: str) -> None:
        fd, done = self.fd, 0
        if fd < 0:
            self._fd()      # raises EBADF (a method call less on the usual path)
        while done < nbytes:
            n = call(fd, views[:_IOV_MAX] if len(views) > _IOV_MAX else views, offset + done)
            if n <= 0:
                raise OSError(errno.EIO, short)
            done += n
            if done < nbytes:       # short, or more than IOV_MAX views: go on after what moved
                views = _after(views, n)

    def flush(self, data_only: bool = False) -> None:
        (os.fdatasync if data_only else os.fsync)(self._fd())

    def discard(self, offset: int, length: int) -> None:
        fd = self._fd()
        if length:
            self._try_punch(fd, offset, length)     # a hint: doing nothing is fine

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        fd = self._fd()
        if unmap and length and self._try_punch(fd, offset, length):
            return
        chunk, end = len(_ZEROES), offset + length
        while offset < end:
            left = end - offset
            iov = [_ZEROES] * min(_ZERO_IOV, left // chunk)
            if left % chunk and len(iov) < _ZERO_IOV:
                iov.append(_ZEROES[:left % chunk])
            n = os.pwritev(fd, iov, offset)
            if n <= 0:
                raise OSError(errno.EIO, "the image took no more zeroes")
            offset += n

    def _try_punch(self, fd: int, offset: int, length: int) -> bool:
        """Punch a hole; False where the file system cannot (other errors raise)."""
        if not self.can_unmap:
            return False
        try:
            punch_hole(fd, offset, length)
            return True
        except OSError as e:
            if e.errno in _NO_PUNCH:
                return False
            raise
