"""Two fields of unicorn's CPU state that its API does not expose: QEMU's `old_exception` (the
exception "in flight", from which a second fault escalates to #DF and a third to a silent reset)
and `error_code` (the last exception's error code: #PF's P/W/U/I bits, #GP's selector).

Why they matter: the driver delivers exceptions in software (unicorn only reports the vector), so
QEMU never sees a delivery complete and never clears old_exception; and unicorn itself raises
page faults outside the guest's execution: after every emu_start it invalidates the translation
of each registered exit address (exit - 1) through the guest's page tables, and an address not
mapped in the current address space takes a #PF that sets CR2 and old_exception and is dropped.
Two such misses and the guest's next real #PF becomes a triple fault that stops unicorn with no
error. The driver resets old_exception after each exception it handles and after a clobber.

Both offsets into a saved CPU context are found once per process by probing a scratch engine
(a read #PF on a not-present page, a write #PF on a read-only page, a fetch #PF on an NX page:
error codes 0, 3 and 0x11, old_exception -1 before and 14 after), never assumed.
"""
import ctypes
import struct

_offsets = None


def _scratch(code: bytes, rbx: int):
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_HOOK_INTR
    from unicorn import x86_const as x86
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x400000, UC_PROT_ALL)
    uc.mem_write(0x1000, struct.pack("<Q", 0x2000 | 3))
    uc.mem_write(0x2008, struct.pack("<Q", 0x3000 | 3))
    uc.mem_write(0x3000, struct.pack("<Q", 0x200000 | 0x83))               # 1 GiB: the code, writable
    uc.mem_write(0x3008, struct.pack("<Q", 0x400000 | 0x81 | 1 << 63))     # 1 GiB + 2 MiB: read-only, NX
    uc.reg_write(x86.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(x86.UC_X86_REG_CR4, 0x620)
    uc.msr_write(0xC0000080, 0xD00)                                         # LME, LMA, NXE
    uc.reg_write(x86.UC_X86_REG_CR0, 0x80010011)                              # PG, WP, PE
    uc.mem_write(0x200000, code + b"\x90" * 8)
    uc.reg_write(x86.UC_X86_REG_RBX, rbx)
    uc.hook_add(UC_HOOK_INTR, lambda u, n, _: u.emu_stop())
    return uc


def _image(uc) -> bytes:
    ctx = uc.context_save()
    return ctypes.string_at(context_address(ctx), ctx.size)


def context_address(ctx) -> int:
    """Where a uc_context's bytes are (the binding's handle is a c_void_p or an int)."""
    p = ctx.context
    return p.value if hasattr(p, "value") else int(p)


def offsets() -> tuple:
    """(old_exception, error_code) byte offsets into a context image."""
    global _offsets
    if _offsets is None:
        fresh = _image(_scratch(b"\x90", 0))
        images = []
        for code, rbx in ((b"\x48\x8b\x03", 0xFFFF888000001000),    # mov rax,[rbx]: not present
                          (b"\x48\x89\x03", 0x40200000),            # mov [rbx],rax: read-only
                          (b"\xff\xe3", 0x40200000)):               # jmp rbx: NX
            uc = _scratch(code, rbx)
            uc.emu_start(0x40000000, 0)
            images.append(_image(uc))
        old = err = None
        for off in range(0, min(len(fresh), *(len(i) for i in images)) - 3, 4):
            vals = [struct.unpack_from("<i", i, off)[0] for i in images]
            if vals == [0, 3, 0x11] and err is None:
                err = off
            if vals == [14, 14, 14] and struct.unpack_from("<i", fresh, off)[0] == -1 and old is None:
                old = off
        if old is None or err is None:
            raise RuntimeError("this unicorn's CPU state has no recognisable old_exception/error_code")
        _offsets = (old, err)
    return _offsets


class CpuEnv:
    """Read the error code of the exception being reported; clear the exception in flight."""

    def __init__(self, uc):
        self.uc = uc
        self.old_off, self.err_off = offsets()
        self.ctx = uc.context_save()

    def _snapshot(self) -> int:
        self.uc.context_update(self.ctx)
        return context_address(self.ctx)

    def error_code(self) -> int:
        return ctypes.c_int32.from_address(self._snapshot() + self.err_off).value & 0xFFFFFFFF

    def clear_in_flight(self) -> None:
        """QEMU's "delivered": old_exception = -1 (what x86_cpu_do_interrupt does after a delivery)."""
        base = self._snapshot()
        field = ctypes.c_int32.from_address(base + self.old_off)
        if field.value != -1:
            field.value = -1
            self.uc.context_restore(self.ctx)
