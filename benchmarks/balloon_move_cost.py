"""What moving the balloon costs a program that never waits for memory, on the testbed.

    python -m benchmarks.balloon_move_cost [--type pv|hvm] [--rounds 4] [--seconds 20] \
        [--low-mib 512]
    python3 benchmarks/balloon_move_cost.py guest [--seconds S] [--low-mib N] [--move]  # in a guest

The self-ballooning bench (``balloon_testbed.py``) sees workloads run longer under a policy that
gives memory back even when they never ran short (no stall, no swap, MemAvailable well above
zero), and their own CPU time rise with it. This measures that cost alone: a CPU-bound loop (no
allocation, a few KiB of memory) runs for ``--seconds`` in a guest (1 GiB, 2 vCPUs; PV, or HVM
with ``--type hvm``) while a
mover, a separate process, either only watches the driver (``idle``) or moves the balloon
between the ceiling and ``--low-mib`` and back, each move waited out (``move``), writing the
driver's ``target_kb`` itself (no agent). The two alternate, ``--rounds`` times each. It prints,
per condition, the loop's iterations per wall-clock second and per second of its own CPU time,
and the MiB the driver moved per second; then the ratios, move over idle.

No agent runs: the figure is the price of the driver's and Xen's work under this bed's
emulation (TCG on a 2-core machine), which any policy that moves memory pays, whatever it
decides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

BALLOON = "/sys/devices/system/xen_memory/xen_memory0"
#: The mover's script, run as its own process: ``idle`` polls, ``move`` moves and polls.
MOVER = r"""
import sys, time
low_kb, full_kb, move, out, bal = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == 'move',
                                   sys.argv[4], sys.argv[5])
def current():
    with open(bal + '/info/current_kb') as f:
        return int(f.read().split()[0])
def write(kb):
    with open(bal + '/target_kb', 'w') as f:
        f.write(str(kb))
moved, last, want, written = 0, current(), low_kb, None
while True:
    try:
        open(out + '.stop').close()
        break
    except FileNotFoundError:
        pass
    if move and abs(last - want) < 4096:
        want = full_kb if want == low_kb else low_kb
    if move and want != written:
        write(want)
        written = want
    time.sleep(0.2)
    now = current()
    moved += abs(now - last)
    last = now
write(full_kb)
with open(out, 'w') as f:
    f.write(str(moved))
"""


def busy_loop(seconds: float) -> dict[str, float]:
    """Integer arithmetic for ``seconds`` of wall clock; iterations, wall and own CPU time."""
    n, x = 0, 1
    wall0, cpu0 = time.monotonic(), time.process_time()
    end = wall0 + seconds
    while True:
        for _ in range(2000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        n += 2000
        if time.monotonic() >= end:
            break
    return {"iterations": float(n), "wall_s": time.monotonic() - wall0,
            "cpu_s": time.process_time() - cpu0}


def guest_main(args: argparse.Namespace) -> int:
    """In the guest: one condition, one JSON line."""
    with open(f"{args.balloon_dir}/target_kb") as f:
        full_kb = int(f.read().split()[0])
    out = os.path.join(args.tmp_dir, f"move-cost-{os.getpid()}")
    mover = subprocess.Popen([sys.executable, "-c", MOVER, str(args.low_mib * 1024),
                              str(full_kb), "move" if args.move else "idle", out,
                              args.balloon_dir])
    try:
        time.sleep(1.0)
        loop = busy_loop(args.seconds)
    finally:
        open(out + ".stop", "w").close()
        mover.wait(timeout=600)
    with open(out) as f:
        moved_kb = int(f.read())
    os.unlink(out)
    os.unlink(out + ".stop")
    print(json.dumps({**loop, "moved_mib": moved_kb / 1024, "move": args.move}))
    return 0


def summary(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    per: dict[bool, dict[str, list[float]]] = {}
    for r in runs:
        d = per.setdefault(bool(r["move"]), {"wall": [], "cpu": [], "mib_s": []})
        d["wall"].append(r["iterations"] / r["wall_s"])
        d["cpu"].append(r["iterations"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0)
        d["mib_s"].append(r["moved_mib"] / r["wall_s"])
    for move, d in sorted(per.items()):
        lines.append(
            f"{'move' if move else 'idle'}: {statistics.median(d['wall']) / 1e6:.3f} M it/s wall "
            f"(runs {', '.join(f'{v / 1e6:.3f}' for v in d['wall'])}), "
            f"{statistics.median(d['cpu']) / 1e6:.3f} M it per CPU s, the driver moved "
            f"{statistics.median(d['mib_s']):.1f} MiB/s")
    if True in per and False in per:
        m, i = per[True], per[False]
        wall = statistics.median(m["wall"]) / statistics.median(i["wall"])
        cpu = statistics.median(m["cpu"]) / statistics.median(i["cpu"])
        lines.append(f"move / idle: loop speed x{wall:.3f} by the wall clock, x{cpu:.3f} per "
                     f"second of its own CPU time (1.0: the moves cost the loop nothing)")
    return lines


def bed_main(args: argparse.Namespace) -> int:
    from tests.e2e.bed import BedConfig, GuestSpec, XenBed

    runs: list[dict[str, Any]] = []
    spec = (GuestSpec.hvm if args.type == "hvm" else GuestSpec.pv)(memory=1024, vcpus=2,
                                                                     name="move")
    with XenBed(BedConfig(run_name="balloon-move")) as bed, bed.guest(spec) as g:
        src = "/usr/src/guestagent/benchmarks/balloon_move_cost.py"
        for i in range(args.rounds):
            for move in (False, True) if i % 2 == 0 else (True, False):
                out = g.run_ok(
                    f"python3 {src} guest --seconds {args.seconds} --low-mib {args.low_mib}"
                    + (" --move" if move else ""), timeout=args.seconds * 10 + 300)
                runs.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
        (bed.run_dir / "balloon-move.json").write_text(json.dumps(runs, indent=1))
        print(f"balloon moves against a CPU-bound loop, {args.type.upper()} guest 1 GiB, 2 vCPUs, "
              f"{args.rounds} rounds of {args.seconds} s each; run {bed.run_dir.name}")
    for line in summary(runs):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.balloon_move_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("where", nargs="?", choices=("bed", "guest"), default="bed")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--low-mib", type=int, default=512)
    p.add_argument("--type", choices=("pv", "hvm"), default="pv", help="(bed) the guest's type")
    p.add_argument("--move", action="store_true", help="(guest) move the balloon meanwhile")
    p.add_argument("--balloon-dir", default=BALLOON, help=argparse.SUPPRESS)
    p.add_argument("--tmp-dir", default="/tmp", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1 or args.seconds <= 0 or args.low_mib < 256:
        p.error("--rounds >= 1, --seconds > 0, --low-mib >= 256")
    return guest_main(args) if args.where == "guest" else bed_main(args)


if __name__ == "__main__":
    sys.exit(main())
