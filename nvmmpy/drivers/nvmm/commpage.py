"""The comm page: one shared page per vCPU through which libnvmm and the kernel exchange state and
events without system calls (reference/nvmm.md sec. 1, "Comm page").

- setstate(flags): OR flags into state_commit and state_cached; the kernel applies the committed
  groups from `state` when the vCPU next runs.
- getstate(flags): only the groups not in state_cached need the kernel: put them in state_wanted
  and call GETSTATE, which fills `state` and marks them cached. The kernel clears state_cached on
  every run and, for IO/MEMORY exits (GPRS|SEGS|CRS|MSRS) and RDMSR/WRMSR (GPRS), provides state
  with the exit, so assists read registers without a system call.
- inject: the event sits in `event`; event_commit=true makes the kernel inject it at the next run.
- stop (NetBSD version 2 only): a non-zero `stop` makes the running or next VCPU_RUN return STOPPED.
"""
from .abi import ffi


class CommPage:
    __slots__ = ("address", "page", "state", "event", "has_stop")

    def __init__(self, address: int, flavour):
        self.address = address
        self.page = ffi.cast(flavour.comm_type + " *", address)
        self.state = ffi.addressof(self.page, "state")   # struct nvmm_x64_state *: vcpu.state
        self.event = ffi.addressof(self.page, "event")   # struct nvmm_vcpu_event *: vcpu.event
        self.has_stop = flavour.comm_stop

    def commit_state(self, flags: int) -> None:
        p = self.page
        p.state_commit |= flags
        p.state_cached |= flags

    def missing(self, flags: int) -> int:
        """The groups of `flags` the kernel must provide (not cached since the last run)."""
        return flags & ~self.page.state_cached

    def want(self, flags: int) -> None:
        self.page.state_wanted = flags

    def commit_event(self) -> None:
        self.page.event_commit = True

    def request_stop(self) -> None:
        if self.has_stop:
            self.page.stop = 1

    def clear_stop(self) -> None:
        if self.has_stop:
            self.page.stop = 0
