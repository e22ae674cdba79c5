"""The balloon job's own CPU at a decision a second, against a baseline commit in the same run.

    python -m benchmarks.balloon_tick host --baseline REV [--rounds 3] [--ticks 300]
    python -m benchmarks.balloon_tick guest --baseline REV [--rounds 3] [--seconds 75]

* **host**: the controller's tick (``BalloonController.tick``, read -> step -> apply, as the
  job's timer runs it) with ``pressure`` on ``tests/fixtures/balloon-pv-1g``, a copy per run, a
  clock a second apart per tick. CPU time per tick (``time.process_time``), the least and the
  median of seven blocks of ``--ticks``. The baseline's tree (``git archive REV``) and this one
  run in turn in fresh interpreters, ``--rounds`` times each.
* **guest**: ``guestagent run`` (the daemon; ``[balloon] enabled``, ``pressure``, its own 1 s
  cadence) in an idle PV guest (1 GiB, 2 vCPUs) on the real-Xen testbed, its CPU from
  ``/proc/PID/stat`` over ``--seconds`` after a 15 s start. The baseline runs in the same guest:
  the installed package copied to ``/tmp/baseline`` with the baseline's version of each
  ``guestagent/**.py`` that differs put over it, run with ``PYTHONPATH``; the two alternate,
  ``--rounds`` times each. About 8 minutes at the defaults, one bed.

Both print the medians and their ratio (this tree over the baseline). What neither sees: a
workload's own pressure (the job decides more often under pressure; an idle guest holds), and
the C extension (the guest mode keeps the installed one for both).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURE = "tests/fixtures/balloon-pv-1g"
PKG = "/usr/local/lib/python3.11/dist-packages/guestagent"
CONF = '[balloon]\nenabled = true\npolicy = "pressure"\n'

#: Run in a fresh interpreter with the tree under test first on ``sys.path``: prints one JSON
#: line, the least and the median CPU microseconds per tick.
TICK_LOOP = """
import json, shutil, sys, tempfile, time
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.policy import PressureConfig
from guestagent.balloon.signals import DirectoryXenstore
from guestagent.hostfs import HostFS
fixture, ticks = sys.argv[1], int(sys.argv[2])
root = tempfile.mkdtemp() + "/root"
shutil.copytree(fixture, root)
fs = HostFS(root)
now = [0.0]
ctl = BalloonController(fs, DirectoryXenstore(fs, "/xenstore"), PressureConfig(),
                        clock=lambda: now[0])
ctl.start()
def run(n):
    for _ in range(n):
        now[0] += 1.0
        ctl.tick()
run(5)
blocks = []
for _ in range(7):
    t = time.process_time()
    run(ticks)
    blocks.append((time.process_time() - t) / ticks * 1e6)
blocks.sort()
print(json.dumps({"min_us": blocks[0], "median_us": blocks[3]}))
shutil.rmtree(root, ignore_errors=True)
"""


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True,
                          capture_output=True).stdout


def baseline_tree(rev: str, dest: Path) -> Path:
    """The baseline's ``guestagent`` package (Python only) unpacked under ``dest``."""
    archive = git("archive", rev, "guestagent")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def tick_once(tree: Path, ticks: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", TICK_LOOP, str(REPO / FIXTURE), str(ticks)],
                         env=env, check=True, capture_output=True, text=True, cwd=str(tree))
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ratio_line(label: str, this: list[float], base: list[float], unit: str) -> str:
    a, b = statistics.median(this), statistics.median(base)
    return (f"{label}: this tree {a:.2f} {unit} (runs {', '.join(f'{v:.2f}' for v in this)}), "
            f"baseline {b:.2f} {unit} (runs {', '.join(f'{v:.2f}' for v in base)}): "
            f"ratio {a / b:.2f}x")


def host(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="balloon-tick-"))
    try:
        base = baseline_tree(args.baseline, tmp)
        got: dict[str, list[float]] = {"this": [], "baseline": []}
        for _ in range(args.rounds):
            for name, tree in (("baseline", base), ("this", REPO)):
                got[name].append(tick_once(tree, args.ticks)["min_us"])
        print(ratio_line("CPU per tick on the fixture", got["this"], got["baseline"], "us"))
        return got
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def changed_files(rev: str) -> list[str]:
    """The ``guestagent`` Python files that differ between ``rev`` and the working tree."""
    out = git("diff", "--name-only", rev, "--", "guestagent").decode()
    return [f for f in out.split() if f.endswith(".py")]


def push(guest: Any, path: str, data: bytes) -> None:
    """A file into the guest over its console, in base64 pieces."""
    b64 = base64.b64encode(data).decode()
    guest.run_ok(f"mkdir -p {os.path.dirname(path)}; : > {path}.b64")
    for i in range(0, len(b64), 3000):
        guest.run_ok(f"printf '%s' '{b64[i:i + 3000]}' >> {path}.b64")
    guest.run_ok(f"base64 -d {path}.b64 > {path} && rm {path}.b64")


def cpu_seconds(guest: Any, pid: str) -> float:
    lines = guest.run_ok(f"cut -d' ' -f14,15 /proc/{pid}/stat; getconf CLK_TCK").split("\n")
    utime, stime = lines[0].split()
    return (int(utime) + int(stime)) / int(lines[1])


def agent_cpu_pct(guest: Any, pythonpath: str, seconds: float) -> float:
    env = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    guest.run_ok(f"rm -rf /run/guestagent; {env}setsid python3 -m guestagent run "
                 "--config /tmp/bt/g.toml --conf-dir /tmp/bt/conf.d > /tmp/bt/agent.log 2>&1 "
                 "< /dev/null & echo $! > /tmp/bt/pid")
    time.sleep(15)
    pid = guest.run_ok("cat /tmp/bt/pid").strip()
    c0, t0 = cpu_seconds(guest, pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(guest, pid), time.monotonic()
    guest.run_ok(f"kill -TERM {pid}; for i in $(seq 60); do kill -0 {pid} 2>/dev/null || break; "
                 "sleep 1; done", timeout=120)
    return 100 * (c1 - c0) / (t1 - t0)


def guest(args: argparse.Namespace) -> dict[str, Any]:
    from tests.e2e.bed import BedConfig, GuestSpec, XenBed

    files = changed_files(args.baseline)
    got: dict[str, list[float]] = {"this": [], "baseline": []}
    with XenBed(BedConfig(run_name="balloon-tick")) as bed, \
            bed.guest(GuestSpec.pv(memory=1024, vcpus=2, name="tick")) as g:
        g.run_ok(f"mkdir -p /tmp/bt/conf.d /tmp/baseline; printf '%s' '{CONF}' > /tmp/bt/g.toml; "
                 f"cp -a {PKG} /tmp/baseline/; "
                 "find /tmp/baseline -name __pycache__ -prune -exec rm -rf {} +")
        for f in files:
            try:
                data = git("show", f"{args.baseline}:{f}")
            except subprocess.CalledProcessError:  # new since the baseline
                g.run_ok(f"rm -f /tmp/baseline/{f}")
                continue
            push(g, f"/tmp/baseline/{f}", data)
        print(f"baseline {args.baseline}: {len(files)} files put over the installed package",
              flush=True)
        for _ in range(args.rounds):
            for name, path in (("baseline", "/tmp/baseline"), ("this", "")):
                got[name].append(agent_cpu_pct(g, path, args.seconds))
                print(f"{name}: {got[name][-1]:.2f} % of a vCPU", flush=True)
        print(f"run dir {bed.run_dir}")
    print(ratio_line("the agent's CPU, idle guest, a decision a second", got["this"],
                     got["baseline"], "% of a vCPU"))
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.balloon_tick", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("where", choices=("host", "guest"))
    parser.add_argument("--baseline", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=300, help="host: ticks per block")
    parser.add_argument("--seconds", type=float, default=75.0, help="guest: seconds measured")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.ticks < 1 or args.seconds <= 0:
        parser.error("--rounds, --ticks and --seconds must be positive")
    (host if args.where == "host" else guest)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
