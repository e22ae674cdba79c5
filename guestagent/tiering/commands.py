"""``guestagent tiering status [--json]``, ``guestagent tiering run`` and ``guestagent tiering
--reset``.

``status`` probes every backend (read-only for DAMON; for tmem one ephemeral pool is created and
destroyed), says which one serves (the first available one that can place pages on a chosen node)
and why each other one does not, with what each mechanism cannot do, then shows the nodes and the
plan the policy would apply right now. Exit status 0 whether or not a backend serves (``serving``
is null in JSON when none does); 1 with one line on stderr when the node snapshot is unreadable.

``run`` drives the serving backend in a loop (``--iterations`` for a bounded run) and undoes
everything on SIGTERM/SIGINT or at the end, then prints what it did (bytes moved and tried, wall
time, the agent's own CPU time; ``--json`` for JSON). The watermarks and the rate bound can be given
on the command line (the ``[tiering]`` keys of the daemon). Exit 1 with the reasons when no backend
serves.

``--reset`` removes the kdamonds the undo journal (``tiering.json`` in ``[agent] state_dir``) says
the daemon's tiering job added, also after a ``kill -9`` (for systemd ``ExecStopPost``); never
another DAMON user's. Of the configuration it reads ``[agent] state_dir`` alone, leniently, so a
bad configuration never blocks it. Idempotent; exit 1 (one error line each) when a step failed.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from guestagent.cli import finite_float
from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.tiering import readers
from guestagent.tiering.model import Availability, Backend, PolicyState, TieringConfig
from guestagent.tiering.policy import decide
from guestagent.units import MIB, PAGE_SIZE

if TYPE_CHECKING:
    from guestagent.undo import Journal


def _damon(hostfs: HostFS) -> Backend:
    from guestagent.tiering.damon import DamonBackend

    return DamonBackend(hostfs)


def _tmem(hostfs: HostFS) -> Backend:
    from guestagent.tiering.tmem import TmemBackend

    return TmemBackend(hostfs)


#: Backends in order of preference; tests replace this.
backend_factories: list[tuple[str, Callable[[HostFS], Backend]]] = [
    ("damon", _damon),
    ("tmem", _tmem),
]


def probe_all(
    hostfs: HostFS, journal: Journal | None = None
) -> list[tuple[str, Backend | None, Availability]]:
    """Every backend and whether it can run here. With ``journal`` (the daemon's tiering job),
    a backend that journals its changes (DAMON) first undoes what a killed predecessor left in
    it, then records its own changes there."""
    out: list[tuple[str, Backend | None, Availability]] = []
    for name, factory in backend_factories:
        try:
            backend = factory(hostfs)
        except ImportError as e:
            out.append((name, None, Availability(False, f"cannot load: {e}")))
            continue
        take_journal = getattr(backend, "take_journal", None)
        if journal is not None and take_journal is not None:
            take_journal(journal)
        try:
            availability = backend.probe()
        except GuestAgentError as e:
            availability = Availability(False, str(e))
        out.append((name, backend, availability))
    return out


def serving(probed: list[tuple[str, Backend | None, Availability]]) -> Backend | None:
    for _name, backend, availability in probed:
        if backend is not None and availability.ok and backend.targets_node:
            return backend
    return None


def why_not(backend: Backend | None, availability: Availability) -> str:
    if availability.ok and backend is not None and not backend.targets_node:
        return (
            "available but not used: it cannot place pages on a chosen node "
            f"({availability.reason})"
        )
    return availability.reason


def status(args: argparse.Namespace, ctx: Any) -> int:
    hostfs: HostFS = ctx.hostfs
    probed = probe_all(hostfs)
    chosen = serving(probed)
    snapshot = readers.read_snapshot(hostfs)
    decision = decide(snapshot, TieringConfig(), PolicyState())
    rows: list[dict[str, Any]] = []
    for name, backend, a in probed:
        rows.append(
            {
                "name": name,
                "ok": a.ok,
                "serving": backend is not None and backend is chosen,
                "targets_node": bool(backend is not None and backend.targets_node),
                "reason": a.reason if backend is chosen else why_not(backend, a),
                "limits": list(a.limits),
            }
        )
    nodes = [
        {
            "node": m.node,
            "total_bytes": m.total,
            "free_bytes": m.free,
            "inactive_bytes": m.inactive,
            "free_pct": round(100.0 * m.free_fraction, 1),
        }
        for m in snapshot.nodes.values()
    ]
    plan = [
        {"source": m.source, "target": m.target, "rate_bytes_per_s": m.rate}
        for m in decision.plan.moves
    ]
    if args.json:
        doc = {
            "serving": chosen.name if chosen is not None else None,
            "backends": rows,
            "nodes": nodes,
            "plan": plan,
            "reasons": list(decision.reasons),
            "lru_gen": snapshot.lru_gen,
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    out = [f"serving: {chosen.name if chosen is not None else 'none'}"]
    for r in rows:
        state = "serving" if r["serving"] else ("ok" if r["ok"] else "unavailable")
        out.append(f"  {r['name']:<6} {state:<12} {r['reason']}")
        for limit in r["limits"]:
            out.append(f"  {'':<6} {'note:':<12} {limit}")
    out.append(
        "nodes:"
        + (" (MGLRU on: inactive lists are generations, not coldness; DAMON decides)"
           if snapshot.lru_gen else "")
    )
    for n in nodes:
        out.append(
            f"  node {n['node']}: free {n['free_pct']}% of {n['total_bytes'] // MIB} MiB, "
            f"inactive {n['inactive_bytes'] // MIB} MiB"
        )
    out.append("plan now:" + ("" if plan else " nothing to move"))
    for p in plan:
        out.append(
            f"  node {p['source']} -> node {p['target']} at {p['rate_bytes_per_s'] / MIB:.1f} MiB/s"
        )
    out.extend(f"  {line}" for line in decision.reasons)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def run(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent.tiering.runner import Runner

    hostfs: HostFS = ctx.hostfs
    probed = probe_all(hostfs)
    if args.backend:
        candidates = [p for p in probed if p[0] == args.backend]
        if not candidates:
            raise InputError("--backend", "unknown backend", args.backend)
        probed = candidates
    chosen = serving(probed)
    if chosen is None:
        reasons = "; ".join(f"{name}: {why_not(b, a)}" for name, b, a in probed)
        raise GuestAgentError(f"tiering: no backend can serve: {reasons}")
    if args.interval <= 0:
        raise InputError("--interval", "must be positive", args.interval)
    if args.max_rate_mb <= 0:
        raise InputError("--max-rate-mb", "must be positive", args.max_rate_mb)
    defaults = TieringConfig()
    config = TieringConfig(
        interval_s=args.interval,
        source_low_pct=args.source_low_pct,
        source_high_pct=args.source_high_pct,
        target_min_pct=args.target_min_pct,
        max_rate=args.max_rate_mb * MIB,
        initial_rate=min(defaults.initial_rate, args.max_rate_mb * MIB),
        min_rate=min(defaults.min_rate, args.max_rate_mb * MIB),
    )
    t0 = time.monotonic()
    cpu0 = _cpu_seconds()
    rc = Runner(hostfs, chosen, config).run(iterations=args.iterations)
    summary = run_summary(chosen, time.monotonic() - t0, _cpu_seconds() - cpu0)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        moved = ", ".join(
            f"node {n}: {b / MIB:.1f} MiB" for n, b in sorted(summary["moved_by_source"].items())
        )
        sys.stdout.write(
            f"tiering: {summary['backend']} moved {summary['bytes_moved'] / MIB:.1f} MiB "
            f"(tried {summary['bytes_tried'] / MIB:.1f} MiB) in {summary['elapsed_s']:.1f} s"
            f"{' (' + moved + ')' if moved else ''}; agent CPU {summary['agent_cpu_s']:.2f} s\n"
        )
    return rc


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_summary(backend: Backend, elapsed_s: float, cpu_s: float) -> dict[str, Any]:
    """What a finished ``run`` did: the backend's counters, wall time and the agent's CPU time
    (user + system of this process; the kernel's own work, e.g. a kdamond, is not in it)."""
    stats = backend.stats()
    return {
        "backend": backend.name,
        "bytes_moved": stats.pages_moved_or_put * PAGE_SIZE,
        "bytes_tried": stats.bytes_tried,
        "pages_returned": stats.pages_returned,
        "failures_pages": stats.failures,
        "quota_exceeds": stats.quota_exceeds,
        "moved_by_source": {str(n): b for n, b in sorted(stats.moved_by_source.items())},
        "elapsed_s": round(elapsed_s, 3),
        "agent_cpu_s": round(cpu_s, 3),
    }


def run_reset(args: argparse.Namespace, ctx: Any) -> int:
    """``tiering --reset``: undo from the journal alone (module docstring)."""
    import os

    from guestagent import config as config_mod
    from guestagent import statelock
    from guestagent.log import get_logger
    from guestagent.tiering.journal import TieringJournal, journal_path

    log = get_logger("tiering")
    state_dir, problems = config_mod.read_state_dir(
        getattr(args, "config", None) or config_mod.MAIN_FILE,
        getattr(args, "conf_dir", None) or config_mod.CONF_DIR)
    for line in problems:
        log.warning("tiering_reset_config_ignored", problem=line)
    hostfs: HostFS = ctx.hostfs
    path = journal_path(state_dir)
    backend = dict(backend_factories)["damon"](hostfs)
    try:
        with statelock.held(hostfs, os.path.dirname(path), "tiering --reset", create=False):
            journal = TieringJournal(hostfs, path).load()
            report = backend.undo_journal(journal)  # type: ignore[attr-defined]
    except GuestAgentError as e:
        log.error("tiering_undo_failed", error=str(e), journal=path)
        return 1
    sys.stdout.write("".join(f"{line}\n" for line in report.lines) or "nothing to undo\n")
    return 1 if report.failures else 0


def cmd_tiering(args: argparse.Namespace, ctx: Any) -> int:
    if args.reset:
        return run_reset(args, ctx)
    args._tiering_parser.print_help(sys.stderr)
    return 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tiering", help="remote-node cold memory: which backend serves, a one-shot loop, --reset"
    )
    parser.add_argument(
        "--reset", action="store_true",
        help="remove the kdamonds the undo journal says the agent added (also after a crash) "
             "and exit; never another DAMON user's")
    parser.add_argument("--config", metavar="FILE",
                        help="main configuration file, for [agent] state_dir only "
                             "(default /etc/guestagent/guestagent.toml)")
    parser.add_argument("--conf-dir", metavar="DIR",
                        help="configuration drop-ins (default /etc/guestagent/conf.d)")
    sub = parser.add_subparsers(dest="tiering_command", metavar="ACTION")
    st = sub.add_parser("status", help="which backend serves, why the others do not, the plan")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=status)
    rn = sub.add_parser("run", help="move cold pages until SIGTERM (then undo everything)")
    rn.add_argument(
        "--interval",
        type=finite_float,
        default=TieringConfig().interval_s,
        help="seconds between decisions (default %(default)s)",
    )
    rn.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="stop after this many decisions (default: run until SIGTERM)",
    )
    defaults = TieringConfig()
    for flag, dest, value, what in (
        ("--source-low-pct", "source_low_pct", defaults.source_low_pct,
         "a vnode is short below this %% of its MemTotal free"),
        ("--source-high-pct", "source_high_pct", defaults.source_high_pct,
         "...and stays short until this %% is free again"),
        ("--target-min-pct", "target_min_pct", defaults.target_min_pct,
         "a target keeps at least this %% free"),
    ):
        rn.add_argument(flag, dest=dest, type=finite_float, default=value,
                        help=f"{what} (default %(default)s; [tiering] key {dest})")
    rn.add_argument("--max-rate-mb", type=int, default=defaults.max_rate // MIB,
                    help="upper bound on the rate, MiB/s per source (default %(default)s)")
    rn.add_argument("--json", action="store_true",
                    help="print the summary at the end as JSON (moved, tried, CPU time)")
    rn.add_argument(
        "--backend",
        choices=[n for n, _ in backend_factories],
        default=None,
        help="use only this backend",
    )
    rn.set_defaults(func=run)
    parser.set_defaults(func=cmd_tiering, reset=False, _tiering_parser=parser)
