"""Guest RAM for the emulator's unit tests: the bus's read/write on a bytearray at GPA 0.

An access outside it raises IndexError (as the emulator's callers expect of a bad GPA); reads and
writes are counted, so a test can check that a walk or a fault touched no memory.
"""


class FlatRam:
    def __init__(self, size: int):
        self.ram = bytearray(size)
        self.reads = 0
        self.writes = 0

    def _check(self, gpa: int, n: int) -> None:
        if gpa < 0 or gpa + n > len(self.ram):
            raise IndexError(f"gpa {gpa:#x} outside RAM")

    def read(self, gpa: int, n: int) -> bytes:
        self._check(gpa, n)
        self.reads += 1
        return bytes(self.ram[gpa:gpa + n])

    def write(self, gpa: int, data) -> None:
        self._check(gpa, len(data))
        self.writes += 1
        self.ram[gpa:gpa + len(data)] = data
