"""Debug-exit port (0x501): a guest ends its VM with an exit code.

A 1- or 2-byte write at offset 0 calls `on_exit(value & 0xFF)`.  Unlike QEMU's isa-debug-exit,
which makes the process exit with (value << 1) | 1, the code passed on is the value itself, so a
guest writing 0 reports success.  Other offsets and sizes are ignored; reads return 0xFF.
`on_exit()` is the VMM's own callback; whatever it raises is the VMM's business.
"""


class DebugExit:
    def __init__(self, on_exit):
        self._on_exit = on_exit

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            data[i] = 0xFF

    def write(self, offset: int, data: memoryview) -> None:
        if offset == 0 and len(data) in (1, 2):
            self._on_exit(data[0] & 0xFF)
