"""The topology job of the daemon: read both views, publish them, again on every resume.

Each pass is read (:func:`guestagent.topology.reader.read_topology`) -> decide
(:func:`guestagent.topology.reconcile.decide`, pure: the warnings and the tree) -> apply
(:func:`apply`: log the warnings, sync the tree under ``data/guestagent``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger
from guestagent.schema import BASE
from guestagent.topology.model import Topology
from guestagent.topology.reader import read_topology
from guestagent.topology.reconcile import TopologyPlan, decide

if TYPE_CHECKING:
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext
    from guestagent.xen.xs_sync import TransactionRunner, TreeChanges


def apply(plan: TopologyPlan, client: TransactionRunner | None, log: Any) -> TreeChanges | None:
    """Log the plan's warnings and make ``data/guestagent`` hold its tree (the sections it leaves
    untouched). None when there is nothing to publish or no xenstore; GuestAgentError or OSError
    when xenstore refused."""
    for line in plan.warnings:
        log.warning("topology_input", error=line)
    if client is None or plan.tree is None:
        return None
    from guestagent.xen.xs_sync import sync_tree

    return sync_tree(client, BASE, plan.tree, leave=plan.leave)


class TopologyJob:
    name = "topology"

    def __init__(self) -> None:
        self._ctx: JobContext | None = None
        self._timer: Timer | None = None
        self._topology: Topology | None = None
        self._published_at: float | None = None
        self._publishes = 0
        self._publish_error: str | None = None
        self._log = get_logger("topology")

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self.republish("start")
        self._schedule(ctx.config)

    def _schedule(self, config: Config) -> None:
        assert self._ctx is not None
        if self._timer is not None:
            self._timer.cancel()
        every = float(config.get("topology", "refresh_seconds"))
        self._timer = self._ctx.loop.call_every(every, lambda: self.republish("refresh"))

    def republish(self, reason: str) -> None:
        ctx = self._ctx
        assert ctx is not None
        topology = read_topology(ctx.hostfs, ctx.host.vnuma_call())
        self._topology = topology
        plan = decide(topology)
        try:
            changes = apply(plan, ctx.xenstore.client(), self._log)
        except (GuestAgentError, OSError) as e:
            self._publish_error = str(e)
            self._log.error("publish_failed", error=str(e), reason=reason)
            return
        if changes is None:
            return
        self._publish_error = None
        self._publishes += 1
        self._published_at = time.time()
        if not changes.empty:
            self._log.info(
                "published",
                reason=reason,
                written=len(changes.writes),
                removed=len(changes.removes),
                mismatches=len(topology.mismatches),
            )

    def reload(self, config: Config) -> None:
        self._schedule(config)

    def stop(self) -> None:
        """Nothing to undo: the published keys describe the guest and stay for the toolstack."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> dict[str, Any]:
        topology = self._topology
        result: dict[str, Any] = {
            "publishes": self._publishes,
            "published_at": self._published_at,
            "publish_error": self._publish_error,
        }
        if topology is not None:
            result.update(
                nodes=len(topology.nodes),
                sources=topology.sources,
                hypercall_status=topology.hypercall_status,
                mismatches=topology.mismatches,
            )
        return result
