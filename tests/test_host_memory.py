"""HostMemory: guest RAM from 2 MiB up is 2 MiB-aligned (so transparent huge pages can back it)."""
import pytest

import nvmmpy
from nvmmpy import memory


@pytest.mark.parametrize("size", [memory.HUGE_PAGE, 3 * memory.HUGE_PAGE + 0x1000, 64 << 20])
def test_large_memory_is_huge_page_aligned(size):
    with nvmmpy.HostMemory(size) as m:
        assert m.address % memory.HUGE_PAGE == 0
        assert len(m.view) == m.size == size
        m.view[0], m.view[size - 1] = 1, 2            # the whole range is usable, both ends
        assert memory.host_buffer(m.address, size)[size - 1] == b"\x02"


def test_small_memory_is_page_aligned_without_slack():
    with nvmmpy.HostMemory(0x3000) as m:
        assert m.address % 0x1000 == 0 and len(m.view) == 0x3000
        assert len(m._mmap) == 0x3000


def test_close_twice():
    m = nvmmpy.HostMemory(memory.HUGE_PAGE)
    m.close()
    m.close()
