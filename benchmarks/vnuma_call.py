"""XENMEM_get_vnumainfo through the agent's C doorway against a C program, in a guest (issue 18,
item 3). Written, not yet run on the testbed.

Run in an HVM guest with vNUMA on the testbed (the guest image has gcc, the agent installed and
its sources in ``/usr/src/guestagent``)::

    python -m tests.e2e run --vnuma '[ ["pnode=0","size=512","vcpus=0-1","vdistances=10,20"],
        ["pnode=0","size=512","vcpus=2-3","vdistances=20,10"] ]' --memory 1024 --vcpus 4 \\
        --timeout 900 -- 'python3 /usr/src/guestagent/benchmarks/vnuma_call.py --json'

* The agent: ``guestagent.xen.vnuma.get_vnumainfo`` on one open privcmd (the C doorway's
  hypercall and buffers, the size-discovery query, the parse into ``VnumaInfo`` and its
  validation), N calls in a row, timed together: seconds per call. For information also the
  call as the topology job makes it (``guestagent.host.real_vnuma_call``: privcmd opened and
  closed around every call).
* C: ``benchmarks/vnuma_call.c``, compiled here with ``gcc -O2`` into a temporary directory: the
  same two hypercalls per call with the same buffer method (``/dev/xen/hypercall``, else locked
  anonymous pages), straight through the ioctl, N calls in one process (its start-up is not in
  its CLOCK_MONOTONIC figure).

Each timing is the best of ``--repeat`` (3) runs; every round times both sides, one after the
other; the ratio is taken within the round, the agent's seconds per call over C's (below 1, the
agent is faster); the median and the min-max over rounds are printed. Target (issue 18): at most
2. The counts (vnodes, vCPUs, memory ranges), the vCPU map and the distances each side got must
agree, else the run exits 1. Exit 2, with C's or the agent's one line, where there is no privcmd
or no vNUMA for the guest.

Standard library and guestagent only: it runs from a file path in the guest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET = 2.0
C_SOURCE = Path(__file__).resolve().with_name("vnuma_call.c")

#: What each side reports it got: nr_vnodes, nr_vcpus, nr_vmemranges, vcpu_to_vnode, distances.
Observed = dict[str, Any]
#: One timing: (seconds per call, what the last call got).
Timing = tuple[float, Observed]
#: Times ``n`` calls of one side.
Side = Callable[[int], Timing]


class Unavailable(Exception):
    """No privcmd, no vNUMA or no compiler: the benchmark cannot run here (exit 2)."""


# --- the C program ----------------------------------------------------------------------------


def compile_c(workdir: Path, source: Path = C_SOURCE, extra_flags: tuple[str, ...] = ()) -> Path:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise Unavailable(f"vnuma_call: no C compiler {cc!r} on PATH")
    exe = workdir / "vnuma_call"
    done = subprocess.run([cc, "-O2", "-Wall", *extra_flags, "-o", str(exe), str(source)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vnuma_call: {cc} failed on {source}: {done.stderr.strip()}")
    return exe


def parse_c_output(text: str) -> Timing:
    """``key value`` lines from vnuma_call.c -> (seconds per call, what it got)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            fields[key] = value.strip()
    try:
        seconds = float(fields["seconds_per_call"])
        observed: Observed = {
            "nr_vnodes": int(fields["nr_vnodes"]),
            "nr_vcpus": int(fields["nr_vcpus"]),
            "nr_vmemranges": int(fields["nr_vmemranges"]),
            "vcpu_to_vnode": [int(v) for v in fields["vcpu_to_vnode"].split(",") if v],
            "distances": [int(v) for v in fields["distances"].split(",") if v],
        }
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"vnuma_call: the C program's output lacks or garbles {e}: "
                           f"{text.strip()!r}") from None
    return seconds, observed


def c_side(exe: Path) -> Side:
    def run(n: int) -> Timing:
        done = subprocess.run([str(exe), "-n", str(n)], capture_output=True, text=True,
                              check=False)
        if done.returncode == 2:
            raise Unavailable(done.stderr.strip())
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"{exe} exited {done.returncode}")
        return parse_c_output(done.stdout)

    return run


# --- the agent --------------------------------------------------------------------------------


def observed_of(info: Any) -> Observed:
    """What a ``VnumaInfo`` holds, in the C program's terms."""
    return {
        "nr_vnodes": info.nr_vnodes,
        "nr_vcpus": len(info.vcpu_to_vnode),
        "nr_vmemranges": len(info.memory_ranges),
        "vcpu_to_vnode": list(info.vcpu_to_vnode),
        "distances": [d for row in info.distances for d in row],
    }


def timed_calls(call: Callable[[], Any], n: int) -> Timing:
    start = time.perf_counter()
    for _ in range(n):
        info = call()
    took = time.perf_counter() - start
    return took / n, observed_of(info)


def agent_sides() -> tuple[Side, Side, Callable[[], None]]:
    """(get_vnumainfo on one open privcmd, the topology job's call, close)."""
    from guestagent.host import real_vnuma_call
    from guestagent.hostfs import HostFS
    from guestagent.xen.errors import XenUnavailable
    from guestagent.xen.privcmd import open_privcmd
    from guestagent.xen.vnuma import get_vnumainfo

    hostfs = HostFS("/")
    try:
        privcmd = open_privcmd(hostfs)
    except XenUnavailable as e:
        raise Unavailable(f"vnuma_call: the agent: {e}") from None
    try:
        get_vnumainfo(privcmd)
    except XenUnavailable as e:
        privcmd.close()
        raise Unavailable(f"vnuma_call: the agent: {e}") from None
    job_call = real_vnuma_call(hostfs)
    return (lambda n: timed_calls(lambda: get_vnumainfo(privcmd), n),
            lambda n: timed_calls(job_call, n), privcmd.close)


# --- the run ----------------------------------------------------------------------------------


def best(repeat: int, side: Side, n: int) -> Timing:
    """The fastest of ``repeat`` timings (and what it got)."""
    return min((side(n) for _ in range(repeat)), key=lambda t: t[0])


def disagreements(agent: Observed, c: Observed) -> list[str]:
    return [f"{key}: agent {agent.get(key)}, C {c.get(key)}"
            for key in ("nr_vnodes", "nr_vcpus", "nr_vmemranges", "vcpu_to_vnode", "distances")
            if agent.get(key) != c.get(key)]


def measure(rounds: int, n: int, repeat: int, agent: Side, c: Side,
            agent_job: Side | None = None) -> dict[str, Any]:
    """Interleaved rounds: agent, C (and the job's call), each the best of ``repeat``."""
    rows: list[dict[str, float]] = []
    mismatch: list[str] = []
    got: Observed = {}
    for _ in range(rounds):
        agent_s, agent_got = best(repeat, agent, n)
        c_s, c_got = best(repeat, c, n)
        row = {"agent_s": agent_s, "c_s": c_s}
        if agent_job is not None:
            row["agent_job_s"] = best(repeat, agent_job, n)[0]
        rows.append(row)
        mismatch += [m for m in disagreements(agent_got, c_got) if m not in mismatch]
        got = c_got
    return {"rounds": rounds, "n": n, "repeat": repeat, "summary": summarize(rows),
            "raw": rows, "observed": got, "disagreements": mismatch}


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    ratios = [r["agent_s"] / r["c_s"] for r in rows]
    out: dict[str, Any] = {
        "agent_us": statistics.median(r["agent_s"] for r in rows) * 1e6,
        "c_us": statistics.median(r["c_s"] for r in rows) * 1e6,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    if all("agent_job_s" in r for r in rows):
        out["agent_job_us"] = statistics.median(r["agent_job_s"] for r in rows) * 1e6
    return out


def report(result: dict[str, Any]) -> str:
    s, got = result["summary"], result["observed"]
    lines = [
        f"XENMEM_get_vnumainfo, {result['rounds']} rounds ({result['n']} calls per timing, "
        f"best of {result['repeat']}); {result.get('host', '?')}, kernel "
        f"{result.get('kernel', '?')}, Python {result.get('python', '?')}, buffers from "
        f"{result.get('buffer', '?')}",
        f"topology: {got.get('nr_vnodes')} vnodes, {got.get('nr_vcpus')} vCPUs, "
        f"{got.get('nr_vmemranges')} memory ranges",
        "| side | us/call |", "|---|---|",
        f"| agent: get_vnumainfo (doorway, parse, validation) | {s['agent_us']:.1f} |",
    ]
    if "agent_job_us" in s:
        lines.append(f"| agent as the topology job calls it (privcmd opened each time) | "
                     f"{s['agent_job_us']:.1f} |")
    lines += [
        f"| C: vnuma_call.c (the same hypercalls and buffers) | {s['c_us']:.1f} |",
        "per-round agent/C: " + ", ".join(f"x{r:.2f}" for r in s["ratios"]),
        f"agent/C median x{s['ratio']:.2f} (min-max {s['ratio_min']:.2f}-{s['ratio_max']:.2f})",
        f"target: agent/C <= {TARGET}: {'met' if s['ratio'] <= TARGET else 'MISSED'}",
    ]
    if result["disagreements"]:
        lines.append("DISAGREE: " + "; ".join(result["disagreements"]))
    else:
        lines.append("both sides got the same counts, vCPU map and distances")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=200, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    parser.add_argument("--json", action="store_true", help="the table, then the JSON")
    args = parser.parse_args(argv)
    close: Callable[[], None] = lambda: None  # noqa: E731
    try:
        with tempfile.TemporaryDirectory(prefix="vnuma_call.") as tmp:
            c = c_side(compile_c(Path(tmp)))
            agent, agent_job, close = agent_sides()
            result = measure(args.rounds, args.n, args.repeat, agent, c, agent_job)
    except Unavailable as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        close()
    result.update(host=platform.node(), kernel=platform.release(),
                  python=platform.python_version(),
                  buffer="/dev/xen/hypercall" if os.path.exists("/dev/xen/hypercall")
                  else "locked anonymous pages")
    print(report(result))
    if args.json:
        print("JSON " + json.dumps(result, sort_keys=True))
    return 1 if result["disagreements"] else 0


if __name__ == "__main__":
    sys.exit(main())
