"""The two ways an emulation step can fail: EmulationError (we cannot do it) and
GuestFault (the guest takes an exception, as the CPU would have made it)."""
from .arch import VECTOR_NAMES


class EmulationError(Exception):
    """The instruction cannot be emulated (never a wrong result instead).

    ``mnemonic`` (str or None when the bytes do not decode), ``insn_bytes``
    (the instruction's bytes, or what was available), ``rip``.
    """

    def __init__(self, mnemonic, insn_bytes, rip, why):
        self.mnemonic = mnemonic
        self.insn_bytes = bytes(insn_bytes)
        self.rip = rip
        self.why = why
        name = repr(mnemonic) if mnemonic is not None else "instruction"
        super().__init__(f"cannot emulate {name} ({self.insn_bytes.hex(' ')}) at rip {rip:#x}: {why}")




class GuestFault(Exception):
    """The guest takes exception ``vector`` (with ``error_code`` or None, and
    ``cr2`` for a page fault) instead of completing the instruction."""

    def __init__(self, vector, error_code=None, cr2=None, reason=""):
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.reason = reason
        text = VECTOR_NAMES.get(vector, f"vector {vector}")
        if error_code is not None:
            text += f"({error_code:#x})"
        if cr2 is not None:
            text += f" at {cr2:#x}"
        if reason:
            text += f": {reason}"
        super().__init__(text)
