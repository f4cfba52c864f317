"""Stops that land between translation blocks, never inside an instruction.

Why: unicorn 2.1 checks for an exit request after every guest memory access as well as at the
start of each translation block, and an exit taken after a store rewinds RIP to the start of the
instruction that made it (qemu/tcg/tcg-op.c check_exit_request, tcg-runtime.c). A uc_emu_stop from
another thread, or emu_start's timeout (a thread that calls it), lands now and then between a
read-modify-write instruction's store and its end, and the instruction runs a second time:
`inc [m]`, `xadd`, `cmpxchg`, `xchg`. Measured (bench/unicorn_stop.py): a loop of 100M
`inc qword [m]` stopped 1,483 times from another thread counted 100,000,690. Linux's atomics and
locks do not survive that; this was the "asynchronous stop" crash of the Linux boot.

A stop requested by the vCPU's own thread at an instruction boundary is exact (the first memory
access of an instruction is always restartable), so stops are only ever made there: a
UC_HOOK_BLOCK callback in C (tbstop.c) runs at the start of every block, before any of it, and
calls uc_emu_stop itself when another thread has set its `pending` word, or, while the VMM waits
for an interrupt window, once RFLAGS.IF is set. No increment is lost or doubled. Its cost is a call
per block: the loop above ran 7% slower unloaded (bench/unicorn_stop.py), the bench's compute guests
15-40% (bench/unicorn_tuning.py, docs/unicorn-performance.md). Linux needs exact stops; a guest
that is never stopped from outside would not, but a VMM cannot know that in advance.

The C file is compiled once per source version into the user's cache with the system compiler
($CC, else cc). Without one, `attach` returns None and the vCPU slices emu_start by instruction
count instead: exact too, but unicorn then calls a counting hook per instruction (1.5x on the loop
above, 4-5x on the compute guests).
"""
import ctypes
import os

from ... import native

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tbstop.c")


class _Control(ctypes.Structure):
    _fields_ = [("pending", ctypes.c_int32), ("window", ctypes.c_int32), ("stops", ctypes.c_uint64),
                ("stop", ctypes.c_void_p), ("reg_read", ctypes.c_void_p), ("eflags_id", ctypes.c_int32)]


def _build() -> str:
    with open(_SOURCE, "rb") as f:
        src = f.read()
    return native.build(f"tbstop-{native.tag(src)}.so", _SOURCE)


_piece = native.Optional(_SOURCE, lambda: ctypes.CDLL(_build()), "NVMMPY_UNICORN_STOP", "count")
library = _piece.get                # the compiled hook (ctypes CDLL), or None
unavailable = _piece.unavailable    # why the block hook is not used (None when it is)


def _uclib():
    from unicorn.unicorn_py3 import unicorn as binding
    return binding.uclib, binding.uc_hook_h


class TbStop:
    """The block hook on one engine. request() may be called from any thread; window() and
    taken() only from the vCPU's thread between emu_start calls."""
    __slots__ = ("_ctl", "_hook", "_uc")

    def __init__(self, uc, lib):
        from unicorn import UC_HOOK_BLOCK
        from unicorn import x86_const as x86
        uclib, hook_h = _uclib()
        ctl = _Control()
        ctl.stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        ctl.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        ctl.eflags_id = x86.UC_X86_REG_EFLAGS
        hook = hook_h()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_BLOCK,
                                ctypes.cast(lib.nvmmpy_tbstop_block, ctypes.c_void_p), ctypes.byref(ctl), 1, 0)
        if err:
            raise OSError(f"uc_hook_add(UC_HOOK_BLOCK) failed with unicorn error {err}")
        self._ctl, self._hook, self._uc = ctl, hook, uc

    def request(self) -> None:
        self._ctl.pending = 1

    def clear(self) -> None:
        self._ctl.pending = 0

    def window(self, wanted: bool) -> None:
        self._ctl.window = 1 if wanted else 0

    @property
    def stops(self) -> int:
        return self._ctl.stops


def attach(uc):
    """A TbStop on `uc`, or None when the hook cannot be built (see unavailable())."""
    lib = library()
    return None if lib is None else TbStop(uc, lib)
