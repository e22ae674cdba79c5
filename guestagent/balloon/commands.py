"""``guestagent balloon``: status, --reset, simulate, record, run.

* ``guestagent balloon status [--json]``: driver target and current size, the toolstack's
  targets, memory and pressure, and the controller's last decisions when its record exists.
* ``guestagent balloon --reset``: the target goes back to the ceiling (for systemd
  ``ExecStopPost``); without a balloon driver it says so and exits 0 (nothing to undo).
* ``guestagent balloon simulate --trace FILE --policy P [--json] [--steps]``: trace replay.
* ``guestagent balloon record --out FILE --interval S --duration S``: record a trace.
* ``guestagent balloon run --policy P [--duration S] [--ticks N]``: the controller loop.
* ``guestagent balloon set --target-mib N``: one target by hand, through the actuator, refused
  below the hard minimum (max(256 MiB, static-max/16)) and above the toolstack's ceiling;
  ``--reset`` undoes it.

xenstore: the real client on the real host; on a ``--root`` fixture tree, the files below
``<root>/xenstore/`` (e.g. ``xenstore/memory/target``) stand in for it; ``--no-xenstore`` skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from guestagent.balloon.actuator import BalloonActuator, BalloonUnavailable
from guestagent.balloon.controller import run_controller
from guestagent.balloon.guard import reset_all
from guestagent.balloon.guard import undo as undo_guard
from guestagent.balloon.policy import DEFAULT_POLICY, POLICY_NAMES, default_config
from guestagent.balloon.signals import (
    BALLOON_DIR,
    DirectoryXenstore,
    XenstoreReader,
    balloon_unavailable_reason,
    open_xenstore,
    read_signals,
)
from guestagent.balloon.trace import load_trace, record, simulate
from guestagent.errors import InputError

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
    p.add_argument("--no-xenstore", action="store_true", help="do not read xenstore")
    p.set_defaults(func=cmd_balloon, _balloon_parser=p)
    sub = p.add_subparsers(dest="balloon_command", metavar="ACTION")

    s = sub.add_parser("status", help="targets, current size, pressure, last decisions")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=cmd_status)

    sim = sub.add_parser("simulate", help="replay a recorded trace through a policy")
    sim.add_argument("--trace", required=True, metavar="FILE")
    sim.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES)
    sim.add_argument("--json", action="store_true", help="summary (and steps) as JSON")
    sim.add_argument("--steps", action="store_true", help="print every decision")
    sim.set_defaults(func=cmd_simulate)

    rec = sub.add_parser("record", help="record a trace of memory signals (JSON lines)")
    rec.add_argument("--out", required=True, metavar="FILE", help="trace file ('-' = stdout)")
    rec.add_argument("--interval", type=float, default=1.0, metavar="S")
    rec.add_argument("--duration", type=float, required=True, metavar="S")
    rec.add_argument("--note", default="", help="free text stored in the trace header")
    rec.add_argument("--no-trigger", action="store_true", help="do not arm a PSI trigger")
    rec.set_defaults(func=cmd_record)

    run = sub.add_parser("run", help="run the controller loop (reset on exit and on SIGTERM)")
    run.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES)
    run.add_argument("--duration", type=float, default=None, metavar="S")
    run.add_argument("--ticks", type=int, default=None, metavar="N", help="stop after N ticks")
    run.add_argument("--no-trigger", action="store_true", help="interval timer only")
    run.add_argument(
        "--no-reset-on-exit", action="store_true", help="leave the last target in place (tests)"
    )
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
    st.set_defaults(func=cmd_set)


def _xenstore(args: argparse.Namespace, ctx: Any) -> XenstoreReader | None:
    if getattr(args, "no_xenstore", False):
        return None
    if not ctx.hostfs.is_real_host:
        if ctx.hostfs.exists(FIXTURE_XENSTORE_DIR):
            return DirectoryXenstore(ctx.hostfs, FIXTURE_XENSTORE_DIR)
        return None
    return open_xenstore(ctx.hostfs)


def cmd_balloon(args: argparse.Namespace, ctx: Any) -> int:
    if args.reset:
        return cmd_reset(args, ctx)
    args._balloon_parser.print_help(sys.stderr)
    return 2


def cmd_reset(args: argparse.Namespace, ctx: Any) -> int:
    """Target back to the ceiling, then the allocation guard's changes undone (guard.reset_all).

    Needs no configuration and works with a damaged record (it falls back to xenstore)."""
    actuator = BalloonActuator(ctx.hostfs, _xenstore(args, ctx))
    try:
        target = reset_all(actuator)
    except BalloonUnavailable as e:
        undo_guard(ctx.hostfs, actuator)
        print(f"guestagent: {e}; nothing to reset")
        return 0
    print(f"balloon target reset to {target} KiB")
    return 0


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
    out["controller"] = {
        "active": bool(rec.get("active")),
        "original_target_kb": rec.get("original_target_kb"),
        "toolstack_offset_kb": rec.get("toolstack_offset_kb"),
        "policy": (rec.get("decisions") or [{}])[-1].get("policy"),
        "decisions": rec.get("decisions") or [],
    }
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    print(_format_status(out))
    return 0


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value} KiB ({value / 1024:.0f} MiB)"


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
        print(json.dumps(out, indent=1, sort_keys=True))
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
    xs = _xenstore(args, ctx)
    if args.out == "-":
        count = record(ctx.hostfs, xs, sys.stdout, args.interval, args.duration,
                       use_trigger=not args.no_trigger, note=args.note)
    else:
        try:
            with open(args.out, "w", encoding="ascii") as f:
                count = record(ctx.hostfs, xs, f, args.interval, args.duration,
                               use_trigger=not args.no_trigger, note=args.note)
        except OSError as e:
            raise InputError(args.out, f"cannot write: {e.strerror or e}") from None
        print(f"recorded {count} snapshots to {args.out}", file=sys.stderr)
    return 0


def cmd_set(args: argparse.Namespace, ctx: Any) -> int:
    if not 0 < args.target_mib <= MAX_TARGET_MIB:
        raise InputError("--target-mib", f"expected 1..{MAX_TARGET_MIB}", args.target_mib)
    actuator = BalloonActuator(ctx.hostfs, _xenstore(args, ctx))
    try:
        result = actuator.set_target(args.target_mib * 1024, "set by hand (guestagent balloon set)")
    except BalloonUnavailable as e:
        print(f"guestagent: {e}; nothing set", file=sys.stderr)
        return 1
    print(
        f"balloon target set to {result.target_kb} KiB (was {result.previous_kb} KiB); "
        f"the driver holds {result.current_kb} KiB now"
    )
    return 0


def cmd_run(args: argparse.Namespace, ctx: Any) -> int:
    if not ctx.hostfs.exists(BALLOON_DIR):
        why = balloon_unavailable_reason(ctx.hostfs)
        print(f"guestagent: balloon unavailable: {why}; self-ballooning stays off")
        return 0
    config = default_config(args.policy)
    return run_controller(
        ctx.hostfs,
        _xenstore(args, ctx),
        config,
        duration_s=args.duration,
        max_ticks=args.ticks,
        reset_on_exit=not args.no_reset_on_exit,
        use_trigger=not args.no_trigger,
    )
