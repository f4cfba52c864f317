"""X64State: the vCPU state, a `struct nvmm_x64_state` in C memory, indexed with NVMM's constants.

    st = vcpu.state
    vcpu.getstate(X64_STATE_GPRS)
    st.gprs[X64_GPR_RIP] += 2
    st.segs[X64_SEG_CS].attrib.l = 1
    vcpu.setstate(X64_STATE_GPRS)
"""
from .nvmm_abi import ffi
from . import constants as nvmm


def new_state():
    """A zeroed struct nvmm_x64_state (cffi, owned by the returned object)."""
    return ffi.new("struct nvmm_x64_state *")


def reset_state(st) -> None:
    """Fill `st` with the x86 power-on state NVMM gives a new vCPU (real mode at F000:FFF0)."""
    ffi.memmove(st, b"\0" * ffi.sizeof("struct nvmm_x64_state"), ffi.sizeof("struct nvmm_x64_state"))
    for i in range(nvmm.X64_NSEG):
        seg = st.segs[i]
        seg.selector = 0
        seg.base = 0
        seg.limit = 0xFFFF
        seg.attrib.p = 1
        seg.attrib.s = 1
        seg.attrib.type = 3  # read/write data, accessed
    cs = st.segs[nvmm.X64_SEG_CS]
    cs.selector = 0xF000
    cs.base = 0xFFFF0000
    cs.attrib.type = 11  # execute/read code, accessed
    for i in (nvmm.X64_SEG_GDT, nvmm.X64_SEG_IDT):
        st.segs[i].attrib.s = 0
        st.segs[i].attrib.type = 0
    st.segs[nvmm.X64_SEG_LDT].attrib.s = 0
    st.segs[nvmm.X64_SEG_LDT].attrib.type = 2
    st.segs[nvmm.X64_SEG_TR].attrib.s = 0
    st.segs[nvmm.X64_SEG_TR].attrib.type = 11  # busy 32-bit TSS, as VMX requires
    st.gprs[nvmm.X64_GPR_RIP] = 0xFFF0
    st.gprs[nvmm.X64_GPR_RFLAGS] = 0x2
    st.crs[nvmm.X64_CR_CR0] = 0x60000010
    st.crs[nvmm.X64_CR_XCR0] = 1
    st.drs[nvmm.X64_DR_DR6] = 0xFFFF0FF0
    st.drs[nvmm.X64_DR_DR7] = 0x400
    st.msrs[nvmm.X64_MSR_PAT] = 0x0007040600070406
    st.fpu.fx_cw = 0x40
    st.fpu.fx_mxcsr = 0x1F80
    st.fpu.fx_mxcsr_mask = 0xFFFF


def state_bytes(st) -> bytes:
    return bytes(ffi.buffer(st))


def copy_state(dst, src) -> None:
    ffi.memmove(dst, src, ffi.sizeof("struct nvmm_x64_state"))
