"""Repeat a vCPU stop until the vCPU thread has really left the guest.

Some stops can be dropped if they land just as the vCPU thread enters the guest:
- nvmm without the comm page's `stop` field: a kick signal that arrives just before VCPU_RUN is
  entered is handled in user space and the kernel never sees it.
A spinning guest would then never stop. A driver whose stop() found its vCPU inside the guest calls
KICKER.watch(vcpu); one shared thread calls vcpu._restop() every RETRY_S (which repeats the stop
under the vCPU's lock, only while it is still inside) until it returns False.
"""
import threading
import time

RETRY_S = 0.002


class StopKicker:
    def __init__(self):
        self._cond = threading.Condition(threading.RLock())  # re-entrant: stop() may run in a signal handler
        self._watched = {}  # vcpu -> how many times watch() was called for it (a newer call keeps it)
        self._thread = None

    def watch(self, vcpu) -> None:
        with self._cond:
            self._watched[vcpu] = self._watched.get(vcpu, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nvmmpy-uc-stop", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._cond.wait()
                batch = list(self._watched.items())
            time.sleep(RETRY_S)
            for vcpu, n in batch:
                if not vcpu._restop():
                    with self._cond:
                        if self._watched.get(vcpu) == n:
                            del self._watched[vcpu]


KICKER = StopKicker()
