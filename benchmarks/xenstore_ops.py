"""The agent's xenstore client against Xen's C library, in a guest (issue 18, item 2), MEASURED.

Run in a guest on the testbed (the guest image has ``xenstore-utils``, the agent installed and
its sources in ``/usr/src/guestagent``)::

    python -m tests.e2e run --pv --memory 512 --vcpus 2 -- \\
        'python3 /usr/src/guestagent/benchmarks/xenstore_ops.py --json'

or anywhere with a xenstore (``$XENSTORED_PATH`` is honoured by both sides). Both sides talk to
the same xenstored over the same transport (``/dev/xen/xenbus`` in a guest), on the guest's own
``data/xsbench`` subtree, removed at the end.

* The agent: ``XenstoreClient`` (the C doorway's framing, Python's wire code), N operations in a
  row inside one transaction, timed together: seconds per operation.
* The C library: ``xenstore-read``, ``xenstore-write`` and ``xenstore-list`` (libxenstore). Each
  is a process that opens the connection, starts a transaction, does one operation per argument
  and ends the transaction. Its start-up is subtracted by running it twice, with 1 argument and
  with 1 + K arguments: (t(1+K) - t(1)) / K is one operation, start-up, connection and
  transaction cancelled out. The agent's figures are taken inside a transaction for that reason
  (the same requests on the wire); outside one they are printed too.
* A 100-key transaction: the agent's ``run_transaction`` writing 100 keys, start and commit
  included; for the C library 100 of its writes (in a transaction, as measured) plus two of its
  reads for the transaction's start and end (each one request and one reply, as a read).

Each timing is the best of ``--repeat`` (3) runs, against the load of a shared machine. Every
round runs each operation on both sides, one after the other (agent, C, agent, C...); the
ratio is taken within the round, C's seconds per operation over the agent's (= the agent's
operations per second over C's: above 1, the agent is faster); the median and the min-max over
rounds are printed. Target (issue 18): at least 0.8.

Standard library and guestagent only: it runs from a file path in the guest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any, Callable

BASE = "data/xsbench"
KEYS = 10
TARGET = 0.8


def open_client() -> Any:
    from guestagent.host import real_xenstore
    from guestagent.hostfs import HostFS

    return real_xenstore(HostFS("/"))


def key(i: int) -> str:
    return f"{BASE}/k{i % KEYS}"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- the agent --------------------------------------------------------------------------------


def best(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


def agent_op(client: Any, op: str, n: int, in_tx: bool) -> float:
    """Seconds per operation for ``n`` operations (inside one transaction when ``in_tx``: the
    transaction's start and commit are timed apart and left out)."""
    def body(ops: Any) -> None:
        if op == "read":
            for i in range(n):
                ops.read(key(i))
        elif op == "write":
            for i in range(n):
                ops.write(key(i), f"v{i}")
        elif op == "directory":
            for _ in range(n):
                ops.directory(BASE)
        else:
            raise ValueError(op)

    if not in_tx:
        return timed(lambda: body(client)) / n
    took: list[float] = []

    def inside(tx: Any) -> None:
        took.append(timed(lambda: body(tx)))

    client.run_transaction(inside)
    return took[-1] / n


def agent_tx100(client: Any) -> float:
    """Seconds for one transaction writing 100 keys, start and commit included."""
    def write(tx: Any) -> None:
        for i in range(100):
            tx.write(f"{BASE}/t/{i}", f"v{i}")

    return timed(lambda: client.run_transaction(write))


# --- the C library ----------------------------------------------------------------------------


def run_tool(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def tool_args(op: str, count: int) -> list[str]:
    if op == "read":
        return ["xenstore-read", *(key(i) for i in range(count))]
    if op == "write":
        return ["xenstore-write", *(w for i in range(count) for w in (key(i), f"c{i}"))]
    if op == "directory":
        return ["xenstore-list", *([BASE] * count)]
    raise ValueError(op)


def c_op(op: str, extra: int, repeat: int) -> float:
    """Seconds per operation: (t(1 + extra arguments) - t(1)) / extra, each the best of
    ``repeat`` runs."""
    one = best(repeat, lambda: run_tool(tool_args(op, 1)))
    many = best(repeat, lambda: run_tool(tool_args(op, 1 + extra)))
    return (many - one) / extra


# --- the run ----------------------------------------------------------------------------------


def prepare(client: Any) -> None:
    for i in range(KEYS):
        client.write(key(i), "initial")


def clean(client: Any) -> None:
    from guestagent.xen.xenstore import XenstoreError

    with contextlib.suppress(XenstoreError):
        client.rm(BASE)


def measure(rounds: int, n: int, extra: int, repeat: int) -> dict[str, Any]:
    have_tools = all(shutil.which(t) for t in ("xenstore-read", "xenstore-write", "xenstore-list"))
    client = open_client()
    per: dict[str, list[dict[str, float]]] = {}
    try:
        clean(client)
        prepare(client)
        for _ in range(rounds):
            c_s: dict[str, float] = {}
            for op in ("read", "write", "directory"):
                row = {"agent_s": best(repeat, partial(agent_op, client, op, n, True)),
                       "agent_plain_s": best(repeat, partial(agent_op, client, op, n, False))}
                if have_tools:
                    row["c_s"] = c_s[op] = c_op(op, extra, repeat)
                per.setdefault(op, []).append(row)
            row = {"agent_s": best(repeat, lambda: agent_tx100(client))}
            if have_tools:
                row["c_s"] = 100 * c_s["write"] + 2 * c_s["read"]
            per.setdefault("tx100", []).append(row)
    finally:
        clean(client)
        client.close()
    return {"rounds": rounds, "n": n, "extra": extra, "repeat": repeat, "c_tools": have_tools,
            "host": platform.node(), "kernel": platform.release(),
            "python": platform.python_version(), "xenbus": os.path.exists("/dev/xen/xenbus"),
            "ops": {op: summarize(rows) for op, rows in per.items()}, "raw": per}


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent_us": statistics.median(r["agent_s"] for r in rows) * 1e6,
    }
    if "agent_plain_s" in rows[0]:
        out["agent_plain_us"] = statistics.median(r["agent_plain_s"] for r in rows) * 1e6
    if "c_s" in rows[0]:
        ratios = [r["c_s"] / r["agent_s"] for r in rows]
        out.update(c_us=statistics.median(r["c_s"] for r in rows) * 1e6,
                   ratio=statistics.median(ratios), ratio_min=min(ratios),
                   ratio_max=max(ratios))
    return out


def report(result: dict[str, Any]) -> str:
    lines = [f"xenstore operations, {result['rounds']} rounds (agent: {result['n']} in a row; C: "
             f"1 vs 1+{result['extra']} arguments; best of {result['repeat']}); {result['host']}, "
             f"kernel {result['kernel']}, Python {result['python']}, "
             f"/dev/xen/xenbus {'yes' if result['xenbus'] else 'no'}",
             "| operation | agent us/op (in tx) | agent us/op (no tx) | C us/op | "
             "agent ops/s / C ops/s (min-max) |", "|---|---|---|---|---|"]
    for op, s in result["ops"].items():
        plain = f"{s['agent_plain_us']:.0f}" if "agent_plain_us" in s else "-"
        if "c_us" in s:
            c = f"{s['c_us']:.0f}"
            ratio = f"x{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"
        else:
            c, ratio = "not measured (no xenstore-utils)", "-"
        lines.append(f"| {op} | {s['agent_us']:.0f} | {plain} | {c} | {ratio} |")
    measured = [s for s in result["ops"].values() if "ratio" in s]
    if measured:
        worst = min(s["ratio"] for s in measured)
        lines.append(f"target: every ratio >= {TARGET}: {'met' if worst >= TARGET else 'MISSED'} "
                     f"(lowest median x{worst:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=200, help="agent operations per timing")
    parser.add_argument("--extra", type=int, default=100,
                        help="C: arguments beyond the first in the long run")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--json", action="store_true", help="the table, then the JSON")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.n, args.extra, args.repeat)
    print(report(result))
    if args.json:
        print("JSON " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
