"""``guestagent balloon``: status, --reset, simulate, record, run.

* ``guestagent balloon status [--json]``: driver target and current size, the toolstack's
  targets, memory and pressure, and the controller's last decisions when its record exists.
* ``guestagent balloon --reset``: the target goes back to the ceiling (:func:`reset_balloon`, the
  balloon's part of ``guestagent reset``, the unit's ``ExecStopPost``); without a balloon driver
  it says so and exits 0 (nothing to undo). Guard changes it could not undo are logged at error
  level and exit 1.
* ``guestagent balloon --prepare-guard``: the allocation guard's zram swap, made before the
  daemon starts (the unit's privileged ``ExecStartPre``) when the configuration turns ballooning
  on; otherwise one line says why. Always exits 0: it never blocks the agent's start.
* ``guestagent balloon simulate --trace FILE --policy P [--json] [--steps]``: trace replay.
* ``guestagent balloon record --out FILE --interval S --duration S``: record a trace (the daemon
  running one job that only reads, :class:`guestagent.balloon.trace.RecordJob`, under the
  configuration ``run`` reads: ``--config``, ``--conf-dir``).
* ``guestagent balloon run [--policy P] [--duration S]``: the daemon running the balloon job
  alone (:func:`guestagent.daemon.commands.run_one_job`).
* ``guestagent balloon set --target-mib N``: one target by hand, through the actuator, refused
  below the hard minimum (max(256 MiB, static-max/16)) and above the toolstack's ceiling;
  ``--reset`` undoes it.

The commands that write the target (``set``, ``run``, ``--reset``) hold the state directory's lock
(:mod:`guestagent.statelock`, the directory ``[agent] state_dir`` of the default configuration
files names, read leniently as ``devices --reset`` reads it) while they run: with the daemon or
another such command running they refuse with one line naming its PID, before anything changes.
The reset does not wait for the lock: systemd runs it (``ExecStopPost``) after the daemon has
exited, and the kernel drops a dead process's lock (also after ``kill -9``); a holder that is
alive is a running agent, which would take a reset as a change behind its back.

xenstore: the real client on the real host; on a ``--root`` fixture tree, the files below
``<root>/xenstore/`` (e.g. ``xenstore/memory/target``) stand in for it; ``--no-xenstore`` skips it.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict
from typing import Any

from guestagent.balloon.actuator import BalloonActuator, BalloonUnavailable
from guestagent.balloon.guard import GuardCommands, has_changes, prepare, reset_all
from guestagent.balloon.guard import undo as undo_guard
from guestagent.balloon.policy import DEFAULT_POLICY, POLICY_NAMES
from guestagent.balloon.signals import (
    BALLOON_DIR,
    DirectoryXenstore,
    XenstoreReader,
    balloon_unavailable_reason,
    read_signals,
)
from guestagent.balloon.trace import RecordJob, load_trace, simulate
from guestagent.cli import add_json_option, finite_float, print_json
from guestagent.daemon.commands import config_file_options, one_job_options
from guestagent.errors import GuestAgentError, InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.undo import UndoReport
from guestagent.units import MIB_KB

#: Where a fixture tree keeps its stand-in xenstore.
FIXTURE_XENSTORE_DIR = "/xenstore"

#: Largest ``--target-mib`` accepted before any other check (64 TiB, as signals.MAX_KB).
MAX_TARGET_MIB = 1 << 26


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "balloon",
        help="self-ballooning: status, --reset, simulate, record, run, set",
        description="Give unused guest memory back to Xen, and take it back under pressure.",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="put the balloon target back to the ceiling (the toolstack's target) and exit",
    )
    p.add_argument(
        "--prepare-guard",
        action="store_true",
        help="make the allocation guard's zram swap before the daemon starts, when the "
        "configuration turns ballooning on (the unit's privileged ExecStartPre); always exits 0",
    )
    p.add_argument("--no-xenstore", action="store_true", help="do not read xenstore")
    add_json_option(p, "with --reset: the result as one JSON object (target_kb, undone, "
                    "failures, idle)")
    p.set_defaults(func=cmd_balloon, _balloon_parser=p)
    sub = p.add_subparsers(dest="balloon_command", metavar="ACTION")

    s = sub.add_parser("status", help="targets, current size, pressure, last decisions")
    add_json_option(s)
    s.set_defaults(func=cmd_status)

    sim = sub.add_parser("simulate", help="replay a recorded trace through a policy")
    sim.add_argument("--trace", required=True, metavar="FILE")
    sim.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES)
    add_json_option(sim, "summary (and steps) as one JSON object")
    sim.add_argument("--steps", action="store_true", help="print every decision")
    sim.set_defaults(func=cmd_simulate)

    rec = sub.add_parser(
        "record", help="record a trace of memory signals (JSON lines)",
        description="Record a snapshot of the memory signals (PSI, meminfo, vmstat, the balloon "
        "driver, xenstore's targets) at start and every --interval seconds until the next would "
        "be past --duration, or SIGTERM or SIGINT. The daemon running one job that only reads, "
        "under the configuration run reads ([agent] log_level and log_format; a refused file is "
        "exit status 1): it takes no lock, so it runs beside guestagent run.")
    rec.add_argument("--out", required=True, metavar="FILE", help="trace file ('-' = stdout)")
    rec.add_argument("--interval", type=finite_float, default=1.0, metavar="SECONDS",
                     help="seconds between snapshots (default 1)")
    rec.add_argument("--duration", type=finite_float, required=True, metavar="SECONDS",
                     help="how long to record")
    rec.add_argument("--note", default="", help="free text stored in the trace header")
    rec.add_argument("--no-trigger", action="store_true", help="do not arm a PSI trigger")
    config_file_options(rec)
    rec.set_defaults(func=cmd_record)

    run = sub.add_parser(
        "run", help="the daemon running the balloon job alone (reset on exit and on SIGTERM)",
        description="The daemon (guestagent run) with the balloon job alone: the configuration "
        "run reads, [balloon] turned on and the options below as overrides; until SIGTERM, "
        "SIGINT or --duration, then the target goes back to the ceiling. Exit status 1 when the "
        "job gives up after repeated failed ticks (the target is reset first).")
    run.add_argument("--policy", default=None, choices=POLICY_NAMES,
                     help=f"override [balloon] policy (default there: {DEFAULT_POLICY})")
    run.add_argument("--no-trigger", action="store_true", help="interval timer only")
    one_job_options(run)
    run.set_defaults(func=cmd_run)

    st = sub.add_parser(
        "set",
        help="set the balloon target by hand (MiB of the driver's target_kb), within the limits",
        description="Write one balloon target through the agent's actuator: refused below the "
        "hard minimum max(256 MiB, static-max/16) and above the toolstack's ceiling "
        "(min(memory/target, memory/static-max)). The original target is remembered, so "
        "'guestagent balloon --reset' goes back to it. A running controller treats the new "
        "target as a change made behind its back and follows it.",
    )
    st.add_argument("--target-mib", type=int, required=True, metavar="N",
                    help="the new target in MiB (the driver's units, as target_kb / 1024)")
    add_json_option(st, "the result as one JSON object (target_kb, previous_kb, current_kb)")
    st.set_defaults(func=cmd_set)


def xenstore_for(host: Host) -> XenstoreReader | None:
    """The host's client on the real host, None (logged at debug level) when there is none; on
    a fixture tree its stand-in (module docstring)."""
    hostfs = host.fs
    if not hostfs.is_real_host:
        if hostfs.exists(FIXTURE_XENSTORE_DIR):
            return DirectoryXenstore(hostfs, FIXTURE_XENSTORE_DIR)
        return None
    try:
        client: XenstoreReader = host.xenstore()
    except (GuestAgentError, OSError, ImportError) as e:
        get_logger("balloon").debug("xenstore_unavailable", reason=str(e))
        return None
    return client


def _xenstore(args: argparse.Namespace, ctx: Any) -> XenstoreReader | None:
    if getattr(args, "no_xenstore", False):
        return None
    return xenstore_for(ctx.host)


def state_lock(ctx: Any, what: str, create: bool) -> AbstractContextManager[None]:
    """The state directory's lock (:func:`guestagent.statelock.held`) for a command that writes
    the target. Of the configuration only ``[agent] state_dir`` is read, leniently (a problem is
    one warning and the default applies): a bad file must not block a reset."""
    from guestagent import config as config_mod
    from guestagent import statelock
    from guestagent.log import get_logger

    state_dir, problems = config_mod.read_state_dir(*ctx.config_files)
    for line in problems:
        get_logger("balloon").warning("balloon_config_ignored", problem=line)
    return statelock.held(ctx.hostfs, state_dir, what, create)


def cmd_balloon(args: argparse.Namespace, ctx: Any) -> int:
    if args.reset and args.prepare_guard:
        print("guestagent: balloon: --reset and --prepare-guard exclude each other",
              file=sys.stderr)
        return 2
    if args.reset:
        return cmd_reset(args, ctx)
    if args.prepare_guard:
        return cmd_prepare_guard(args, ctx)
    args._balloon_parser.print_help(sys.stderr)
    return 2


def cmd_reset(args: argparse.Namespace, ctx: Any) -> int:
    """Target back to the ceiling, then the allocation guard's changes undone
    (:func:`reset_balloon`). Refused (one line, exit status 1) while another guestagent holds
    the state directory."""
    actuator = BalloonActuator(ctx.hostfs, _xenstore(args, ctx))
    with state_lock(ctx, "balloon --reset", create=False):
        target, report = reset_balloon(actuator)
    if getattr(args, "json", False):
        print_json({"target_kb": target, "undone": report.lines, "failures": report.failures,
                    "idle": report.idle or None})
    elif target is None:
        print(report.idle)  # nothing to undo: not an error (exit status 0)
    else:
        print(f"balloon target reset to {target} KiB")
    return 1 if report.failures else 0


def reset_balloon(
    actuator: BalloonActuator, commands: GuardCommands | None = None
) -> tuple[int | None, UndoReport]:
    """The balloon's undo, under the caller's state lock: the target back to the ceiling, then
    the allocation guard's changes undone (guard.reset_all); ``balloon --reset`` and
    ``guestagent reset`` run it.

    Needs no configuration and works with a damaged record (it falls back to xenstore). Returns
    the target written (None without a balloon driver: nothing to reset; the guard's changes
    are undone all the same) and a report: nothing to undo when the target was at the ceiling
    already and the guard had no changes. Guard changes still in force afterwards (an undo step
    failed) are one failure and one error line. A target that cannot be reset raises
    InputError, after the guard's undo. ``commands``: the guard's (the host's; None: the
    system's on the real host)."""
    report = UndoReport()
    with suppress(GuestAgentError, OSError):  # no driver: the guard is undone all the same
        actuator.record_for_reset()  # a damaged record: what can be kept, before has_changes
    guard = has_changes(actuator)
    target: int | None = None
    try:
        before = _target_now(actuator)
        target = reset_all(actuator, commands)
    except BalloonUnavailable as e:
        undo_guard(actuator.hostfs, actuator, commands)
        report.idle = f"{e}; nothing to reset"
    if target is not None and (target != before or guard):
        was = "unreadable" if before is None else f"{before} KiB"
        report.lines.append(f"target reset to {target} KiB (was {was})")
    elif target is not None:
        report.idle = f"target at the ceiling already ({target} KiB)"
    if has_changes(actuator):
        report.failures += 1
        report.lines.append("allocation guard: changes still in force (the error line above)")
        get_logger("balloon").error(
            "guard_undo_incomplete", record=actuator.record_path,
            note="guard changes still in force; run guestagent reset again as root",
        )
    elif guard:
        report.lines.append("allocation guard: its changes undone")
    return target, report


def _target_now(actuator: BalloonActuator) -> int | None:
    """The driver's target before the reset; None when it cannot be read (the reset still runs
    and undoes the guard: guard.reset_all raises only after that)."""
    try:
        return actuator.read().target_kb
    except InputError:
        return None


def cmd_prepare_guard(args: argparse.Namespace, ctx: Any) -> int:
    """The guard's zram swap before the daemon starts (guard.prepare); always 0."""
    try:
        with state_lock(ctx, "balloon --prepare-guard", create=True):
            prepare_guard(args, ctx, *ctx.config_files)
    except GuestAgentError as e:  # never block the agent's start: the daemon runs without zram
        get_logger("balloon").warning("guard_prepare_skipped", reason=str(e))
    return 0


def prepare_guard(
    args: argparse.Namespace,
    ctx: Any,
    main_file: str,
    conf_dir: str,
    commands: GuardCommands | None = None,
) -> bool:
    """``--prepare-guard`` with the configuration files named: True when the guard's zram swap
    is on afterwards. Every other outcome is one line (why) and False; nothing raises, so the
    unit's ExecStartPre never blocks the agent's start."""
    try:
        level, why = _prepare_guard(args, ctx, main_file, conf_dir, commands)
    except GuestAgentError as e:
        level, why = "warning", str(e)
    except Exception as e:  # never block the start: one line, no traceback
        from guestagent.cli import internal_error

        level, why = "error", internal_error(e)
    if why is None:
        return True
    log = get_logger("balloon")  # after the configuration set the level and format
    getattr(log, level)("guard_prepare_skipped", reason=why,
                        effect="no zram swap from ExecStartPre; the daemon's guard still sets "
                        "overcommit before its first shrink")
    return False


def _prepare_guard(
    args: argparse.Namespace,
    ctx: Any,
    main_file: str,
    conf_dir: str,
    commands: GuardCommands | None,
) -> tuple[str, str | None]:
    """(log level, why nothing was made); why is None once the guard's swap is on. A guard
    that tried and could not (no zram, someone else's zram, a failed command) has logged its own
    line already: then only a debug line follows."""
    from guestagent import log as log_mod
    from guestagent.config import ConfigError
    from guestagent.daemon.commands import load_checked, resolve_role

    try:
        cfg = load_checked(main_file, conf_dir, ctx.hostfs)
    except ConfigError as e:
        first = e.problems[0] if e.problems else "?"
        return "warning", f"configuration refused ({len(e.problems)} problem(s), first: {first})"
    log_mod.configure(
        level=str(cfg.get("agent", "log_level")), json=cfg.get("agent", "log_format") == "json"
    )
    role = resolve_role(cfg, ctx.hostfs)
    if role != "guest":
        return "info", f"role {role}: no balloon job"
    if not cfg.get("balloon", "enabled"):
        return "info", "ballooning is off ([balloon] enabled = false)"
    held = held_reason(cfg.section("balloon"), ctx.hostfs)
    if held is not None:
        return "info", held
    try:
        made = prepare(ctx.hostfs, _xenstore(args, ctx), cfg.section("balloon"), commands)
    except BalloonUnavailable as e:
        return "info", str(e)
    return ("info", None) if made else ("debug", "the guard said why above")


def held_reason(section: dict[str, Any], hostfs: HostFS) -> str | None:
    """Why the job will never shrink (so no guard is needed), or None: the policy it runs is
    ``none``, configured so or held in an HVM guest
    (:func:`guestagent.balloon.job.running_policy`)."""
    from guestagent.balloon.job import guest_is_hvm, running_policy

    if running_policy(section, guest_is_hvm(hostfs)).name != "none":
        return None
    if section["policy"] != "none":
        return "an HVM guest: the job holds the ceiling ([balloon] allow_hvm = false)"
    return "policy none: the job holds the ceiling"


def cmd_status(args: argparse.Namespace, ctx: Any) -> int:
    xs = _xenstore(args, ctx)
    out: dict[str, Any] = {"available": True, "unavailable_reason": None}
    why = balloon_unavailable_reason(ctx.hostfs)
    if why is not None:
        out.update(available=False, unavailable_reason=f"balloon unavailable: {why}")
    snap = read_signals(ctx.hostfs, xs, time.monotonic())
    out["signals"] = snap.to_dict()
    actuator = BalloonActuator(ctx.hostfs, xs)
    out["ceiling_kb"] = actuator.ceiling_kb() if why is None else None
    rec = actuator.load_record()
    status = actuator.store.load_status()
    raw = status.get("decisions")
    decisions = [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    out["controller"] = {
        "active": bool(status.get("active")),
        "original_target_kb": rec.get("original_target_kb"),
        "toolstack_offset_kb": rec.get("toolstack_offset_kb"),
        "policy": (decisions or [{}])[-1].get("policy"),
        "decisions": decisions,
    }
    if args.json:
        print_json(out)
        return 0
    print(_format_status(out))
    return 0


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value} KiB ({value / MIB_KB:.0f} MiB)"


def _format_status(out: dict[str, Any]) -> str:
    s = out["signals"]
    lines = []
    if out["available"]:
        lines.append(
            f"balloon driver: target {_kb(s['balloon_target_kb'])}, "
            f"current {_kb(s['balloon_current_kb'])}"
        )
    else:
        lines.append(f"{out['unavailable_reason']} (feature off)")
    lines.append(
        f"toolstack:      memory/target {_kb(s['xs_target_kb'])}, "
        f"static-max {_kb(s['xs_static_max_kb'])}, ceiling {_kb(out['ceiling_kb'])}"
    )
    lines.append(
        f"memory:         MemTotal {_kb(s['mem_total_kb'])}, "
        f"MemAvailable {_kb(s['mem_available_kb'])}, Committed_AS {_kb(s['committed_as_kb'])}"
    )
    psi = (
        f"some avg10 {s['some_avg10']:.2f} avg60 {s['some_avg60']:.2f} "
        f"avg300 {s['some_avg300']:.2f}; full avg10 {s['full_avg10']:.2f}"
        if s["psi_available"]
        else "PSI unavailable on this kernel (the pressure policy will not shrink)"
    )
    lines.append(
        f"pressure:       {psi}; "
        f"refaults {s['refaults']}, pswpin {s['pswpin']}, oom_kill {s['oom_kill']}"
    )
    c = out["controller"]
    if c["decisions"] or c["active"]:
        state = "active" if c["active"] else "stopped"
        lines.append(f"controller:     {state}, policy {c['policy']}, last decisions:")
        for d in c["decisions"][-10:]:
            lines.append(
                f"  {d.get('wall', '?')} {d.get('action', '?'):6} target {d.get('target_kb')} KiB"
                f" current {d.get('current_kb')} KiB: {d.get('reason', '')}"
            )
    else:
        lines.append("controller:     no record (not running since boot)")
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace, ctx: Any) -> int:
    trace = load_trace(args.trace)
    result = simulate(trace, args.policy)
    summary = result.summary
    assert summary is not None
    if args.json:
        out: dict[str, Any] = {"trace": args.trace, "summary": asdict(summary)}
        if args.steps:
            out["steps"] = [asdict(step) for step in result.steps]
        print_json(out)
        return 0
    if args.steps:
        for step in result.steps:
            print(f"t={step.timestamp:8.1f} {step.action:6} {step.target_kb:9d} KiB  {step.reason}")
    print(f"trace replay of {args.trace} (not a measurement) through policy {summary.policy}:")
    print(f"  steps {summary.steps}, duration {summary.duration_s:.0f} s")
    print(
        f"  memory held {summary.memory_held_gib_s:.1f} GiB x s (mean {summary.mean_gib:.3f} GiB)"
    )
    print(f"  target min {summary.min_target_kb} KiB, max {summary.max_target_kb} KiB")
    print(f"  grows {summary.grows}, shrinks {summary.shrinks}, follows {summary.follows}")
    print(f"  peak some avg10 (recorded) {summary.peak_some_avg10:.2f} %")
    print(f"  OOM kills in the trace {summary.oom_kills_in_trace}")
    print(f"  underprovisioned steps {summary.underprovisioned_steps}")
    return 0


def cmd_record(args: argparse.Namespace, ctx: Any) -> int:
    """The daemon running one :class:`RecordJob` (an observer: no lock, no status socket) under
    the configuration ``run`` reads, loaded before the trace file is opened; 1 when the
    configuration is refused, the trace cannot be written or a snapshot cannot be read (the
    trace so far is kept)."""
    from guestagent.daemon.commands import observer_config

    cfg = observer_config(args, ctx)
    xs = _xenstore(args, ctx)
    if args.out == "-":
        _record(args, ctx, cfg, RecordJob(sys.stdout, args.interval, args.duration, xs,
                                          use_trigger=not args.no_trigger, note=args.note))
        return 0
    try:
        with open(args.out, "w", encoding="ascii") as f:
            count = _record(args, ctx, cfg, RecordJob(f, args.interval, args.duration, xs,
                                                      use_trigger=not args.no_trigger,
                                                      note=args.note))
    except OSError as e:
        raise InputError(args.out, f"cannot write: {e.strerror or e}") from None
    print(f"recorded {count} snapshots to {args.out}", file=sys.stderr)
    return 0


def _record(args: argparse.Namespace, ctx: Any, cfg: Any, job: RecordJob) -> int:
    """``job`` run by the daemon until it is done, SIGTERM or SIGINT; the snapshots written.
    Raises InputError when a snapshot could not be read or written."""
    from guestagent.daemon.commands import run_observer

    daemon = run_observer(args, ctx, cfg, job)
    if daemon.failure is not None:
        raise InputError("balloon record", daemon.failure)
    return job.count


def cmd_set(args: argparse.Namespace, ctx: Any) -> int:
    if not 0 < args.target_mib <= MAX_TARGET_MIB:
        raise InputError("--target-mib", f"expected 1..{MAX_TARGET_MIB}", args.target_mib)
    actuator = BalloonActuator(ctx.hostfs, _xenstore(args, ctx))
    try:
        actuator.check()  # before the lock: without a driver nothing is written, nor created
        with state_lock(ctx, "balloon set", create=True):
            result = actuator.set_target(args.target_mib * MIB_KB,
                                         "set by hand (guestagent balloon set)")
    except BalloonUnavailable as e:
        print(f"guestagent: {e}; nothing set", file=sys.stderr)
        return 1
    if args.json:
        print_json({"target_kb": result.target_kb, "previous_kb": result.previous_kb,
                    "current_kb": result.current_kb})
        return 0
    print(
        f"balloon target set to {result.target_kb} KiB (was {result.previous_kb} KiB); "
        f"the driver holds {result.current_kb} KiB now"
    )
    return 0


def cmd_run(args: argparse.Namespace, ctx: Any) -> int:
    """The daemon running the balloon job alone (:func:`guestagent.daemon.commands.run_one_job`);
    0 without a balloon driver (the feature stays off), 1 when the job gave up."""
    from guestagent.balloon.job import HUB, BalloonJob
    from guestagent.daemon.commands import run_one_job

    if not ctx.hostfs.exists(BALLOON_DIR):
        why = balloon_unavailable_reason(ctx.hostfs)
        print(f"guestagent: balloon unavailable: {why}; self-ballooning stays off")
        return 0
    # The real host: the daemon's own xenstore client (watches included). A fixture tree: its
    # stand-in, which cannot watch (module docstring); --no-xenstore: none. In both the daemon
    # opens no connection of its own either (it would only watch for a resume).
    connect = None
    xenstore: Any = HUB
    if args.no_xenstore or not ctx.hostfs.is_real_host:
        xenstore = _xenstore(args, ctx)
        why = "--no-xenstore" if args.no_xenstore else "a fixture tree (its stand-in files only)"

        def connect() -> Any:
            raise GuestAgentError(f"no xenstore connection: {why}")

    job = BalloonJob(use_trigger=not args.no_trigger, xenstore=xenstore)
    overrides = [("--policy", "balloon", "policy", args.policy)]
    daemon = run_one_job(args, ctx, job, overrides, role="guest", command="balloon run",
                         xenstore_connect=connect)
    return 1 if daemon.failure is not None else 0
