"""The tiering job's own CPU per tick, on the fixture DAMON tree (issue 18 item 1): no bed.

    python -m benchmarks.tiering_tick [--repo DIR] [--ticks 300] [--json]

``--repo``: the guestagent tree whose code runs (default this one), so two commits compare on
the same machine in the same session (``git archive C | tar -x -C DIR``, then ``--repo DIR``).

Two measurements, the fake kernel's own CPU (``tests/test_tiering_damon.FakeDamonKernel``,
Python writing files) left out of both:

* **phases**: the tiering job's tick (``TieringJob._tick``, as the daemon's timer runs it) on
  ``tests/fixtures/tiering-2node`` + ``damon-6.12``: the ramp (node 0 short, the rate grows by
  ``rate_step`` every tick, so each tick commits; the first tick, which creates the kdamonds, is
  in it), the steady rate (``max_rate`` reached: the plan does not change) and idle (no node
  short). CPU per tick, files read and sysfs writes per tick.
* **replay**: the shape of the e2e scenario (``tests/e2e/tiering_scenario.py``) at a 2 s
  interval (and, last, with the warm-up below, at the default 10 s) for 240 s of simulated
  time: node 0 short, DAMON moving up to 6 MiB/s while its quota allows, node 1's room
  capping the rate, a few pages coming back every 14 s; node 0 45 % free
  after about 70 s, idle after. The job's pacing (``TieringJob._pace``, else
  ``policy.next_interval``, where the tree has them) decides which 2 s steps tick; the kernel
  moves on every step under the last plan applied. Ticks, CPU, bytes moved, commits and
  ``update_schemes_stats`` writes, how long node 0 stays short (free under ``source_high_pct``),
  node 1's least margin above its ``target_min_pct`` watermark, and a digest of every moving
  decision (equal digests: the same plans, tick for tick). Then the same replay with a 6 s
  warm-up, in which the kernel moves a trickle (256 KiB per step), as DAMON does while its
  regions age: the ramp must not be slower for it (``warm-up``).

What it does not see: the kernel's side of each read (``/proc/vmstat`` and a node's ``meminfo``
cost 15-30 us of system time each on the development host; tmpfs files cost less), Python's
start-up and the imports (``python -X importtime``), and TCG: in the testbed's guest, Python
runs about 60 times slower than here.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MIB = 1 << 20
MEMINFO0 = "sys/devices/system/node/node0/meminfo"
MEMINFO1 = "sys/devices/system/node/node1/meminfo"


class FakeKernelClock:
    """The fake kernel's CPU time, to leave out of the agent's."""

    def __init__(self) -> None:
        self.spent = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        t = time.process_time()
        try:
            yield
        finally:
            self.spent += time.process_time() - t

    def wrap(self, write: Callable[[str, str], None]) -> Callable[[str, str], None]:
        def timed(path: str, value: str) -> None:
            with self.running():
                write(path, value)

        return timed


def load(repo: Path) -> dict[str, Any]:
    """The modules of ``repo``'s tree (first on sys.path; nothing of guestagent imported yet)."""
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    names = ("guestagent.config", "guestagent.daemon.loop", "guestagent.daemon.service",
             "guestagent.host", "guestagent.hostfs", "guestagent.tiering.damon",
             "guestagent.tiering.job", "guestagent.tiering.model", "guestagent.tiering.policy",
             "guestagent.tiering.runner", "tests.test_tiering_damon")
    return {n.rsplit(".", 1)[-1]: importlib.import_module(n) for n in names}


def phases(m: dict[str, Any], ticks: int) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp())
    root = m["test_tiering_damon"].make_tree(tmp)
    kernel = m["test_tiering_damon"].FakeDamonKernel(root, Path("tests/fixtures/damon-6.12"))
    fake = FakeKernelClock()
    write = fake.wrap(kernel.write)
    hostfs = m["hostfs"].HostFS(str(root))
    damon = ("damon", lambda h: m["damon"].DamonBackend(h, writer=write))
    host = m["host"].Host(hostfs, tiering_backends=[damon])
    loop = m["loop"].EventLoop()
    cfg = m["config"].defaults()
    cfg.values["agent"]["state_dir"] = str(tmp / "state")
    cfg.values["tiering"].update(source_high_pct=45.0, target_min_pct=45.0,
                                  interval_seconds=2.0)
    ctx = m["service"].JobContext(loop, hostfs, cfg, m["service"].XenstoreHub(loop, lambda: None),
                                  "guest", host=host)
    job = m["job"].TieringJob()
    job.start(ctx)

    def advance() -> None:
        with fake.running():
            for i in list(kernel.ran):
                kernel.advance(i, sz_applied=MIB, sz_tried=MIB, nr_applied=3, nr_tried=3)

    def phase(name: str, n: int) -> dict[str, Any]:
        opened: collections.Counter[str] = collections.Counter()
        real_open = builtins.open
        real_os_open = os.open

        def counting_open(file: Any, *a: Any, **k: Any) -> Any:
            if str(a[0] if a else k.get("mode", "r")).startswith("r"):  # not the fake's copies
                opened[str(file)] += 1
            return real_open(file, *a, **k)

        def counting_os_open(file: Any, flags: int, *a: Any, **k: Any) -> int:
            # HostFS.read_text reads through a descriptor since d7ce74e (hostfs.read_whole).
            if not flags & (os.O_WRONLY | os.O_RDWR):
                opened[str(file)] += 1
            return real_os_open(file, flags, *a, **k)

        first_write = len(kernel.writes)
        fake.spent = 0.0
        builtins.open = counting_open
        os.open = counting_os_open  # type: ignore[assignment]
        try:
            c0 = time.process_time()
            for _ in range(n):
                job._tick()
                advance()
            cpu = time.process_time() - c0 - fake.spent
        finally:
            builtins.open = real_open
            os.open = real_os_open
        agent_reads = sum(c for f, c in opened.items() if f.startswith(str(root)))
        return {"phase": name, "ticks": n, "ms_per_tick": round(1000 * cpu / n, 3),
                "reads_per_tick": round(agent_reads / n, 2),
                "writes_per_tick": round((len(kernel.writes) - first_write) / n, 2)}

    out = [phase("ramp", 30), phase("steady", ticks)]
    meminfo0 = root / MEMINFO0
    meminfo0.write_text(meminfo0.read_text().replace("61836 kB", "600000 kB"))  # 58 % free
    job._tick()
    out.append(phase("idle", ticks))
    job.stop()
    loop.close()
    return out


def replay(m: dict[str, Any], seconds: float = 240.0, warmup_s: float = 0.0,
           interval_s: float = 2.0) -> dict[str, Any]:
    """``warmup_s``: for that long after the start the kernel moves a trickle (256 KiB per 2 s
    step, less than ``min_rate``'s worth), as DAMON does while its regions age (the last bed run:
    node 0 at 5.0-5.1 % free for the first 6 s). ``interval_s``: the job's ``interval_seconds``
    (the kernel still moves in 2 s steps; a tick comes on the first step at or after it is due).
    """
    tmp = Path(tempfile.mkdtemp())
    root = m["test_tiering_damon"].make_tree(tmp)
    kernel = m["test_tiering_damon"].FakeDamonKernel(root, Path("tests/fixtures/damon-6.12"))
    fake = FakeKernelClock()
    hostfs = m["hostfs"].HostFS(str(root))
    now = [0.0]
    config = m["model"].TieringConfig(source_high_pct=45.0, target_min_pct=45.0,
                                      interval_s=interval_s)
    backend = m["damon"].DamonBackend(hostfs, writer=fake.wrap(kernel.write))
    runner = m["runner"].Runner(hostfs, backend, config, clock=lambda: now[0])
    text0, text1 = (root / MEMINFO0).read_text(), (root / MEMINFO1).read_text()
    total0, total1 = (int(re.search(r"MemTotal:\s+(\d+)", t)[1])  # type: ignore[index]
                      for t in (text0, text1))
    vmstat = root / "proc/vmstat"
    free0, free1, migrated = 61836, 900000, 5120  # kB, kB, pages
    cpu, ticks, due, step = 0.0, 0, 0.0, 0
    short_s, short_run_s, worst_short_s = 0.0, 0.0, 0.0
    target_margin_kib = free1 - total1 * config.target_min_pct / 100
    moving: list[Any] = []
    moves: list[tuple[int, int, int]] = []
    while 2.0 * step < seconds:
        now[0] = 2.0 * step
        step += 1
        with fake.running():
            if step % 7 == 4:
                migrated += 64  # a few pages come back
            (root / MEMINFO0).write_text(text0.replace("61836 kB", f"{free0} kB"))
            (root / MEMINFO1).write_text(
                re.sub(r"(Node 1 MemFree:\s+)\d+", rf"\g<1>{free1}", text1))
            vmstat.write_text(re.sub(r"numa_pages_migrated \d+", f"numa_pages_migrated {migrated}",
                                     vmstat.read_text()))
        if now[0] >= due:
            c0, f0 = time.process_time(), fake.spent
            decision = runner.tick()
            cpu += time.process_time() - c0 - (fake.spent - f0)
            ticks += 1
            due = now[0] + pace_of(m, runner)
            moves = [] if decision is None else [(x.source, x.target, x.rate)
                                                 for x in decision.plan.moves]
            if moves:
                moving.append([now[0], moves])
        with fake.running():  # the kernel moves min(quota, 6 MiB/s) for the next 2 s
            if moves and kernel.kdamond_states()[0] == "on":
                kib = min(min(moves[0][2], 6 * MIB) * 2 // 1024, max(0, free1 - 1000))
                kib = min(kib, 256) if now[0] < warmup_s else kib
                kernel.advance(0, sz_applied=kib * 1024, sz_tried=kib * 1536, nr_applied=1,
                               nr_tried=2)
                free0, free1 = free0 + kib, free1 - kib
        short = free0 < total0 * config.source_high_pct / 100  # node 0 still short
        short_s += 2.0 if short else 0.0
        short_run_s = short_run_s + 2.0 if short else 0.0
        worst_short_s = max(worst_short_s, short_run_s)
        target_margin_kib = min(target_margin_kib, free1 - total1 * config.target_min_pct / 100)
    backend.stop()
    stats = backend.stats()
    return {
        "seconds": seconds, "interval_s": interval_s, "ticks": ticks, "moving_ticks": len(moving),
        "cpu_ms": round(1000 * cpu, 2), "bytes_moved": stats.moved_by_source.get(0, 0),
        "update_schemes_stats": sum(1 for _, v in kernel.writes if v == "update_schemes_stats"),
        "commits": sum(1 for _, v in kernel.writes if v == "commit"),
        "short_s": short_s, "worst_short_s": worst_short_s,
        "target_margin_mib": round(target_margin_kib / 1024, 1),
        "moving_decisions_sha1": hashlib.sha1(json.dumps(moving).encode()).hexdigest()[:12],
    }


def pace_of(m: dict[str, Any], runner: Any) -> float:
    """Seconds to the next tick as the tree's job decides it (``interval_s`` where it has no
    pacing; idle pacing only where it has no steady pacing)."""
    job_pace = getattr(m["job"].TieringJob, "_pace", None)
    if job_pace is not None:
        return float(job_pace(runner))
    pace = getattr(m["policy"], "next_interval", None)
    return float(pace(runner.config, runner.idle_ticks)) if pace else runner.config.interval_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the guestagent tree to measure (default: this one)")
    parser.add_argument("--ticks", type=int, default=300, help="ticks per steady/idle phase")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    modules = load(args.repo.resolve())
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # the agent's log lines
        measured = phases(modules, args.ticks)
        r = replay(modules)
        warm = replay(modules, warmup_s=6.0)
        default = replay(modules, warmup_s=6.0, interval_s=10.0)
    if args.json:
        print(json.dumps({"repo": str(args.repo), "phases": measured, "replay": r,
                          "replay_warmup": warm, "replay_10s": default},
                         sort_keys=True))
        return 0
    for p in measured:
        print(f"{p['phase']:<7} {p['ms_per_tick']:6.3f} ms CPU per tick, {p['reads_per_tick']:5.2f}"
              f" files read, {p['writes_per_tick']:4.2f} sysfs writes ({p['ticks']} ticks)")
    for name, x in (("replay", r), ("warm-up", warm), ("at 10 s", default)):
        print(f"{name:<7} {x['seconds']:.0f} s, a tick per {x['interval_s']:g} s: "
              f"{x['ticks']} ticks ({x['moving_ticks']} moving), "
              f"{x['cpu_ms']:.1f} ms CPU, {x['bytes_moved'] / MIB:.1f} MiB moved, "
              f"{x['update_schemes_stats']} update_schemes_stats, {x['commits']} commits, "
              f"node 0 short {x['short_s']:.0f} s (longest {x['worst_short_s']:.0f} s), node 1 "
              f"{x['target_margin_mib']:.1f} MiB above its watermark at least, "
              f"decisions {x['moving_decisions_sha1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
