"""x86 architectural facts, defined once: control-register, EFER and RFLAGS bits, the page size,
exception vectors and which of them push an error code.

Everything else imports them from here (the emulator, the core API and its drivers, the VMM
through nvmmpy.constants); this module imports nothing, so it sits at the bottom of the layers.
Values are from the Intel SDM vol. 3 (2.5 "Control Registers", 2.2.1 "Extended Feature Enable
Register", 2.3 "System Flags and Fields in the EFLAGS Register", table 6-1 "Exceptions and
Interrupts") and the AMD APM vol. 2 (3.1 "System-Control Registers", table 8-1 "Interrupt
Vector Source and Cause").

Error codes. ERROR_CODE_VECTORS is the union of both manuals: #DF 8, #TS 10, #NP 11, #SS 12,
#GP 13, #PF 14, #AC 17 and #CP 21 push one on Intel and AMD (SDM table 6-1, APM table 8-1);
#VC 29 and #SX 30 do on AMD (APM table 8-1; Intel reserves 29 and 30 and never raises them).
A guest may run on either vendor's CPU, so an exception delivered or injected with one of these
vectors pushes an error code whatever the host. (nvmmpy's injection, nvmmpy/vcpu.py, always
took this union; the emulator and the unicorn driver had the Intel set, so until they shared
this one an injected #VC or #SX failed on unicorn.)
"""

PAGE_SIZE = 0x1000

# CR0 (SDM 2.5)
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_PG = 1 << 31

# CR4 (SDM 2.5)
CR4_VME = 1 << 0
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_LA57 = 1 << 12
CR4_OSXSAVE = 1 << 18

# IA32_EFER (SDM 2.2.1)
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

# RFLAGS (SDM 2.3, 3.4.3)
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1       # reads as 1
RFLAGS_PF = 1 << 2
RFLAGS_AF = 1 << 4
RFLAGS_ZF = 1 << 6
RFLAGS_SF = 1 << 7
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_OF = 1 << 11
RFLAGS_IOPL = 3 << 12
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18

# Exception vectors (SDM table 6-1, APM table 8-1). #SS is SS_FAULT: SS is the segment register.
DE, DB, NMI, BP, OF, BR, UD, NM, DF = range(9)
TS, NP, SS_FAULT, GP, PF = 10, 11, 12, 13, 14
MF, AC, MC, XM, VE, CP = 16, 17, 18, 19, 20, 21
VC, SX = 29, 30

ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS_FAULT, GP, PF, AC, CP, VC, SX})

VECTOR_NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD",
                NM: "#NM", DF: "#DF", TS: "#TS", NP: "#NP", SS_FAULT: "#SS", GP: "#GP",
                PF: "#PF", MF: "#MF", AC: "#AC", MC: "#MC", XM: "#XM", VE: "#VE", CP: "#CP",
                VC: "#VC", SX: "#SX"}
