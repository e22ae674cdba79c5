"""``guestagent tiering status [--json]``, ``guestagent tiering run`` and ``guestagent tiering
--reset``.

``status`` probes every backend (read-only for DAMON; for tmem one ephemeral pool is created and
destroyed), says which one serves (the first available one that can place pages on a chosen node)
and why each other one does not, with what each mechanism cannot do, then shows the nodes and the
plan the policy would apply right now, all as the daemon would with the configuration files
(``[tiering] enabled``, ``backend`` and the watermarks). Exit status (the scheme of guestagent(8)):
0 when a backend serves, or none does and ``[tiering]`` is off (nothing to serve: ``serving`` is
null in JSON); 4 (a finding, like ``topology``'s) when ``[tiering]`` is on and no backend it allows
can serve, the daemon's tiering job would fail to start; 1 with one line on stderr when the node
snapshot or the configuration cannot be read or is refused.

``run`` is the daemon running the tiering job alone (the same event loop, status socket, undo
journal and configuration files as ``guestagent run``; each option given overrides its
``[tiering]`` key). It undoes everything on SIGTERM/SIGINT or after ``--duration``, then prints
what it did (bytes moved and tried, wall time, the agent's own CPU time; ``--json`` for JSON).
Exit 1 with the reasons when no backend serves or the configuration is refused.

``--reset`` removes the kdamonds the undo journal (``tiering.json`` in ``[agent] state_dir``) says
the daemon's tiering job added, also after a ``kill -9`` (for systemd ``ExecStopPost``); never
another DAMON user's. Of the configuration it reads ``[agent] state_dir`` alone, leniently, so a
bad configuration never blocks it. Idempotent; exit 1 (one error line each) when a step failed.
:func:`undo` is the part ``guestagent reset`` runs.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from guestagent.cli import add_json_option, finite_float, print_json
from guestagent.daemon.commands import one_job_options
from guestagent.errors import GuestAgentError
from guestagent.host import TIERING_BACKENDS, Host
from guestagent.hostfs import HostFS
from guestagent.tiering import readers
from guestagent.tiering.model import (
    Availability,
    Backend,
    Plan,
    PolicyState,
    TieringConfig,
    TieringStats,
)
from guestagent.tiering.policy import decide
from guestagent.units import MIB, PAGE_SIZE

if TYPE_CHECKING:
    from guestagent.tiering.job import TieringJob
    from guestagent.undo import Journal, UndoReport


def probe_all(
    host: Host, journal: Journal | None = None, first_serving: bool = False
) -> list[tuple[str, Backend | None, Availability]]:
    """Every backend of ``host`` and whether it can run here. With ``journal`` (the daemon's
    tiering job), a backend that journals its changes (DAMON) first undoes what a killed
    predecessor left in it, then records its own changes there. ``first_serving``: stop after
    the first one that can serve (the job's start with ``backend = auto``: the later ones would
    only say why they are not used)."""
    out: list[tuple[str, Backend | None, Availability]] = []
    for name, factory in host.tiering_backends:
        if first_serving and serving(out) is not None:
            break
        try:
            backend = factory(host.fs)
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


#: ``tiering status`` with ``[tiering]`` on and no backend it allows able to serve: a finding (the
#: output says why each one cannot), distinct from 1 ("could not be read"), as ``topology``'s 4.
EXIT_NONE_SERVES = 4


def _configured(args: argparse.Namespace, ctx: Any) -> tuple[bool, str, TieringConfig, str]:
    """``[tiering] enabled``, ``backend``, the policy's configuration and ``[agent] state_dir``,
    from the files ``run`` reads (``--config``/``--conf-dir``, else the context's; raises
    ConfigError/InputError when refused)."""
    from guestagent import config as config_mod
    from guestagent.tiering.config import tiering_config

    problem = config_mod.named_path_problem(getattr(args, "config", None),
                                            getattr(args, "conf_dir", None))
    if problem is not None:
        raise GuestAgentError(problem)
    agent = config_mod.load(*ctx.config_paths(args))
    section = agent.section("tiering")
    return (bool(section["enabled"]), str(section["backend"]), tiering_config(section),
            str(agent.get("agent", "state_dir")))


def daemon_tiering(hostfs: HostFS, state_dir: str) -> tuple[int, dict[str, Any]] | None:
    """The running daemon's pid and its tiering job's status (``guestagent status``), or None:
    no daemon answers, it cannot be asked (the socket is root-only), or it runs no tiering job.
    An answer without a backend name, a pid or a plan of moves is not taken (one line on
    stderr naming it): the command then says what its own probe finds."""
    from guestagent.daemon.service import read_status

    try:
        status = read_status(str(hostfs.path(state_dir)), timeout=2.0)
    except GuestAgentError:
        return None
    job = status.get("jobs", {}).get("tiering") if isinstance(status.get("jobs"), dict) else None
    if not isinstance(job, dict) or "backend" not in job:
        return None
    pid, plan = status.get("pid"), job.get("plan")
    good_plan = isinstance(plan, list) and all(
        isinstance(m, dict) and all(isinstance(m.get(k), int) for k in PLAN_KEYS) for m in plan)
    if not (isinstance(job["backend"], str) and isinstance(pid, int) and good_plan):
        print(f"guestagent: the running daemon's tiering status is not understood, not used: "
              f"backend {job.get('backend')!r}, pid {pid!r}, plan {plan!r}", file=sys.stderr)
        return None
    return pid, job


#: The keys of a plan's row (:func:`plan_rows`).
PLAN_KEYS = ("source", "target", "rate_bytes_per_s")


def with_daemon(doc: dict[str, Any], pid: int, job: dict[str, Any]) -> None:
    """``status``'s document when a running daemon's tiering job serves: that backend serves
    (its kdamonds are the daemon's, not another DAMON user's, whatever the probe said), and the
    plan and reasons are the daemon's, which keep its state (a source stays one until it is
    ``source_high_pct`` free), not a fresh decision's."""
    name = job["backend"]
    moved = job.get("bytes_moved")
    for row in doc["backends"]:
        row["serving"] = row["name"] == name
        if row["serving"]:
            row["ok"] = True
            row["reason"] = (f"serving in the running daemon (pid {pid})"
                             + (f": {moved / MIB:.1f} MiB moved since it started"
                                if isinstance(moved, int) else ""))
    doc["serving"] = name
    doc["daemon_pid"] = pid
    doc["plan"] = job["plan"]
    doc["reasons"] = [str(r) for r in job.get("reasons", [])]


def _backend_rows(
    probed: list[tuple[str, Backend | None, Availability]], chosen: Backend | None, wanted: str
) -> list[dict[str, Any]]:
    """``status``'s line per backend: whether it works and serves, and why (not)."""
    rows: list[dict[str, Any]] = []
    for name, backend, a in probed:
        if backend is chosen:
            reason = a.reason
        elif wanted not in ("auto", name):
            reason = f"not used: [tiering] backend = {wanted}"
        else:
            reason = why_not(backend, a)
        rows.append(
            {
                "name": name,
                "ok": a.ok,
                "serving": backend is not None and backend is chosen,
                "targets_node": bool(backend is not None and backend.targets_node),
                "reason": reason,
                "limits": list(a.limits),
            }
        )
    return rows


def status_text(doc: dict[str, Any]) -> str:
    """``status``'s JSON document for people."""
    if doc["serving"] is not None:
        out = [f"serving: {doc['serving']}"]
    else:
        out = ["serving: none" + (" ([tiering] enabled = true)" if doc["enabled"]
                                  else " ([tiering] is off: nothing to serve)")]
    for r in doc["backends"]:
        state = "serving" if r["serving"] else ("ok" if r["ok"] else "unavailable")
        out.append(f"  {r['name']:<6} {state:<12} {r['reason']}")
        for limit in r["limits"]:
            out.append(f"  {'':<6} {'note:':<12} {limit}")
    out.append(
        "nodes:"
        + (" (MGLRU on: inactive lists are generations, not coldness; DAMON decides)"
           if doc["lru_gen"] else "")
    )
    for n in doc["nodes"]:
        out.append(
            f"  node {n['node']}: free {n['free_pct']}% of {n['total_bytes'] // MIB} MiB, "
            f"inactive {n['inactive_bytes'] // MIB} MiB"
        )
    whose = " (the running daemon's)" if doc.get("daemon_pid") is not None else ""
    out.append(f"plan now{whose}:" + ("" if doc["plan"] else " nothing to move"))
    for p in doc["plan"]:
        out.append(
            f"  node {p['source']} -> node {p['target']} at {p['rate_bytes_per_s'] / MIB:.1f} MiB/s"
        )
    out.extend(f"  {line}" for line in doc["reasons"])
    return "\n".join(out) + "\n"


def status(args: argparse.Namespace, ctx: Any) -> int:
    """Which backend serves and why the others do not, the nodes, the plan. While a daemon runs
    the tiering job (and answers: as root), what it serves and its plan (``daemon_pid`` in the
    JSON); else this command's own probe and a fresh decision."""
    hostfs: HostFS = ctx.hostfs
    enabled, wanted, policy_config, state_dir = _configured(args, ctx)
    probed = probe_all(ctx.host)
    # The backends the daemon's job may use ([tiering] backend), as it chooses (tiering.job).
    chosen = serving([p for p in probed if wanted in ("auto", p[0])])
    snapshot = readers.read_snapshot(hostfs)
    decision = decide(snapshot, policy_config, PolicyState())
    doc = {
        "serving": chosen.name if chosen is not None else None,
        "enabled": enabled,
        "backends": _backend_rows(probed, chosen, wanted),
        "nodes": [
            {
                "node": m.node,
                "total_bytes": m.total,
                "free_bytes": m.free,
                "inactive_bytes": m.inactive,
                "free_pct": round(100.0 * m.free_fraction, 1),
            }
            for m in snapshot.nodes.values()
        ],
        "plan": plan_rows(decision.plan),
        "reasons": list(decision.reasons),
        "lru_gen": snapshot.lru_gen,
        "daemon_pid": None,
    }
    daemon = daemon_tiering(hostfs, state_dir)
    if daemon is not None:
        with_daemon(doc, *daemon)
    if args.json:
        print_json(doc)
    else:
        sys.stdout.write(status_text(doc))
    if not (enabled and doc["serving"] is None):
        return 0
    print("guestagent: [tiering] is enabled and no backend can serve: the daemon's tiering job "
          "would not start", file=sys.stderr)
    return EXIT_NONE_SERVES


#: ``tiering run``'s options and the ``[tiering]`` keys they override (None: not given).
RUN_OVERRIDES = (
    ("--backend", "backend"),
    ("--interval", "interval_seconds"),
    ("--source-low-pct", "source_low_pct"),
    ("--source-high-pct", "source_high_pct"),
    ("--target-min-pct", "target_min_pct"),
    ("--max-rate-mb", "max_rate_mb"),
)


def run(args: argparse.Namespace, ctx: Any, job: TieringJob | None = None) -> int:
    """The daemon running the tiering job alone (:func:`guestagent.daemon.commands.run_one_job`),
    then the summary of what it did. ``job``: the tiering job to run (a test's, made with its
    own runner; default a new :class:`~guestagent.tiering.job.TieringJob`)."""
    from guestagent.daemon.commands import run_one_job
    from guestagent.tiering.job import TieringJob

    overrides = [
        (flag, "tiering", key, getattr(args, flag[2:].replace("-", "_")))
        for flag, key in RUN_OVERRIDES
    ]
    if job is None:
        job = TieringJob()
    t0 = time.monotonic()
    cpu0 = process_cpu_seconds()
    run_one_job(args, ctx, job, overrides, role="guest")
    assert job.backend is not None  # the daemon raises when the job did not start
    process_cpu = process_cpu_seconds()
    summary = run_summary(job.backend, time.monotonic() - t0, process_cpu - cpu0)
    summary.update(cpu_split(job, process_cpu))
    if args.json:
        print_json(summary)
    else:
        moved = ", ".join(
            f"node {n}: {b / MIB:.1f} MiB" for n, b in sorted(summary["moved_by_source"].items())
        )
        sys.stdout.write(
            f"tiering: {summary['backend']} moved {summary['bytes_moved'] / MIB:.1f} MiB "
            f"(tried {summary['bytes_tried'] / MIB:.1f} MiB) in {summary['elapsed_s']:.1f} s"
            f"{' (' + moved + ')' if moved else ''}; agent CPU {summary['agent_cpu_s']:.2f} s\n"
        )
    return 0


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_summary(backend: Backend, elapsed_s: float, cpu_s: float) -> dict[str, Any]:
    """What a finished ``run`` did: the backend's counters, wall time and the agent's CPU time
    (user + system of this process; the kernel's own work, e.g. a kdamond, is not in it)."""
    stats = backend.stats()
    return {
        "backend": backend.name,
        **backend_counters(stats),
        "pages_returned": stats.pages_returned,
        "failures_pages": stats.failures,
        "elapsed_s": round(elapsed_s, 3),
        "agent_cpu_s": round(cpu_s, 3),
    }


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """A plan as ``status`` shows it: one row per move."""
    return [{"source": m.source, "target": m.target, "rate_bytes_per_s": m.rate}
            for m in plan.moves]


def backend_counters(stats: TieringStats) -> dict[str, Any]:
    """A backend's counters in bytes, as ``tiering run``'s summary and the tiering job's status
    give them."""
    return {
        "bytes_moved": stats.pages_moved_or_put * PAGE_SIZE,
        "bytes_tried": stats.bytes_tried,
        "quota_exceeds": stats.quota_exceeds,
        "moved_by_source": {str(n): b for n, b in sorted(stats.moved_by_source.items())},
    }


def cpu_split(job: TieringJob, process_cpu_s: float) -> dict[str, Any]:
    """The process's CPU time split at the end of the first tick (issue 18): ``startup_cpu_s``
    (interpreter start, imports, configuration, probe, the first decision and the kdamonds it
    created) and ``steady_cpu_s`` (every later tick, and the stop); ``ticks`` run in all."""
    first = job.cpu_at_first_tick_s
    return {
        "process_cpu_s": round(process_cpu_s, 3),
        "startup_cpu_s": None if first is None else round(first, 3),
        "steady_cpu_s": None if first is None else round(process_cpu_s - first, 3),
        "ticks": job.ticks,
    }


def undo(host: Host, state_dir: str) -> UndoReport:
    """Remove the kdamonds ``tiering.json`` in ``state_dir`` says the agent added, from that
    journal alone (no configuration), under the caller's state lock; never another DAMON user's.
    A line per step (each failure also logged at error level); a journal that cannot be read at
    all raises InputError."""
    from guestagent.tiering.journal import TieringJournal, journal_path

    backend = host.tiering_backend("damon")
    journal = TieringJournal(host.fs, journal_path(state_dir)).load()
    report: UndoReport = backend.undo_journal(journal)  # type: ignore[attr-defined]
    return report


def run_reset(args: argparse.Namespace, ctx: Any) -> int:
    """``tiering --reset``: undo from the journal alone (module docstring)."""
    import os

    from guestagent import config as config_mod
    from guestagent import statelock
    from guestagent.log import get_logger
    from guestagent.tiering.journal import journal_path

    log = get_logger("tiering")
    state_dir, problems = config_mod.read_state_dir(*ctx.config_paths(args))
    for line in problems:
        log.warning("tiering_reset_config_ignored", problem=line)
    hostfs: HostFS = ctx.hostfs
    path = journal_path(state_dir)
    try:
        with statelock.held(hostfs, os.path.dirname(path), "tiering --reset", create=False):
            report = undo(ctx.host, state_dir)
    except GuestAgentError as e:
        log.error("tiering_undo_failed", error=str(e), journal=path)
        return 1
    if getattr(args, "json", False):
        print_json({"undone": report.lines, "journal": path, "failed": report.failures})
    else:
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
    add_json_option(parser, "with --reset: the result as one JSON object (undone, journal, "
                    "failed)")
    parser.add_argument("--config", metavar="FILE",
                        help="main configuration file; --reset reads [agent] state_dir only, "
                             "status [tiering] (default /etc/guestagent/guestagent.toml)")
    parser.add_argument("--conf-dir", metavar="DIR",
                        help="configuration drop-ins (default /etc/guestagent/conf.d)")
    sub = parser.add_subparsers(dest="tiering_command", metavar="ACTION")
    st = sub.add_parser("status", help="which backend serves, why the others do not, the plan")
    add_json_option(st)
    # SUPPRESS: given before the action word (tiering --config F status), the group's value stays.
    st.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                    help="main configuration file, read as by run for [tiering] (default "
                         "/etc/guestagent/guestagent.toml, used when present)")
    st.add_argument("--conf-dir", metavar="DIR", default=argparse.SUPPRESS,
                    help="drop-in directory (default /etc/guestagent/conf.d, used when present)")
    st.set_defaults(func=status)
    rn = sub.add_parser(
        "run", help="the daemon with the tiering job alone, until SIGTERM or --duration "
        "(then undo everything)",
        description="The daemon (as 'guestagent run') with only the [tiering] job: it reads the "
        "same configuration files; each option given overrides its [tiering] key. On SIGTERM, "
        "SIGINT or after --duration it undoes everything and prints what it did.")
    rn.add_argument("--interval", type=finite_float, default=None, metavar="SECONDS",
                    help="seconds between decisions ([tiering] interval_seconds)")
    for flag, dest, what in (
        ("--source-low-pct", "source_low_pct",
         "a vnode is short below this %% of its MemTotal free"),
        ("--source-high-pct", "source_high_pct",
         "...and stays short until this %% is free again"),
        ("--target-min-pct", "target_min_pct", "a target keeps at least this %% free"),
    ):
        rn.add_argument(flag, dest=dest, type=finite_float, default=None,
                        help=f"{what} ([tiering] {dest})")
    rn.add_argument("--max-rate-mb", type=int, default=None,
                    help="upper bound on the rate, MiB/s per source ([tiering] max_rate_mb)")
    add_json_option(rn, "print the summary at the end as one JSON object (moved, tried, CPU "
                    "time)")
    rn.add_argument(
        "--backend",
        choices=[n for n, _ in TIERING_BACKENDS],
        default=None,
        help="use only this backend ([tiering] backend)",
    )
    one_job_options(rn)
    rn.set_defaults(func=run)
    parser.set_defaults(func=cmd_tiering, reset=False, _tiering_parser=parser)
