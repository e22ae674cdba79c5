"""The balloon policies measured on real Xen: the workload suite under ``guestagent run``.

    python -m benchmarks.balloon_testbed [--workloads tuned|held-out|all|W1,W2,...]
        [--policies none,classic,pressure] [--repeat N] [--json FILE] [--keep-traces DIR]
        [--memory MIB] [--vcpus N] [--type pv|hvm] [--settle-seconds S]

Boots the e2e testbed (Xen 4.17 in QEMU, ``tests/e2e``), creates ONE guest (by default PV, 1 GiB,
2 vCPUs; ``--type hvm`` an HVM guest of the same image; no swap, ``vm.overcommit_memory`` as
Debian leaves it: 0), and for each repeat, each workload
(``benchmarks/balloon_workload.py``) and each policy in turn:

1. puts the guest back at its ceiling (``guestagent balloon --reset``, waits until the driver
   holds it), drops the page cache, clears the kernel log (``dmesg -c``) and waits for PSI
   ``some`` avg10 to settle under 1 %;
2. starts, in Dom0, a sampler that appends every second Dom0's uptime, the guest's ``xl list``
   line (its actual memory, MiB) and the workload's phase (a xenstore key the workload writes);
3. starts, in the guest, the agent the way systemd starts it: ``guestagent run --config FILE``
   (the daemon with every default job, and ``[balloon] enabled = true, policy = P`` in FILE),
   under ``benchmarks/balloon_monitor.py``, which stamps every line the agent writes, arms its own
   PSI trigger (the pressure policy's ``some 150000 1000000``), samples the driver's target and
   size every 0.2 s and records a trace (``guestagent balloon record``: PSI, meminfo, vmstat
   every second); once the agent says ``started`` (with ``--settle-seconds S``, after S more
   seconds of idle, every policy alike: the workload then meets a guest the agent has already
   sized, as it would under a daemon that runs from boot), the workload;
4. waits for the workload to exit, stops the monitor (the agent gets SIGTERM: the target goes
   back to the ceiling), and collects the samples, the events, the trace, the workload's output
   and the kernel log.

Per workload and policy it reports:

* memory held: the ``xl list`` memory integrated over the workload's run (first phase to exit),
  GiB x s, and its mean in MiB; ratios to ``classic`` (same workload, same repeat) and to the
  no-headroom perfect controller (``balloon_bound.py``: integrated over the ``none`` run of the
  same workload and repeat, with the mean over its own window);
* run time (the workload's own) and its ratio to ``none``;
* failures, each counted: OOM kills (``oom_kill`` in ``/proc/vmstat`` over the run, and "Out of
  memory: Killed process" lines in the kernel log), failed allocations (the workload's own report:
  ENOMEM from ``mmap`` or ``malloc``, failed forks, children killed or failed; "page allocation
  failure" lines in the kernel log), and a workload that did not finish (killed, timed out, no
  summary) is a failure shown as such (``FAIL``), whatever its memory;
* per spike (a phase the workload marks ``"spike": true``): seconds from the phase line to the
  monitor's first PSI trigger, to the target raised (the agent's first written ``grow`` decision
  or the first sampled rise of ``target_kb``, whichever is first) and to the memory populated
  (the driver's size reaching that raised target), and the target raised after the trigger;
* with ``--repeat N``, the median of each figure and its spread (min-max).

The result file (``<run>/balloon-bench/results.json``, and ``--json FILE``) holds every run and
the summary. Run times come from software emulation (TCG) on a shared 2-core machine: compare
them within one invocation only, and use ``--repeat`` to see their spread.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.balloon_workload import HELD_OUT, TUNED, WORKLOADS

ROOT = Path(__file__).resolve().parents[1]

POLICIES = ("none", "classic", "pressure")
#: Variants of a policy, each under its own name in the results: the policy and the ``[balloon]``
#: keys set for it (a closed-loop trial of one constant; the default stays ``pressure``).
VARIANTS: dict[str, tuple[str, dict[str, int]]] = {
    "pressure-r32": ("pressure", {"reserve_mb": 32}),
    # The default before 2026-12-07 (32 since): what the smaller reserve saves, in the same run.
    "pressure-r64": ("pressure", {"reserve_mb": 64}),
    # The least reserve the key allows: spikes outrun the headroom, so the PSI trigger fires and
    # the answer to it (target raised after the trigger) is measured, which the default's
    # headroom leaves unmeasured when every spike is met before any stall.
    "pressure-r16": ("pressure", {"reserve_mb": 16}),
    # A probe may follow at every decision (the default: at most one per 5 s).
    "pressure-probe0": ("pressure", {"probe_interval_seconds": 0}),
    "pressure-1s": ("pressure", {"interval_seconds": 1}),
    "pressure-5s": ("pressure", {"interval_seconds": 5}),
}

#: Where the image keeps the work tree's tracked files (tests/e2e/rootfs.py).
SRC = "/usr/src/guestagent/benchmarks"
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
#: The longest a workload may run before the benchmark gives up on it (each takes < 3 min).
WORKLOAD_TIMEOUT_S = 600.0
#: Phases that end a workload's window in the Dom0 samples.
END_PHASES = ("end", "failed")
#: Kernel log lines that mean an allocation failed or the OOM killer acted.
PAGE_ALLOC_FAILURE = re.compile(r"^(?:\[[^\]]*\]\s*)?(\S+?): page allocation failure", re.M)
#: One line per OOM kill (also "Memory cgroup out of memory: Killed process").
OOM_LINE = re.compile(r"[Oo]ut of memory: Killed process")
LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass
class Sample:
    """One line of the Dom0 sampler: Dom0 uptime (s), the guest's memory (MiB), the phase."""

    t: float
    mem_mib: int
    phase: str


@dataclass
class PhaseMark:
    """One phase line of the workload."""

    t: float
    mono: float
    phase: str
    spike: bool = False
    cache: bool = False


@dataclass
class WorkloadReport:
    """The workload's output: its phase lines and its summary (None: it printed none)."""

    marks: list[PhaseMark] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list((self.summary or {}).get("failures") or [])


@dataclass
class Events:
    """What the guest's monitor saw, on CLOCK_MONOTONIC."""

    psi: list[float] = field(default_factory=list)
    #: (mono, target_kb, current_kb) whenever either changed.
    balloon: list[tuple[float, int, int]] = field(default_factory=list)
    #: (mono, the agent's balloon_decision line as a dict).
    decisions: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    agent_errors: list[str] = field(default_factory=list)
    agent_started: bool = False
    agent_exit: int | None = None
    trace_offset: float | None = None
    #: (mono, the agent's CPU seconds so far), about every second.
    agent_cpu: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class SpikeResponse:
    """How the balloon answered one spike phase (seconds after the phase line)."""

    phase: str
    psi_s: float | None = None
    raised_s: float | None = None
    raised_after_psi_s: float | None = None
    populated_s: float | None = None
    target_before_mib: int | None = None
    target_raised_mib: int | None = None
    note: str = ""


@dataclass
class KernelLog:
    page_alloc_failures: int = 0
    page_alloc_comms: list[str] = field(default_factory=list)
    oom_lines: int = 0


@dataclass
class RunResult:
    workload: str
    policy: str
    repeat: int
    held_gib_s: float | None = None
    mean_mib: float | None = None
    min_mib: int | None = None
    max_mib: int | None = None
    window_s: float | None = None
    #: The guest's memory (``xl list``, MiB) when the workload's first phase began.
    start_mib: int | None = None
    peak_some_avg10: float | None = None
    peak_full_avg10: float | None = None
    oom_kills: int | None = None
    refaults: int | None = None
    run_time_s: float | None = None
    busy_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None
    done: bool = False
    workload_failures: list[dict[str, Any]] = field(default_factory=list)
    kernel: KernelLog = field(default_factory=KernelLog)
    spikes: list[SpikeResponse] = field(default_factory=list)
    agent_exit: int | None = None
    agent_errors: list[str] = field(default_factory=list)
    bound_gib_s: float | None = None
    bound_mean_mib: float | None = None
    #: The agent's CPU over the workload's run, % of one CPU (None: not sampled).
    agent_cpu_pct: float | None = None
    samples: int = 0
    #: The benchmark's own problems (no samples, a bed error): the run did not measure.
    errors: list[str] = field(default_factory=list)
    #: Remarks that do not make the run a failure (no bound computed, ...).
    notes: list[str] = field(default_factory=list)


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
    """Indices of the first sample in the workload's first phase and the first after its end.

    The workload's first phase is the first phase that is not ``ready`` (the key's value before
    it starts); it ends at ``end``, ``failed`` or ``exit-N`` (the wrapper's, after a kill).
    """
    start = next((i for i, s in enumerate(samples) if s.phase not in ("", "ready")), None)
    if start is None:
        return None
    end = next(
        (i for i in range(start, len(samples))
         if samples[i].phase in END_PHASES or samples[i].phase.startswith("exit")),
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


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of ``text`` that are JSON objects (anything else, a cut line too, is skipped)."""
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def parse_workload(text: str) -> WorkloadReport:
    """The workload's phase lines and summary (``balloon_workload.py``'s output)."""
    report = WorkloadReport()
    for obj in json_lines(text):
        if obj.get("summary"):
            report.summary = obj
        elif "phase" in obj and "mono" in obj:
            report.marks.append(PhaseMark(float(obj["t"]), float(obj["mono"]), str(obj["phase"]),
                                          bool(obj.get("spike")), bool(obj.get("cache"))))
    return report


def parse_logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs of one logfmt line (values unquoted and unescaped)."""
    out = {}
    for key, value in LOGFMT_PAIR.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key] = value
    return out


def parse_events(text: str) -> Events:
    """The monitor's lines (``balloon_monitor.py``)."""
    ev = Events()
    for obj in json_lines(text):
        mono = float(obj.get("mono", 0.0))
        if "psi" in obj:
            ev.psi.append(mono)
        elif "target_kb" in obj:
            if obj["target_kb"] is not None and obj["current_kb"] is not None:
                ev.balloon.append((mono, int(obj["target_kb"]), int(obj["current_kb"])))
        elif "agent" in obj:
            parse_agent_line(ev, mono, str(obj["agent"]))
        elif "agent_exit" in obj:
            ev.agent_exit = int(obj["agent_exit"])
        elif "trace_offset" in obj:
            ev.trace_offset = float(obj["trace_offset"])
        elif "agent_cpu_s" in obj:
            ev.agent_cpu.append((mono, float(obj["agent_cpu_s"])))
    return ev


def parse_agent_line(ev: Events, mono: float, line: str) -> None:
    fields = parse_logfmt(line)
    event = fields.get("event", "")
    if event == "balloon_decision":
        ev.decisions.append((mono, fields))
    elif event == "started":
        ev.agent_started = True
    if fields.get("level") in ("error", "critical") or event == "job_off":
        ev.agent_errors.append(line)


def scan_kernel_log(text: str) -> KernelLog:
    """Allocation failures and OOM kills in the guest's kernel log over one run."""
    comms = PAGE_ALLOC_FAILURE.findall(text)
    return KernelLog(page_alloc_failures=len(comms), page_alloc_comms=sorted(set(comms)),
                     oom_lines=len(OOM_LINE.findall(text)))


def target_at(ev: Events, mono: float) -> int | None:
    """The driver's target (KiB) at ``mono``: the last sample at or before it."""
    before = [b for b in ev.balloon if b[0] <= mono]
    return before[-1][1] if before else (ev.balloon[0][1] if ev.balloon else None)


def first_raise(ev: Events, start: float, end: float, base_kb: int) -> tuple[float, int] | None:
    """(mono, target KiB) of the first target above ``base_kb`` in ``[start, end)``: the agent's
    written decision line or the monitor's sample, whichever came first. A ``pace`` (an earlier
    shrink cut back to a slow driver's pace) raises the target without answering anything: its
    line and the samples of its target are not a raise."""
    found: list[tuple[float, int]] = []
    paced: set[int] = set()
    for mono, fields in ev.decisions:
        try:
            target = int(fields.get("target_kb", ""))
        except ValueError:
            continue
        if fields.get("action") == "pace":
            paced.add(target)
        elif (not found and start <= mono < end and fields.get("written") == "true"
              and target > base_kb):
            found.append((mono, target))
    for mono, target, _ in ev.balloon:
        if start <= mono < end and target > base_kb and target not in paced:
            found.append((mono, target))
            break
    return min(found) if found else None


def spike_responses(report: WorkloadReport, ev: Events, ceiling_kb: int) -> list[SpikeResponse]:
    """How the balloon answered each spike phase; a spike's window runs to the next phase."""
    out = []
    marks = report.marks
    for i, mark in enumerate(marks):
        if not mark.spike:
            continue
        end = marks[i + 1].mono if i + 1 < len(marks) else float("inf")
        out.append(spike_response(mark, end, ev, ceiling_kb))
    return out


def spike_response(mark: PhaseMark, end: float, ev: Events, ceiling_kb: int) -> SpikeResponse:
    res = SpikeResponse(mark.phase)
    psi = next((p for p in ev.psi if mark.mono <= p < end), None)
    if psi is not None:
        res.psi_s = round(psi - mark.mono, 3)
    base = target_at(ev, mark.mono)
    if base is None:
        res.note = "no balloon samples"
        return res
    res.target_before_mib = base // 1024
    if base >= ceiling_kb:
        res.note = "at the ceiling already"
        return res
    raised = first_raise(ev, mark.mono, end, base)
    if raised is None:
        res.note = "target not raised during the spike"
        return res
    res.raised_s = round(raised[0] - mark.mono, 3)
    res.target_raised_mib = raised[1] // 1024
    if psi is not None:
        res.raised_after_psi_s = round(raised[0] - psi, 3)
    populated = next((m for m, _, cur in ev.balloon
                      if m >= raised[0] and cur >= raised[1] - 1024), None)
    if populated is not None:
        res.populated_s = round(populated - mark.mono, 3)
    return res


def cpu_pct_between(samples: list[tuple[float, float]], start: float, end: float
                    ) -> float | None:
    """% of one CPU used between the last sample at or before ``start`` and the first at or after
    ``end`` (the agent's CPU over the workload's run); None without samples on both sides."""
    before = [s for s in samples if s[0] <= start]
    after = [s for s in samples if s[0] >= end]
    if not before or not after or after[0][0] <= before[-1][0]:
        return None
    (t0, c0), (t1, c1) = before[-1], after[0]
    return 100.0 * (c1 - c0) / (t1 - t0)


def failure_kinds(r: RunResult) -> dict[str, int]:
    """Every failure of one run, counted by kind (empty: none)."""
    kinds: dict[str, int] = {}

    def add(kind: str, n: int = 1) -> None:
        if n:
            kinds[kind] = kinds.get(kind, 0) + n

    for f in r.workload_failures:
        add(str(f.get("kind", "error")))
    add("oom-kill", max(r.oom_kills or 0, r.kernel.oom_lines))
    add("page-alloc-failure", r.kernel.page_alloc_failures)
    if not r.done:
        add("did-not-finish")
    if r.exit_status not in (0, None) and not r.workload_failures:
        add(f"exit-{r.exit_status}")
    return kinds


def run_failed(r: RunResult) -> bool:
    return bool(failure_kinds(r)) or bool(r.errors)


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def spread(values: list[float | None]) -> tuple[float, float] | None:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known else None


def run_ratios(r: RunResult, by: dict[tuple[str, str, int], RunResult]) -> dict[str, float | None]:
    """One run's ratios: to classic and none of the same workload and repeat, and to the bound
    (the none run's, same workload and repeat)."""
    classic = by.get((r.workload, "classic", r.repeat))
    none = by.get((r.workload, "none", r.repeat))
    return {
        "held_vs_classic": ratio(r.held_gib_s, classic.held_gib_s if classic else None),
        "mean_vs_classic": ratio(r.mean_mib, classic.mean_mib if classic else None),
        "mean_vs_bound": ratio(r.mean_mib, none.bound_mean_mib if none else None),
        "held_vs_bound": ratio(r.held_gib_s, none.bound_gib_s if none else None),
        "run_vs_none": ratio(r.run_time_s, none.run_time_s if none else None),
    }


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per workload and policy: medians and spreads over repeats, failures counted."""
    by = {(r.workload, r.policy, r.repeat): r for r in results}
    keys: list[tuple[str, str]] = []
    for r in results:
        if (r.workload, r.policy) not in keys:
            keys.append((r.workload, r.policy))
    rows = []
    for workload, policy in keys:
        runs = [r for r in results if r.workload == workload and r.policy == policy]
        ratios = [run_ratios(r, by) for r in runs]
        row: dict[str, Any] = {"workload": workload, "policy": policy, "runs": len(runs),
                               "failed_runs": sum(run_failed(r) for r in runs),
                               "failures": summed_failures(runs)}
        for name, values in (
            ("start_mib", [None if r.start_mib is None else float(r.start_mib) for r in runs]),
            ("mean_mib", [r.mean_mib for r in runs]),
            ("held_gib_s", [r.held_gib_s for r in runs]),
            ("run_time_s", [r.run_time_s for r in runs]),
            ("agent_cpu_pct", [r.agent_cpu_pct for r in runs]),
            *((k, [x[k] for x in ratios]) for k in ratios[0]),
        ):
            row[name] = median(values)
            row[name + "_spread"] = spread(values)
        for key in ("psi_s", "raised_s", "raised_after_psi_s", "populated_s"):
            row["spike_" + key] = median([getattr(s, key) for r in runs for s in r.spikes])
        rows.append(row)
    return rows


def summed_failures(runs: list[RunResult]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in runs:
        for k, n in failure_kinds(r).items():
            kinds[k] = kinds.get(k, 0) + n
    return kinds


def suite_ratio(results: list[RunResult], policy: str, base: str = "classic") -> float | None:
    """Held GiB x s of ``policy`` over the suite / the same of ``base``, over the workloads and
    repeats where both finished without a failure."""
    by = {(r.workload, r.policy, r.repeat): r for r in results}
    num = den = 0.0
    for r in results:
        b = by.get((r.workload, base, r.repeat))
        if r.policy != policy or b is None or run_failed(r) or run_failed(b):
            continue
        if r.held_gib_s is None or b.held_gib_s is None:
            continue
        num += r.held_gib_s
        den += b.held_gib_s
    return ratio(num, den) if den else None


def fmt_spread(row: dict[str, Any], key: str, spec: str) -> str:
    value = fmt(row.get(key), spec)
    sp = row.get(key + "_spread")
    if row.get("runs", 1) > 1 and sp is not None and value != "-":
        value += f" [{format(sp[0], spec)}-{format(sp[1], spec)}]"
    return value


def render_table(results: list[RunResult]) -> str:
    """Per workload and policy (medians over repeats, [min-max] with --repeat > 1)."""
    rows = summarise(results)
    head = ("| workload | policy | result | start MiB | mean MiB | GiB x s | / classic (mean) "
            "| / bound (mean) | run s | / none | failures | agent CPU % | spike: PSI s "
            "| raised s | raised - PSI s | populated s |")
    lines = [head, "|" + "---|" * 16]
    for row in rows:
        failed = row["failed_runs"]
        result = "ok" if not failed else f"**FAIL** {failed}/{row['runs']}"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(row["failures"].items())) or "0"
        lines.append(
            f"| {row['workload']} | {row['policy']} | {result} "
            f"| {fmt_spread(row, 'start_mib', '.0f')} | {fmt_spread(row, 'mean_mib', '.0f')} "
            f"| {fmt_spread(row, 'held_gib_s', '.1f')} "
            f"| {fmt_spread(row, 'mean_vs_classic', '.3f')} "
            f"| {fmt_spread(row, 'mean_vs_bound', '.3f')} "
            f"| {fmt_spread(row, 'run_time_s', '.1f')} | {fmt_spread(row, 'run_vs_none', '.3f')} "
            f"| {kinds} | {fmt_spread(row, 'agent_cpu_pct', '.1f')} "
            f"| {spike_cell(results, row, 'psi_s')} "
            f"| {spike_cell(results, row, 'raised_s')} "
            f"| {spike_cell(results, row, 'raised_after_psi_s')} "
            f"| {spike_cell(results, row, 'populated_s')} |"
        )
    return "\n".join(lines)


def spike_cell(results: list[RunResult], row: dict[str, Any], key: str) -> str:
    """Each spike's figure (first repeat), or its note when there is no figure."""
    runs = [r for r in results if r.workload == row["workload"] and r.policy == row["policy"]]
    if not runs or not runs[0].spikes:
        return "-"
    cells = []
    for s in runs[0].spikes:
        value = getattr(s, key)
        cells.append(fmt(value, ".2f") if value is not None else (s.note or "-"))
    if all(c == cells[0] for c in cells):
        return cells[0] if len(cells) == 1 else f"{cells[0]} (x{len(cells)})"
    return " / ".join(cells)


def render_summary(results: list[RunResult]) -> str:
    """The issue's targets, checked for the default policy (pressure), then the spike target
    for each variant of it in the run."""
    rows = [r for r in summarise(results) if r["policy"] == "pressure"]
    lines = target_lines(results, rows) if rows else ["pressure: not in this run"]
    lines.extend(spike_target_lines(results))
    return "\n".join(lines)


def target_lines(results: list[RunResult], rows: list[dict[str, Any]]) -> list[str]:
    """The targets on the default policy's rows (``summarise``'s, for ``pressure``)."""
    lines = []
    failing = [r["workload"] for r in rows if r["failed_runs"]]
    # A run that failed ended early: its time and memory say nothing; those targets are checked
    # on the workloads that finished, and the failed ones are named.
    finished = [r for r in rows if not r["failed_runs"]]
    slow = [r["workload"] for r in finished if (r["run_vs_none"] or 0) > 1.05]
    fat = [r["workload"] for r in finished if (r["mean_vs_bound"] or 0) > 1.25]
    suite = suite_ratio(results, "pressure")
    lines.append(f"pressure: 0 failures on every workload: "
                 f"{'NOT MET' if failing else 'MET'} (failed: {failing or 'none'})")
    unmeasured = f"; not measurable, failed: {failing}" if failing else ""
    lines.append(f"pressure: run time <= 1.05 x none: {'NOT MET' if slow or failing else 'MET'} "
                 f"(over: {slow or 'none'}{unmeasured})")
    lines.append(f"pressure: mean memory <= 1.25 x bound: "
                 f"{'NOT MET' if fat or failing else 'MET'} (over: {fat or 'none'}{unmeasured})")
    lines.append(f"pressure / classic, held GiB x s over the suite (runs without failures): "
                 f"{fmt(suite, '.3f')} (target <= 0.75)")
    return lines


def spike_target_lines(results: list[RunResult]) -> list[str]:
    """The spike target's line for ``pressure`` and for each variant of it, those in the run."""
    names = sorted({r.policy for r in results
                    if VARIANTS.get(r.policy, (r.policy,))[0] == "pressure"})
    return [spike_target_line(results, p) for p in names]


def spike_target_line(results: list[RunResult], policy: str = "pressure") -> str:
    """The spike target for ``policy``: the latest target raised after a PSI trigger fired,
    and how many spikes had their target raised before the trigger (met before the stall the
    trigger waits for, so no answer time to measure)."""
    times = [s.raised_after_psi_s for r in results if r.policy == policy
             for s in r.spikes if s.raised_after_psi_s is not None]
    answered = [t for t in times if t >= 0]
    early = f"; {len(times) - len(answered)} raised before it" if len(answered) < len(times) else ""
    if not answered:
        return f"{policy}: no spike answered after a PSI trigger{early} (target <= 0.5 s)"
    return (f"{policy}: target raised after the PSI trigger: max {max(answered):.2f} s "
            f"over {len(answered)} spikes{early} (target <= 0.5 s)")


def select_workloads(spec: str) -> list[str]:
    """``tuned``, ``held-out``, ``all`` or a comma-separated list of names."""
    if spec == "tuned":
        return list(TUNED)
    if spec == "held-out":
        return list(HELD_OUT)
    if spec == "all":
        return [*TUNED, *HELD_OUT]
    names = [x for x in spec.split(",") if x]
    bad = [x for x in names if x not in WORKLOADS]
    if bad or not names:
        raise ValueError(f"unknown workloads {bad}: choose from {', '.join(sorted(WORKLOADS))}")
    return names


def analyse(res: RunResult, files: dict[str, str], guest: str) -> None:
    """Fill ``res`` from one run's collected files (pure: no bed).

    The ceiling is the driver's target when the monitor started, right after the reset."""
    samples = parse_samples(files.get("samples", ""), guest)
    res.samples = len(samples)
    window = workload_window(samples)
    if window is None:
        res.errors.append("no workload window in the Dom0 samples")
    else:
        res.held_gib_s, res.window_s = memory_held(samples, window)
        mems = [s.mem_mib for s in samples[window[0] : window[1] + 1]]
        res.mean_mib = res.held_gib_s * 1024 / res.window_s if res.window_s else None
        res.min_mib, res.max_mib = min(mems), max(mems)
        res.start_mib = mems[0]
    stats = trace_stats(files.get("trace", "").splitlines())
    res.peak_some_avg10 = stats.get("peak_some_avg10")
    res.peak_full_avg10 = stats.get("peak_full_avg10")
    res.oom_kills = stats.get("oom_kills")
    res.refaults = stats.get("refaults")
    report = parse_workload(files.get("workload", ""))
    if report.summary is not None:
        s = report.summary
        res.run_time_s = float(s["run_time_s"])
        res.busy_s = float(s["busy_s"])
        res.phases = dict(s.get("phases") or {})
        res.done = bool(s.get("done"))
        res.workload_failures = report.failures
    res.kernel = scan_kernel_log(files.get("dmesg", ""))
    ev = parse_events(files.get("events", ""))
    res.agent_exit = ev.agent_exit
    res.agent_errors = ev.agent_errors[:10]
    if not ev.agent_started:
        res.errors.append("the agent never said started")
    ceiling_kb = ev.balloon[0][1] if ev.balloon else 0
    res.spikes = spike_responses(report, ev, ceiling_kb)
    if report.marks:
        res.agent_cpu_pct = cpu_pct_between(ev.agent_cpu, report.marks[0].mono,
                                            report.marks[-1].mono)


def add_bound(res: RunResult, files: dict[str, str]) -> None:
    """The no-headroom bound from a ``none`` run's trace (needs the guest's trace offset)."""
    from benchmarks.balloon_bound import bound_for_run
    from guestagent.balloon.trace import load_trace

    ev = parse_events(files.get("events", ""))
    trace = files.get("trace", "")
    if ev.trace_offset is None or not trace:
        res.notes.append("no bound: no trace or no trace offset")
        return
    # The recorder is stopped by a signal: its last line may be cut. Keep the lines that parse.
    whole = [line for line in trace.splitlines() if json_lines(line)]
    path = Path(files["_dir"]) / "trace.whole.jsonl"
    path.write_text("\n".join(whole) + "\n")
    try:
        snaps = load_trace(str(path)).snapshots
    except Exception as e:  # the bound is left out, and said so; the run itself measured
        res.notes.append(f"no bound: trace unreadable: {e}"[:200])
        return
    got = bound_for_run(snaps, files.get("workload", ""), ev.trace_offset, 0)
    if got is not None and got[1] > 0:
        res.bound_gib_s = got[0]
        res.bound_mean_mib = got[0] * 1024 / got[1]


# --------------------------------------------------------------------------------------------
# The testbed part


def wait_guest_settled(g: Any, timeout: float = 120.0) -> None:
    """Until the driver holds its target and PSI some avg10 is under 1 %."""
    from tests.e2e.util import log

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


def balloon_section(policy: str) -> str:
    """The ``[balloon]`` lines of a run's configuration for ``policy`` (or a variant's).
    ``allow_hvm``: the benchmark measures the policy in the guest it is given, an HVM one with
    ``--type hvm`` too, where the agent's default holds the ceiling (no effect in a PV guest)."""
    name, keys = VARIANTS.get(policy, (policy, {}))
    return "".join([
        "[balloon]\n", "enabled = true\n", "allow_hvm = true\n", f'policy = "{name}"\n',
        *(f"{key} = {value}\n" for key, value in keys.items()),
    ])


def start_script(tag: str, workload: str, policy: str, note: str) -> str:
    """The guest's part: config, kernel log cleared, the monitor with the agent under it."""
    d = f"/tmp/bench/{tag}"
    return (
        f"rm -rf {d}; mkdir -p {d}/conf.d; "
        f"printf '%s' {shlex.quote(balloon_section(policy))} > {d}/guestagent.toml; "
        "dmesg -c > /dev/null; "
        f"setsid python3 {SRC}/balloon_monitor.py --out {d}/events.jsonl --trace {d}/trace.jsonl "
        f"--note '{note}' -- guestagent run --config {d}/guestagent.toml --conf-dir {d}/conf.d "
        f"> {d}/monitor.err 2>&1 < /dev/null & echo $! > {d}/monitor.pid"
    )


def workload_script(tag: str, workload: str, ceiling_mib: int = 1024) -> str:
    """Start the workload in the guest, its sizes scaled to the guest's ceiling (written for a
    1 GiB guest, ``balloon_workload.py``)."""
    d = f"/tmp/bench/{tag}"
    return (
        f"setsid sh -c 'python3 {SRC}/balloon_workload.py {workload} "
        f"--ceiling-mib {int(ceiling_mib)} "
        f"--xenstore-key {PHASE_KEY} > {d}/workload.out 2> {d}/workload.err; rc=$?; "
        f"xenstore-write {PHASE_KEY} exit-$rc' < /dev/null > /dev/null 2>&1 & "
        f"echo $! > {d}/workload.pid"
    )


def wait_agent_started(g: Any, tag: str, timeout: float = 90.0) -> bool:
    d = f"/tmp/bench/{tag}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out, rc = g.run(f"grep -c 'event=started' {d}/events.jsonl")
        if rc == 0 and out.strip() not in ("", "0"):
            return True
        time.sleep(2)
    return False


def wait_workload(bed: Any, key: str, res: RunResult) -> None:
    t0 = time.monotonic()
    while True:
        time.sleep(5)
        phase = bed.dom0(f"xenstore-read {key}")[0].strip()
        status = wrapper_exit(phase)
        if status is not None:
            res.exit_status = status
            return
        if time.monotonic() - t0 > WORKLOAD_TIMEOUT_S:
            res.errors.append(f"workload still in phase {phase!r} after {WORKLOAD_TIMEOUT_S}s")
            return


def collect(g: Any, tag: str, dest: Path) -> dict[str, str]:
    """The run's guest files, in one transfer (tar.gz over the console, with ``Guest.fetch``: the
    tar's stderr kept out of the data, the bytes checked against their MD5 and asked for again
    when damaged; issue 13 item 4's ``binascii.Error`` came from decoding stderr with them)."""
    d = f"/tmp/bench/{tag}"
    data = g.fetch(
        f"dmesg > {d}/dmesg.txt; cat /proc/sys/vm/overcommit_memory > {d}/overcommit; "
        f"tar czf - -C /tmp/bench {tag}", timeout=300)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest)
    return run_files(dest / tag)


def run_files(run: Path) -> dict[str, str]:
    """One run's collected files, as :func:`collect` returns them."""
    files = {"_dir": str(run)}
    for key, name in (("events", "events.jsonl"), ("trace", "trace.jsonl"),
                      ("workload", "workload.out"), ("dmesg", "dmesg.txt"),
                      ("samples", "samples.txt")):
        p = run / name
        files[key] = p.read_text(errors="replace") if p.exists() else ""
    return files


def reanalyse(out_dir: Path) -> list[RunResult]:
    """Every run of a ``balloon-bench`` directory analysed again from its raw files."""
    results = []
    for run in sorted(out_dir.iterdir(), key=lambda p: p.stat().st_mtime):
        parts = run.name.split(".")
        if not run.is_dir() or len(parts) != 3 or not parts[2].isdigit():
            continue
        files = run_files(run)
        guest = next((line.split("|")[1].split()[0] for line in files["samples"].splitlines()
                      if line.count("|") == 2 and line.split("|")[1].split()), "")
        res = RunResult(parts[0], parts[1], int(parts[2]))
        analyse(res, files, guest)
        res.exit_status = exit_status_of(files["samples"])
        if res.policy == "none":
            add_bound(res, files)
        results.append(res)
    return results


def wrapper_exit(phase: str) -> int | None:
    """N of the wrapper's ``exit-N`` phase; None for any other phase, the workload's own phases
    included (``jvm-heap`` has one named ``exit``: taking it for the end collected the run before
    the workload had finished)."""
    if phase.startswith("exit-") and phase[5:].lstrip("-").isdigit():
        return int(phase[5:])
    return None


def exit_status_of(samples: str) -> int | None:
    """The wrapper's ``exit-N`` phase in the Dom0 samples."""
    for line in samples.splitlines():
        status = wrapper_exit(line.rsplit("|", 1)[-1].strip())
        if status is not None:
            return status
    return None


def run_one(bed: Any, g: Any, workload: str, policy: str, repeat: int,
            out_dir: Path, ceiling_mib: int, settle_s: float = 0.0) -> RunResult:
    from tests.e2e.util import log

    res = RunResult(workload=workload, policy=policy, repeat=repeat)
    tag = f"{workload}.{policy}.{repeat}"
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
    g.run_ok(start_script(tag, workload, policy, f"balloon_testbed {tag}"))
    if not wait_agent_started(g, tag):
        res.errors.append("the agent did not start within 90 s")
    if settle_s > 0:
        log(f"balloon bench: {tag}: agent up, {settle_s:.0f} s of idle before the workload")
        time.sleep(settle_s)
    log(f"balloon bench: {tag}: agent up, starting the workload")
    t0 = time.monotonic()
    g.run_ok(workload_script(tag, workload, ceiling_mib))
    wait_workload(bed, key, res)
    log(f"balloon bench: {tag}: workload exit {res.exit_status} after "
        f"{time.monotonic() - t0:.0f}s")
    d = f"/tmp/bench/{tag}"
    g.run_ok(
        f"kill -KILL -$(cat {d}/workload.pid) 2>/dev/null; kill -TERM $(cat {d}/monitor.pid); "
        f"for i in $(seq 90); do kill -0 $(cat {d}/monitor.pid) 2>/dev/null || break; sleep 1; "
        "done; true", timeout=150)
    bed.dom0_ok("touch /run/e2e/bench-stop; sleep 2")
    run_dir = out_dir / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples.txt").write_text(bed.dom0_ok(f"cat {samples_path}"))
    files = collect(g, tag, out_dir)
    analyse(res, files, g.name)
    if policy == "none":
        add_bound(res, files)
    return res


#: What a run the bed lost touch with leaves behind, from Dom0 (which still answers when the
#: guest does not): the sampler's ``xl list`` lines, the guest's console (its kernel's messages:
#: hung tasks, OOM kills, soft lockups) and Xen's view of the guest and its free memory.
FORENSICS = (
    ("samples.txt", "cat /run/e2e/bench-{tag}.samples"),
    ("console.txt", "e2e-guest log {domid} 200000"),
    ("xl.txt", "xl list; xl info | grep -E 'free_memory|total_memory'; "
               "xenstore-ls /local/domain/{domid}/memory"),
)


def save_forensics(bed: Any, g: Any, tag: str, out_dir: Path) -> None:
    """After a run the bed lost touch with, keep what Dom0 can still tell (:data:`FORENSICS`) in
    the run's directory; each part best effort, a part that fails says why in its file."""
    from tests.e2e.util import BedError, log

    run_dir = out_dir / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, command in FORENSICS:
        try:
            text = bed.dom0(command.format(tag=tag, domid=g.domid), timeout=60)[0]
        except (BedError, OSError) as e:
            text = f"not saved: {e}\n"
        (run_dir / name).write_text(text)
    log(f"balloon bench: {tag}: the guest's console and Dom0's samples kept in {run_dir}")


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
    p.add_argument("--workloads", default="tuned",
                   help="tuned (default), held-out, all, or comma-separated names")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="comma-separated, run in this order (default none,classic,pressure)")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all workloads and policies")
    p.add_argument("--memory", type=int, default=1024, help="guest MiB")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--type", choices=("pv", "hvm"), default="pv",
                   help="the guest's type (default pv; hvm: the same image, booted by QEMU's "
                   "firmware, the balloon driver under an HVM guest's p2m)")
    p.add_argument("--json", metavar="FILE", help="also write the result file here")
    p.add_argument("--from-run", metavar="DIR",
                   help="no bed: analyse a run's balloon-bench directory again and print it")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="skip the workloads that would end past this much bed time (boot "
                   "included; a workload is skipped whole, its policies together)")
    p.add_argument("--settle-seconds", type=float, default=0.0, metavar="S",
                   help="after the agent starts, S seconds of idle before the workload (every "
                   "policy alike): the workload arrives in a guest the agent has already sized, "
                   "as under a daemon that runs from boot; 0 (default): at the ceiling")
    p.add_argument("--keep-traces", metavar="DIR",
                   help="copy each run's trace here (<workload>.<policy>.<repeat>.jsonl)")
    args = p.parse_args(argv)
    policies = [x for x in args.policies.split(",") if x]
    bad = [x for x in policies if x not in POLICIES and x not in VARIANTS]
    if bad or not policies:
        p.error(f"--policies: choose from {', '.join((*POLICIES, *VARIANTS))}")
    try:
        args.workload_list = select_workloads(args.workloads)
    except ValueError as e:
        p.error(f"--workloads: {e}")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not 0 <= args.settle_seconds <= 3600:
        p.error(f"--settle-seconds must be 0-3600, not {args.settle_seconds:g}")
    args.policy_list = policies
    return args


def report_of(args: argparse.Namespace, run_dir: str, results: list[RunResult],
              skipped: list[str]) -> dict[str, Any]:
    return {
        "skipped_for_time": skipped,
        "run_dir": run_dir,
        "agent_commit": git_describe(),
        "command": "guestagent run --config FILE ([balloon] enabled = true, policy = P)",
        "workloads": args.workload_list,
        "held_out": [w for w in args.workload_list if w in HELD_OUT],
        "policies": args.policy_list,
        "repeat": args.repeat,
        "settle_seconds": args.settle_seconds,
        "guest": {"memory_mib": args.memory, "vcpus": args.vcpus, "type": args.type},
        "results": [asdict(r) for r in results],
        "summary": summarise(results),
        "suite_pressure_vs_classic": suite_ratio(results, "pressure"),
    }


def main(argv: list[str] | None = None) -> int:
    from tests.e2e.bed import BedConfig, GuestSpec, XenBed
    from tests.e2e.util import BedError, log

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.from_run:
        again = reanalyse(Path(args.from_run))
        print(render_table(again))
        print(render_summary(again))
        return 0
    results: list[RunResult] = []
    skipped: list[str] = []
    longest_group = 0.0
    with XenBed(BedConfig(run_name="balloon-bench")) as bed:
        # Bed time starts with the lock (building the image and booting count, waiting not).
        t_start = time.monotonic() - sum(seconds for _, seconds in bed.timings)
        out_dir = bed.run_dir / "balloon-bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = (GuestSpec.hvm(memory=args.memory, vcpus=args.vcpus, name="bal")
                if args.type == "hvm" else
                GuestSpec.pv(memory=args.memory, vcpus=args.vcpus, name="bal"))
        with bed.guest(spec) as g:
            for repeat in range(args.repeat):
                for workload in args.workload_list:
                    elapsed = time.monotonic() - t_start
                    if args.max_minutes and elapsed + longest_group > args.max_minutes * 60:
                        log(f"balloon bench: {workload} (repeat {repeat}) skipped: "
                            f"{elapsed / 60:.1f} min gone of --max-minutes {args.max_minutes}")
                        skipped.append(f"{workload} (repeat {repeat})")
                        continue
                    t_group = time.monotonic()
                    for policy in args.policy_list:
                        try:
                            results.append(run_one(bed, g, workload, policy, repeat, out_dir,
                                                  args.memory, args.settle_seconds))
                        except BedError as e:
                            results.append(RunResult(workload, policy, repeat,
                                                     errors=[f"bed: {e}"[:300]]))
                            save_forensics(bed, g, f"{workload}.{policy}.{repeat}", out_dir)
                        log("balloon bench: " + json.dumps(asdict(results[-1]), sort_keys=True))
                        report = report_of(args, str(bed.run_dir), results, skipped)
                        (out_dir / "results.json").write_text(
                            json.dumps(report, indent=1, sort_keys=True))
                    longest_group = max(longest_group, time.monotonic() - t_group)
        if args.keep_traces:
            dest = Path(args.keep_traces)
            dest.mkdir(parents=True, exist_ok=True)
            for r in results:
                src = out_dir / f"{r.workload}.{r.policy}.{r.repeat}" / "trace.jsonl"
                if src.exists():
                    shutil.copy2(src, dest / f"{r.workload}.{r.policy}.{r.repeat}.jsonl")
        log(f"balloon bench: raw samples, traces and logs in {out_dir}")
        report = report_of(args, str(bed.run_dir), results, skipped)
        report["bed_minutes"] = round((time.monotonic() - t_start) / 60, 1)
        (out_dir / "results.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"balloon policies under `guestagent run` on real Xen 4.17 (TCG), "
          f"{args.type.upper()} guest {args.memory} MiB, {args.vcpus} vCPUs, "
          f"{args.settle_seconds:g} s settled before each workload; "
          f"run {bed.run_dir.name}")
    print(render_table(results))
    print(render_summary(results))
    if skipped:
        print(f"not run (--max-minutes {args.max_minutes}): {', '.join(skipped)}")
    return 0 if not any(r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
