"""Remote-node cold memory on the real-Xen testbed: how fast the agent's DAMON backend moves a cold
buffer to the other vnode, what it costs, and how much free memory the source node regains.

    python -m benchmarks.tiering_testbed [--max-run-s 420] [--interval S] [--json-out FILE] \
        [--profile]
    python -m benchmarks.tiering_testbed --record tests/e2e/runs/<run>/<guest>-tiering.json

Boots the e2e testbed (Xen 4.17 in QEMU under TCG, ``tests/e2e``; takes the machine-wide bed lock)
and runs :mod:`tests.e2e.tiering_scenario`: an HVM guest with 2 vnodes of 512 MiB on Debian's 6.12
kernel, ``guestagent run`` (the daemon as the unit starts it, ``[tiering]`` on) started first,
then node 0 filled with a cold buffer, until node 0's share of the buffer stops shrinking, then
SIGTERM. Reports:

* bytes moved per second: DAMON's ``sz_applied`` total (the tiering job's status) over the run
  (from the sample before the fill to the last one with the daemon up), and over the time the
  buffer was actually moving (first to last poll where node 1's share of the buffer grew), plus
  the fastest poll interval;
* the agent's CPU time over the same run (user + system of the daemon, every job it runs) and,
  separately, the kernel's CPU time in the kdamond threads (DAMON's sampling and migrations);
  the daemon's start (interpreter, imports, every job's start, the tiering job's first tick),
  paid once per boot, apart; and the tiering job's own ticks; each set against the kdamonds';
* the free memory node 0 regained (MemFree after the run minus its least), and what node 1
  gave.

Records from before the daemon drove the scenario (``guestagent tiering run`` started after the
fill) are read too: their agent figures come from that command's JSON summary.

Everything runs under software emulation on a 2-core machine: absolute speeds are those of this
testbed, far below real hardware; the ratios (CPU per MiB moved, regained versus moved) are the
more portable numbers. The guest's record (every sample) stays in the bed's run directory;
``--record`` computes the figures from such a record (the e2e test ``test_tiering.py`` writes the
same one) without a bed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tests.e2e import tiering_scenario as sc
from tests.e2e.bed import BedConfig, XenBed
from tests.e2e.util import BedError

MIB = 1 << 20


def numbers(rec: sc.Record) -> dict[str, Any]:
    """The benchmark's figures from a finished scenario."""
    s0 = rec.start
    moving = [
        (a, b)
        for a, b in zip(rec.samples, rec.samples[1:])
        if rec.cold_bytes(b, 1) > rec.cold_bytes(a, 1)
    ]
    if moving:
        t_first, t_last = moving[0][0].t, moving[-1][1].t
        moved_window = rec.cold_bytes(moving[-1][1], 1) - rec.cold_bytes(moving[0][0], 1)
        peak = max(
            (rec.cold_bytes(b, 1) - rec.cold_bytes(a, 1)) / (b.t - a.t) for a, b in moving
        )
    else:
        t_first = t_last = s0.t
        moved_window = 0
        peak = 0.0
    summary = rec.summary
    parts = agent_cpu_parts(rec)
    elapsed = parts["elapsed_s"]
    applied = int(summary.get("bytes_moved", 0))
    cpu = parts["agent_cpu_s"]
    # kdamond threads exit when the agent turns them off: their CPU time is the last one seen
    # (every half second since the tracker; at the 10 s samples before).
    kdamond_cpu = rec.kdamond_cpu_s()
    last_running = max(
        (s for s in rec.samples if s.kdamond_cpu), key=lambda s: s.t, default=rec.last
    )
    least_free0 = rec.node0_least_free_kb()
    total0 = rec.last.meminfo[0]["MemTotal"]
    return {
        **cpu_split(parts, kdamond_cpu),
        "agent_command": rec.agent_command or "guestagent tiering run",
        "profiled": rec.profiled,
        "interval_s": rec.tiering_keys.get("interval_seconds", sc.INTERVAL_S),
        "kernel": rec.facts.splitlines()[0] if rec.facts else "",
        "fill_mib": rec.fill_mib,
        "fill_seconds": round(rec.fill_seconds, 1),
        "agent_elapsed_s": elapsed,
        "bytes_moved": applied,
        "bytes_tried": int(summary.get("bytes_tried", 0)),
        "moved_per_s_over_run": applied / elapsed if elapsed else 0.0,
        "buffer_moved_bytes": rec.cold_bytes(rec.last, 1) - rec.cold_bytes(s0, 1),
        "buffer_left_on_node0_bytes": rec.cold_bytes(rec.last, 0),
        "moving_window_s": round(t_last - t_first, 1),
        "moved_per_s_while_moving": moved_window / (t_last - t_first) if t_last > t_first else 0.0,
        "peak_moved_per_s": peak,
        "agent_cpu_s": cpu,
        "agent_cpu_per_gib_moved_s": cpu / (applied / (1 << 30)) if applied else None,
        "agent_cpu_share": cpu / elapsed if elapsed else 0.0,
        "kdamond_cpu_s": kdamond_cpu,
        "kdamond_cpu_seen_at_s": round(last_running.t - s0.t, 1),
        "node0_free_regained_bytes": (rec.free_kb(rec.last, 0) - least_free0) * 1024,
        "node1_free_given_bytes": (rec.free_kb(s0, 1) - rec.free_kb(rec.last, 1)) * 1024,
        "node0_least_free_pct": 100.0 * least_free0 / total0,
        "node0_free_after_run_pct": 100.0 * rec.free_kb(rec.last, 0) / total0,
        "kdamonds_left": rec.nr_kdamonds_after,
        "agent_rc": rec.run_rc,
        "status_query_cpu_s": rec.status_query_cpu_s,
        "status_cpu_in_run_s": rec.status_cpu_in_run_s,
        "agent_without_status_to_kdamond": (
            None if rec.status_cpu_in_run_s is None or not kdamond_cpu
            else round((cpu - rec.status_cpu_in_run_s) / kdamond_cpu, 4)),
    }


def agent_cpu_parts(rec: sc.Record) -> dict[str, Any]:
    """The agent's CPU seconds, from either kind of record: ``agent_cpu_s`` over ``elapsed_s``
    (the run; ``agent_sys_cpu_s`` of it in the kernel, where the record says),
    ``process_cpu_s`` (the whole process by the end), ``startup_cpu_s`` (to the end of the
    tiering job's first tick) and ``steady_cpu_s`` (the rest), ``ticks`` and ``tick_cpu_s``
    (the tiering job's own ticks; None where the record cannot say).

    Under the daemon (``before_fill`` with its CPU): the run is from the sample before the fill
    to the last sample that saw the daemon; the start is the daemon's CPU once the tiering job
    had ticked. Older records: ``tiering run``'s own summary (its run from ``run()``)."""
    summary = rec.summary
    start = rec.before_fill
    if start is not None and start.agent_cpu is not None:
        end = rec.last_running
        process = end.agent_cpu if end.agent_cpu is not None else start.agent_cpu
        startup = rec.daemon_startup_cpu_s
        kernel = (None if end.agent_sys_cpu is None or start.agent_sys_cpu is None
                  else round(end.agent_sys_cpu - start.agent_sys_cpu, 3))
        return {
            "elapsed_s": round(end.t - start.t, 3),
            "agent_cpu_s": round(process - start.agent_cpu, 3),
            "agent_sys_cpu_s": kernel,
            "process_cpu_s": process,
            "startup_cpu_s": startup,
            "steady_cpu_s": None if startup is None else round(process - startup, 3),
            "ticks": summary.get("ticks"),
            "tick_cpu_s": summary.get("tick_cpu_s"),
        }
    return {
        "elapsed_s": float(summary.get("elapsed_s", 0.0)),
        "agent_cpu_s": float(summary.get("agent_cpu_s", 0.0)),
        "process_cpu_s": summary.get("process_cpu_s"),
        "startup_cpu_s": summary.get("startup_cpu_s"),
        "steady_cpu_s": summary.get("steady_cpu_s"),
        "ticks": summary.get("ticks"),
        "tick_cpu_s": None,
        "agent_sys_cpu_s": None,
    }


def cpu_split(parts: dict[str, Any], kdamond_cpu: float) -> dict[str, Any]:
    """The agent's CPU (:func:`agent_cpu_parts`) against the kdamonds': over the run, start-up
    and steady state apart, and the tiering job's own ticks. None where the record cannot say
    (an agent from before the split, or no kdamond CPU seen)."""

    def ratio(value: float | None) -> float | None:
        return None if value is None or kdamond_cpu <= 0 else value / kdamond_cpu

    startup = parts.get("startup_cpu_s")
    steady = parts.get("steady_cpu_s")
    ticks = parts.get("ticks")
    tick_cpu = parts.get("tick_cpu_s")
    return {
        "agent_to_kdamond": ratio(parts["agent_cpu_s"]),
        "agent_process_cpu_s": parts.get("process_cpu_s"),
        "agent_startup_cpu_s": startup,
        "agent_steady_cpu_s": steady,
        "agent_ticks": ticks,
        "agent_steady_cpu_per_tick_s": steady / (ticks - 1) if steady and ticks and ticks > 1
        else None,
        "startup_to_kdamond": ratio(startup),
        "steady_to_kdamond": ratio(steady),
        "agent_tick_cpu_s": tick_cpu,
        "ticks_to_kdamond": ratio(tick_cpu),
        "agent_sys_cpu_s": parts.get("agent_sys_cpu_s"),
    }


def split_lines(n: dict[str, Any]) -> list[str]:
    """The report's lines on the agent's CPU against the kdamonds'."""
    if n["agent_to_kdamond"] is None:
        return ["agent / kdamond CPU: no kdamond CPU seen"]
    lines = [f"agent / kdamond CPU over the run: {n['agent_to_kdamond']:.2f}x"]
    if n.get("agent_sys_cpu_s") is not None:
        lines[0] += f" (of the agent's, {n['agent_sys_cpu_s']:.2f} s in the kernel)"
    if n.get("status_cpu_in_run_s") is not None:
        lines.append(
            f"  of which answering status requests (the daemon's own count): "
            f"{n['status_cpu_in_run_s']:.2f} s; without them "
            f"{n['agent_without_status_to_kdamond']:.2f}x kdamond")
    elif n.get("status_query_cpu_s") is not None:
        lines.append(f"  the daemon's CPU while one `tiering status` ran (its ticks included): "
                     f"{n['status_query_cpu_s']:.2f} s")
    if n["agent_startup_cpu_s"] is None or n["agent_steady_cpu_s"] is None:
        return [*lines, "  start-up / steady state: not in this record (the agent's summary has "
                        "no startup_cpu_s: an agent from before issue 18's split)"]
    per_tick = n["agent_steady_cpu_per_tick_s"]
    lines.append(
        f"  whole process {n['agent_process_cpu_s']:.2f} s = start-up (to the end of the first "
        f"tick) {n['agent_startup_cpu_s']:.2f} s ({n['startup_to_kdamond']:.2f}x kdamond) + "
        f"steady state {n['agent_steady_cpu_s']:.2f} s ({n['steady_to_kdamond']:.2f}x kdamond) "
        f"over {n['agent_ticks']} ticks"
        + (f", {1000 * per_tick:.1f} ms per later tick" if per_tick is not None else ""))
    if n["agent_tick_cpu_s"] is not None:
        lines.append(f"  the tiering job's own ticks: {n['agent_tick_cpu_s']:.2f} s "
                     f"({n['ticks_to_kdamond']:.2f}x kdamond)")
    return lines


def report(n: dict[str, Any]) -> str:
    def mib(b: float) -> str:
        return f"{b / MIB:.1f} MiB"

    lines = [
        f"guest kernel {n['kernel']}, cold buffer {n['fill_mib']} MiB on node 0 "
        f"(written in {n['fill_seconds']} s)",
        f"agent ran {n['agent_elapsed_s']:.0f} s: DAMON applied {mib(n['bytes_moved'])} "
        f"(tried {mib(n['bytes_tried'])})",
        f"  moved per second over the run: {mib(n['moved_per_s_over_run'])}/s",
        f"  while the buffer was moving ({n['moving_window_s']} s): "
        f"{mib(n['moved_per_s_while_moving'])}/s, fastest poll interval "
        f"{mib(n['peak_moved_per_s'])}/s",
        f"  cold buffer moved to node 1: {mib(n['buffer_moved_bytes'])}, left on node 0: "
        f"{mib(n['buffer_left_on_node0_bytes'])}",
        f"agent CPU (user+sys): {n['agent_cpu_s']:.2f} s = {100 * n['agent_cpu_share']:.1f} % "
        "of one vCPU"
        + (
            f", {n['agent_cpu_per_gib_moved_s']:.1f} s per GiB moved"
            if n["agent_cpu_per_gib_moved_s"] is not None
            else ""
        ),
        f"kernel CPU in kdamond threads (DAMON sampling + migration): {n['kdamond_cpu_s']:.2f} s",
        *split_lines(n),
        *(["  (the daemon ran under cProfile: its CPU includes the profiler's, a breakdown, "
           "not a measurement)"] if n.get("profiled") else []),
        f"node 0 free: {n['node0_least_free_pct']:.1f} % at its least -> "
        f"{n['node0_free_after_run_pct']:.1f} % after the run (regained "
        f"{mib(n['node0_free_regained_bytes'])}); node 1 gave {mib(n['node1_free_given_bytes'])}",
        f"after SIGTERM: `{n['agent_command']}` (interval {n['interval_s']:g} s) exit "
        f"{n['agent_rc']}, kdamonds left "
        f"{n['kdamonds_left']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-run-s", type=float, default=420.0,
                        help="stop the agent after this long at the latest (default %(default)s)")
    parser.add_argument("--interval", type=float, default=sc.INTERVAL_S,
                        help="the daemon's [tiering] interval_seconds (default %(default)s, the "
                        "e2e test's; the agent's own default is 10)")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="run the daemon under cProfile and keep the statistics' text in "
                        "the run directory (<guest>-profile.txt): wall-clock times (a CPU "
                        "clock is a system call per look, which under TCG costs more than "
                        "what it would time), so a DAMON write's wait for its kdamond counts; "
                        "its CPU figures then include the profiler's cost")
    parser.add_argument("--record", type=Path,
                        help="no bed: the figures of a record a scenario run left (…-tiering.json)")
    args = parser.parse_args(argv)
    if not 1 <= args.interval <= 600:  # NaN too; the key's own range ([tiering] interval_seconds)
        parser.error(f"--interval {args.interval}: seconds between the job's ticks, 1 to 600")
    if args.record:
        try:
            record = sc.Record.load(args.record)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"tiering_testbed: --record {args.record}: not a scenario record "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        n = numbers(record)
        print(report(n))
        if args.json_out:
            args.json_out.write_text(json.dumps(n, indent=1, sort_keys=True) + "\n")
        return 0
    try:
        with XenBed(BedConfig(run_name="bench-tiering")) as bed, bed.guest(sc.spec()) as g:
            keys = {**sc.TIERING_KEYS, "interval_seconds": args.interval}
            rec = sc.run_scenario(g, bed.run_dir, max_run_s=args.max_run_s, keys=keys,
                                  profile=args.profile)
            run_dir = bed.run_dir
    except BedError as e:
        print(f"tiering_testbed: the bed failed: {e}", file=sys.stderr)
        return 3
    n = numbers(rec)
    print(report(n))
    print(f"record: {run_dir}")
    if args.json_out:
        args.json_out.write_text(json.dumps(n, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
