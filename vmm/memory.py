"""GuestRam: the VM's RAM, mapped into the machine and offered to devices as GuestMemory."""
import errno

import nvmmpy
from nvmmpy import constants as C
from nvmmpy.errors import NvmmError

from nvmmpy.devices.interfaces import GuestMemoryError

MIN_RAM = 2 << 20


class GuestRam:
    """One RAM region at guest-physical 0 (bounds-checked read/write/view for devices)."""

    def __init__(self, machine, size: int):
        if size < MIN_RAM or size % C.PAGE_SIZE:
            raise NvmmError(errno.EINVAL, f"guest RAM must be a multiple of 4 KiB and at least {MIN_RAM >> 20} MiB")
        self.size = size
        self.host = nvmmpy.HostMemory(size)
        self.view_all = self.host.view
        machine.hva_map(self.host.address, size)
        machine.gpa_map(self.host.address, 0, size, C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC)

    def _check(self, gpa: int, size: int) -> None:
        if size < 0 or gpa < 0 or gpa + size > self.size:
            raise GuestMemoryError(f"guest range {gpa:#x}+{size:#x} is outside guest RAM (0-{self.size:#x})")

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        return bytes(self.view_all[gpa:gpa + size])

    def write(self, gpa: int, data) -> None:
        self._check(gpa, len(data))
        self.view_all[gpa:gpa + len(data)] = data

    def view(self, gpa: int, size: int) -> memoryview:
        self._check(gpa, size)
        return self.view_all[gpa:gpa + size]

    def close(self) -> None:
        self.view_all = None
        self.host.close()
