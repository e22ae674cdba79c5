"""Dom0 commands: ``guestagent host topology [--json]``, ``guestagent host numa`` (registered
from :mod:`guestagent.hostnuma.commands`), ``guestagent dom0 publish`` (one pass)
and ``guestagent dom0 run`` (the daemon running the Dom0 job alone: it follows the xenstore
watches until SIGTERM or ``--duration``).

All need the control domain: detected from ``/proc/xen/capabilities`` (``control_d``), or forced
with ``--role dom0``. Exit status 0 on success; 1 with one line on stderr when Xen or xenstore
cannot answer; ``dom0 publish`` exits 1 as well when any guest's hints could not be computed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from guestagent.cli import add_json_option, finite_float, print_json
from guestagent.config import DOM0_RESYNC
from guestagent.daemon.commands import one_job_options
from guestagent.dom0.publisher import DomainResult, Publisher
from guestagent.dom0.role import ROLES, require_dom0
from guestagent.dom0.schema import base_path
from guestagent.dom0.topology import HostTopology, read_host_topology, render_table, to_json
from guestagent.hostfs import HostFS
from guestagent.xen.sysctl import PciAddress


def host_topology(args: argparse.Namespace, ctx: Any) -> int:
    hostfs: HostFS = ctx.hostfs
    require_dom0(hostfs, args.role)
    with ctx.host.sysctl() as sysctl:
        topology = read_host_topology(hostfs, sysctl)
    if args.json:
        print_json(to_json(topology))
        for problem in topology.problems:
            print(f"guestagent: warning: {problem}", file=sys.stderr)
    else:
        sys.stdout.write(render_table(topology))
    return 0


def _results_json(results: Sequence[DomainResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        out.append(
            {
                "domid": r.domid,
                "path": base_path(r.domid),
                "error": r.error,
                "changed": r.plan is not None and not r.plan.empty,
                "devices": [
                    {
                        "host_bdf": str(h.host),
                        "guest_bdf": None if h.guest is None else str(h.guest),
                        "host_node": h.host_node,
                        "vnode": h.vnode,
                        "vnode_source": h.vnode_source,
                    }
                    for h in r.hints
                ],
            }
        )
    return out


def _results_text(results: Sequence[DomainResult]) -> str:
    if not results:
        return "no guest has a passthrough device\n"
    lines = []
    for r in results:
        state = "unchanged" if r.plan is None or r.plan.empty else "updated"
        if r.error is not None:
            lines.append(f"dom{r.domid}: no hints: {r.error}")
            continue
        if not r.hints:
            lines.append(f"dom{r.domid}: no passthrough device ({state})")
            continue
        lines.append(f"dom{r.domid}: {base_path(r.domid)} ({state})")
        for h in r.hints:
            guest = "?" if h.guest is None else str(h.guest)
            node = "-" if h.host_node is None else str(h.host_node)
            vnode = "-" if h.vnode is None else str(h.vnode)
            lines.append(
                f"  {h.host} (guest {guest}): host node {node}, vnode {vnode} ({h.vnode_source})"
            )
    return "\n".join(lines) + "\n"


def _publisher(hostfs: HostFS, client: Any, sysctl: Any) -> Publisher:
    def topology(extra: Sequence[PciAddress]) -> HostTopology:
        return read_host_topology(hostfs, sysctl, extra)

    return Publisher(client, hostfs, topology)


def dom0_publish(args: argparse.Namespace, ctx: Any) -> int:
    hostfs: HostFS = ctx.hostfs
    require_dom0(hostfs, args.role)
    client = ctx.host.xenstore()
    try:
        with ctx.host.sysctl() as sysctl:
            results = _publisher(hostfs, client, sysctl).publish_all()
    finally:
        client.close()
    if args.json:
        print_json(_results_json(results))
    else:
        sys.stdout.write(_results_text(results))
    errors = [r for r in results if r.error is not None]
    for r in errors:
        print(f"guestagent: dom{r.domid}: {r.error}", file=sys.stderr)
    return 1 if errors else 0


def dom0_run(args: argparse.Namespace, ctx: Any) -> int:
    """The daemon running the Dom0 job alone (:func:`guestagent.daemon.commands.run_one_job`)."""
    from guestagent.daemon.commands import run_one_job
    from guestagent.dom0.job import Dom0Job

    hostfs: HostFS = ctx.hostfs
    require_dom0(hostfs, args.role)
    overrides = [("--resync", "dom0", "resync_seconds", args.resync)]
    run_one_job(args, ctx, Dom0Job(), overrides,
                role="dom0")
    return 0


def _role_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="auto",
        help="'auto' detects Dom0 from /proc/xen/capabilities; 'dom0' skips the detection (a "
        "Dom0 without xenfs); 'guest' is refused: these commands run in Dom0 only "
        "(default: auto)",
    )


def register(subparsers: Any) -> None:
    host = subparsers.add_parser("host", help="the Xen host, seen from Dom0")
    host_sub = host.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    topo = host_sub.add_parser(
        "topology",
        help="NUMA nodes, CPUs and PCI devices as Xen knows them (like 'xl info -n')",
        description=(
            "Show the host's NUMA topology from Xen's sysctls: per node memory and distances, "
            "per CPU core/socket/node, and the node of each of Dom0's PCI devices."
        ),
    )
    add_json_option(topo)
    _role_argument(topo)
    topo.set_defaults(func=host_topology)
    from guestagent.hostnuma.commands import register_host

    register_host(host_sub, _role_argument)

    dom0 = subparsers.add_parser("dom0", help="Dom0 services for the guests")
    dom0_sub = dom0.add_subparsers(dest="dom0_command", metavar="COMMAND", required=True)
    publish = dom0_sub.add_parser(
        "publish",
        help="publish each guest's passthrough-device hints into its xenstore tree, once",
        description=(
            "For every guest with PCI passthrough devices, compute each device's host node and "
            "the guest vnode on it, and write them under /local/domain/<domid>/guestagent-dom0 "
            "(owner dom0, read-only for the guest); remove hints of devices that are gone."
        ),
    )
    add_json_option(publish, "print the result as JSON (a list, one object per guest)")
    _role_argument(publish)
    publish.set_defaults(func=dom0_publish)
    run = dom0_sub.add_parser(
        "run",
        help="the daemon with the Dom0 job alone: publish, then keep the hints current from "
        "xenstore watches until SIGTERM or --duration",
        description="The daemon (as 'guestagent run --role dom0') with only the [dom0] job: it "
        "reads the same configuration files; --resync overrides [dom0] resync_seconds.",
    )
    run.add_argument(
        "--resync", type=finite_float, default=None, metavar="SECONDS",
        help="full pass at least this often ([dom0] resync_seconds, default "
        f"{DOM0_RESYNC.default:g})",
    )
    _role_argument(run)
    one_job_options(run)
    run.set_defaults(func=dom0_run)
