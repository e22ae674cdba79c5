"""The balloon job keeps the agent's pages in RAM on the real host (guestagent.balloon.memlock)."""

from __future__ import annotations

import errno
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from guestagent.balloon.job import BalloonJob
from guestagent.balloon.memlock import LOCK_FLAGS, MCL_ONFAULT, lock_agent_memory
from guestagent.hostfs import HostFS

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs(log_events: Logs) -> Logs:
    return log_events


class FakeConfig:
    def __init__(self, lock_memory: bool) -> None:
        self.lock_memory = lock_memory

    def section(self, name: str) -> dict[str, Any]:
        assert name == "balloon"
        return {"lock_memory": self.lock_memory}


def ctx(root: str, lock_memory: bool = True) -> Any:
    return SimpleNamespace(hostfs=HostFS(root), config=FakeConfig(lock_memory))


class Locker:
    def __init__(self, error: int | None = None) -> None:
        self.calls: list[int] = []
        self.unlocks = 0
        self.error = error

    def lock(self, flags: int) -> None:
        self.calls.append(flags)
        if self.error is not None:
            raise OSError(self.error, "fake")

    def unlock(self) -> None:
        self.unlocks += 1


def test_locks_only_the_pages_touched_current_and_future() -> None:
    locker = Locker()
    assert lock_agent_memory(locker.lock) is None
    assert locker.calls == [LOCK_FLAGS]
    assert LOCK_FLAGS & MCL_ONFAULT and LOCK_FLAGS == 1 | 2 | 4


@pytest.mark.parametrize(("err", "words"), [
    (errno.EINVAL, "MCL_ONFAULT"),
    (errno.EPERM, "CAP_IPC_LOCK"),
    (errno.ENOMEM, "RLIMIT_MEMLOCK"),
    (errno.EAGAIN, "mlockall failed"),
])
def test_a_refused_lock_says_why(err: int, words: str) -> None:
    assert words in (lock_agent_memory(Locker(err).lock) or "")


def test_the_job_locks_on_the_real_host_and_unlocks_on_stop(logs: Logs) -> None:
    locker = Locker()
    job = BalloonJob(locker.lock, locker.unlock)
    job._lock_memory(ctx("/"))
    assert locker.calls == [LOCK_FLAGS] and job._memory_locked
    job.stop()
    assert locker.unlocks == 1 and not job._memory_locked
    job.stop()
    assert locker.unlocks == 1
    events = [e["event"] for e in logs]
    assert "memory_locked" in events and "memory_unlocked" in events


def test_the_job_never_locks_a_process_on_a_fixture_tree(tmp_path: Path) -> None:
    locker = Locker()
    job = BalloonJob(locker.lock, locker.unlock)
    job._lock_memory(ctx(str(tmp_path)))
    assert locker.calls == [] and not job._memory_locked


def test_lock_memory_false_turns_it_off(logs: Logs) -> None:
    locker = Locker()
    job = BalloonJob(locker.lock, locker.unlock)
    job._lock_memory(ctx("/", lock_memory=False))
    assert locker.calls == []
    assert [e["event"] for e in logs] == ["memory_not_locked"]


def test_a_refused_lock_is_one_warning_and_the_job_goes_on(logs: Logs) -> None:
    locker = Locker(errno.EPERM)
    job = BalloonJob(locker.lock, locker.unlock)
    job._lock_memory(ctx("/"))
    assert not job._memory_locked
    lines = [e for e in logs if e["event"] == "memory_not_locked"]
    assert len(lines) == 1 and lines[0]["log_level"] == "warning"
    assert "CAP_IPC_LOCK" in lines[0]["reason"]
    job.stop()
    assert locker.unlocks == 0


def test_the_real_mlockall_binding_reaches_libc() -> None:
    # flags 0 is invalid for mlockall(2): EINVAL proves the call reached the kernel and its errno
    # came back, without locking this test process.
    from guestagent.balloon.memlock import mlockall

    with pytest.raises(OSError) as info:
        mlockall(0)
    assert info.value.errno == errno.EINVAL
