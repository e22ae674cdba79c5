"""The backend threads of Dom0: reading them and their guests' nodes, moving them, and the undo
(:mod:`.backendthreads` decides).

Read: every ``/proc/<pid>/comm`` that names a netback or blkback thread, its
``Cpus_allowed_list`` (``/proc/<pid>/status``), and for each guest they serve its vCPUs'
affinity from Xen (``XEN_DOMCTL_getvcpuinfo``, ``getvcpuaffinity``). Write: the thread's CPU
affinity with ``sched_setaffinity(2)``, journalled first in ``dom0-devices.json`` (kind
``thread_affinity``, path ``/proc/<pid>``, the previous list). Undo: the previous list set
again, unless the pid is no longer a backend thread (left alone) or someone changed it since.
A thread that ends mid-way is a line, not an error.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from guestagent.dom0.backendthreads import (
    THREAD_KIND,
    BackendThread,
    ThreadPlan,
    backend_domid,
    guest_node,
    is_kernel_thread,
    may_be_blkback_ring,
)
from guestagent.dom0.owndevices import Dom0Vcpu
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS, format_cpulist, parse_cpulist
from guestagent.log import get_logger
from guestagent.undo import Change, Journal, KindRule

#: The journal rule of a thread's affinity: its /proc directory and a CPU list.
THREAD_RULE = KindRule(re.compile(r"/proc/[0-9]{1,9}"), re.compile(r"[0-9][0-9,\-]{0,4095}"))

#: ``sched_setaffinity(pid, cpus)``; raises OSError.
SetAffinity = Callable[[int, "set[int]"], None]


def sched_setaffinity_on(hostfs: HostFS) -> SetAffinity:
    """``os.sched_setaffinity`` on the real host; on a fixture tree every call fails with ENOSYS
    (its pids are not this machine's)."""

    def refuse(pid: int, cpus: set[int]) -> None:
        raise OSError(errno.ENOSYS, f"not the real host (pid {pid} is the tree's)")

    return os.sched_setaffinity if hostfs.is_real_host else refuse


# ---------------------------------------------------------------- read


def cpus_allowed(hostfs: HostFS, pid: int) -> str:
    """``Cpus_allowed_list`` of ``/proc/<pid>/status``; MissingInputError when the task is gone,
    InputError when the line is absent."""
    source = f"/proc/{pid}/status"
    for line in hostfs.read_text(source).splitlines():
        key, _, value = line.partition(":")
        if key == "Cpus_allowed_list":
            return value.strip()
    raise InputError(source, "no Cpus_allowed_list line", "")


def thread_domid(hostfs: HostFS, pid: int, comm: str) -> int | None:
    """The guest the task ``comm`` serves if it is a backend thread (blkback's bare
    ``<domid>.<dev>-<ring>`` only when /proc/<pid>/stat says kernel thread); MissingInputError
    when the task ended."""
    kernel_thread = may_be_blkback_ring(comm) and is_kernel_thread(
        hostfs.read_text(f"/proc/{pid}/stat"))
    return backend_domid(comm, kernel_thread)


def read_thread(hostfs: HostFS, pid: int) -> BackendThread | None:
    """The task if it is a backend thread (None otherwise, or when it ended); InputError when
    its affinity is not a CPU list."""
    try:
        comm = hostfs.read_text(f"/proc/{pid}/comm").strip()
        domid = thread_domid(hostfs, pid, comm)
        if domid is None:
            return None
        text = cpus_allowed(hostfs, pid)
    except MissingInputError:
        return None  # ended while we looked
    cpus = parse_cpulist(text, f"/proc/{pid}/status: Cpus_allowed_list")
    return BackendThread(pid, comm, domid, tuple(cpus), text)


def read_threads(hostfs: HostFS, problems: list[str]) -> list[BackendThread]:
    """Every netback and blkback thread; an unusable one is a line in ``problems``."""
    try:
        names = hostfs.listdir("/proc")
    except InputError as e:
        problems.append(str(e))
        return []
    threads: list[BackendThread] = []
    for pid in sorted(int(n) for n in names if n.isdigit() and len(n) <= 9):
        try:
            thread = read_thread(hostfs, pid)
        except InputError as e:
            problems.append(f"{e}; thread left alone")
            continue
        if thread is not None:
            threads.append(thread)
    return threads


def read_guest_nodes(domctl: Any, domids: Iterable[int], max_cpus: int,
                     cpu_nodes: Mapping[int, int]) -> dict[int, int | None]:
    """Each guest's node (:func:`~guestagent.dom0.backendthreads.guest_node`); None for a guest
    Xen no longer knows."""
    nodes: dict[int, int | None] = {}
    for domid in sorted(set(domids)):
        infos = domctl.vcpus(domid, max_cpus)
        vcpus: list[Dom0Vcpu] = []
        for info in infos or []:
            affinity = domctl.vcpu_affinity(domid, info.vcpu, max_cpus)
            if affinity is not None:
                vcpus.append(Dom0Vcpu(info.vcpu, info.online, info.cpu, affinity.hard,
                                      affinity.soft))
        nodes[domid] = guest_node(vcpus, cpu_nodes) if vcpus else None
    return nodes


# ---------------------------------------------------------------- apply


@dataclass
class StepLines:
    """What one pass did for one thing, as lines by category (the devices job's report): the
    part :class:`ThreadOutcome` and :class:`~guestagent.dom0.owndevices_io.DeviceOutcome`
    share. The lists start empty and are no constructor arguments, so a subclass's own fields
    (what the outcome is of) are its constructor's."""

    applied: list[str] = field(default_factory=list, init=False)
    planned: list[str] = field(default_factory=list, init=False)
    skipped: list[str] = field(default_factory=list, init=False)
    failed: list[str] = field(default_factory=list, init=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ThreadOutcome(StepLines):
    """What one pass did for one backend thread."""

    pid: int
    comm: str
    domid: int
    node: int | None
    near_vcpus: list[int]


def _errname(e: OSError) -> str:
    from guestagent.devices.execute import errname

    return errname(e)


def move_thread(plan: ThreadPlan, hostfs: HostFS, journal: Journal, set_affinity: SetAffinity,
                out: ThreadOutcome) -> None:
    """Record, then set the thread's affinity; a thread that ended is a skip."""
    step = plan.step
    assert step is not None
    journal.record(Change(kind=THREAD_KIND, path=step.path, bdf="", previous=step.previous))
    try:
        set_affinity(step.pid, set(step.wanted))
    except OSError as e:
        journal.forget(step.path)
        if e.errno == errno.ESRCH:
            out.skipped.append(f"{step.comm} (pid {step.pid}) ended")
        else:
            out.failed.append(f"{step.comm} (pid {step.pid}): sched_setaffinity refused "
                              f"({_errname(e)})")
        return
    wanted = format_cpulist(list(step.wanted))
    try:
        applied = cpus_allowed(hostfs, step.pid)
    except InputError:
        applied = wanted
    journal.set_applied(step.path, applied)
    out.applied.append(f"{step.comm} (pid {step.pid}) on CPUs {applied} (was {step.previous})")
    get_logger("dom0").info("dom0_thread_affinity_set", pid=step.pid, comm=step.comm,
                            cpus=applied, previous=step.previous)


def carry_out_threads(plans: Sequence[ThreadPlan], hostfs: HostFS, journal: Journal,
                      set_affinity: SetAffinity) -> list[ThreadOutcome]:
    """Every thread's plan, in order (the plan decides; this writes exactly its steps)."""
    outcomes: list[ThreadOutcome] = []
    for plan in plans:
        t = plan.thread
        out = ThreadOutcome(t.pid, t.comm, t.domid, plan.node, list(plan.near_vcpus))
        if plan.why:
            out.skipped.append(plan.why)
        if plan.planned:
            out.planned.append(plan.planned)
        if plan.step is not None:
            move_thread(plan, hostfs, journal, set_affinity, out)
        outcomes.append(out)
    return outcomes


def undo_thread(change: Change, hostfs: HostFS, set_affinity: SetAffinity) -> tuple[str, bool]:
    """What undoing one thread's affinity did, and whether it is done with."""
    pid = int(change.path.rsplit("/", 1)[1])
    try:
        comm = hostfs.read_text(f"/proc/{pid}/comm").strip()
        current = cpus_allowed(hostfs, pid)
        domid = thread_domid(hostfs, pid, comm)
    except MissingInputError:
        return f"{change.path}: thread ended, nothing to undo", True
    except InputError as e:
        return f"{change.path}: unreadable, left alone ({e})", False
    if domid is None:
        return f"{change.path}: now {comm!r}, not a backend thread; left alone", True
    if change.applied and _cpus(current) != _cpus(change.applied):
        return (f"{change.path}: now on {current}, not the {change.applied} guestagent left; "
                "changed by someone else, left alone"), True
    try:
        set_affinity(pid, set(parse_cpulist(change.previous, change.path)))
    except OSError as e:
        if e.errno == errno.ESRCH:
            return f"{change.path}: thread ended, nothing to undo", True
        return f"{change.path}: restoring {change.previous} failed ({_errname(e)})", False
    return f"{change.path} ({comm}): restored CPUs {change.previous}", True


def _cpus(text: str) -> list[int] | None:
    try:
        return parse_cpulist(text, "cpulist")
    except InputError:
        return None
