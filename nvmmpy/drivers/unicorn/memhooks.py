"""Where the driver's memory hooks (unmapped and protection faults) are installed.

Why it matters: unicorn 2.1.4 never marks a RAM page dirty while any memory hook covers its
address (notdirty_write), so with hooks over every address each guest store to RAM leaves the
generated code for a slow C path; that was 43% of the vCPU thread in a Linux boot (py-spy), and
bounding the hooks to what is not RAM took Debian's kernel from 18.4 to 6.1 s to /init (QEMU 10
TCG: 3.1 s; docs/linux.md).

In "hooks" mode (soft_exits="hooks") the hooks only need to see MMIO (unmapped addresses) and
writes to ROM, so they cover the complement of the writable RAM areas and are re-bounded when
RAM is mapped or unmapped. In "scan" mode code pages are tracked by taking execute and write
permission away from RAM pages, so the hooks must cover everything.
"""
from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_WRITE_PROT

from ... import constants as nvmm

LAST = (1 << 64) - 1


def outside_ram(areas) -> list:
    """[(first, last)] inclusive ranges of guest-physical space not covered by writable RAM."""
    ranges, at = [], 0
    for a in sorted((a for a in areas if a.prot & nvmm.PROT_WRITE), key=lambda a: a.gpa):
        if a.gpa > at:
            ranges.append((at, a.gpa - 1))
        at = max(at, a.gpa + a.size)
    if at <= LAST:
        ranges.append((at, LAST))
    return ranges


class MemoryHooks:
    """The unmapped/fetch-protection/write-protection hooks of one vCPU engine."""

    def __init__(self, uc, everywhere: bool, on_unmapped, on_prot):
        self._uc, self._everywhere = uc, everywhere
        self._handlers = ((UC_HOOK_MEM_UNMAPPED, on_unmapped), (UC_HOOK_MEM_FETCH_PROT, on_prot),
                          (UC_HOOK_MEM_WRITE_PROT, on_prot))
        self._hooks = []
        self.ranges = []

    def bound(self, areas) -> None:
        """(Re)install the hooks for the RAM areas mapped now (between runs only)."""
        ranges = [(0, LAST)] if self._everywhere else outside_ram(areas)
        if ranges == self.ranges:
            return
        for h in self._hooks:
            self._uc.hook_del(h)
        self._hooks = [self._uc.hook_add(kind, cb, None, first, last)
                       for first, last in ranges for kind, cb in self._handlers]
        self.ranges = ranges
