"""The backend threads of Dom0 near their guest's memory (issue 16 item 2, second half): the
plain data and the pure decision.

netback runs two kernel threads per queue of a guest's vif (``vif<domid>.<handle>-q<N>-guest-rx``
and ``...-dealloc``), blkback one per ring (``blkback.<domid>.<vdev>-<ring>``, e.g.
``blkback.5.xvdb-0``, its ``blkback.<domid>.<vdev>`` cut at 15 characters first, in kernels
before 4.2; ``<domid>.<vdev>-<ring>``, e.g. ``1.xvdb-0``, since, as Dom0's 6.1 shows). A task's
``comm`` keeps 15 characters; since Linux 5.17 ``/proc/<pid>/comm`` shows a kernel thread's
whole name (up to 63), before that the cut one; both are recognised. They copy the guest's
packets and blocks, so they belong on the node that holds the guest's memory. libxl places a
guest's memory on the nodes its vCPUs' affinity spans (hard within soft, reference 8.2 and 8.3),
so the guest's node is the node its vCPUs are kept on, by the rule of
:func:`guestagent.dom0.owndevices.vcpu_node`; a guest spread over several nodes (vNUMA, or no
placement) has no one node and its threads are left alone.

:func:`decide_threads` plans each thread's CPU affinity: the Dom0 vCPUs kept on the guest's node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from guestagent.dom0.owndevices import Dom0Vcpu, vcpu_node, vcpus_near
from guestagent.hostfs import format_cpulist
from guestagent.undo import Change

#: netback's and blkback's kernel thread names (``comm``): the guest's domid is group 1.
BACKEND_COMM = re.compile(r"(?:vif(\d{1,5})\.\d{1,5}-|blkback\.(\d{1,5})\.)[ -~]{0,15}")
#: blkback's thread name since Linux 4.2 (multi-queue): ``<domid>.<dev>-<ring>`` (blkback_name's
#: "%d.%s" and kthread_run's "%s-%d", ``dev`` the backend's xenstore ``dev`` less "/dev/"), e.g.
#: ``1.xvdb-0`` as Dom0's 6.1 showed on real Xen. The name alone is not distinctive, so it counts
#: only for a kernel thread (:func:`backend_domid`'s ``kernel_thread``).
BLKBACK_RING_COMM = re.compile(r"(\d{1,5})\.([a-z][a-z0-9]{0,11})-(\d{1,3})")
THREAD_KIND = "thread_affinity"
#: ``PF_KTHREAD`` of ``<linux/sched.h>``: the flags field (the 9th) of /proc/<pid>/stat.
PF_KTHREAD = 0x00200000


def thread_path(pid: int) -> str:
    """The journal's path for a thread's affinity (its /proc directory)."""
    return f"/proc/{pid}"


def backend_domid(comm: str, kernel_thread: bool = False) -> int | None:
    """The guest a backend thread serves, from its name; None for any other thread. The bare
    ``<domid>.<dev>-<ring>`` name of today's blkback counts only when ``kernel_thread``."""
    match = BACKEND_COMM.fullmatch(comm)
    if match is not None:
        return int(match.group(1) or match.group(2))
    ring = BLKBACK_RING_COMM.fullmatch(comm)
    if ring is not None and kernel_thread:
        return int(ring.group(1))
    return None


def may_be_blkback_ring(comm: str) -> bool:
    """Whether the name has blkback's bare ``<domid>.<dev>-<ring>`` form (then whether the task
    is a kernel thread decides)."""
    return BLKBACK_RING_COMM.fullmatch(comm) is not None


def is_kernel_thread(stat_text: str) -> bool:
    """Whether a /proc/<pid>/stat text has PF_KTHREAD in its flags (the field after the
    parenthesised name: state, ppid, pgrp, session, tty_nr, tpgid, flags). False when unreadable."""
    _, _, rest = stat_text.rpartition(")")
    fields = rest.split()
    if len(fields) < 7 or not fields[6].isdigit():
        return False
    return bool(int(fields[6]) & PF_KTHREAD)


@dataclass(frozen=True)
class BackendThread:
    """One netback or blkback kernel thread as read: its CPU affinity (``Cpus_allowed_list``)."""

    pid: int
    comm: str
    domid: int
    cpus: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class SetThreadAffinity:
    """The thread's CPU affinity = ``wanted`` (was ``previous``), by ``sched_setaffinity``."""

    pid: int
    comm: str
    wanted: tuple[int, ...]
    previous: str

    @property
    def path(self) -> str:
        return thread_path(self.pid)


@dataclass(frozen=True)
class ThreadPlan:
    """One backend thread: its guest, the guest's node, the Dom0 vCPUs near it, and either the
    write or why not (``why``: a skipped line; both None: already there)."""

    thread: BackendThread
    node: int | None
    near_vcpus: tuple[int, ...]
    step: SetThreadAffinity | None = None
    why: str = ""
    planned: str = ""


def guest_node(vcpus: Sequence[Dom0Vcpu], cpu_nodes: Mapping[int, int]) -> int | None:
    """The one node a guest's vCPUs are all kept on (its memory's, as libxl places it); None
    when they are kept on several, or one of them on none."""
    nodes = {vcpu_node(v, cpu_nodes) for v in vcpus if v.online}
    if len(nodes) != 1 or None in nodes:
        return None
    return nodes.pop()


def thread_plan(thread: BackendThread, node: int | None, vcpu_nodes: Mapping[int, int | None],
                records: Mapping[str, Change], apply: bool) -> ThreadPlan:
    """One thread onto the Dom0 vCPUs kept on its guest's node, or why not."""
    if node is None:
        return ThreadPlan(thread, None, (), why=f"dom{thread.domid} is not kept on one node")
    near = vcpus_near(node, vcpu_nodes)
    if not near:
        return ThreadPlan(thread, node, (), why=f"no Dom0 vCPU is kept on node {node}")
    if thread.cpus == near:
        if thread_path(thread.pid) in records:
            return ThreadPlan(thread, node, near)
        return ThreadPlan(thread, node, near, why=f"already on {format_cpulist(list(near))}")
    if not apply:
        return ThreadPlan(thread, node, near, planned=f"{thread.comm} (pid {thread.pid}): "
                          f"{thread.text} -> {format_cpulist(list(near))}")
    return ThreadPlan(thread, node, near,
                      SetThreadAffinity(thread.pid, thread.comm, near, thread.text))


def decide_threads(threads: Sequence[BackendThread], guest_nodes: Mapping[int, int | None],
                   vcpu_nodes: Mapping[int, int | None], records: Mapping[str, Change],
                   apply: bool) -> list[ThreadPlan]:
    """Every backend thread's plan (``guest_nodes``: each served guest's node, None when it has
    no one node); nothing when no Dom0 vCPU is kept on any node (the caller reports it once)."""
    if not any(n is not None for n in vcpu_nodes.values()):
        return []
    return [thread_plan(t, guest_nodes.get(t.domid), vcpu_nodes, records, apply)
            for t in threads]


def stale_threads(threads: Sequence[BackendThread], records: Mapping[str, Change]
                  ) -> tuple[str, ...]:
    """Records of threads that are gone (the guest or its vif/vbd went): nothing to undo, and
    their pid may be another task's by now."""
    current = {thread_path(t.pid) for t in threads}
    return tuple(sorted(p for p, c in records.items()
                        if c.kind == THREAD_KIND and p not in current))
