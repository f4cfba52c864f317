"""VCpu: the libnvmm vCPU API common to every driver (validation, configuration, event checks).

Drivers subclass it and provide _getstate/_setstate/_inject/run/stop/assist_io/assist_mem and
the _configure_* hooks. `vcpu.state`, `vcpu.event` and `vcpu.exit` are libnvmm's vcpu->state,
vcpu->event and vcpu->exit: fill or read them, then call setstate/inject/run.
"""
import errno

from nvmmpy.emulator.arch import ERROR_CODE_VECTORS

from . import constants as nvmm
from .assist import AssistCallbacks, CpuidConf, IoAccess, MemAccess, TprConf
from .errors import NvmmError
from .exits import Exit
from .nvmm_abi import ffi
from .state import new_state


class VCpu:
    def __init__(self, machine, cpuid: int, exitstate=None):
        self.machine = machine
        self.cpuid = cpuid
        self.state = new_state()
        self.event = ffi.new("struct nvmm_vcpu_event *")
        self.exit = Exit(exitstate)
        self.callbacks = AssistCallbacks()
        self._io = IoAccess(machine, self)
        self._mem = MemAccess(machine, self)
        self.cpuid_confs = {}  # leaf -> CpuidConf
        self.tpr_conf = TprConf()

    # --- configuration -------------------------------------------------------------------------
    def configure(self, op: int, conf) -> None:
        """nvmm_vcpu_configure: VCPU_CONF_CALLBACKS, VCPU_CONF_CPUID or VCPU_CONF_TPR."""
        if op == nvmm.VCPU_CONF_CALLBACKS:
            if not isinstance(conf, AssistCallbacks):
                raise NvmmError(errno.EINVAL, "VCPU_CONF_CALLBACKS takes an AssistCallbacks(io=..., mem=...)")
            self.callbacks = conf
            return
        if op == nvmm.VCPU_CONF_CPUID:
            if not isinstance(conf, CpuidConf):
                raise NvmmError(errno.EINVAL, "VCPU_CONF_CPUID takes a CpuidConf(leaf, mask=..., exit=...)")
            conf.validate()
            cap = self.machine.capability
            if not cap.vcpu_conf_support & nvmm.CAP_ARCH_VCPU_CONF_CPUID:
                raise NvmmError(errno.EOPNOTSUPP, f"the {cap.driver} driver does not support CPUID configuration")
            if conf.exit and not cap.cpuid_exits:
                raise NvmmError(errno.EOPNOTSUPP,
                                f"the {cap.driver} driver cannot exit on CPUID leaf {conf.leaf:#x}: "
                                "its kernel answers CPUID itself; use a mask, or the unicorn or nvmm driver")
            confs = dict(self.cpuid_confs)
            if conf.mask or conf.exit:
                if conf.leaf not in confs and cap.conf_cpuid_maxops and len(confs) >= cap.conf_cpuid_maxops:
                    raise NvmmError(errno.ENOBUFS, f"at most {cap.conf_cpuid_maxops} CPUID leaves can be configured")
                confs[conf.leaf] = conf
            else:
                confs.pop(conf.leaf, None)
            self._configure_cpuid(confs)
            self.cpuid_confs = confs
            return
        if op == nvmm.VCPU_CONF_TPR:
            if not isinstance(conf, TprConf):
                raise NvmmError(errno.EINVAL, "VCPU_CONF_TPR takes a TprConf(exit_changed=...)")
            if not self.machine.capability.vcpu_conf_support & nvmm.CAP_ARCH_VCPU_CONF_TPR:
                raise NvmmError(errno.EOPNOTSUPP, f"the {self.machine.capability.driver} driver does not support TPR exits")
            self._configure_tpr(conf)
            self.tpr_conf = conf
            return
        raise NvmmError(errno.EINVAL, f"unknown vCPU configuration op {op}")

    def tsc_khz(self):
        """The rate of the guest's TSC in kHz, or None where the driver cannot tell (an nvmmpy
        extension: NVMM has no such call). A VMM tells the guest so that it need not calibrate."""
        return None

    def configure_callbacks(self, io=None, mem=None) -> None:
        self.configure(nvmm.VCPU_CONF_CALLBACKS, AssistCallbacks(io, mem))

    def _configure_cpuid(self, confs: dict) -> None:
        raise NvmmError(errno.EOPNOTSUPP, "CPUID configuration is not supported by this driver")

    def _configure_tpr(self, conf: TprConf) -> None:
        raise NvmmError(errno.EOPNOTSUPP, "TPR configuration is not supported by this driver")

    # --- state -----------------------------------------------------------------------------------
    def getstate(self, flags: int = nvmm.X64_STATE_ALL):
        """Fill self.state with the groups in `flags`; returns self.state."""
        if flags & ~nvmm.X64_STATE_ALL:
            raise NvmmError(errno.EINVAL, f"unknown state flags {flags & ~nvmm.X64_STATE_ALL:#x}")
        self._getstate(flags)
        return self.state

    def setstate(self, flags: int = nvmm.X64_STATE_ALL) -> None:
        """Commit the groups in `flags` from self.state to the vCPU (applied before it next runs)."""
        if flags & ~nvmm.X64_STATE_ALL:
            raise NvmmError(errno.EINVAL, f"unknown state flags {flags & ~nvmm.X64_STATE_ALL:#x}")
        self._setstate(flags)

    # --- events ----------------------------------------------------------------------------------
    def inject(self, type: int | None = None, vector: int | None = None, error: int | None = None) -> None:
        """nvmm_vcpu_inject of self.event (or of the given type/vector/error, stored into it).

        EXCP: vectors 1, 4-31 except 2 (NVMM refuses #DE, NMI and #BP); error code pushed for the
        exceptions that have one. INTR: any vector; vector 2 is an NMI. The VMM checks the guest
        can take an interrupt (IF, shadow) or asks for an INT_READY exit first, as with NVMM.
        """
        ev = self.event
        if type is not None:
            ev.type = type
        if vector is not None:
            ev.vector = vector
        if error is not None:
            ev.u.excp.error = error
        t, v = ev.type, ev.vector
        if t == nvmm.VCPU_EVENT_EXCP:
            if v >= 32 or v in (0, 2, 3):
                raise NvmmError(errno.EINVAL, f"cannot inject exception vector {v}: NVMM allows 1 and 4-31 except 2")
            self._inject_exception(v, v in ERROR_CODE_VECTORS, ev.u.excp.error)
        elif t == nvmm.VCPU_EVENT_INTR:
            if v == 2:
                self._inject_nmi()
            else:
                self._inject_interrupt(v)
        else:
            raise NvmmError(errno.EINVAL, f"unknown event type {t} (VCPU_EVENT_EXCP or VCPU_EVENT_INTR)")

    # --- helpers shared by drivers ---------------------------------------------------------------
    def _dead(self, *args, **kwargs):
        raise NvmmError(errno.ENOENT, f"vCPU {self.cpuid} was destroyed")

    def _mark_destroyed(self) -> None:
        for name in ("run", "getstate", "setstate", "inject", "assist_io", "assist_mem", "configure", "stop"):
            setattr(self, name, self._dead)
