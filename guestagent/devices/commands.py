"""``guestagent devices``: PCI devices, their NUMA node and where it came from, and what was done.

* ``guestagent devices [--json]``: read-only; each device, its node and its source
  (kernel | dom0 | config | unknown), the changes in force, what ``apply`` would do, what is
  skipped and why, what failed.
* ``guestagent devices apply [--rebind] [--no-numa-node-write] [--json]``: bind every device to its
  node (IRQs, numa_node, optional rebind and hugepages), recording the previous state in
  ``/run/guestagent/devices.json``. Exit status 1 when any step failed (see the ``failed`` lines).
* ``guestagent devices --reset``: undo everything the state file records (also after a crash);
  :func:`undo` is the part ``guestagent reset`` runs.
* ``guestagent devices irqbalance-policy DEVPATH IRQ``: an irqbalance ``--policyscript``; prints
  ``ban=true`` for IRQs guestagent pinned (either journal: ``devices.json``, and in Dom0
  ``dom0-devices.json``), ``numa_node=N`` for a device whose node only guestagent knows. Always
  exits 0 (irqbalance wants that).

``--config FILE``/``--conf-dir DIR`` name the agent's TOML configuration (its ``[devices]``
table, see :mod:`guestagent.devices.config`); ``--node BDF=N`` adds a node override.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from guestagent.cli import add_json_option, print_json
from guestagent.devices.apply import DevicesJob
from guestagent.devices.config import DevicesConfig, parse_override
from guestagent.devices.discovery import read_device
from guestagent.devices.hints import HintSource
from guestagent.devices.irqbalance import policy_lines
from guestagent.devices.model import DeviceReport, is_bdf
from guestagent.devices.resolve import resolve_node
from guestagent.devices.state import StateStore
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.undo import UndoReport

if TYPE_CHECKING:
    from guestagent.host import Host


def xenstore_hint_sources(host: Host) -> list[HintSource]:
    """The hints the Dom0 agent published for this guest, through the host's xenstore; none
    (logged) off Xen or where the guest's own domid cannot be read."""
    from guestagent.devices.hints import XenstoreHintSource
    from guestagent.devices.job import own_domid
    from guestagent.log import get_logger

    try:
        client = host.xenstore()
    except (GuestAgentError, OSError, ImportError) as e:
        get_logger("devices").info("dom0_hints_unavailable", reason=str(e))
        return []
    domid = own_domid(client)
    if domid is None:
        client.close()
        return []
    return [XenstoreHintSource(client, domid)]


def load_config(args: argparse.Namespace, ctx: Any) -> DevicesConfig:
    """The agent's configuration files (``[devices]``, ``[agent] state_dir``; those the command
    line names, else the context's: ``ctx.config_paths(args)``) and the options."""
    from guestagent import config as config_mod

    agent = config_mod.load(*ctx.config_paths(args))
    config = DevicesConfig.from_agent_config(agent)
    for item in getattr(args, "node", None) or []:
        bdf, node = parse_override(item, "--node")
        config.node_overrides[bdf] = node
    if getattr(args, "rebind", False):
        config.rebind = True
    if getattr(args, "no_numa_node_write", False):
        config.write_numa_node = False
    return config


def make_job(args: argparse.Namespace, ctx: Any) -> DevicesJob:
    hostfs: HostFS = ctx.hostfs
    return DevicesJob(hostfs, load_config(args, ctx), xenstore_hint_sources(ctx.host),
                      route_lookup=ctx.host.default_interfaces)


def device_line(r: DeviceReport) -> str:
    """A device's first line: what it is, its node and where that came from, its host node
    (REMOTE: no vnode of this guest sits there), its IRQs."""
    node = "?" if r.node is None else str(r.node)
    host = "" if r.host_node is None else f"  host_node={r.host_node}"
    remote = " REMOTE" if r.remote else ""
    return (f"{r.bdf}  {r.vendor}:{r.device}  {r.pci_class}  driver={r.driver or '-'}  "
            f"node={node} ({r.source}){host}{remote}  kernel_numa_node={r.kernel_node}  "
            f"irqs={','.join(str(i) for i in r.irqs) or '-'}")


def render_table(reports: list[DeviceReport], job: DevicesJob, applied: bool = True) -> str:
    """The devices, what was done, irqbalance's mode; ``applied`` False: the read-only view,
    which says that it changed nothing."""
    lines: list[str] = []
    for r in reports:
        lines.append(device_line(r))
        for label, items in (("applied", r.applied), ("planned", r.planned),
                             ("skipped", r.skipped), ("failed", r.failed)):
            for item in items:
                lines.append(f"    {label}: {item}")
    if not reports:
        lines.append("no PCI devices")
    for change in job.state.changes.values():
        if not change.bdf:
            lines.append(f"applied: {change.path} = {change.applied} (was {change.previous})")
    status = job.irqbalance
    decision = job.irq_decision
    lines.append(f"irqbalance: {'running' if status.running else 'not running'}; "
                 f"mode {decision.mode}: {decision.reason}")
    if not applied and decision.touch:
        lines.append("(read-only view: nothing was pinned or written; 'guestagent devices "
                     "apply' does it)")
    for line in job.problems:
        lines.append(f"ignored input: {line}")
    return "\n".join(lines) + "\n"


def to_json(reports: list[DeviceReport], job: DevicesJob, undo: list[str]) -> dict[str, Any]:
    status = job.irqbalance
    decision = job.irq_decision
    payload = {
        "devices": [r.to_dict() for r in reports],
        "nodes": {"online": job.nodes.online,
                  "cpus": {str(k): v for k, v in sorted(job.nodes.cpus.items())}},
        "irqbalance": {"running": status.running, "pid": status.pid,
                       "found_by": status.found_by, "policyscript": status.policyscript,
                       "mode": decision.mode, "touch_irqs": decision.touch,
                       "reason": decision.reason},
        "problems": job.problems,
        "node_changes": [
            {"path": c.path, "applied": c.applied, "previous": c.previous}
            for c in job.state.changes.values() if not c.bdf
        ],
        "state_file": job.state.path,
        "undone": undo,
    }
    return payload


@contextmanager
def state_lock(hostfs: HostFS, state_file: str, what: str, create: bool) -> Iterator[None]:
    """Hold the lock of the directory of ``state_file`` (:func:`guestagent.statelock.held`)
    while a command changes the host."""
    from guestagent import statelock

    with statelock.held(hostfs, os.path.dirname(state_file), what, create):
        yield


def state_file_in(state_dir: str) -> str:
    return f"{state_dir.rstrip('/')}/devices.json"


def undo(hostfs: HostFS, state_dir: str) -> UndoReport:
    """Undo every change ``devices.json`` in ``state_dir`` records, from that file alone (no
    configuration), under the caller's state lock: a line per change and per malformed entry
    (each failed restore is also logged at error level). A state file that cannot be read at
    all raises InputError."""
    job = DevicesJob(hostfs, DevicesConfig(state_file=state_file_in(state_dir)))
    lines = job.reset()
    return UndoReport(lines, job.reset_failures)


def run_reset(args: argparse.Namespace, ctx: Any) -> int:
    """``devices --reset``: undo from the state file alone. Of the configuration only ``[agent]
    state_dir`` is read, leniently: a bad override or any other problem in the files must not
    block the undo (each is logged and ignored). Exit status 1, with an error-level line each,
    when anything could not be restored, so the unit's ``ExecStopPost=-`` hides nothing."""
    from guestagent import config as config_mod
    from guestagent.log import get_logger

    log = get_logger("devices")
    state_dir, problems = config_mod.read_state_dir(*ctx.config_paths(args))
    for line in problems:
        log.warning("devices_reset_config_ignored", problem=line)
    state_file = state_file_in(state_dir)
    try:
        with state_lock(ctx.hostfs, state_file, "devices --reset", create=False):
            report = undo(ctx.hostfs, state_dir)
    except GuestAgentError as e:
        log.error("devices_undo_failed", error=str(e), state_file=state_file)
        return 1
    if args.json:
        print_json({"undone": report.lines, "state_file": state_file,
                    "failed": report.failures})
    else:
        sys.stdout.write("".join(f"{line}\n" for line in report.lines) or "nothing to undo\n")
    return 1 if report.failures else 0


def run_show(args: argparse.Namespace, ctx: Any) -> int:
    if args.reset:
        return run_reset(args, ctx)
    job = make_job(args, ctx)
    reports = job.scan(apply=False)
    if args.json:
        print_json(to_json(reports, job, []))
    else:
        sys.stdout.write(render_table(reports, job, applied=False))
    return 0


def run_apply(args: argparse.Namespace, ctx: Any) -> int:
    config = load_config(args, ctx)
    with state_lock(ctx.hostfs, config.state_file, "devices apply", create=True):
        job = DevicesJob(ctx.hostfs, config, xenstore_hint_sources(ctx.host),
                         route_lookup=ctx.host.default_interfaces)
        reports = job.scan(apply=True)
    if args.json:
        print_json(to_json(reports, job, []))
    else:
        sys.stdout.write(render_table(reports, job))
    return 1 if any(r.failed for r in reports) else 0


def pinned_irqs(hostfs: HostFS, state_dir: str) -> set[int]:
    """The IRQs whose affinity either journal in ``state_dir`` records: ``devices.json`` (the
    guest's devices job) and ``dom0-devices.json`` (Dom0's own devices), as the packaged policy
    script reads them. A journal that is missing or unreadable adds nothing; the other still
    counts."""
    from guestagent.dom0.owndevices_io import journal_in

    pinned: set[int] = set()
    for journal in (StateStore(hostfs, f"{state_dir}/devices.json"), journal_in(hostfs, state_dir)):
        try:
            records = journal.load().changes
        except (GuestAgentError, OSError, ValueError):
            continue
        pinned |= {int(p.split("/")[3]) for p, c in records.items()
                   if c.kind == "irq_affinity" and p.split("/")[3].isdigit()}
    return pinned


def run_policy(args: argparse.Namespace, ctx: Any) -> int:
    """irqbalance policy script: never fails, prints key=value lines or nothing. ``ban=true``
    for an IRQ either journal records (the device's node is not looked up then)."""
    try:
        hostfs: HostFS = ctx.hostfs
        irq = int(args.irq)
        bdf = os.path.basename(str(args.devpath).rstrip("/"))
        config = load_config(args, ctx)
        pinned = pinned_irqs(hostfs, posixpath.dirname(config.state_file))
        node = None
        if irq not in pinned and is_bdf(bdf):
            job = DevicesJob(hostfs, config, xenstore_hint_sources(ctx.host),
                             route_lookup=ctx.host.default_interfaces)
            job.refresh()
            device = read_device(hostfs, bdf)
            if device.numa_node < 0:
                node = resolve_node(device, job.nodes, job.dom0_hints, job.config_hints).node
        for line in policy_lines(irq, pinned, node):
            print(line)
    except (GuestAgentError, OSError, ValueError, IndexError):
        pass
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    add_json_option(parser)
    parser.add_argument("--config", metavar="FILE",
                        help="main configuration file (default /etc/guestagent/guestagent.toml)")
    parser.add_argument("--conf-dir", metavar="DIR",
                        help="configuration drop-ins (default /etc/guestagent/conf.d)")
    parser.add_argument("--node", action="append", metavar="BDF=N",
                        help="node override for one device (repeatable), e.g. 0000:00:05.0=1")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="PCI devices, their NUMA node, and binding them to it",
        description=(
            "Show PCI devices with their NUMA node and where it came from (kernel, Dom0 hint, "
            "config), what was applied and what failed; 'apply' binds IRQs (and numa_node, "
            "optionally the driver and hugepages) to that node; --reset undoes it."
        ),
    )
    parser.epilog = (
        "irqbalance: by default (irqbalance = auto) guestagent leaves IRQ affinity to irqbalance "
        "while it runs, and says so; irqbalance then places the IRQs by the device's numa_node. "
        "Run irqbalance with --policyscript=/usr/libexec/guestagent/irqbalance-policy (the "
        "packages' drop-in for irqbalance.service does), or set [devices] irqbalance = pin, to "
        "have guestagent pin them; the script bans the pinned IRQs from irqbalance.")
    _common(parser)
    parser.add_argument("--reset", action="store_true",
                        help="undo every change recorded in the state file")
    parser.set_defaults(func=run_show, reset=False)
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION")
    apply = sub.add_parser("apply", help="bind every device to its node, recording undo state")
    _common(apply)
    apply.add_argument("--rebind", action="store_true",
                       help="unbind and rebind the driver after writing numa_node "
                            "(never the root file system's or default route's device)")
    apply.add_argument("--no-numa-node-write", action="store_true",
                       help="do not write numa_node (writing it taints the kernel)")
    apply.set_defaults(func=run_apply)
    policy = sub.add_parser("irqbalance-policy",
                            help="irqbalance --policyscript: ban the IRQs guestagent pinned")
    policy.add_argument("devpath", help="the device's sysfs path (from irqbalance)")
    policy.add_argument("irq", help="the IRQ number (from irqbalance)")
    policy.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)
    policy.add_argument("--conf-dir", metavar="DIR", help=argparse.SUPPRESS)
    policy.set_defaults(func=run_policy)
