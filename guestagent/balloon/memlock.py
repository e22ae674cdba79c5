"""Keep the agent's own pages in RAM while it balloons, so it can answer a memory spike.

Why (issue 12, seen on the testbed): in a guest shrunk close to its working set, a burst of
allocations made the kernel evict every file page it could, the agent's code among them. The PSI
trigger fired, but the agent's next decision came 68 s later, because each step of its Python code
faulted its pages back in from disk while the whole guest thrashed; the OOM killer acted first.
A process that must act under memory pressure has to stay resident: the agent locks its pages with
``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``. With ``MCL_ONFAULT`` only pages the agent
actually touches are locked (its resident set, about 20-25 MiB), not every mapping it has.

Without ``MCL_ONFAULT`` (Linux before 4.4) ``MCL_CURRENT`` would populate and lock every mapping
(libraries, reserved heap): the agent does not lock then. It needs ``CAP_IPC_LOCK`` (the systemd
unit grants it) or a ``RLIMIT_MEMLOCK`` above its address space; without either the call fails and
the agent says so and runs unlocked. It locks only on the real host (``--root /``): never a test
process on a fixture tree. ``[balloon] lock_memory = false`` turns it off.
"""

from __future__ import annotations

import os
from typing import Callable

MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4

#: The flags the agent locks with.
LOCK_FLAGS = MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT

#: mlockall(flags) -> 0, or raises OSError with the errno.
Locker = Callable[[int], None]


def _libc_call(name: str, *args: int) -> None:
    import ctypes  # only where memory is locked: not part of the idle daemon's imports

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mlockall(flags: int) -> None:
    _libc_call("mlockall", flags)


def munlockall() -> None:
    _libc_call("munlockall")


def lock_reason(error: OSError) -> str:
    """Why locking failed, in the operator's words."""
    if error.errno == 22:  # EINVAL: MCL_ONFAULT unknown
        return "the kernel has no MCL_ONFAULT (Linux 4.4 or later): not locking every mapping"
    if error.errno in (1, 12):  # EPERM, ENOMEM: no CAP_IPC_LOCK and RLIMIT_MEMLOCK too low
        return ("no CAP_IPC_LOCK and RLIMIT_MEMLOCK below the agent's address space "
                "(the systemd unit grants CAP_IPC_LOCK)")
    return f"mlockall failed: {error.strerror or error}"


def lock_agent_memory(locker: Locker = mlockall) -> str | None:
    """Lock the agent's pages as they are touched. None when locked, else the reason it is not."""
    try:
        locker(LOCK_FLAGS)
    except OSError as e:
        return lock_reason(e)
    return None
