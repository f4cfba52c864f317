"""NVMM's x86 structures as C declarations (cffi), laid out exactly as NVMM's headers on LP64.

The same layout serves every driver: `X64State` is a `struct nvmm_x64_state`, so the nvmm driver
hands it to the kernel's comm page as is, and the other drivers translate from it.
"""
from .ffi_build import load

CDEF = """
struct nvmm_x64_state_seg_attrib {
    uint16_t type:4;
    uint16_t s:1;
    uint16_t dpl:2;
    uint16_t p:1;
    uint16_t avl:1;
    uint16_t l:1;
    uint16_t def:1;
    uint16_t g:1;
    uint16_t rsvd:4;
};
struct nvmm_x64_state_seg {
    uint16_t selector;
    struct nvmm_x64_state_seg_attrib attrib;
    uint32_t limit;
    uint64_t base;
};
struct nvmm_x64_state_intr {
    uint64_t int_shadow:1;
    uint64_t int_window_exiting:1;
    uint64_t nmi_window_exiting:1;
    uint64_t evt_pending:1;
    uint64_t rsvd:60;
};
struct nvmm_fp_addr32 { uint32_t fa_off; uint16_t fa_seg; uint16_t fa_opcode; };
union nvmm_fp_addr { uint64_t fa_64; struct nvmm_fp_addr32 fa_32; };
struct nvmm_fpacc { uint8_t fp_bytes[10]; uint8_t fp_rsvd[6]; };
struct nvmm_xmmreg { uint8_t xmm_bytes[16]; };
struct nvmm_x64_state_fpu {
    uint16_t fx_cw;
    uint16_t fx_sw;
    uint8_t fx_tw;
    uint8_t fx_zero;
    uint16_t fx_opcode;
    union nvmm_fp_addr fx_ip;
    union nvmm_fp_addr fx_dp;
    uint32_t fx_mxcsr;
    uint32_t fx_mxcsr_mask;
    struct nvmm_fpacc fx_87_ac[8];
    struct nvmm_xmmreg fx_xmm[16];
    uint8_t fx_rsvd[48];
    uint8_t fx_kernel[48];
};
struct nvmm_x64_state {
    struct nvmm_x64_state_seg segs[10];
    uint64_t gprs[18];
    uint64_t crs[6];
    uint64_t drs[6];
    uint64_t msrs[11];
    struct nvmm_x64_state_intr intr;
    struct nvmm_x64_state_fpu fpu;
};
struct nvmm_x86_event_excp { uint64_t error; };
union nvmm_x86_event_u { struct nvmm_x86_event_excp excp; };
struct nvmm_vcpu_event {
    unsigned int type;
    uint8_t vector;
    union nvmm_x86_event_u u;
};
struct nvmm_x86_exit_memory { int prot; uint64_t gpa; uint8_t inst_len; uint8_t inst_bytes[15]; };
struct nvmm_x86_exit_io {
    bool in; uint16_t port; int8_t seg; uint8_t address_size; uint8_t operand_size;
    bool rep; bool str; uint64_t npc;
};
struct nvmm_x86_exit_rdmsr { uint32_t msr; uint64_t npc; };
struct nvmm_x86_exit_wrmsr { uint32_t msr; uint64_t val; uint64_t npc; };
struct nvmm_x86_exit_insn { uint64_t npc; };
struct nvmm_x86_exit_invalid { uint64_t hwcode; };
union nvmm_x86_exit_payload {
    struct nvmm_x86_exit_memory mem;
    struct nvmm_x86_exit_io io;
    struct nvmm_x86_exit_rdmsr rdmsr;
    struct nvmm_x86_exit_wrmsr wrmsr;
    struct nvmm_x86_exit_insn insn;
    struct nvmm_x86_exit_invalid inv;
};
struct nvmm_x86_exitstate {
    uint64_t rflags;
    uint64_t cr8;
    uint64_t int_shadow:1;
    uint64_t int_window_exiting:1;
    uint64_t nmi_window_exiting:1;
    uint64_t evt_pending:1;
    uint64_t rsvd:60;
};
struct nvmm_vcpu_exit {
    uint64_t reason;
    union nvmm_x86_exit_payload u;
    struct nvmm_x86_exitstate exitstate;
};
struct nvmm_cap_md {
    uint64_t mach_conf_support;
    uint64_t vcpu_conf_support;
    uint64_t xcr0_mask;
    uint32_t mxcsr_mask;
    uint32_t conf_cpuid_maxops;
    uint64_t rsvd[6];
};
struct nvmm_capability {
    uint32_t version;
    uint32_t state_size;
    uint32_t max_machines;
    uint32_t max_vcpus;
    uint64_t max_ram;
    struct nvmm_cap_md arch;
};
struct nvmm_vcpu_conf_cpuid_regs { uint32_t eax; uint32_t ebx; uint32_t ecx; uint32_t edx; };
struct nvmm_vcpu_conf_cpuid_mask {
    struct nvmm_vcpu_conf_cpuid_regs set;
    struct nvmm_vcpu_conf_cpuid_regs del;
};
union nvmm_vcpu_conf_cpuid_u { struct nvmm_vcpu_conf_cpuid_mask mask; };
struct nvmm_vcpu_conf_cpuid {
    uint32_t mask:1;
    uint32_t exit:1;
    uint32_t rsvd:30;
    uint32_t leaf;
    union nvmm_vcpu_conf_cpuid_u u;
};
struct nvmm_vcpu_conf_tpr { uint32_t exit_changed:1; uint32_t rsvd:31; };
"""

ffi = load("nvmmpy._nvmm_ffi", CDEF)  # pre-parsed (ffi_build)
