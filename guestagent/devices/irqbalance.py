"""Coexisting with irqbalance: find it, and decide whether IRQ affinity is ours to set.

irqbalance rewrites ``/proc/irq/N/smp_affinity`` of every IRQ it has not banned whenever it moves
one (every 10 s by default, and for all of them after a rescan), so two writers would fight. Its
own mechanism to keep its hands off an IRQ is the policy script (``--policyscript``, irqbalance(1)):
it runs the script for each IRQ when it (re)builds its IRQ database (at start, on SIGHUP, when a
new IRQ appears) and excludes the IRQs the script answers ``ban=true`` for. ``--banirq`` and
``IRQBALANCE_ARGS`` act only at start, and the UI socket's ``settings ban irqs`` *replaces* the
whole command-line ban list (irqbalance.c ``sock_handle``), dropping the operator's own bans.

The packages ship that script, :data:`POLICY_SCRIPT` (``packaging/irqbalance/irqbalance-policy``:
POSIX sh, ``ban=true`` for each IRQ the journals ``devices.json`` and, in Dom0,
``dom0-devices.json`` record as pinned), and a drop-in for ``irqbalance.service`` that passes
it and starts irqbalance after the agent. The agent
installs and changes nothing of irqbalance's: its journal is the answer, so ``guestagent reset``
(which empties it) is also what gives the IRQs back to irqbalance; the job sends irqbalance a
SIGHUP after it pins or unpins vectors (:func:`guestagent.devices.execute.nudge_irqbalance`).

The modes:

* ``defer`` (what ``auto`` picks when irqbalance runs without guestagent's policy script, the
  default): guestagent leaves IRQ affinity alone and says so in ``guestagent devices`` and the
  log. It still writes the device's ``numa_node`` (when configured), which irqbalance reads for
  every IRQ when it (re)builds its IRQ database (classify.c ``add_one_irq_to_db``): irqbalance
  itself then keeps the IRQs on that node.
* ``pin`` (what ``auto`` picks when irqbalance does not run, or runs guestagent's policy script):
  guestagent writes ``smp_affinity_list``. Forced while irqbalance runs without the script, it
  warns. ``guestagent devices irqbalance-policy`` is the same answer from the CLI (it also prints
  ``numa_node=N`` for a device whose node only guestagent knows); irqbalance needs an executable
  file, not a command line, so the packaged script is what its unit runs.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from guestagent.errors import InputError
from guestagent.hostfs import HostFS

IrqMode = Literal["auto", "defer", "pin"]
IRQ_MODES = ("auto", "defer", "pin")
UNIT = "irqbalance.service"
#: systemd (>= 236) keeps this link while a unit is active.
UNIT_INVOCATION = f"/run/systemd/units/invocation:{UNIT}"
UNIT_CGROUP_PROCS = f"/sys/fs/cgroup/system.slice/{UNIT}/cgroup.procs"
POLICY_COMMAND = "irqbalance-policy"
#: Where the packages install ``packaging/irqbalance/irqbalance-policy``.
POLICY_SCRIPT = "/usr/libexec/guestagent/irqbalance-policy"


@dataclass(frozen=True)
class IrqbalanceStatus:
    """Whether irqbalance runs, and how it was found."""

    running: bool
    pid: int | None = None
    #: How it was found: "process" (psutil or /proc), "systemd unit", or "" when not running.
    found_by: str = ""
    cmdline: list[str] = field(default_factory=list)

    @property
    def policyscript(self) -> str | None:
        """The ``--policyscript``/``-l`` argument irqbalance runs with, if any."""
        args = self.cmdline
        for i, arg in enumerate(args):
            if arg.startswith("--policyscript="):
                return arg.split("=", 1)[1]
            if arg in ("--policyscript", "-l") and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("-l") and len(arg) > 2:
                return arg[2:]
        return None

    @property
    def uses_our_policy(self) -> bool:
        script = self.policyscript
        return script is not None and ("guestagent" in script or POLICY_COMMAND in script)


def _processes_psutil() -> list[tuple[int, str, list[str]]]:
    import psutil

    out: list[tuple[int, str, list[str]]] = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        info = proc.info
        out.append((int(info["pid"]), str(info.get("name") or ""), list(info.get("cmdline") or [])))
    return out


def _processes_procfs(hostfs: HostFS) -> list[tuple[int, str, list[str]]]:
    out: list[tuple[int, str, list[str]]] = []
    try:
        names = hostfs.listdir("/proc")
    except InputError:
        return out
    for name in names:
        if not re.fullmatch(r"\d{1,10}", name):
            continue
        try:
            comm = hostfs.read_text(f"/proc/{name}/comm").strip()
        except InputError:
            continue
        cmdline: list[str] = []
        try:
            raw = hostfs.path(f"/proc/{name}/cmdline").read_bytes()[:65536]
            cmdline = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        except OSError:
            pass
        out.append((int(name), comm, cmdline))
    return out


def detect(hostfs: HostFS) -> IrqbalanceStatus:
    """Whether irqbalance runs: a process named irqbalance, else its systemd unit active.

    On the real host the process table comes from psutil (``/proc`` when psutil is missing); below
    a fixture root it is read from that root's ``/proc``.
    """
    procs: list[tuple[int, str, list[str]]]
    if hostfs.is_real_host:
        try:
            procs = _processes_psutil()
        except ImportError:
            procs = _processes_procfs(hostfs)
    else:
        procs = _processes_procfs(hostfs)
    for pid, name, cmdline in procs:
        base = cmdline[0].rsplit("/", 1)[-1] if cmdline else ""
        if name == "irqbalance" or base == "irqbalance":
            return IrqbalanceStatus(running=True, pid=pid, found_by="process", cmdline=cmdline)
    # The link's target is the invocation id, not a file: test the link itself.
    if os.path.lexists(hostfs.path(UNIT_INVOCATION)):
        return IrqbalanceStatus(running=True, found_by="systemd unit")
    try:
        if hostfs.read_text(UNIT_CGROUP_PROCS).strip():
            return IrqbalanceStatus(running=True, found_by="systemd unit")
    except InputError:
        pass
    return IrqbalanceStatus(running=False)


@dataclass(frozen=True)
class IrqDecision:
    """Whether the agent pins IRQ affinity or defers to irqbalance, and why."""

    touch: bool
    mode: Literal["defer", "pin"]
    reason: str
    #: A warning to log once (pin forced while irqbalance runs without our policy script).
    warning: str | None = None


def decide(mode: IrqMode, status: IrqbalanceStatus) -> IrqDecision:
    """Pure: whether guestagent writes IRQ affinity, given the configured mode and irqbalance."""
    who = (
        f"irqbalance is running (pid {status.pid})"
        if status.pid
        else (f"irqbalance is running ({status.found_by})")
    )
    if mode == "defer" or (mode == "auto" and status.running):
        if not status.running:
            return IrqDecision(False, "defer", "IRQ affinity left alone (irqbalance mode defer)")
        if status.uses_our_policy and mode == "auto":
            return IrqDecision(
                True,
                "pin",
                f"{who} with guestagent's policy script: guestagent pins the IRQs and bans them "
                "from balancing",
            )
        return IrqDecision(
            False,
            "defer",
            f"{who}: IRQ affinity left to irqbalance, which reads "
            "the device's numa_node (irqbalance mode defer)",
        )
    if status.running and not status.uses_our_policy:
        return IrqDecision(
            True,
            "pin",
            f"{who} but mode is pin: guestagent pins the IRQs",
            warning=f"{who} without guestagent's policy script (--policyscript="
            f"{POLICY_SCRIPT}): it may move the pinned IRQs",
        )
    return IrqDecision(
        True,
        "pin",
        "irqbalance is not running: guestagent pins the IRQs"
        if not status.running
        else f"{who} with guestagent's policy script: guestagent pins the IRQs",
    )


def policy_lines(irq: int, pinned: set[int], node: int | None) -> list[str]:
    """What the irqbalance policy script prints for one IRQ (irqbalance ``--policyscript``)."""
    if irq in pinned:
        return ["ban=true"]
    if node is not None:
        return [f"numa_node={node}"]
    return []
