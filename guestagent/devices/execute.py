"""The devices job's writes: carry out a plan (:mod:`guestagent.devices.plan`), and undo it.

:func:`apply` is the only code of the devices job that changes the host. It writes exactly the
steps it is given, in order, and journals each change in the :class:`~guestagent.undo.Journal`
(``devices.json``) *before* making it, then what it left there (``applied``). It decides
nothing: when a write fails it reports the failure and drops the record; a
:class:`~guestagent.devices.plan.WriteNumaNode`'s ``then`` steps run only once it is written.

A device that vanishes mid-way (its sysfs directory gone when a write fails) raises
:class:`~guestagent.devices.discovery.DeviceGoneError`; the job turns it into one line and a skip.

:func:`undo_all` restores every journalled change, newest first, from the journal alone (what
``guestagent devices --reset`` and ``guestagent reset`` run); :func:`nudge_irqbalance` asks an
irqbalance that runs guestagent's policy script to rescan.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from guestagent.devices import netif
from guestagent.devices.discovery import PCI_DRIVERS, DeviceGoneError, device_exists, device_path
from guestagent.devices.irqbalance import IrqbalanceStatus
from guestagent.devices.plan import (
    TAINT_NOTE,
    ForgetRecords,
    HugepageNodeDone,
    Note,
    Rebind,
    ReserveHugepages,
    SetIrqAffinity,
    Step,
    WriteNumaNode,
)
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS, parse_cpulist
from guestagent.log import get_logger
from guestagent.undo import Change, Journal, UndoReport


def _log() -> Any:
    """The devices logger, looked up at each use (tests and the daemon configure logging late)."""
    return get_logger("devices")


@dataclass
class Applied:
    """What carrying out some steps did: the report's lines by category, the vectors waiting for
    their driver, whether the driver was rebound (the device has new vectors), and the nodes
    whose hugepage pool is handled now."""

    applied: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending_irqs: list[int] = field(default_factory=list)
    rebound: bool = False
    hugepage_nodes: set[int] = field(default_factory=set)


def apply(steps: Iterable[Step], hostfs: HostFS, journal: Journal,
          net: netif.NetAccess | None = None) -> Applied:
    """Carry out ``steps`` in order (see the module text); what was done, step by step. ``net``
    reaches a rebound NIC's interfaces (default: :func:`netif.net_access`)."""
    result = Applied()
    access = net if net is not None else netif.net_access(hostfs)
    for step in steps:
        _carry_out(step, hostfs, journal, result, access)
    return result


def _carry_out(step: Step, hostfs: HostFS, journal: Journal, result: Applied,
               net: netif.NetAccess) -> None:
    if isinstance(step, Note):
        _note(step, result)
    elif isinstance(step, ForgetRecords):
        journal.forget_all(step.paths)
    elif isinstance(step, WriteNumaNode):
        if _write_numa_node(step, hostfs, journal, result):
            for then in step.then:
                _carry_out(then, hostfs, journal, result, net)
    elif isinstance(step, Rebind):
        _rebind(step, hostfs, journal, result, net)
    elif isinstance(step, SetIrqAffinity):
        _set_irq_affinity(step, hostfs, journal, result)
    elif isinstance(step, ReserveHugepages):
        _reserve_hugepages(step, hostfs, journal, result)
    elif isinstance(step, HugepageNodeDone):
        result.hugepage_nodes.add(step.node)


def _note(note: Note, result: Applied) -> None:
    lines: list[str] = getattr(result, note.category)
    lines.append(note.text)
    if note.pending_irq is not None:
        result.pending_irqs.append(note.pending_irq)
    if note.event:
        getattr(_log(), note.level)(note.event, **dict(note.fields))


def _write_numa_node(step: WriteNumaNode, hostfs: HostFS, journal: Journal,
                     result: Applied) -> bool:
    """True when written (the rebind may follow)."""
    path, node = step.path, step.node
    journal.record(Change(kind="numa_node", path=path, bdf=step.bdf, previous=str(step.previous)))
    try:
        write(hostfs, step.bdf, path, str(node))
    except OSError as e:
        journal.forget(path)
        result.failed.append(f"numa_node = {node} refused by the kernel ({errname(e)})")
        _log().warning("numa_node_write_failed", bdf=step.bdf, node=node, error=errname(e))
        return False
    journal.set_applied(path, str(node))
    _log().warning("numa_node_written", bdf=step.bdf, node=node, source=step.source,
                 note=TAINT_NOTE)
    result.applied.append(f"numa_node = {node} (was {step.previous}; {TAINT_NOTE})")
    return True


def _rebind(step: Rebind, hostfs: HostFS, journal: Journal, result: Applied,
            net: netif.NetAccess) -> None:
    """Unbind and bind again (``drivers_probe`` when bind fails); the old vectors' records go
    first (the unbind frees them, their numbers may go to another device). The device's network
    interfaces are read before and set back after, on the node's CPUs (:mod:`.netif`)."""
    driver, bdf = step.driver, step.bdf
    path = device_path(bdf)
    interfaces, problems = netif.read_interfaces(hostfs, bdf, net.rings)
    result.skipped += problems
    up = [i.name for i in interfaces if i.up]
    if up and not net.can_admin:
        result.failed.append(
            f"rebind refused: {', '.join(up)} is up and this process lacks CAP_NET_ADMIN to "
            "bring it back up after the bind (docs/IONUMA.md, the unit's drop-in)")
        _log().warning("rebind_refused", bdf=bdf, interfaces=",".join(up),
                       reason="no CAP_NET_ADMIN")
        return
    journal.record(Change(kind="driver_rebind", path=path, bdf=bdf, previous=driver))
    journal.forget_all(c.path for c in journal.for_device(bdf) if c.kind == "irq_affinity")
    try:
        write(hostfs, bdf, f"{PCI_DRIVERS}/{driver}/unbind", bdf)
    except OSError as e:
        journal.forget(path)
        result.failed.append(f"rebind: unbind from {driver} failed ({errname(e)})")
        return
    with netif.on_cpus(step.cpus, hostfs) as placement:
        how = _bind_again(bdf, driver, hostfs, result)
        if how is None:
            return
        journal.set_applied(path, driver)
        _log().info("driver_rebound", bdf=bdf, driver=driver, via=how)
        result.applied.append(f"driver {driver} rebound (via {how})")
        result.rebound = True
        for interface in interfaces:
            _interface_back(bdf, interface, len(interfaces), net, placement, hostfs, result)


def _interface_back(bdf: str, interface: netif.InterfaceState, count: int,
                    net: netif.NetAccess, placement: str, hostfs: HostFS,
                    result: Applied) -> None:
    """One interface of the rebound device as it was before the unbind (rings, up)."""
    name = netif.new_name(hostfs, bdf, interface, count, net.rename_wait)
    if name is None:
        result.failed.append(f"interface {interface.name}: not back after the rebind; "
                             "left to the network configuration")
        _log().warning("interface_not_back", bdf=bdf, interface=interface.name)
        return
    try:
        done = netif.restore(hostfs, bdf, interface, name, net.rings)
    except (OSError, InputError) as e:
        shown = errname(e) if isinstance(e, OSError) else str(e)
        result.failed.append(f"interface {name}: not set back after the rebind ({shown})")
        _log().warning("interface_restore_failed", bdf=bdf, interface=name, error=shown)
        return
    if not done:
        return
    renamed = f" (was {interface.name})" if name != interface.name else ""
    where = f", {placement}" if placement else ""
    result.applied.append(f"interface {name}{renamed}: {', '.join(done)} again{where}")
    _log().info("interface_restored", bdf=bdf, interface=name, restored=",".join(done),
                placement=placement or "not pinned")


def _bind_again(bdf: str, driver: str, hostfs: HostFS, result: Applied) -> str | None:
    """The file that bound the driver again; None (a failed line) when neither could."""
    try:
        write(hostfs, bdf, f"{PCI_DRIVERS}/{driver}/bind", bdf)
        return f"{PCI_DRIVERS}/{driver}/bind"
    except OSError as e:
        _log().info("rebind_bind_failed", bdf=bdf, driver=driver, error=errname(e))
        first = e
    try:
        write(hostfs, bdf, "/sys/bus/pci/drivers_probe", bdf)
        return "/sys/bus/pci/drivers_probe"
    except OSError as e2:
        result.failed.append(
            f"rebind: {driver} unbound but bind and drivers_probe "
            f"failed ({errname(first)}, {errname(e2)}); device unbound"
        )
        _log().error("rebind_failed", bdf=bdf, driver=driver, error=errname(e2))
        return None


def _set_irq_affinity(step: SetIrqAffinity, hostfs: HostFS, journal: Journal,
                      result: Applied) -> None:
    """Write the affinity; a kernel-managed vector refuses with EIO and is left alone."""
    bdf, irq, path = step.bdf, step.irq, step.path
    journal.record(Change(kind="irq_affinity", path=path, bdf=bdf, previous=step.previous))
    try:
        write(hostfs, bdf, path, step.wanted)
    except OSError as e:
        journal.forget(path)
        if e.errno == errno.EIO:
            result.skipped.append(f"IRQ {irq}: kernel-managed, left alone")
            _log().info("irq_managed", bdf=bdf, irq=irq)
        else:
            result.failed.append(f"IRQ {irq}: write refused ({errname(e)})")
            _log().warning("irq_affinity_failed", bdf=bdf, irq=irq, error=errname(e))
        return
    try:
        applied = hostfs.read_text(path).strip()
    except InputError:
        applied = step.wanted
    journal.set_applied(path, applied)
    effective = ""
    with contextlib.suppress(InputError):
        effective = hostfs.read_text(f"/proc/irq/{irq}/effective_affinity_list").strip()
    shown = f"{path} = {applied} (was {step.previous}"
    shown += f"; effective {effective})" if effective else ")"
    result.applied.append(shown)
    _log().info("irq_affinity_set", bdf=bdf, irq=irq, cpus=applied, previous=step.previous)


def _reserve_hugepages(step: ReserveHugepages, hostfs: HostFS, journal: Journal,
                       result: Applied) -> None:
    node, want, path = step.node, step.want, step.path
    result.hugepage_nodes.add(node)
    journal.record(Change(kind="hugepages", path=path, bdf="", previous=str(step.previous)))
    try:
        hostfs.write_text(path, str(want))
        got = hostfs.read_int(path, minimum=0)
    except (OSError, InputError) as e:
        result.failed.append(f"hugepages: node {node}: {e}")
        return
    journal.set_applied(path, str(got))
    _log().info("hugepages_reserved", node=node, asked=want, got=got, previous=step.previous)
    if got < want:
        result.failed.append(f"hugepages: node {node}: asked {want}, the kernel gave {got}")
    else:
        result.applied.append(f"hugepages: node {node} nr_hugepages = {got} (was {step.previous})")


def write(hostfs: HostFS, bdf: str, path: str, value: str) -> None:
    """Write an existing sysfs/procfs file; a vanished device raises DeviceGoneError."""
    if not hostfs.exists(path):
        if not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, f"write of {path}")
        raise FileNotFoundError(errno.ENOENT, "does not exist", path)
    try:
        hostfs.write_text(path, value)
    except (FileNotFoundError, NotADirectoryError) as e:
        if not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, f"write of {path}") from None
        raise e
    except OSError as e:
        if e.errno == errno.ENODEV and not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, f"write of {path}") from None
        raise


def nudge_irqbalance(status: IrqbalanceStatus | None, hostfs: HostFS, reason: str) -> bool:
    """SIGHUP to an irqbalance that runs guestagent's policy script: it rebuilds its IRQ database
    on its next interval and asks the script about every IRQ again, so it bans the vectors the
    agent pinned since and takes back the ones it unpinned (irqbalance(1), SIGNALS). True when
    the signal was sent."""
    if status is None or not status.running or not status.uses_our_policy:
        return False
    if status.pid is None or not hostfs.is_real_host:
        return False
    try:
        os.kill(status.pid, signal.SIGHUP)
    except OSError as e:
        _log().warning("irqbalance_rescan_failed", pid=status.pid, error=errname(e))
        return False
    _log().info("irqbalance_rescan", pid=status.pid, reason=reason)
    return True


# ---------------------------------------------------------------- undo


def undo_all(journal: Journal, hostfs: HostFS) -> UndoReport:
    """Undo every recorded change, newest first; one line per change and per malformed entry
    of the journal (skipped at load: the others are restored all the same).

    A restore that failed is logged at error level (``devices_undo_failed``), counted in
    ``failures`` and kept in the journal, so a later reset can try again."""
    report = UndoReport()
    for problem in journal.problems:
        _undo_line(report, f"state file entry malformed, skipped: {problem}", False)
    journal.problems = []
    for change in reversed(list(journal.changes.values())):
        line, ok = undo_one(change, hostfs)
        _undo_line(report, line, ok)
        if ok:
            journal.forget(change.path)
    return report


def _undo_line(report: UndoReport, line: str, ok: bool) -> None:
    report.lines.append(line)
    if ok:
        _log().info("devices_undo", result=line)
    else:
        report.failures += 1
        # error= too: the repeat filter keys on it, so each failed restore gets its own line
        _log().error("devices_undo_failed", result=line, error=line)


def undo_one(change: Change, hostfs: HostFS) -> tuple[str, bool]:
    """What undoing one change did, and whether it is done with (False: it failed)."""
    if change.kind == "driver_rebind":
        return (
            f"{change.bdf}: driver {change.previous} was rebound; it stays bound "
            "(memory it allocated stays where it is until its next probe)"
        ), True
    try:
        current = hostfs.read_text(change.path).strip()
    except MissingInputError:
        return f"{change.path}: gone (device or IRQ removed), nothing to undo", True
    except InputError as e:
        return f"{change.path}: unreadable, left alone ({e})", False
    if change.applied and not _same(change, current):
        return (
            f"{change.path}: now {current!r}, not the {change.applied!r} guestagent left; "
            "changed by someone else, left alone"
        ), True
    try:
        hostfs.write_text(change.path, change.previous)
    except FileNotFoundError:
        return f"{change.path}: gone (device or IRQ removed), nothing to undo", True
    except OSError as e:
        return f"{change.path}: restoring {change.previous!r} failed ({errname(e)})", False
    note = " (the taint stays until reboot)" if change.kind == "numa_node" else ""
    return f"{change.path}: restored {change.previous!r}{note}", True


def _same(change: Change, current: str) -> bool:
    if change.kind == "irq_affinity":
        try:
            return parse_cpulist(current, change.path) == parse_cpulist(change.applied, "state")
        except InputError:
            return False
    return current.strip() == change.applied.strip()


def errname(e: OSError) -> str:
    if e.errno is not None and e.errno in errno.errorcode:
        return f"{errno.errorcode[e.errno]}: {e.strerror or ''}".rstrip(": ")
    return str(e)
