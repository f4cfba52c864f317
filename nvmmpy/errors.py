"""Exceptions. NvmmError carries an errno like libnvmm's -1/errno, plus a message a person can act on."""
import errno as _errno


class NvmmError(OSError):
    """A libnvmm-style failure: `.errno` is what nvmm(3) would set, the message says what to do."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)

    def __str__(self) -> str:
        return f"{self.strerror} [{_errno.errorcode.get(self.errno, self.errno)}]"


class DriverUnavailable(NvmmError):
    """The requested kernel interface (or every candidate, for driver='auto') cannot be used here."""

    def __init__(self, message: str, err: int = _errno.ENODEV):
        super().__init__(err, message)


class AssistError(NvmmError):
    """An assist could not complete the exit (wrong exit reason, unknown instruction, bad access)."""
