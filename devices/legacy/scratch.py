"""Scratch MMIO page: registers that read back what was last written, for exit-storm guests.

Every access (in range or not) is counted in `.reads` / `.writes`, so a guest's loop of MMIO
exits can be measured.  An access that does not fit entirely inside the page reads all 0xFF
bytes and its write is ignored.  Registers are little-endian 32-bit, but any access size works
on the underlying bytes.
"""


class ScratchMmio:
    def __init__(self, size=4096):
        self.size = max(0, int(size))
        self._regs = bytearray(self.size)
        self._view = memoryview(self._regs)
        self.reads = 0
        self.writes = 0

    def read(self, offset: int, data: memoryview) -> None:
        self.reads += 1
        n = len(data)
        if 0 <= offset and offset + n <= self.size:   # once per exit of the exit storms: kept inline
            data[:] = self._view[offset:offset + n]
        else:
            for i in range(n):
                data[i] = 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        self.writes += 1
        n = len(data)
        if 0 <= offset and offset + n <= self.size:
            self._view[offset:offset + n] = data   # through the view: ~50 ns, the bytearray's slice ~140

    def register(self, index: int) -> int:
        """The 32-bit register at `index` (offset 4 * index), for the VMM and tests."""
        return int.from_bytes(self._regs[4 * index:4 * index + 4], "little")
