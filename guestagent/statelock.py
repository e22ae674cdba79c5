"""One writer per state directory: an exclusive flock on ``STATE_DIR/daemon.lock``.

Held by the daemon for its life and by each command that changes the host through the same
undo state or the same balloon target (``devices apply``, ``devices --reset``, ``balloon set``,
``balloon run``, ``balloon --reset``, ``tiering --reset``, ``reset``) for its run, through
:func:`held`. The kernel drops the
lock when the process ends, also after ``kill -9``, so a crash never leaves it behind. Whoever
finds it taken refuses with one line naming the holder's PID and command, before it changes
anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from guestagent.errors import GuestAgentError

if TYPE_CHECKING:
    from guestagent.hostfs import HostFS

LOCK_FILE = "daemon.lock"


class StateLocked(GuestAgentError):
    """Another guestagent process holds the state directory."""


def acquire(state_dir: str, what: str) -> int:
    """Take the lock (not waiting); the open descriptor, to be closed with :func:`release`.

    ``state_dir`` is the real path (below the root); it must exist. ``what`` names this process
    in the lock file for whoever finds it taken (``run``, ``devices apply``)."""
    import fcntl

    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise GuestAgentError(f"{path}: cannot be opened ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fields = os.read(fd, 128).decode("ascii", "replace").split(maxsplit=1)
        os.close(fd)
        pid = fields[0] if fields else "unknown"
        holder = fields[1].strip() if len(fields) > 1 else "guestagent"
        raise StateLocked(
            f"another guestagent ({holder}, pid {pid}) holds {state_dir}; "
            f"not starting {what} while it runs"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {what}\n".encode())
    return fd


def release(fd: int) -> None:
    os.close(fd)


@contextmanager
def held(hostfs: HostFS, state_dir: str, what: str, create: bool) -> Iterator[None]:
    """Hold the lock of ``state_dir`` (a host path, below the root) while a command changes
    the host: never while the daemon or another such command runs on the same directory.

    A directory that is not the agent's own (:func:`guestagent.config.state_dir_problem`) is
    refused. ``create``: make a missing directory (0700) first; else a missing one needs no lock
    (no daemon can hold it, and there is nothing to undo in it)."""
    from guestagent.config import state_dir_problem

    real = str(hostfs.path(state_dir))
    why = state_dir_problem(real)
    if why is not None:
        raise GuestAgentError(f"{state_dir}: {why}")
    if not os.path.isdir(real):
        if not create:
            yield
            return
        try:
            os.makedirs(real, mode=0o700, exist_ok=True)
        except OSError as e:
            needs = " (creating it needs root)" if isinstance(e, PermissionError) else ""
            raise GuestAgentError(f"{real}: cannot be created for {what}: "
                                  f"{e.strerror or e}{needs}") from None
    fd = acquire(real, what)
    try:
        yield
    finally:
        release(fd)
