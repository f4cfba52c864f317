"""Ctrl-C stops the VM instead of raising KeyboardInterrupt wherever the main thread happens to be.

A KeyboardInterrupt can land anywhere: inside Thread.join (where Python < 3.12 then believes the
still-running vCPU thread has ended), in the middle of teardown, or outside the try that prints
the account. A SIGINT handler that only calls vm.stop() cannot: the run ends the normal way, the
account is built after the vCPU thread is joined, and a second Ctrl-C during teardown changes
nothing.
"""
import signal
import threading


def sigint_stops(vm):
    """From now on SIGINT calls vm.stop("interrupted") (a stop before run() is kept for it).
    Returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, lambda signum, frame: vm.stop("interrupted"))
    return lambda: signal.signal(signal.SIGINT, previous)
