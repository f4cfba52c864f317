"""Instruction emulation for MMIO and port I/O exits (x86emu), software page walks (pagewalk).

``Emulator``, ``EmulationError``, ``GuestFault`` and ``Step`` are re-exported from
``emulator.x86emu`` on first use, so importing ``emulator.pagewalk`` does not load capstone.
"""

_LAZY = {"Emulator", "EmulationError", "GuestFault", "Step"}


def __getattr__(name):
    if name in _LAZY:
        from . import x86emu
        return getattr(x86emu, name)
    raise AttributeError(f"module 'emulator' has no attribute {name!r}")
