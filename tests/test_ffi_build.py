"""The committed pre-parsed cffi modules match their ABIs' CDEF, and an install without them parses in-line."""
import subprocess
import sys

import pytest

from nvmmpy import ffi_build


@pytest.mark.parametrize("name", sorted(ffi_build.MODULES))
def test_generated_module_is_current(name):
    with open(ffi_build.path_of(name)) as committed:
        assert ffi_build.source(name) == committed.read(), f"stale: run `python scripts/build_ffi.py` ({name})"


FALLBACK = r"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from nvmmpy import nvmm_abi
from nvmmpy.drivers.kvm import abi as kvm
from nvmmpy.drivers.nvmm import abi as nvmm
for name in HIDDEN:
    assert sys.modules[name].__spec__ is None, name   # made in memory, not imported from a file
print(nvmm_abi.ffi.sizeof("struct nvmm_x64_state"), kvm.ffi.sizeof("struct kvm_run"), kvm.KVM_RUN,
      nvmm.ffi.sizeof("struct nvmm_comm_page_v2"), nvmm.ffi.sizeof("struct nvmm_ioc_vcpu_run"))
comm = nvmm.ffi.new("struct nvmm_comm_page_v2 *")
print(nvmm.ffi.typeof(nvmm.ffi.addressof(comm, "state")) is nvmm_abi.ffi.typeof("struct nvmm_x64_state *"))
"""


def _run(hidden):
    p = subprocess.run([sys.executable, "-c", f"HIDDEN = {hidden!r}" + FALLBACK], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("hidden", [set(ffi_build.MODULES), {"nvmmpy.drivers.kvm._ffi", "nvmmpy.drivers.nvmm._ffi"}])
def test_missing_generated_modules_parse_in_line_with_the_same_layout(hidden):
    assert _run(hidden) == _run(set())
