"""The balloon policies measured on real Xen: one phased workload per policy in a 1 GiB PV guest.

    python -m benchmarks.balloon_testbed [--policies none,classic,pressure] [--repeat N]
        [--keep-traces DIR] [--json FILE] [workload options]

Boots the e2e testbed (Xen 4.17 in QEMU, ``tests/e2e``), creates one PV guest with 1 GiB and 2
vCPUs, then for each policy in turn:

1. puts the guest back at its ceiling (``guestagent balloon --reset``, waits until the driver holds
   it), drops the page cache and waits for PSI ``some`` avg10 to settle under 1 %;
2. starts, in Dom0, a sampler that appends every second Dom0's uptime, the guest's ``xl list`` line
   (its actual memory, MiB) and the workload's phase (a xenstore key the workload writes);
3. starts, in the guest, ``guestagent balloon run --policy P`` (the controller, with its PSI
   trigger), ``guestagent balloon record --interval 1`` (a trace of PSI, meminfo, vmstat: the
   guest-side measurements), and the workload ``benchmarks/balloon_workload.py`` (grow an anonymous
   working set, read files into the page cache, idle, spike, shrink);
4. waits for the workload to exit, stops the controller (SIGTERM: the target goes back to the
   ceiling) and the recorder, and collects the samples, the trace and the workload's summary.

Per policy it prints: memory held (the ``xl list`` memory integrated over the workload's run, from
its first phase to its exit, GiB x s), its ratio to ``classic``, the mean size, peak PSI ``some``
avg10, OOM kills (``/proc/vmstat oom_kill`` during the run), workingset refaults, the workload's
run time and its ratio to ``none``, and its busy time (the run without its deliberate sleeps) and
that ratio. The issue's target: ``pressure`` holds at most 0.75 of ``classic``'s memory, with no
OOM kill and a run time within 1.05 of ``none``.

Run times come from software emulation (TCG) on a shared 2-core machine: compare them within one
invocation only, and use ``--repeat`` to see their spread.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.bed import BedConfig, Guest, GuestSpec, XenBed
from tests.e2e.util import BedError, log

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("none", "classic", "pressure")
WORKLOAD = "/usr/src/guestagent/benchmarks/balloon_workload.py"
PHASE_KEY = "data/bench-phase"
BALLOON = "/sys/devices/system/xen_memory/xen_memory0"
#: Dom0's sampler: every second its uptime, the guest's ``xl list`` line and the phase key.
SAMPLER = """\
while [ ! -e /run/e2e/bench-stop ]; do
    u=$(cut -d' ' -f1 /proc/uptime)
    m=$(xl list {guest} 2>/dev/null | tail -n 1)
    p=$(xenstore-read {key} 2>/dev/null)
    echo "$u|$m|$p"
    sleep 1
done
"""
#: The longest a workload may run before the benchmark gives up on it (TCG is slow).
WORKLOAD_TIMEOUT_S = 1800.0


@dataclass
class Sample:
    """One line of the Dom0 sampler: Dom0 uptime (s), the guest's memory (MiB), the phase."""

    t: float
    mem_mib: int
    phase: str


@dataclass
class RunResult:
    policy: str
    repeat: int
    held_gib_s: float | None = None
    mean_mib: float | None = None
    min_mib: int | None = None
    max_mib: int | None = None
    window_s: float | None = None
    peak_some_avg10: float | None = None
    peak_full_avg10: float | None = None
    oom_kills: int | None = None
    refaults: int | None = None
    run_time_s: float | None = None
    busy_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None
    samples: int = 0
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Pure parsing and arithmetic (unit-tested in tests/test_balloon_testbed.py)


def parse_samples(text: str, guest: str) -> list[Sample]:
    """The sampler's ``uptime|xl list line|phase`` lines; lines without the guest are skipped."""
    out: list[Sample] = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3:
            continue
        cols = parts[1].split()
        if len(cols) < 3 or cols[0] != guest:
            continue
        try:
            out.append(Sample(float(parts[0]), int(cols[2]), parts[2].strip()))
        except ValueError:
            continue
    return out


def workload_window(samples: list[Sample]) -> tuple[int, int] | None:
    """Indices of the first sample in the workload's first phase and the first after its exit."""
    start = next((i for i, s in enumerate(samples) if s.phase == "grow"), None)
    if start is None:
        return None
    end = next(
        (i for i in range(start, len(samples))
         if samples[i].phase == "end" or samples[i].phase.startswith("exit")),
        None,
    )
    if end is None or end <= start:
        return None
    return start, end


def memory_held(samples: list[Sample], window: tuple[int, int]) -> tuple[float, float]:
    """(GiB x s, seconds) of the memory samples over the window, each held until the next."""
    start, end = window
    held = 0.0
    for i in range(start, end):
        dt = samples[i + 1].t - samples[i].t
        held += samples[i].mem_mib / 1024.0 * dt
    return held, samples[end].t - samples[start].t


def trace_stats(lines: list[str]) -> dict[str, Any]:
    """Peak PSI averages and counter deltas from a trace (JSON lines, header first).

    A recorder stopped by a signal may leave a cut last line: lines that do not parse are skipped.
    """
    snaps: list[dict[str, Any]] = []
    for line in lines[1:]:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "some_avg10" in obj:
            snaps.append(obj)
    if not snaps:
        return {}
    ooms = [s["oom_kill"] for s in snaps if s.get("oom_kill") is not None]
    return {
        "snapshots": len(snaps),
        "peak_some_avg10": max(float(s["some_avg10"]) for s in snaps),
        "peak_full_avg10": max(float(s["full_avg10"]) for s in snaps),
        "oom_kills": (ooms[-1] - ooms[0]) if ooms else None,
        "refaults": int(snaps[-1]["refaults"]) - int(snaps[0]["refaults"]),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(results: list[RunResult]) -> str:
    """The per-policy table; ratios against the same repeat's classic (memory) and none (time)."""
    by = {(r.repeat, r.policy): r for r in results}
    head = (
        f"{'policy':9} {'rep':>3} {'held GiB*s':>10} {'/classic':>8} {'mean MiB':>8} "
        f"{'min MiB':>7} {'some10%':>7} {'OOM':>3} {'refaults':>8} {'run s':>7} {'/none':>6} "
        f"{'busy s':>7} {'/none':>6}"
    )
    lines = [head]
    for r in results:
        classic = by.get((r.repeat, "classic"))
        none = by.get((r.repeat, "none"))
        lines.append(
            f"{r.policy:9} {r.repeat:3d} {fmt(r.held_gib_s, '10.1f')} "
            f"{fmt(ratio(r.held_gib_s, classic.held_gib_s if classic else None), '8.3f')} "
            f"{fmt(r.mean_mib, '8.0f')} {fmt(r.min_mib, '7d')} "
            f"{fmt(r.peak_some_avg10, '7.2f')} {fmt(r.oom_kills, '3d')} "
            f"{fmt(r.refaults, '8d')} {fmt(r.run_time_s, '7.1f')} "
            f"{fmt(ratio(r.run_time_s, none.run_time_s if none else None), '6.3f')} "
            f"{fmt(r.busy_s, '7.1f')} "
            f"{fmt(ratio(r.busy_s, none.busy_s if none else None), '6.3f')}"
            + (f"  ERRORS: {'; '.join(r.errors)}" if r.errors else "")
        )
    return "\n".join(lines)


def render_summary(results: list[RunResult]) -> str:
    """Medians over repeats per policy, and the issue's target checked on them."""
    lines = []
    med: dict[str, dict[str, float | None]] = {}
    for policy in POLICIES:
        rs = [r for r in results if r.policy == policy]
        if not rs:
            continue

        def median(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        med[policy] = {
            "held": median([r.held_gib_s for r in rs]),
            "run": median([r.run_time_s for r in rs]),
            "busy": median([r.busy_s for r in rs]),
            "some": median([r.peak_some_avg10 for r in rs]),
            "oom": float(sum(r.oom_kills or 0 for r in rs)),
        }
    if not med:
        return ""
    lines.append(f"medians over {max(r.repeat for r in results) + 1} repeat(s):")
    for policy, m in med.items():
        lines.append(
            f"  {policy:9} held {fmt(m['held'], '.1f')} GiB*s "
            f"(/classic {fmt(ratio(m['held'], med.get('classic', {}).get('held')), '.3f')}), "
            f"peak some avg10 {fmt(m['some'], '.2f')} %, OOM kills {int(m['oom'] or 0)}, "
            f"run {fmt(m['run'], '.1f')} s (/none "
            f"{fmt(ratio(m['run'], med.get('none', {}).get('run')), '.3f')}), busy "
            f"{fmt(m['busy'], '.1f')} s (/none "
            f"{fmt(ratio(m['busy'], med.get('none', {}).get('busy')), '.3f')})"
        )
    p, c, n = med.get("pressure"), med.get("classic"), med.get("none")
    if p and c and n:
        held = ratio(p["held"], c["held"])
        run = ratio(p["run"], n["run"])
        ok = held is not None and held <= 0.75 and p["oom"] == 0 and run is not None and run <= 1.05
        lines.append(
            f"target (pressure <= 0.75 x classic memory, 0 OOM kills, run <= 1.05 x none): "
            f"{'MET' if ok else 'NOT MET'} (memory {fmt(held, '.3f')}, OOM {int(p['oom'] or 0)},"
            f" run {fmt(run, '.3f')})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The testbed part


def guest_b64_file(g: Guest, path: str) -> bytes:
    """A guest file's bytes (gzip + base64 in the guest: the console carries text)."""
    out = g.run_ok(f"gzip -c {path} | base64", timeout=300)
    return gzip.decompress(base64.b64decode("".join(out.split())))


def wait_guest_settled(g: Guest, timeout: float = 120.0) -> None:
    """Until the driver holds its target and PSI some avg10 is under 1 %."""
    script = (
        f"t=$(cat {BALLOON}/target_kb); c=$(cat {BALLOON}/info/current_kb); "
        "a=$(sed -n 's/^some avg10=\\([0-9.]*\\).*/\\1/p' /proc/pressure/memory); "
        'echo "$t $c $a"'
    )
    deadline = time.monotonic() + timeout
    while True:
        target, current, avg10 = g.run_ok(script).split()
        if abs(int(target) - int(current)) <= 4096 and float(avg10) < 1.0:
            return
        if time.monotonic() > deadline:
            log(f"guest not settled after {timeout:.0f}s (target {target}, current {current}, "
                f"some avg10 {avg10}); going on")
            return
        time.sleep(3)


def workload_args(args: argparse.Namespace) -> str:
    return (
        f"--arena-mib {args.arena_mib} --anon-mib {args.anon_mib} --cache-mib {args.cache_mib} "
        f"--idle-s {args.idle_s} --spike-mib {args.spike_mib} "
        f"--spike-hold-s {args.spike_hold_s} --tail-s {args.tail_s}"
    )


def run_policy(
    bed: XenBed, g: Guest, policy: str, repeat: int, args: argparse.Namespace, out_dir: Path
) -> RunResult:
    res = RunResult(policy=policy, repeat=repeat)
    tag = f"{policy}-{repeat}"
    key = f"/local/domain/{g.domid}/{PHASE_KEY}"
    log(f"balloon bench: {tag}: resetting the guest")
    g.run_ok("guestagent balloon --reset >/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches")
    wait_guest_settled(g)
    samples_path = f"/run/e2e/bench-{tag}.samples"
    bed.dom0_ok(
        f"xenstore-write {key} ready; rm -f /run/e2e/bench-stop; "
        f"cat > /run/e2e/bench-sampler.sh <<'EOF'\n{SAMPLER.format(guest=g.name, key=key)}EOF\n"
        f"setsid sh /run/e2e/bench-sampler.sh > {samples_path} 2>&1 < /dev/null &"
    )
    log(f"balloon bench: {tag}: starting the controller, the recorder and the workload")
    g.run_ok(
        f"rm -f /tmp/wl.out /tmp/agent.log /tmp/trace.jsonl; "
        f"setsid guestagent --log-level info balloon run --policy {policy} > /tmp/agent.log "
        "2>&1 < /dev/null & "
        "echo $! > /tmp/agent.pid; "
        "setsid guestagent balloon record --out /tmp/trace.jsonl --interval 1 --duration 7200 "
        f"--note 'balloon_testbed {tag}: {workload_args(args)}' > /tmp/record.log 2>&1 "
        "< /dev/null & echo $! > /tmp/record.pid; "
        f"setsid sh -c 'python3 {WORKLOAD} {workload_args(args)} --xenstore-key {PHASE_KEY} "
        f"> /tmp/wl.out 2>&1; rc=$?; xenstore-write {PHASE_KEY} exit-$rc' < /dev/null "
        "> /dev/null 2>&1 &"
    )
    t0 = time.monotonic()
    phase = ""
    while True:
        time.sleep(10)
        phase = bed.dom0(f"xenstore-read {key}")[0].strip()
        if phase.startswith("exit"):
            break
        if time.monotonic() - t0 > WORKLOAD_TIMEOUT_S:
            res.errors.append(f"workload still in phase {phase!r} after {WORKLOAD_TIMEOUT_S}s")
            break
    res.exit_status = int(phase[5:]) if phase.startswith("exit-") else None
    log(f"balloon bench: {tag}: workload {phase} after {time.monotonic() - t0:.0f}s")
    g.run_ok(
        "kill -TERM $(cat /tmp/agent.pid) 2>/dev/null; kill -INT $(cat /tmp/record.pid); "
        "for i in $(seq 60); do kill -0 $(cat /tmp/agent.pid) 2>/dev/null || break; sleep 1; "
        "done; sleep 2",
        timeout=120,
    )
    bed.dom0_ok("touch /run/e2e/bench-stop; sleep 3")
    samples_text = bed.dom0_ok(f"cat {samples_path}")
    (out_dir / f"{tag}.samples").write_text(samples_text)
    wl = g.run_ok("cat /tmp/wl.out")
    (out_dir / f"{tag}.workload").write_text(wl)
    (out_dir / f"{tag}.agent.log").write_text(g.run_ok("cat /tmp/agent.log"))
    trace = guest_b64_file(g, "/tmp/trace.jsonl").decode("ascii", errors="replace")
    (out_dir / f"{tag}.trace.jsonl").write_text(trace)

    samples = parse_samples(samples_text, g.name)
    res.samples = len(samples)
    window = workload_window(samples)
    if window is None:
        res.errors.append("no workload window in the Dom0 samples")
    else:
        res.held_gib_s, res.window_s = memory_held(samples, window)
        mems = [s.mem_mib for s in samples[window[0] : window[1] + 1]]
        res.mean_mib = res.held_gib_s * 1024 / res.window_s if res.window_s else None
        res.min_mib, res.max_mib = min(mems), max(mems)
    stats = trace_stats(trace.splitlines())
    res.peak_some_avg10 = stats.get("peak_some_avg10")
    res.peak_full_avg10 = stats.get("peak_full_avg10")
    res.oom_kills = stats.get("oom_kills")
    res.refaults = stats.get("refaults")
    for line in wl.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("done"):
            res.run_time_s = float(obj["run_time_s"])
            res.busy_s = float(obj["busy_s"])
            res.phases = dict(obj["phases"])
    if res.exit_status != 0:
        res.errors.append(f"workload exit status {res.exit_status}")
    if res.run_time_s is None:
        res.errors.append("no workload summary (killed?)")
    return res


def git_describe() -> str:
    """The work tree's commit (and whether it had changes): what the guest image was built from."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=str(ROOT), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, check=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.decode().strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.balloon_testbed",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="comma-separated, run in this order (default none,classic,pressure)")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all policies")
    p.add_argument("--memory", type=int, default=1024, help="guest MiB")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="write every result as JSON")
    p.add_argument("--keep-traces", metavar="DIR",
                   help="copy each run's recorded trace here (<policy>-<repeat>.jsonl)")
    w = p.add_argument_group("workload (benchmarks/balloon_workload.py)")
    w.add_argument("--arena-mib", type=int, default=512)
    w.add_argument("--anon-mib", type=int, default=320)
    w.add_argument("--cache-mib", type=int, default=192)
    w.add_argument("--idle-s", type=float, default=45.0)
    w.add_argument("--spike-mib", type=int, default=192)
    w.add_argument("--spike-hold-s", type=float, default=10.0)
    w.add_argument("--tail-s", type=float, default=30.0)
    args = p.parse_args(argv)
    policies = [x for x in args.policies.split(",") if x]
    bad = [x for x in policies if x not in POLICIES]
    if bad or not policies:
        p.error(f"--policies: choose from {', '.join(POLICIES)}")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    args.policy_list = policies
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results: list[RunResult] = []
    with XenBed(BedConfig(run_name="balloon-bench")) as bed:
        out_dir = bed.run_dir / "balloon-bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = GuestSpec.pv(memory=args.memory, vcpus=args.vcpus, name="bal")
        with bed.guest(spec) as g:
            for repeat in range(args.repeat):
                for policy in args.policy_list:
                    try:
                        results.append(run_policy(bed, g, policy, repeat, args, out_dir))
                    except BedError as e:
                        results.append(RunResult(policy, repeat, errors=[f"bed: {e}"[:300]]))
                    log("balloon bench: " + json.dumps(asdict(results[-1]), sort_keys=True))
        if args.keep_traces:
            dest = Path(args.keep_traces)
            dest.mkdir(parents=True, exist_ok=True)
            for r in results:
                src = out_dir / f"{r.policy}-{r.repeat}.trace.jsonl"
                if src.exists():
                    shutil.copy2(src, dest / src.name)
        log(f"balloon bench: raw samples, traces and logs in {out_dir}")
        report = {
            "run_dir": str(bed.run_dir),
            "agent_commit": git_describe(),
            "workload": workload_args(args),
            "guest": {"memory_mib": args.memory, "vcpus": args.vcpus, "type": "pv"},
            "results": [asdict(r) for r in results],
        }
        (out_dir / "results.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"balloon policies on real Xen 4.17 (TCG), PV guest {args.memory} MiB, "
          f"{args.vcpus} vCPUs; workload: {workload_args(args)}")
    print(render_table(results))
    print(render_summary(results))
    return 0 if all(not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
