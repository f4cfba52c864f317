"""Errors a user can cause get clear NvmmError messages with NVMM's errno values."""
import errno
import os

import pytest

import nvmmpy
from nvmmpy import constants as nvmm
from nvmmpy.errors import DriverUnavailable, NvmmError
from nvmmpy.memory import AreaMap
from nvmmpy.drivers.kvm import system as kvm_system

RWX = nvmm.PROT_READ | nvmm.PROT_WRITE | nvmm.PROT_EXEC
P = nvmm.PAGE_SIZE


@pytest.fixture
def areas():
    a = AreaMap(max_ram=1 << 30)
    a.hva_map(0x10000000, 16 * P)
    return a


def err(excinfo):
    return excinfo.value.errno


def test_hva_map_rules(areas):
    with pytest.raises(NvmmError) as e:
        areas.hva_map(0x10000000 + 4 * P, P)           # overlaps
    assert err(e) == errno.EEXIST and "overlaps" in str(e.value)
    for hva, size in ((0x20000001, P), (0x20000000, P + 1), (0, P), (0x20000000, 0)):
        with pytest.raises(NvmmError) as e:
            areas.hva_map(hva, size)
        assert err(e) == errno.EINVAL
    for i in range(nvmm.MAX_HVA_MAPPINGS - 1):
        areas.hva_map(0x40000000 + i * 2 * P, P)
    with pytest.raises(NvmmError) as e:
        areas.hva_map(0x7F000000, P)
    assert err(e) == errno.ENOBUFS
    with pytest.raises(NvmmError) as e:
        areas.hva_unmap(0x10000000, P)                 # not the exact pair
    assert err(e) == errno.ENOENT


def test_gpa_map_rules(areas):
    base = 0x10000000
    areas.check_gpa_map(base, 0, 4 * P, RWX)
    areas.add(base, 0, 4 * P, RWX)
    cases = [
        ((base + 1, 8 * P, P, RWX), errno.EINVAL, "hva"),            # unaligned hva
        ((base, 8 * P + 8, P, RWX), errno.EINVAL, "gpa"),            # unaligned gpa
        ((base, 8 * P, P + 1, RWX), errno.EINVAL, "size"),           # unaligned size
        ((base, 8 * P, 0, RWX), errno.EINVAL, "non-zero"),
        ((base, 8 * P, P, 0x10), errno.EINVAL, "prot"),              # bad prot bits
        ((base, 2 * P, 4 * P, RWX), errno.EEXIST, "overlaps"),       # gpa overlap
        ((base + 15 * P, 8 * P, 2 * P, RWX), errno.EINVAL, "inside one hva_map"),  # beyond the hva range
        ((0x50000000, 8 * P, P, RWX), errno.EINVAL, "inside one hva_map"),         # never hva_map'ed
        ((base, (1 << 30) - P, 2 * P, RWX), errno.EINVAL, "guest-physical space"),  # past max RAM
    ]
    for args, code, words in cases:
        with pytest.raises(NvmmError) as e:
            areas.check_gpa_map(*args)
        assert err(e) == code, args
        assert words in str(e.value), (args, str(e.value))
    with pytest.raises(NvmmError) as e:
        areas.find_exact(base, 0, 2 * P)                  # gpa_unmap needs the exact triple
    assert err(e) == errno.ENOENT
    with pytest.raises(NvmmError) as e:
        areas.hva_unmap(base, 16 * P)                     # still backing guest memory
    assert err(e) == errno.EBUSY
    assert areas.gpa_to_hva(3 * P + 5) == (base + 3 * P + 5, RWX)
    with pytest.raises(NvmmError) as e:
        areas.gpa_to_hva(4 * P)
    assert err(e) == errno.ENOENT


def test_unknown_driver():
    with pytest.raises(DriverUnavailable, match="unknown driver 'bhyve'"):
        nvmmpy.Machine("bhyve")


def test_no_dev_kvm(tmp_path):
    with pytest.raises(DriverUnavailable) as e:
        kvm_system.open_kvm(str(tmp_path / "kvm"))
    assert "does not exist" in str(e.value) and "unicorn" in str(e.value)


def test_no_permission_on_dev_kvm(monkeypatch):
    def denied(path, flags, *a):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(DriverUnavailable) as e:
        kvm_system.open_kvm("/dev/kvm")
    assert e.value.errno == errno.EACCES and "'kvm' group" in str(e.value)


def test_not_kvm_device(tmp_path):
    f = tmp_path / "kvm"
    f.write_bytes(b"")
    with pytest.raises(DriverUnavailable, match="does not answer KVM_GET_API_VERSION"):
        kvm_system.open_kvm(str(f))


@pytest.mark.kvm
def test_machine_and_vcpu_errors(kvm_vm):
    mach, vcpu = kvm_vm.mach, kvm_vm.vcpu
    with pytest.raises(NvmmError) as e:
        mach.vcpu_create(0)
    assert err(e) == errno.EEXIST
    for bad in (-1, mach.capability.max_vcpus, "1"):
        with pytest.raises(NvmmError) as e:
            mach.vcpu_create(bad)
        assert err(e) == errno.EINVAL
    with pytest.raises(NvmmError, match="assist_io on a NONE exit"):
        vcpu.assist_io()
    with pytest.raises(NvmmError, match="unknown state flags"):
        vcpu.getstate(0x80)
    with pytest.raises(NvmmError, match="unknown vCPU configuration op"):
        vcpu.configure(99, None)
    with pytest.raises(NvmmError) as e:
        mach.gpa_map(kvm_vm.mem.address, 0, nvmm.PAGE_SIZE, RWX)   # RAM is already at gpa 0
    assert err(e) == errno.EEXIST
    mach.vcpu_destroy(vcpu)
    for call in (vcpu.run, vcpu.getstate, vcpu.setstate, vcpu.inject, vcpu.assist_io, vcpu.stop):
        with pytest.raises(NvmmError, match="vCPU 0 was destroyed") as e:
            call()
        assert err(e) == errno.ENOENT
    with pytest.raises(NvmmError):
        mach.vcpu_destroy(vcpu)
    mach.destroy()
    with pytest.raises(NvmmError, match="machine was destroyed"):
        mach.vcpu_create(1)


@pytest.mark.kvm
def test_mapping_round_trip_on_kvm(kvm_vm):
    """gpa_unmap then gpa_map elsewhere: the guest sees the memory move; ROM mappings are honoured."""
    mach = kvm_vm.mach
    rom = nvmmpy.HostMemory(nvmm.PAGE_SIZE)
    try:
        mach.hva_map(rom.address, rom.size)
        mach.gpa_map(rom.address, 0x400000, rom.size, nvmm.PROT_READ | nvmm.PROT_EXEC)
        assert mach.gpa_to_hva(0x400010) == (rom.address + 0x10, nvmm.PROT_READ | nvmm.PROT_EXEC)
        mach.gpa_unmap(rom.address, 0x400000, rom.size)
        with pytest.raises(NvmmError):
            mach.gpa_to_hva(0x400010)
        mach.hva_unmap(rom.address, rom.size)
    finally:
        rom.close()
