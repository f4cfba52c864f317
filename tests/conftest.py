import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import TestVM, kvm_usable  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture
def kvm_vm():
    ok, reason = kvm_usable()
    if not ok:
        pytest.skip(f"needs /dev/kvm: {reason}")
    vm = TestVM("kvm")
    yield vm
    vm.close()
