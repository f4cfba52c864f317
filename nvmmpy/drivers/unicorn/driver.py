"""The unicorn driver: NVMM's machine model on a software x86 CPU, for machines without usable
hardware virtualization. Same API, same exits; guest RAM is the same host memory the VMM maps."""
import os

os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

from nvmmpy.emulator.arch import PAGE_SIZE  # noqa: E402

from ... import constants as nvmm  # noqa: E402
from ...capability import Capability  # noqa: E402
from ...nvmm_abi import ffi as nvmm_ffi  # noqa: E402
from . import tuning  # noqa: E402

_TSC_KHZ = None


def probe():
    try:
        import unicorn
    except ImportError:
        return False, "the unicorn package is not installed (pip install unicorn)"
    return True, f"unicorn {unicorn.__version__}: software x86 CPU (no hardware virtualization needed)"


class UnicornMachine:
    def __init__(self, machine):
        self.machine = machine
        self.scan = getattr(machine, "soft_exits", "scan") == "scan"   # see Machine(soft_exits=)
        self._ucs = []          # every vCPU's handle and helper handles, to keep mappings in sync
        self._cpuid_uc = None
        self._cpuid_cache = {}

    # --- memory ----------------------------------------------------------------------------------
    @staticmethod
    def _uc_prot(area_prot: int, executable: bool = False) -> int:
        from unicorn import UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC
        p = UC_PROT_READ
        if area_prot & nvmm.PROT_WRITE:
            p |= UC_PROT_WRITE
        if executable and area_prot & nvmm.PROT_EXEC:
            p |= UC_PROT_EXEC
        return p

    def map_into(self, uc, executable: bool = True) -> None:
        """Map every guest RAM area into `uc` (vCPU handles start non-executable: pages get
        scanned for exit instructions on their first fetch)."""
        for a in self.machine.areas.areas():
            self._map(uc, a, executable)
        self._ucs.append(uc)

    def _map(self, uc, area, executable: bool) -> None:
        prot = self._uc_prot(area.prot, executable)
        uc.mem_map_ptr(area.gpa, area.size, prot, area.hva)
        if not area.prot & nvmm.PROT_WRITE:
            # ROM: only mem_protect marks a region read-only inside unicorn, which keeps writes on
            # its checked path; unicorn with PR #2337 (a fast path for non-executable mappings)
            # would otherwise let them through (upstream issue #2369; docs/unicorn-performance.md)
            uc.mem_protect(area.gpa, area.size, prot)

    def hva_map(self, hva, size):
        pass

    def hva_unmap(self, hva, size):
        pass

    def gpa_map(self, area):
        for uc in self._ucs:  # scanning: new RAM starts non-executable in vCPU handles (helpers never execute)
            self._map(uc, area, executable=not self.scan)
        self._bound_hooks()

    def _bound_hooks(self, leaving=None) -> None:
        """Re-bound the vCPUs' memory hooks to the RAM mapped now (memhooks.py); `leaving`: an
        area being unmapped (still in the map while the driver is told)."""
        areas = [a for a in self.machine.areas.areas() if a is not leaving]
        for v in self.machine.vcpus.values():
            v._mem_hooks.bound(areas)

    def gpa_unmap(self, area):
        for uc in self._ucs:
            uc.mem_unmap(area.gpa, area.size)
        for v in self.machine.vcpus.values():
            v._code.forget_range(area.gpa, area.size)
        self._bound_hooks(leaving=area)

    def protect(self, gpage: int, prot: int) -> None:
        """Change a RAM page's permission in every vCPU handle (never adding write to ROM)."""
        from unicorn import UC_PROT_WRITE
        area = self.machine.areas.lookup(gpage)
        if area is None:
            return
        if not area.prot & nvmm.PROT_WRITE:
            prot &= ~UC_PROT_WRITE
        for v in self.machine.vcpus.values():
            v.protect_page(gpage, prot)

    def new_uc(self):
        from unicorn import Uc, UC_ARCH_X86, UC_MODE_64
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        tuning.configure(uc)
        self.map_into(uc, executable=not self.scan)
        return uc

    # --- CPUID as unicorn answers it ---------------------------------------------------------------
    def cpuid_probe(self, leaf: int, sub: int):
        key = (leaf, sub)
        if key not in self._cpuid_cache:
            from unicorn import Uc, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL
            from unicorn import x86_const as x86
            if self._cpuid_uc is None:
                self._cpuid_uc = Uc(UC_ARCH_X86, UC_MODE_64)
                tuning.configure(self._cpuid_uc)   # CPUID answers come from the vCPUs' model
                self._cpuid_uc.mem_map(0, PAGE_SIZE, UC_PROT_ALL)
                self._cpuid_uc.mem_write(0, b"\x0f\xa2")
            u = self._cpuid_uc
            u.reg_write(x86.UC_X86_REG_RAX, leaf)
            u.reg_write(x86.UC_X86_REG_RCX, sub)
            u.emu_start(0, 2)
            self._cpuid_cache[key] = tuple(u.reg_read(r) & 0xFFFFFFFF for r in (
                x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX))
        return self._cpuid_cache[key]

    def tsc_khz(self) -> int:
        """Unicorn's RDTSC follows a host clock at its own rate: measured once, over 20 ms."""
        global _TSC_KHZ
        if _TSC_KHZ is None:
            import time
            from unicorn import Uc, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL
            from unicorn import x86_const as x86
            u = Uc(UC_ARCH_X86, UC_MODE_64)
            u.mem_map(0, PAGE_SIZE, UC_PROT_ALL)
            u.mem_write(0, b"\x0f\x31")                       # rdtsc

            def rdtsc():
                u.emu_start(0, 2)
                return (u.reg_read(x86.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (u.reg_read(x86.UC_X86_REG_RAX) & 0xFFFFFFFF)
            t0, a = time.perf_counter(), rdtsc()
            time.sleep(0.02)
            t1, b = time.perf_counter(), rdtsc()
            _TSC_KHZ = max(1, round((b - a) / (t1 - t0) / 1000))
        return _TSC_KHZ

    def vcpu_create(self, cpuid):
        from .vcpu import UnicornVCpu
        return UnicornVCpu(self.machine, self, cpuid)

    def destroy(self):
        self._ucs.clear()
        self._cpuid_uc = None


class Driver:
    name = "unicorn"

    def __init__(self):
        self._cap = None

    def capability(self) -> Capability:
        if self._cap is None:
            import unicorn
            self._cap = Capability(
                driver=self.name, version=nvmm.USER_VERSION,
                state_size=nvmm_ffi.sizeof("struct nvmm_x64_state"),
                max_machines=0, max_vcpus=256, max_ram=1 << 48,
                vcpu_conf_support=nvmm.CAP_ARCH_VCPU_CONF_CPUID,
                xcr0_mask=0x3, mxcsr_mask=0xFFFF, conf_cpuid_maxops=0, cpuid_exits=True,
                backend="software", backend_detail=f"unicorn {unicorn.__version__} (QEMU TCG x86-64)",
                speed_note="software emulation (unicorn's JIT): guest code runs several times slower than native "
                           "at any privilege level; each exit leaves the JIT for the Python handling",
                extra={"segments": "real-mode bases are selector*16; protected-mode segments come from the "
                                   "guest's GDT/LDT",
                       "error_codes": "exceptions the guest raises itself carry error code 0, except #PF",
                       "int_shadow": "not tracked: unicorn does not expose the STI/MOV SS interrupt shadow; an "
                                     "interrupt taken at `sti; hlt` returns behind the HLT, as on a CPU",
                       "stops": "at translation-block starts, by a C block hook (drivers/unicorn/tbstop.py); "
                                "instruction-count slices where no C compiler is found"},
            )
        return self._cap

    def machine_create(self, machine) -> UnicornMachine:
        return UnicornMachine(machine)
