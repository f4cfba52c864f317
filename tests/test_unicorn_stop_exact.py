"""Stops from another thread never run an instruction twice (unicorn driver).

Unicorn takes an exit request after a guest store and rewinds RIP to the start of the storing
instruction, so a uc_emu_stop from another thread now and then reran a read-modify-write
instruction (drivers/unicorn/tbstop.py; `python -m nvmmpy.bench.unicorn_stop` measures it). Here a
guest increments a counter N times while the test stops its vCPU every millisecond and resumes
it: the counter must be exactly N, with the C block hook and with the count-slice fallback.
"""
import threading

import pytest

from nvmmpy import constants as nvmm
from nvmmpy.drivers.unicorn import tbstop
from conftest import make_vm

N = 2_000_000
COUNTER = 0x2000
# real mode, CS=0: mov ecx, N; loop: inc dword [COUNTER]; dec ecx; jnz loop; hlt
GUEST = (b"\x66\xb9" + N.to_bytes(4, "little") + b"\x66\xff\x06" + COUNTER.to_bytes(2, "little") +
         b"\x66\x49\x75\xf7\xf4")


@pytest.fixture(params=["block-hook", "count-slices"])
def stop_mode(request, monkeypatch):
    if request.param == "count-slices":
        monkeypatch.setattr(tbstop._piece, "_value", None)
        monkeypatch.setattr(tbstop._piece, "_error", "forced by the test")
    elif tbstop.library() is None:
        pytest.skip(f"the block hook cannot be built here: {tbstop.unavailable()}")
    return request.param


def test_counter_is_exact_under_a_stop_every_millisecond(stop_mode):
    vm = make_vm("unicorn")
    try:
        vm.load(GUEST, 0x1000)
        st = vm.vcpu.getstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS)
        st.segs[nvmm.X64_SEG_CS].selector = 0
        st.segs[nvmm.X64_SEG_CS].base = 0
        st.gprs[nvmm.X64_GPR_RIP] = 0x1000
        vm.vcpu.setstate(nvmm.X64_STATE_GPRS | nvmm.X64_STATE_SEGS)
        assert (vm.vcpu._tb is not None) == (stop_mode == "block-hook")
        done = threading.Event()

        def stopper():
            while not done.wait(0.001):
                vm.vcpu.stop()
        t = threading.Thread(target=stopper, daemon=True)
        t.start()
        stops = 0
        try:
            while True:
                ex = vm.vcpu.run()
                if ex.reason == nvmm.VCPU_EXIT_STOPPED:
                    stops += 1
                    continue
                assert ex.reason == nvmm.VCPU_EXIT_HALTED, ex.name
                break
        finally:
            done.set()
            t.join()
        counter = int.from_bytes(vm.ram[COUNTER:COUNTER + 4], "little")
        assert stops >= 20, f"only {stops} stops landed: the test did not exercise them"
        assert counter == N, f"counter {counter} after {stops} stops: {counter - N} increments ran twice"
    finally:
        vm.close()


def test_without_a_c_compiler_the_driver_says_why_and_slices(tmp_path):
    """No compiler (or a broken $CC): the hook is not built, the reason is kept, and a guest still runs."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NVMMPY_CACHE=str(tmp_path), CC="no-such-compiler-here")
    code = ("from nvmmpy.drivers.unicorn import tbstop; import subprocess, sys;"
            "print(tbstop.library() is None, tbstop.unavailable());"
            "sys.exit(subprocess.run([sys.executable, '-m', 'nvmmpy', 'run', 'hello', '--accel', 'unicorn']).returncode)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("True cannot build tbstop.c:") and "no-such-compiler-here" in p.stdout
    assert "Hello from nvmmpy guest!" in p.stdout
