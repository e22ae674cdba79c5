"""``guestagent tiering status [--json]`` and ``guestagent tiering run``.

``status`` probes every backend (read-only for DAMON; for tmem one ephemeral pool is created and
destroyed), says which one serves (the first available one that can place pages on a chosen node)
and why each other one does not, with what each mechanism cannot do, then shows the nodes and the
plan the policy would apply right now. Exit status 0 whether or not a backend serves (``serving``
is null in JSON when none does); 1 with one line on stderr when the node snapshot is unreadable.

``run`` drives the serving backend in a loop (``--iterations`` for a bounded run) and undoes
everything on SIGTERM/SIGINT or at the end. Exit 1 with the reasons when no backend serves.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.tiering import readers
from guestagent.tiering.model import MIB, Availability, Backend, PolicyState, TieringConfig
from guestagent.tiering.policy import decide


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


def probe_all(hostfs: HostFS) -> list[tuple[str, Backend | None, Availability]]:
    out: list[tuple[str, Backend | None, Availability]] = []
    for name, factory in backend_factories:
        try:
            backend = factory(hostfs)
        except ImportError as e:
            out.append((name, None, Availability(False, f"cannot load: {e}")))
            continue
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
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    out = [f"serving: {chosen.name if chosen is not None else 'none'}"]
    for r in rows:
        state = "serving" if r["serving"] else ("ok" if r["ok"] else "unavailable")
        out.append(f"  {r['name']:<6} {state:<12} {r['reason']}")
        for limit in r["limits"]:
            out.append(f"  {'':<6} {'note:':<12} {limit}")
    out.append("nodes:")
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
    config = TieringConfig(interval_s=args.interval)
    return Runner(hostfs, chosen, config).run(iterations=args.iterations)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tiering", help="remote-node cold memory: which backend serves, and a one-shot loop"
    )
    sub = parser.add_subparsers(dest="tiering_command", metavar="ACTION")
    st = sub.add_parser("status", help="which backend serves, why the others do not, the plan")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=status)
    rn = sub.add_parser("run", help="move cold pages until SIGTERM (then undo everything)")
    rn.add_argument(
        "--interval",
        type=float,
        default=TieringConfig().interval_s,
        help="seconds between decisions (default %(default)s)",
    )
    rn.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="stop after this many decisions (default: run until SIGTERM)",
    )
    rn.add_argument(
        "--backend",
        choices=[n for n, _ in backend_factories],
        default=None,
        help="use only this backend",
    )
    rn.set_defaults(func=run)
    parser.set_defaults(func=lambda _args, _ctx: (parser.print_help(sys.stderr), 2)[1])
