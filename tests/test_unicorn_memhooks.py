"""The unicorn driver's memory hooks cover what is not RAM (hooks mode) or everything (scan mode),
and follow RAM being mapped and unmapped: MMIO and ROM writes still exit, RAM stores stay on
unicorn's fast path (drivers/unicorn/memhooks.py)."""
import pytest

import nvmmpy

from nvmmpy import constants as nvmm
from nvmmpy.drivers.unicorn.memhooks import LAST, outside_ram
from nvmmpy.memory import GpaArea


def area(gpa, size, prot=nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC):
    return GpaArea(gpa, size, 0, prot)


def test_outside_ram_is_the_complement_of_writable_areas():
    areas = [area(0x100000, 0x100000), area(0, 0xA0000), area(0xF0000, 0x10000, nvmm.PROT_READ | nvmm.PROT_EXEC),
             area(1 << 32, 1 << 30)]
    assert outside_ram(areas) == [(0xA0000, 0xFFFFF), (0x200000, (1 << 32) - 1), ((1 << 32) + (1 << 30), LAST)]
    assert outside_ram([]) == [(0, LAST)]
    assert outside_ram([area(0, 1 << 20), area(1 << 20, 1 << 20)]) == [(2 << 20, LAST)]   # adjacent areas


@pytest.mark.parametrize("soft_exits", ["hooks", "scan"])
def test_hooks_follow_the_ram_map(soft_exits):
    mach = nvmmpy.Machine("unicorn", soft_exits=soft_exits)
    ram, extra = nvmmpy.HostMemory(2 << 20), nvmmpy.HostMemory(1 << 20)
    try:
        mach.hva_map(ram.address, 2 << 20)
        mach.gpa_map(ram.address, 0, 2 << 20, nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC)
        hooks = mach.vcpu_create(0)._mem_hooks
        if soft_exits == "scan":
            assert hooks.ranges == [(0, LAST)]       # code-page tracking needs them over RAM too
            return
        assert hooks.ranges == [(2 << 20, LAST)]
        mach.hva_map(extra.address, 1 << 20)
        mach.gpa_map(extra.address, 0x40000000, 1 << 20, nvmm.PROT_READ | nvmm.PROT_WRITE)
        assert hooks.ranges == [(2 << 20, 0x40000000 - 1), (0x40100000, LAST)]
        mach.gpa_unmap(extra.address, 0x40000000, 1 << 20)
        assert hooks.ranges == [(2 << 20, LAST)]     # MMIO again: an access there must exit
    finally:
        mach.destroy()
        ram.close()
        extra.close()

