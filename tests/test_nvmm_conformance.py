"""libnvmm's h_mem_assist and h_io_assist cases (tests/test_conformance_*.py) through the nvmm
driver, against a fake NVMM kernel whose vCPU really executes the guest (on the unicorn CPU) and
reports exits as NVMM's kernel does: VMX-style (no instruction bytes: the driver fetches them by a
guest page walk; INS/OUTS segment filled in) or SVM-style (decode-assist bytes; seg = -1).

The assists, the comm-page state protocol and the exit decoding are all the nvmm driver's own; only
the CPU underneath is simulated.

On NetBSD and DragonFly the same cases also run on the real /dev/nvmm ("device" parameter; it is
not generated at all on other systems, so nothing is skipped on Linux).
"""
import pytest

import test_conformance_io_assist as io_conf
import test_conformance_mem_assist as mem_conf
from nvmmpy.drivers.nvmm.system import host_os
from test_nvmm_fake_kernel import UnicornCpu, fake_nvmm, nvmm_kernel

KERNELS = [pytest.param(("netbsd", 2, "vmx"), id="netbsd-vmx"),
           pytest.param(("dragonfly", 2, "svm"), id="dragonfly-svm")]
if host_os() is not None:
    KERNELS.append(pytest.param("device", id="device"))


def _fake(kernel):
    if kernel == "device":
        return nvmm_kernel(None)
    os_name, version, backend = kernel
    return fake_nvmm(os_name=os_name, version=version, backend=backend, cpu=UnicornCpu())


@pytest.mark.parametrize("case", mem_conf.CASES_64, ids=lambda c: c.name)
@pytest.mark.parametrize("kernel", KERNELS)
def test_mem_assist_64(kernel, case):
    with _fake(kernel) as fake:
        mem_conf.test_mem_assist_64("nvmm", case)
        assert fake is None or ("VCPU_SETSTATE" not in fake.log and "VCPU_INJECT" not in fake.log)


@pytest.mark.parametrize("case", mem_conf.CASES_16, ids=lambda c: c.name)
@pytest.mark.parametrize("kernel", KERNELS)
def test_mem_assist_16(kernel, case):
    with _fake(kernel):
        mem_conf.test_mem_assist_16("nvmm", case)


@pytest.mark.parametrize("case", io_conf.CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("kernel", KERNELS)
def test_io_assist(kernel, case):
    with _fake(kernel):
        io_conf.test_io_assist("nvmm", case)


def test_assists_need_no_getstate():
    """Exits provide GPRS|SEGS|CRS|MSRS in the comm page, so a run of MMIO exits makes no GETSTATE
    (libnvmm's reason for the cache)."""
    case = mem_conf.CASES_64[0]
    with _fake(("netbsd", 2, "vmx")) as fake:
        with mem_conf.open_vm("nvmm") as vm:
            vm.start_long_mode(case.source)
            n = len(fake.log)
            vm.run()
            during = fake.log[n:]
        assert during.count("VCPU_RUN") >= 4 and set(during) == {"VCPU_RUN"}
