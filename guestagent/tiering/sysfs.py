"""Reading and writing DAMON sysfs files, with its passing EBUSY tried again.

DAMON sysfs takes its one global lock (``damon_sysfs_lock``) with a trylock and answers EBUSY
when the lock is held: in the writes to ``state``, ``nr_kdamonds``, ``nr_contexts`` and the other
directory-making files, and, since "mm/damon/sysfs: fix use-after-free in state_show()" (mainline
and the stable trees, September 2025; the testbed's Debian 6.12.117 has it), in every *read* of a
kdamond's ``state`` too. Every running kdamond takes that lock for a moment each aggregation
interval (``damon_sysfs_cmd_request_callback``, with a trylock as well) to look for requests, and
so does anybody else's read or write. So with any kdamond running, anybody's, a read or a write
can fail once for nothing; a stop or an undo that gave up on it would leave a kdamond migrating
(the CI run of stop 33: ``kdamond 2: unreadable (.../kdamonds/2/state: read failed: Device or
resource busy)`` in ``guestagent reset``). Both directions go through :func:`retry_busy`.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any, Callable, TypeVar, cast

from guestagent.errors import GuestAgentError, ReadFailedError
from guestagent.hostfs import HostFS

__all__ = [
    "BUSY_PAUSE_S", "BUSY_TRIES", "Reader", "SysfsWriteError", "Writer", "retry_busy",
    "sysfs_reader", "sysfs_writer",
]

#: A read or a write (ParamSpec would be 3.10; the code runs on 3.9).
F = TypeVar("F", bound=Callable[..., Any])

Writer = Callable[[str, str], None]
Reader = Callable[[str], str]

#: A read or write DAMON sysfs answers EBUSY is tried this many times in all,
#: :data:`BUSY_PAUSE_S` apart, before the EBUSY counts (:func:`retry_busy`).
BUSY_TRIES = 10
BUSY_PAUSE_S = 0.02


class SysfsWriteError(GuestAgentError):
    """The kernel refused a write; names the file, the value and the errno."""

    def __init__(self, path: str, value: str, err: int) -> None:
        name = errno.errorcode.get(err, f"errno {err}")
        super().__init__(f"{path}: writing {value!r} failed: {name} ({os.strerror(err)})")
        self.path = path
        self.value = value
        self.err = err


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is DAMON sysfs's passing refusal: EBUSY from a read or a write."""
    return isinstance(error, (SysfsWriteError, ReadFailedError)) and error.err == errno.EBUSY


def retry_busy(
    call: F, tries: int = BUSY_TRIES, pause_s: float = BUSY_PAUSE_S,
    sleep: Callable[[float], None] | None = None,
) -> F:
    """``call`` (a read or a write), tried again on EBUSY (module docstring). A lasting EBUSY
    (``nr_kdamonds`` while a kdamond runs, ``on`` for a running one) still raises, after about
    ``tries * pause_s`` (0.2 s). Other errors raise at once."""
    pause = time.sleep if sleep is None else sleep

    def retried(*args: Any, **kwargs: Any) -> Any:
        for _ in range(tries - 1):
            try:
                return call(*args, **kwargs)
            except GuestAgentError as e:
                if not is_busy(e):
                    raise
            pause(pause_s)
        return call(*args, **kwargs)

    return cast(F, retried)


def sysfs_writer(hostfs: HostFS) -> Writer:
    """Write one value to an existing sysfs file (never creates one), errors as SysfsWriteError;
    a passing EBUSY is tried again (:func:`retry_busy`)."""

    def write(path: str, value: str) -> None:
        try:
            fd = os.open(hostfs.path(path), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as e:
            raise SysfsWriteError(path, value, e.errno or errno.EIO) from None
        try:
            os.write(fd, value.encode("ascii"))
        except OSError as e:
            raise SysfsWriteError(path, value, e.errno or errno.EIO) from None
        finally:
            os.close(fd)

    return retry_busy(write)


def sysfs_reader(hostfs: HostFS) -> Reader:
    """:meth:`HostFS.read_text`, with a passing EBUSY tried again (:func:`retry_busy`)."""
    return retry_busy(hostfs.read_text)
