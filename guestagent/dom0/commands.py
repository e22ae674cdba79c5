"""Dom0 commands: ``guestagent host topology [--json]``, ``guestagent host numa`` (registered
from :mod:`guestagent.hostnuma.commands`), ``guestagent host devices [--json] [--apply |
--reset]`` (Dom0's own devices: their IRQs on Dom0 vCPUs of the device's node, issue 16 item 2),
``guestagent dom0 publish`` (one pass)
and ``guestagent dom0 run`` (the daemon running the Dom0 job alone: it follows the xenstore
watches until SIGTERM or ``--duration``).

All need the control domain: detected from ``/proc/xen/capabilities`` (``control_d``), or forced
with ``--role dom0``. Exit status 0 on success; 1 with one line on stderr when Xen or xenstore
cannot answer; ``dom0 publish`` exits 1 as well when any guest's hints could not be computed,
``host devices`` when any device has a failed line (an IRQ unreadable or its write refused) or a
restore failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from guestagent.cli import add_json_option, finite_float, print_json
from guestagent.config import DOM0_RESYNC
from guestagent.daemon.commands import one_job_options
from guestagent.dom0.owndevices import OwnDevicesModel, OwnDevicesPlan, vcpus_json
from guestagent.dom0.owndevices_io import PassOutcome
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


def _vcpu_lines(model: OwnDevicesModel, plan: OwnDevicesPlan) -> list[str]:
    lines = ["Dom0 vCPUs (pCPU now, hard / soft affinity, node kept on):"]
    for v in vcpus_json(model, plan.vcpu_nodes):
        node = "-" if v["node"] is None else str(v["node"])
        state = "" if v["online"] else " offline"
        lines.append(f"  vCPU {v['vcpu']}: pCPU {v['cpu']}, hard {v['hard']} / soft "
                     f"{v['soft']}, node {node}{state}")
    return lines


def _thread_lines(outcome: PassOutcome) -> list[str]:
    lines = []
    for t in outcome.threads:
        node = "-" if t.node is None else str(t.node)
        near = ",".join(map(str, t.near_vcpus)) or "none"
        lines.append(f"backend thread {t.comm} (pid {t.pid}, dom{t.domid}): guest's node "
                     f"{node}, Dom0 vCPUs near it: {near}")
        for category in ("applied", "planned", "skipped", "failed"):
            lines += [f"  {category}: {line}" for line in getattr(t, category)]
    return lines


def _own_devices_text(model: OwnDevicesModel, plan: OwnDevicesPlan,
                      outcome: PassOutcome) -> str:
    lines = [*_vcpu_lines(model, plan), f"IRQs: {plan.irq.reason}", *outcome.lines]
    for d in outcome.devices:
        node = "-" if d.node is None else str(d.node)
        near = ",".join(map(str, d.near_vcpus)) or "none"
        lines.append(f"{d.bdf} {d.driver}: node {node}, Dom0 vCPUs near it: {near}")
        for category in ("applied", "planned", "skipped", "failed"):
            lines += [f"  {category}: {line}" for line in getattr(d, category)]
    if plan.others:
        shown = ", ".join(f"{bdf} ({why})" for bdf, why in sorted(plan.others.items()))
        lines.append(f"not driven by Dom0: {shown}")
    lines += _thread_lines(outcome)
    lines += [f"warning: {p}" for p in model.problems]
    return "\n".join(lines) + "\n"


def _own_devices_json(model: OwnDevicesModel, plan: OwnDevicesPlan, outcome: PassOutcome,
                      journal: str) -> dict[str, Any]:
    return {
        "journal": journal,
        "irq_mode": plan.irq.mode,
        "irq_reason": plan.irq.reason,
        "dom0_vcpus_unplaced": plan.unplaced,
        "vcpus": vcpus_json(model, plan.vcpu_nodes),
        "devices": [d.to_dict() for d in outcome.devices],
        "backend_threads": [t.to_dict() for t in outcome.threads],
        "not_dom0_driven": dict(sorted(plan.others.items())),
        "notes": outcome.lines,
        "problems": list(model.problems),
    }


def _own_devices_reset(args: argparse.Namespace, ctx: Any, state_dir: str) -> int:
    from guestagent import statelock
    from guestagent.dom0 import owndevices_io

    with statelock.held(ctx.hostfs, state_dir, "host devices --reset", create=False):
        report = owndevices_io.undo(ctx.hostfs, state_dir)
    if args.json:
        print_json({"undone": report.lines, "failed": report.failures,
                    "journal": owndevices_io.journal_in(ctx.hostfs, state_dir).path})
    else:
        sys.stdout.write("".join(f"{line}\n" for line in report.lines) or "nothing to undo\n")
    return 1 if report.failures else 0


def host_devices(args: argparse.Namespace, ctx: Any) -> int:
    """``host devices``: report (and with ``--apply`` pin, with ``--reset`` undo) the IRQs of
    the devices Dom0 drives itself."""
    from contextlib import nullcontext

    from guestagent import config as config_mod
    from guestagent import statelock
    from guestagent.dom0 import owndevices_io
    from guestagent.dom0.owndevices import decide
    from guestagent.log import get_logger

    hostfs: HostFS = ctx.hostfs
    require_dom0(hostfs, args.role)
    state_dir, problems = config_mod.read_state_dir(*ctx.config_paths(args))
    for line in problems:
        get_logger("dom0").warning("dom0_devices_config_ignored", problem=line)
    if args.reset:
        return _own_devices_reset(args, ctx, state_dir)
    lock = (statelock.held(hostfs, state_dir, "host devices --apply", create=True)
            if args.apply else nullcontext())
    with lock:
        journal = owndevices_io.journal_in(hostfs, state_dir).load()
        with ctx.host.xen_controls() as (sysctl, domctl):
            model = owndevices_io.read_model(hostfs, sysctl, domctl)
        plan = decide(model, journal.changes, args.apply, args.irqbalance)
        outcome = owndevices_io.carry_out(plan, hostfs, journal)
    if args.json:
        print_json(_own_devices_json(model, plan, outcome, journal.path))
    else:
        sys.stdout.write(_own_devices_text(model, plan, outcome))
    return 1 if outcome.failed else 0


def _register_host_devices(host_sub: Any) -> None:
    devices = host_sub.add_parser(
        "devices",
        help="Dom0's own devices and backend threads: each one's node, the Dom0 vCPUs near "
        "it (--apply pins the IRQs and threads there, --reset undoes)",
        description=(
            "For every PCI device Dom0 drives itself (bound to a driver other than pciback): "
            "its node from Xen (XEN_SYSCTL_pcitopoinfo), the Dom0 vCPUs kept on that node's "
            "pCPUs (their hard and soft affinity, XEN_DOMCTL_getvcpuaffinity, and "
            "cputopoinfo), and its IRQs' affinity; for every netback and blkback thread, the "
            "node its guest is kept on and the Dom0 vCPUs there. --apply writes each IRQ's "
            "/proc/irq/N/smp_affinity_list and sets each thread's CPU affinity to those "
            "vCPUs, journalled first in dom0-devices.json ([agent] state_dir); --reset "
            "restores them from that file alone. When no Dom0 vCPU is kept on one node "
            "(Xen's dom0_vcpus_pin or dom0_nodes= not set) nothing is pinned and the report "
            "says so."
        ),
    )
    add_json_option(devices)
    action = devices.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true",
                        help="pin the IRQs and threads (journalled first), then report")
    action.add_argument("--reset", action="store_true",
                        help="restore every IRQ and thread affinity dom0-devices.json "
                        "records")
    devices.add_argument(
        "--irqbalance", choices=("auto", "pin", "defer"), default="auto",
        help="the IRQs: 'auto' pins them only when irqbalance does not run in Dom0 (its "
        "policy script would ban them only from its next rescan, which Dom0 does not ask "
        "for); 'pin' pins anyway; 'defer' never pins (default: auto). The threads are pinned "
        "in every mode")
    devices.add_argument("--config", metavar="FILE",
                         help="main configuration file, for [agent] state_dir only "
                         "(default /etc/guestagent/guestagent.toml)")
    devices.add_argument("--conf-dir", metavar="DIR",
                         help="configuration drop-ins (default /etc/guestagent/conf.d)")
    _role_argument(devices)
    devices.set_defaults(func=host_devices)


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
    _register_host_devices(host_sub)

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
