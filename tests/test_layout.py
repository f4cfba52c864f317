"""The cffi declarations match the C ABIs: KVM's against <linux/kvm.h> compiled here, NVMM's
against the sizes and offsets of NetBSD's headers (reference/nvmm.md)."""
import os
import shutil
import subprocess

import pytest

from nvmmpy.drivers.kvm import abi as kvm
from nvmmpy.nvmm_abi import ffi as nvmm_ffi

KVM_FIELDS = {
    "kvm_run": ["request_interrupt_window", "immediate_exit", "exit_reason", "ready_for_interrupt_injection",
                "if_flag", "flags", "cr8", "apic_base", "kvm_valid_regs", "kvm_dirty_regs", "s"],
    "kvm_regs": ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r15", "rip", "rflags"],
    "kvm_sregs": ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt", "cr0", "cr2", "cr3", "cr4",
                  "cr8", "efer", "apic_base", "interrupt_bitmap"],
    "kvm_segment": ["base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"],
    "kvm_dtable": ["base", "limit"],
    "kvm_fpu": ["fpr", "fcw", "fsw", "ftwx", "last_opcode", "last_ip", "last_dp", "xmm", "mxcsr"],
    "kvm_vcpu_events": ["exception", "interrupt", "nmi", "sipi_vector", "flags", "smi", "exception_has_payload",
                        "exception_payload"],
    "kvm_debugregs": ["db", "dr6", "dr7", "flags"],
    "kvm_xcrs": ["nr_xcrs", "flags", "xcrs"],
    "kvm_msr_entry": ["index", "data"],
    "kvm_msrs": ["nmsrs", "entries"],
    "kvm_cpuid_entry2": ["function", "index", "flags", "eax", "ebx", "ecx", "edx"],
    "kvm_cpuid2": ["nent", "entries"],
    "kvm_userspace_memory_region": ["slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr"],
    "kvm_enable_cap": ["cap", "flags", "args"],
    "kvm_xsave": ["region"],
    "kvm_interrupt": ["irq"],
}
# fields of kvm_run's anonymous exit union, by the member name kvm.h uses
KVM_RUN_UNION = {
    "io": ["direction", "size", "port", "count", "data_offset"],
    "mmio": ["phys_addr", "data", "len", "is_write"],
    "msr": ["error", "reason", "index", "data"],
    "fail_entry": ["hardware_entry_failure_reason", "cpu"],
    "internal": ["suberror", "ndata", "data"],
    "hw": ["hardware_exit_reason"],
}
IOCTLS = ["KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
          "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_TSS_ADDR",
          "KVM_SET_IDENTITY_MAP_ADDR", "KVM_ENABLE_CAP", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS",
          "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_INTERRUPT", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_FPU",
          "KVM_SET_FPU", "KVM_SET_CPUID2", "KVM_GET_CPUID2", "KVM_NMI", "KVM_GET_VCPU_EVENTS",
          "KVM_SET_VCPU_EVENTS", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_GET_XSAVE", "KVM_SET_XSAVE",
          "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_GET_XSAVE2",
          "KVM_CAP_SYNC_REGS", "KVM_CAP_X86_USER_SPACE_MSR", "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_XSAVE2",
          "KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_HLT", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_FAIL_ENTRY",
          "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_X86_RDMSR", "KVM_EXIT_X86_WRMSR", "KVM_EXIT_IRQ_WINDOW_OPEN",
          "KVM_MSR_EXIT_REASON_UNKNOWN", "KVM_SYNC_X86_REGS", "KVM_MEM_READONLY"]


def _c_program():
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for s, fields in KVM_FIELDS.items():
        lines.append(f'printf("size {s} %zu\\n", sizeof(struct {s}));')
        for f in fields:
            lines.append(f'printf("off {s}.{f} %zu\\n", offsetof(struct {s}, {f}));')
    for member, fields in KVM_RUN_UNION.items():
        for f in fields:
            lines.append(f'printf("off kvm_run.{member}.{f} %zu\\n", offsetof(struct kvm_run, {member}.{f}));')
    for name in IOCTLS:
        lines.append(f'printf("const {name} %lu\\n", (unsigned long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    if not shutil.which("gcc") or not os.path.exists("/usr/include/linux/kvm.h"):
        pytest.skip("needs gcc and /usr/include/linux/kvm.h (setup.sh installs gcc and linux-libc-dev)")
    d = tmp_path_factory.mktemp("layout")
    (d / "p.c").write_text(_c_program())
    subprocess.run(["gcc", "-o", str(d / "p"), str(d / "p.c")], check=True, capture_output=True)
    out = subprocess.run([str(d / "p")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_kvm_struct_sizes_and_offsets(c_layout):
    ffi = kvm.ffi
    for s, fields in KVM_FIELDS.items():
        assert ffi.sizeof(f"struct {s}") == c_layout[f"size {s}"], s
        for f in fields:
            assert ffi.offsetof(f"struct {s}", f) == c_layout[f"off {s}.{f}"], f"{s}.{f}"
    x = ffi.offsetof("struct kvm_run", "x")
    for member, fields in KVM_RUN_UNION.items():
        for f in fields:
            ours = x + ffi.offsetof(f"struct kvm_run_{member}", f)
            assert ours == c_layout[f"off kvm_run.{member}.{f}"], f"kvm_run.{member}.{f}"


def test_kvm_ioctl_numbers_and_constants(c_layout):
    for name in IOCTLS:
        assert getattr(kvm, name) == c_layout[f"const {name}"], name


def test_nvmm_layout_matches_netbsd_headers():
    ffi = nvmm_ffi
    assert ffi.sizeof("struct nvmm_x64_state") == 1008
    assert [ffi.offsetof("struct nvmm_x64_state", f) for f in ("segs", "gprs", "crs", "drs", "msrs", "intr", "fpu")] \
        == [0, 160, 304, 352, 400, 488, 496]
    assert ffi.sizeof("struct nvmm_x64_state_seg") == 16
    assert ffi.offsetof("struct nvmm_x64_state_seg", "limit") == 4
    assert ffi.offsetof("struct nvmm_x64_state_seg", "base") == 8
    assert ffi.sizeof("struct nvmm_x64_state_fpu") == 512
    assert ffi.offsetof("struct nvmm_x64_state_fpu", "fx_mxcsr") == 24
    assert ffi.offsetof("struct nvmm_x64_state_fpu", "fx_87_ac") == 32
    assert ffi.offsetof("struct nvmm_x64_state_fpu", "fx_xmm") == 160
    assert ffi.sizeof("struct nvmm_vcpu_exit") == 64
    assert ffi.offsetof("struct nvmm_vcpu_exit", "u") == 8
    assert ffi.offsetof("struct nvmm_vcpu_exit", "exitstate") == 40
    assert ffi.sizeof("struct nvmm_x86_exit_memory") == 32
    assert ffi.offsetof("struct nvmm_x86_exit_memory", "inst_bytes") == 17
    assert ffi.sizeof("struct nvmm_x86_exit_io") == 24
    assert ffi.offsetof("struct nvmm_x86_exit_io", "npc") == 16
    assert ffi.sizeof("struct nvmm_x86_exit_wrmsr") == 24
    assert ffi.sizeof("struct nvmm_capability") == 104
    assert ffi.sizeof("struct nvmm_cap_md") == 80
    assert ffi.sizeof("struct nvmm_vcpu_event") == 16
    assert ffi.offsetof("struct nvmm_vcpu_event", "vector") == 4
    assert ffi.offsetof("struct nvmm_vcpu_event", "u") == 8
    assert ffi.sizeof("struct nvmm_vcpu_conf_cpuid") == 40
    assert ffi.sizeof("struct nvmm_vcpu_conf_tpr") == 4


def test_nvmm_segment_attribute_bits():
    seg = nvmm_ffi.new("struct nvmm_x64_state_seg *")
    a = seg.attrib
    a.type, a.s, a.dpl, a.p, a.avl, a.l, a.g = 0xB, 1, 3, 1, 1, 1, 1
    setattr(a, "def", 1)
    raw = int.from_bytes(bytes(nvmm_ffi.buffer(seg))[2:4], "little")
    assert raw == 0xB | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11
