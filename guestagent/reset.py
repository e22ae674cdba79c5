"""``guestagent reset``: undo everything the agent may have changed, from its state files alone.

The guest unit's only ``ExecStopPost`` (packaging/systemd/guestagent.service), so it runs after
every stop: a clean one (where the daemon has undone everything already and this finds nothing),
a crash, ``kill -9``, an OOM kill or a watchdog kill. In this order:

1. ``balloon``: the target back to the ceiling, then the allocation guard's changes (zram swap,
   overcommit sysctl) undone (:func:`guestagent.balloon.commands.reset_balloon`, from the undo
   journal ``/run/guestagent/balloon.json`` and xenstore);
2. ``devices``: every change ``devices.json`` records (:func:`guestagent.devices.commands.undo`);
   ``dom0_devices``: in Dom0, every IRQ affinity of Dom0's own devices and every backend
   thread's CPU affinity ``dom0-devices.json`` records (:func:`guestagent.dom0.owndevices_io.undo`;
   ``host devices --apply`` and the Dom0 job wrote them);
3. ``tiering``: the agent's own kdamonds, as ``tiering.json`` records them, never another DAMON
   user's (:func:`guestagent.tiering.commands.undo`);
4. ``numa``: ``kernel.numa_balancing`` back to its value before the numa job's ``balancing =
   "auto"`` switched it on, as ``numa.json`` records it
   (:func:`guestagent.numa.balancing.reset_numa`).

It never needs the configuration: of the files only ``[agent] state_dir`` is read, leniently (a
problem is one warning and the default applies), as ``devices --reset`` reads it. It holds the
state directory's lock (:mod:`guestagent.statelock`) for the whole run, so with the daemon or
another command that writes running it refuses with one line naming its PID, before anything
changes; it does not wait (systemd runs it after the daemon has exited, and the kernel drops a
dead process's lock).

Each part runs whatever the others did: a part that fails is one error-level line
(``event=reset_failed part=devices error=...``) and the exit status is 1. What was undone goes to
standard output, one line per step, prefixed with its part (``devices: /proc/irq/29/...``);
``nothing to undo`` when no part found anything. Exit status 0 when everything was undone or
nothing was to undo.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.undo import UndoReport

#: The parts, in the order they run.
PARTS = ("balloon", "devices", "dom0_devices", "tiering", "numa")


@dataclass
class PartResult:
    """One part's outcome: its report, or why it failed as a whole (``error``)."""

    part: str
    report: UndoReport = field(default_factory=UndoReport)
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error or self.report.failures)


def _balloon(host: Host, state_dir: str) -> UndoReport:
    from guestagent.balloon.actuator import BalloonActuator
    from guestagent.balloon.commands import reset_balloon, xenstore_for

    _target, report = reset_balloon(BalloonActuator(host.fs, xenstore_for(host)),
                                    host.guard_commands())
    return report


def _devices(host: Host, state_dir: str) -> UndoReport:
    from guestagent.devices import commands

    return commands.undo(host.fs, state_dir)


def _dom0_devices(host: Host, state_dir: str) -> UndoReport:
    from guestagent.dom0.owndevices_io import undo

    return undo(host.fs, state_dir)


def _tiering(host: Host, state_dir: str) -> UndoReport:
    from guestagent.tiering import commands

    return commands.undo(host, state_dir)


def _numa(host: Host, state_dir: str) -> UndoReport:
    from guestagent.numa.balancing import reset_numa

    return reset_numa(host.fs, state_dir)


Part = Callable[[Host, str], UndoReport]

#: What each part runs.
RUNNERS: dict[str, Part] = {
    "balloon": _balloon, "devices": _devices, "dom0_devices": _dom0_devices,
    "tiering": _tiering, "numa": _numa,
}


def run_part(name: str, host: Host, state_dir: str) -> PartResult:
    """One part; whatever it raises is its failure (one line), never the others'."""
    try:
        return PartResult(name, RUNNERS[name](host, state_dir))
    except GuestAgentError as e:
        return PartResult(name, error=str(e))
    except Exception as e:  # the other parts still run: one line, no traceback
        from guestagent.cli import internal_error

        return PartResult(name, error=internal_error(e))


@contextmanager
def _locked(hostfs: HostFS, state_dir: str) -> Iterator[None]:
    from guestagent import statelock

    with statelock.held(hostfs, state_dir, "reset", create=False):
        yield


def reset_everything(host: Host, state_dir: str) -> list[PartResult]:
    """Every part in order under the state directory's lock (StateLocked, before anything
    changes, when another guestagent holds it); each failure logged once at error level."""
    from guestagent.log import get_logger

    log = get_logger("reset")
    results: list[PartResult] = []
    with _locked(host.fs, state_dir):
        for name in PARTS:
            result = run_part(name, host, state_dir)
            results.append(result)
            if result.error:
                log.error("reset_failed", part=name, error=result.error)
            elif result.report.failures:
                log.error("reset_failed", part=name,
                          error=f"{result.report.failures} step(s) failed (their error lines "
                                "above); run guestagent reset again")
            elif result.report.nothing:
                log.info("reset_nothing", part=name, why=result.report.idle or "no changes")
    return results


def render(results: list[PartResult]) -> str:
    """What was undone, one line per step prefixed with its part; or ``nothing to undo``."""
    lines = [f"{r.part}: {line}" for r in results for line in r.report.lines]
    if not lines and not any(r.failed for r in results):
        lines = ["nothing to undo"]
    return "".join(f"{line}\n" for line in lines)


def cmd_reset(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent import config as config_mod
    from guestagent.log import get_logger

    state_dir, problems = config_mod.read_state_dir(*ctx.config_paths(args))
    for line in problems:
        get_logger("reset").warning("reset_config_ignored", problem=line)
    results = reset_everything(ctx.host, state_dir)
    if getattr(args, "json", False):
        from guestagent.cli import print_json

        print_json([{"part": r.part, "undone": r.report.lines, "failures": r.report.failures,
                     "error": r.error or None, "idle": r.report.idle or None} for r in results])
    else:
        sys.stdout.write(render(results))
    return 1 if any(r.failed for r in results) else 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reset",
        help="undo everything the agent changed (balloon, devices, Dom0's own devices, tiering, "
        "numa), from its state files",
        description="Undo everything the agent may have changed, from its state files alone, "
        "also after a crash: the balloon target back to the ceiling and the allocation guard "
        "undone, then every device change recorded (the guest's devices, and in Dom0 the "
        "IRQs of Dom0's own devices and the backend threads), then the agent's own kdamonds "
        "(never "
        "another DAMON user's), then kernel.numa_balancing if the numa job switched it. The "
        "guest unit's ExecStopPost. Needs no valid configuration: "
        "only [agent] state_dir is read. A part that fails is one error line; the others "
        "still run.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="main configuration file, for [agent] state_dir only "
                             "(default /etc/guestagent/guestagent.toml)")
    parser.add_argument("--conf-dir", metavar="DIR",
                        help="configuration drop-ins (default /etc/guestagent/conf.d)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list: each part, what it undid, its failures")
    parser.set_defaults(func=cmd_reset)
