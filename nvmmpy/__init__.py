"""nvmmpy: NetBSD's libnvmm API in Python, over Linux /dev/kvm, NVMM, or a software CPU.

    import nvmmpy
    from nvmmpy import Machine, HostMemory
    with Machine(driver="auto") as mach:
        ...
"""
from . import constants
from .constants import *  # noqa: F401,F403  NVMM's names, as nvmm.h exports them
from .assist import AssistCallbacks, CpuidConf, IoAccess, MemAccess, TprConf
from .capability import Capability
from .errors import AssistError, DriverUnavailable, NvmmError
from .exits import Exit
from .machine import Machine, capability
from .memory import HostMemory
from .drivers import driver_names, probe_all

__version__ = "0.1.0"

__all__ = ["AssistCallbacks", "CpuidConf", "IoAccess", "MemAccess", "TprConf", "Capability", "AssistError",
           "DriverUnavailable", "NvmmError", "Exit", "Machine", "capability", "HostMemory", "driver_names",
           "probe_all", "constants"]
