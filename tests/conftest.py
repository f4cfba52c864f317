import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# driver="auto" must follow its built-in rule in tests, not a profile a developer's
# `nvmmpy bench` left in ~/.cache (subprocesses inherit this too).
os.environ["NVMMPY_PROFILE"] = os.devnull

from harness import TestVM, need  # noqa: E402

DRIVERS = ["kvm", "unicorn"]


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def make_vm(driver: str, **kw):
    need(driver)
    return TestVM(driver, **kw)


@pytest.fixture
def kvm_vm():
    vm = make_vm("kvm")
    yield vm
    vm.close()


@pytest.fixture(params=DRIVERS)
def vm(request):
    """A test VM on each driver: the same guest must behave the same on kvm and on unicorn."""
    v = make_vm(request.param)
    yield v
    v.close()
