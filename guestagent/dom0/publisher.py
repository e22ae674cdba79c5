"""Publish the device hints into each guest's xenstore tree, and keep them true.

One pass (:meth:`Publisher.publish_all`): the guests are the domains under ``/local/domain``
(strictly parsed ids, dom0 skipped); for each one with a PCI backend the hints are computed
(:mod:`guestagent.dom0.hints`) and its tree made to match (:mod:`guestagent.dom0.reconcile`) in
one transaction, every written node getting ``n0 r<domid>``; a guest with a tree but no device
left loses the tree. Nothing is written for a domain whose home node is gone (that would
re-create it). A domain whose entries do not parse gets no hints (its tree is removed) and an
error line; the other domains are unaffected.

The daemon's Dom0 job (:mod:`guestagent.dom0.job`) watches :data:`WATCHES` (``@introduceDomain``,
``@releaseDomain`` and the PCI backend root), re-publishing one domain for a backend change under
its id and everything otherwise, plus a full pass every ``[dom0] resync_seconds``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from guestagent.dom0.backend import (
    BACKEND_ROOT,
    BackendDevice,
    list_domids,
    parse_domid,
    parse_value,
    read_backend,
)
from guestagent.dom0.hints import compute_hints
from guestagent.dom0.reconcile import DomainPlan, DomainTree, decide_domain, pass_targets
from guestagent.dom0.schema import DeviceHint, base_path, desired_tree, perms
from guestagent.dom0.toolstack import GuestConfig, parse_uuid, read_guest_config
from guestagent.dom0.topology import HostTopology
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.xen.sysctl import PciAddress
from guestagent.xen.xenstore import XenstoreClient, XenstoreError
from guestagent.xen.xs_sync import check_desired, read_tree

DOMAINS_ROOT = "/local/domain"
TOKEN_INTRODUCE = "guestagent-dom0-introduce"
TOKEN_RELEASE = "guestagent-dom0-release"
TOKEN_BACKEND = "guestagent-dom0-backend"
WATCHES = (
    ("@introduceDomain", TOKEN_INTRODUCE),
    ("@releaseDomain", TOKEN_RELEASE),
    (BACKEND_ROOT, TOKEN_BACKEND),
)
_VM_RE = re.compile(r"/vm/(.{1,64})")

TopologyReader = Callable[[Sequence[PciAddress]], HostTopology]
ConfigReader = Callable[[int], "GuestConfig | None"]


@dataclass(frozen=True)
class DomainResult:
    domid: int
    hints: list[DeviceHint]
    plan: DomainPlan | None  # None: nothing was done (error before, or the domain is gone)
    error: str | None = None


def domid_of_backend_path(path: str) -> int | None:
    """The domain a backend watch event is about, or None (the root, or a name that is no id)."""
    prefix = BACKEND_ROOT + "/"
    if not path.startswith(prefix):
        return None
    try:
        return parse_domid(path[len(prefix) :].split("/", 1)[0], path)
    except InputError:
        return None


def read_domain_tree(tx: Any, domid: int) -> DomainTree:
    """The guest's hint tree as the transaction ``tx`` sees it (:class:`DomainTree`)."""
    if not tx.exists(f"{DOMAINS_ROOT}/{domid}"):
        return DomainTree(home=False)
    base = base_path(domid)
    try:
        base_perms = tx.get_perms(base)
    except XenstoreError as e:
        if e.errno != errno.ENOENT:
            raise
        return DomainTree(home=True)
    try:
        return DomainTree(True, read_tree(tx, base), base_perms)
    except InputError:  # not what we write: start again from scratch
        return DomainTree(True, {}, [])


def write_plan(tx: Any, plan: DomainPlan) -> None:
    """Make the guest's tree what ``plan`` says, in the transaction ``tx``; every node written
    gets ``n0 r<domid>``."""
    base = base_path(plan.domid)
    want = perms(plan.domid)
    if plan.remove_base:
        tx.rm(base)
    if plan.create_base:
        tx.write(base, "")
        tx.set_perms(base, want)
    for path in plan.changes.removes:
        tx.rm(f"{base}/{path}")
    for key, value in sorted(plan.changes.writes.items()):
        tx.write(f"{base}/{key}", value)
        tx.set_perms(f"{base}/{key}", want)


class Publisher:
    """Computes and publishes the hints over one xenstore connection (Dom0's)."""

    def __init__(
        self,
        client: XenstoreClient,
        hostfs: HostFS,
        read_topology: TopologyReader,
        read_config: ConfigReader | None = None,
    ) -> None:
        self.client = client
        self.hostfs = hostfs
        self._read_topology = read_topology
        self._read_config = read_config if read_config is not None else self._libxl_config
        self._topology: HostTopology | None = None
        self._log = get_logger("dom0")
        self.problems: list[str] = []

    # --- reading ---------------------------------------------------------------------------

    def _libxl_config(self, domid: int) -> GuestConfig | None:
        uuid: str | None = None
        path = f"{DOMAINS_ROOT}/{domid}/vm"
        try:
            match = _VM_RE.fullmatch(parse_value(self.client.read(path), path))
            if match is not None:
                uuid = parse_uuid(match.group(1), path)
        except XenstoreError as e:
            if e.errno != errno.ENOENT:
                raise
        return read_guest_config(self.hostfs, domid, uuid)

    def topology(self, needed: Sequence[PciAddress] = (), refresh: bool = False) -> HostTopology:
        """The cached host topology, read again when asked or when it lacks a needed device."""
        topo = self._topology
        if refresh or topo is None or any(topo.device(a) is None for a in needed):
            topo = self._read_topology(needed)
            self._topology = topo
        return topo

    def domains(self) -> list[int]:
        """Guests that exist now (their home node is there)."""
        return list_domids(self.client, DOMAINS_ROOT, self.problems)

    # --- one domain ------------------------------------------------------------------------

    def _hints(self, domid: int, devices: list[BackendDevice]) -> list[DeviceHint]:
        if not devices:
            return []
        config = self._read_config(domid)
        topology = self.topology([d.host for d in devices])
        return compute_hints(devices, config, topology)

    def publish_domain(self, domid: int) -> DomainResult:
        error: str | None = None
        hints: list[DeviceHint] = []
        try:
            hints = self._hints(domid, read_backend(self.client, domid))
            desired = desired_tree(hints)
        except InputError as e:  # unparseable entries: no hints rather than wrong ones
            error, hints, desired = str(e), [], {}
            self._log.warning("dom0_hints_not_computed", domid=domid, error=error)
        except XenstoreError as e:  # could not read: leave the tree as it is
            self._log.warning("dom0_backend_unreadable", domid=domid, error=str(e))
            return DomainResult(domid, [], None, str(e))
        plan = self._apply(domid, desired)
        if plan is not None and not plan.empty:
            self._log.info(
                "dom0_hints_published",
                domid=domid,
                devices=len(hints),
                writes=len(plan.changes.writes),
                removes=len(plan.changes.removes) + int(plan.remove_base),
            )
        return DomainResult(domid, hints, plan, error)

    def _apply(self, domid: int, desired: dict[str, str]) -> DomainPlan | None:
        """Read the guest's tree, decide, write the plan: in one transaction."""
        base = base_path(domid)
        check_desired(base, desired)

        def transaction(tx: Any) -> DomainPlan | None:
            plan = decide_domain(domid, desired, read_domain_tree(tx, domid))
            if plan is not None:
                write_plan(tx, plan)
            return plan

        result: DomainPlan | None = self.client.run_transaction(transaction)
        return result

    # --- every domain ----------------------------------------------------------------------

    def publish_all(self) -> list[DomainResult]:
        """One full pass; the host topology is read afresh."""
        self.problems = []
        live = self.domains()
        with_backend = list_domids(self.client, BACKEND_ROOT, self.problems)
        published = [d for d in live if self.client.exists(base_path(d))]
        targets = pass_targets(live, with_backend, published)
        self._topology = None
        results = [self.publish_domain(domid) for domid in targets]
        for problem in self.problems:
            self._log.warning("dom0_xenstore_problem", problem=problem)
        return results
