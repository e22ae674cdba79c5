"""The balloon testbed benchmark without a testbed: its parsing, failure detection and ratios, the
guest-side workload suite and monitor, on recorded and local output."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import balloon_workload as wl
from benchmarks.balloon_testbed import (
    Events,
    KernelLog,
    PhaseMark,
    RunResult,
    Sample,
    SpikeResponse,
    WorkloadReport,
    add_bound,
    analyse,
    failure_kinds,
    memory_held,
    parse_events,
    parse_logfmt,
    parse_samples,
    parse_workload,
    reanalyse,
    render_summary,
    render_table,
    run_failed,
    run_ratios,
    scan_kernel_log,
    select_workloads,
    spike_responses,
    spike_target_line,
    suite_ratio,
    summarise,
    trace_stats,
    workload_window,
)

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "benchmarks" / "balloon_workload.py"
MONITOR = ROOT / "benchmarks" / "balloon_monitor.py"

SAMPLER = """\
100.00|bal1                                         3  1024     2     -b----      10.0|ready
101.10|bal1                                         3  1024     2     -b----      10.1|grow
102.20|bal1                                         3   900     2     -b----      10.2|cache
xl: error
103.30|bal1                                         3   512     2     r-----      10.3|idle
104.40|Name ID Mem|idle
105.50|bal1                                         3   512     2     -b----      10.4|end
106.60|bal1                                         3  1024     2     -b----      10.5|exit-0
"""

#: A sharp-spikes run under pressure in the format of balloon_workload.py and balloon_monitor.py:
#: the first spike is answered by a grow 0.2 s after the monitor's PSI trigger and populated 2.4 s
#: after its phase line; the second starts at the ceiling.
WORKLOAD_OUT = """\
{"busy_s": 0.0, "mono": 1000.0, "phase": "base", "pid": 812, "t": 0.0}
{"busy_s": 2.1, "mib": 256, "mono": 1007.1, "phase": "spike-1", "pid": 812, "spike": true, "t": 7.1}
{"busy_s": 12.5, "mono": 1020.5, "phase": "calm-1", "pid": 812, "t": 20.5}
{"busy_s": 12.6, "mib": 256, "mono": 1032.6, "phase": "spike-2", "pid": 812, "spike": true, \
"t": 32.6}
{"busy_s": 20.0, "mono": 1043.0, "phase": "end", "pid": 812, "t": 43.0}
{"busy_s": 20.0, "done": true, "failures": [], "ok": true, "phases": {"base": 7.1, \
"spike-1": 13.4, "calm-1": 12.1, "spike-2": 10.4}, "run_time_s": 43.0, "summary": true, \
"workload": "sharp-spikes"}
"""
EVENTS_OUT = """\
{"agent_pid": 700, "command": ["guestagent", "run"], "mono": 990.0, "start": true}
{"mono": 990.0, "psi_armed": "some 150000 1000000"}
{"current_kb": 1048576, "mono": 990.0, "target_kb": 1048576}
{"agent": "timestamp=2026-12-04T12:40:01.000000Z level=info event=started version=0.9 \
role=guest jobs=\\"['topology', 'balloon', 'devices']\\"", "mono": 993.0}
{"agent": "timestamp=2026-12-04T12:40:02.000000Z level=info event=balloon_decision \
component=balloon policy=pressure action=shrink target_kb=524288 written=true current_kb=1048576 \
reason=\\"quiet (stall 0.00 %, avg10 0.00 %); shrink by 524288 KiB\\"", "mono": 995.0}
{"current_kb": 1040000, "mono": 995.1, "target_kb": 524288}
{"current_kb": 524288, "mono": 999.0, "target_kb": 524288}
{"mono": 1007.9, "psi": "some 150000 1000000"}
{"agent": "timestamp=2026-12-04T12:40:15.000000Z level=info event=balloon_decision \
component=balloon policy=pressure action=grow target_kb=786432 written=true current_kb=524288 \
reason=\\"stall 3.10 % >= 2.0 %; grow by 262144 KiB\\"", "mono": 1008.1}
{"current_kb": 530000, "mono": 1008.2, "target_kb": 786432}
{"current_kb": 786432, "mono": 1009.5, "target_kb": 786432}
{"current_kb": 1048576, "mono": 1015.0, "target_kb": 1048576}
{"agent": "timestamp=2026-12-04T12:40:55.000000Z level=info event=stopping reason=SIGTERM", \
"mono": 1045.0}
{"agent_exit": 0, "mono": 1046.0}
{"mono": 1046.0, "trace_offset": 990.4}
{"end": true, "mono": 1046.1}
"""
#: Debian 12's 6.1 kernel, as ``dmesg`` prints it: an allocation failure, then an OOM kill.
DMESG = """\
[  312.104522] python3: page allocation failure: order:0, mode:0x140cca(GFP_HIGHUSER_MOVABLE\
|__GFP_COMP), nodemask=(null),cpuset=/,mems_allowed=0
[  312.104530] CPU: 1 PID: 812 Comm: python3 Not tainted 6.1.0-27-amd64 #1  Debian 6.1.115-1
[  312.104600] kworker/u4:2: page allocation failure: order:0, mode:0x820(GFP_ATOMIC)
[  313.500001] python3 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), \
order=0, oom_score_adj=0
[  313.500210] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,\
global_oom,task_memcg=/,task=python3,pid=812,uid=0
[  313.500233] Out of memory: Killed process 812 (python3) total-vm:562000kB, anon-rss:501000kB, \
file-rss:2000kB, shmem-rss:0kB, UID:0 pgtables:1100kB oom_score_adj:0
"""


# --------------------------------------------------------------------------------------------
# Dom0 samples and the memory held


def test_parse_samples_skips_what_is_not_the_guest() -> None:
    samples = parse_samples(SAMPLER, "bal1")
    assert [s.mem_mib for s in samples] == [1024, 1024, 900, 512, 512, 1024]
    assert samples[1] == Sample(101.10, 1024, "grow")


def test_window_and_memory_held() -> None:
    samples = parse_samples(SAMPLER, "bal1")
    window = workload_window(samples)
    assert window == (1, 4)
    held, seconds = memory_held(samples, window)
    # 1024 MiB for 1.1 s, 900 for 1.1 s, 512 for 2.2 s (each sample held until the next).
    assert held == pytest.approx((1024 * 1.1 + 900 * 1.1 + 512 * 2.2) / 1024)
    assert seconds == pytest.approx(4.4)


def test_window_starts_at_any_first_phase_and_ends_at_failed_or_exit() -> None:
    samples = [Sample(0, 1024, "ready"), Sample(1, 1024, "warm"), Sample(2, 800, "alloc"),
               Sample(3, 800, "failed"), Sample(4, 1024, "exit-1")]
    assert workload_window(samples) == (1, 3)
    killed = [Sample(0, 1024, "base"), Sample(1, 800, "spike-1"), Sample(2, 1024, "exit-137")]
    assert workload_window(killed) == (0, 2)
    assert workload_window([Sample(0, 1024, "ready"), Sample(1, 1024, "grow")]) is None


def test_trace_stats_tolerates_a_cut_last_line() -> None:
    def snap(t: int, some: float, refaults: int, oom: int) -> str:
        return json.dumps({"timestamp": t, "some_avg10": some, "full_avg10": some / 2,
                           "refaults": refaults, "oom_kill": oom})

    lines = ['{"format": "guestagent-balloon-trace", "version": 1}',
             snap(0, 0.0, 100, 2), snap(1, 7.5, 150, 2), snap(2, 1.0, 400, 3), '{"timest']
    stats = trace_stats(lines)
    assert stats == {"snapshots": 3, "peak_some_avg10": 7.5, "peak_full_avg10": 3.75,
                     "oom_kills": 1, "refaults": 300}
    assert trace_stats(lines[:1]) == {}


# --------------------------------------------------------------------------------------------
# The workload's and the monitor's output


def test_parse_workload_reads_marks_flags_and_summary() -> None:
    report = parse_workload(WORKLOAD_OUT + '{"cut li')
    assert [m.phase for m in report.marks] == ["base", "spike-1", "calm-1", "spike-2", "end"]
    assert [m.spike for m in report.marks] == [False, True, False, True, False]
    assert report.summary is not None and report.summary["ok"] is True
    assert report.failures == []
    assert parse_workload("Traceback (most recent call last):\n").summary is None


def test_parse_logfmt_unquotes_values() -> None:
    line = ('level=info event=balloon_decision action=grow target_kb=786432 written=true '
            'reason="stall 3.10 % >= 2.0 %; said \\"grow\\""')
    assert parse_logfmt(line) == {
        "level": "info", "event": "balloon_decision", "action": "grow", "target_kb": "786432",
        "written": "true", "reason": 'stall 3.10 % >= 2.0 %; said "grow"'}


def test_parse_events() -> None:
    ev = parse_events(EVENTS_OUT)
    assert ev.agent_started and ev.agent_exit == 0 and ev.trace_offset == 990.4
    assert ev.psi == [1007.9]
    assert [d[1]["action"] for d in ev.decisions] == ["shrink", "grow"]
    assert ev.balloon[0] == (990.0, 1048576, 1048576) and len(ev.balloon) == 6
    assert ev.agent_errors == []
    errors = parse_events('{"agent": "level=error event=balloon_tick_failed error=x", "mono": 1}\n'
                          '{"agent": "level=warning event=job_off job=balloon", "mono": 2}\n')
    assert len(errors.agent_errors) == 2 and not errors.agent_started


def test_spike_response_times_psi_raise_and_populate() -> None:
    spikes = spike_responses(parse_workload(WORKLOAD_OUT), parse_events(EVENTS_OUT), 1048576)
    first, second = spikes
    assert first == SpikeResponse(
        phase="spike-1", psi_s=0.8, raised_s=1.0, raised_after_psi_s=0.2, populated_s=2.4,
        target_before_mib=512, target_raised_mib=768)
    assert second.phase == "spike-2" and second.note == "at the ceiling already"
    assert second.raised_s is None


def test_spike_never_answered_and_answered_before_the_trigger() -> None:
    report = WorkloadReport([PhaseMark(0, 10.0, "alloc", spike=True), PhaseMark(9, 19.0, "hold")])
    quiet = Events(psi=[11.0], balloon=[(5.0, 300 * 1024, 300 * 1024)])
    (s,) = spike_responses(report, quiet, 1048576)
    assert s.note == "target not raised during the spike" and s.psi_s == 1.0
    # classic raises on Committed_AS before any stall: a negative time after the trigger.
    early = Events(psi=[12.0], balloon=[(5.0, 300 * 1024, 300 * 1024),
                                        (10.5, 700 * 1024, 320 * 1024),
                                        (14.0, 700 * 1024, 700 * 1024)])
    (s,) = spike_responses(report, early, 1048576)
    assert (s.raised_s, s.raised_after_psi_s, s.populated_s) == (0.5, -1.5, 4.0)


def test_a_pace_is_not_a_spike_answered() -> None:
    """A ``pace`` raises the target (an earlier shrink cut back to a slow driver's pace) without
    answering the spike: neither its decision line nor the monitor's samples of its target count
    as the raise; the grow after it does."""
    report = WorkloadReport([PhaseMark(0, 10.0, "alloc", spike=True), PhaseMark(9, 19.0, "hold")])
    pace = {"action": "pace", "target_kb": str(320 * 1024), "written": "true"}
    grow = {"action": "grow", "target_kb": str(700 * 1024), "written": "true"}
    ev = Events(psi=[12.0], balloon=[(5.0, 300 * 1024, 400 * 1024),
                                     (10.3, 320 * 1024, 390 * 1024),
                                     (12.6, 700 * 1024, 390 * 1024),
                                     (14.0, 700 * 1024, 700 * 1024)],
                decisions=[(10.2, pace), (12.5, grow)])
    (s,) = spike_responses(report, ev, 1048576)
    assert (s.raised_s, s.raised_after_psi_s, s.target_raised_mib) == (2.5, 0.5, 700)


def test_scan_kernel_log_counts_allocation_failures_and_one_line_per_oom_kill() -> None:
    k = scan_kernel_log(DMESG)
    assert k == KernelLog(page_alloc_failures=2, page_alloc_comms=["kworker/u4:2", "python3"],
                          oom_lines=1)
    assert scan_kernel_log("[    1.0] Linux version 6.1.0\n") == KernelLog()


# --------------------------------------------------------------------------------------------
# Failures and ratios


def run(workload: str, policy: str, held: float | None, run_s: float | None = 100.0,
        **kw: Any) -> RunResult:
    kw.setdefault("done", True)
    r = RunResult(workload, policy, 0, held_gib_s=held, run_time_s=run_s, **kw)
    if held is not None and run_s:
        r.mean_mib = held * 1024 / run_s
    return r


def test_failure_kinds_count_every_source() -> None:
    ok = run("sharp-spikes", "pressure", 50.0, exit_status=0)
    assert failure_kinds(ok) == {} and not run_failed(ok)
    enomem = run("big-alloc-after-idle", "pressure", 30.0, exit_status=1, done=False,
                 workload_failures=[{"kind": "enomem", "phase": "alloc", "t": 46.0,
                                     "detail": "mmap 512 MiB: [Errno 12] Cannot allocate memory"}])
    assert failure_kinds(enomem) == {"enomem": 1, "did-not-finish": 1}
    killed = run("jvm-heap", "pressure", 40.0, exit_status=137, done=False, oom_kills=1,
                 kernel=KernelLog(1, ["python3"], 1))
    assert failure_kinds(killed) == {"oom-kill": 1, "page-alloc-failure": 1,
                                     "did-not-finish": 1, "exit-137": 1}
    # A finished run with a page allocation failure in the kernel log is still a failure.
    quiet = run("fork-heavy", "classic", 40.0, exit_status=0, kernel=KernelLog(3, ["python3"]))
    assert run_failed(quiet)
    broken = RunResult("long-idle", "none", 0, errors=["bed: no answer"])
    assert run_failed(broken)


def test_ratios_against_classic_none_and_the_bound() -> None:
    none = run("sharp-spikes", "none", 100.0, 100.0)
    none.bound_gib_s, none.bound_mean_mib = 40.0, 400.0
    classic = run("sharp-spikes", "classic", 80.0, 104.0)
    pressure = run("sharp-spikes", "pressure", 60.0, 102.0)
    by = {(r.workload, r.policy, r.repeat): r for r in (none, classic, pressure)}
    got = run_ratios(pressure, by)
    assert got["held_vs_classic"] == pytest.approx(0.75)
    assert got["mean_vs_classic"] == pytest.approx((60 / 102) / (80 / 104))
    assert got["held_vs_bound"] == pytest.approx(1.5)
    assert got["mean_vs_bound"] == pytest.approx(60 * 1024 / 102 / 400)
    assert got["run_vs_none"] == pytest.approx(1.02)
    assert run_ratios(RunResult("x", "pressure", 0), {})["run_vs_none"] is None


def test_summary_takes_medians_and_spreads_over_repeats_and_counts_failures() -> None:
    results = []
    for rep, (n, c, p) in enumerate([(100, 80, 60), (110, 90, 72), (90, 70, 50)]):
        for policy, held in (("none", n), ("classic", c), ("pressure", p)):
            r = run("anon-grow-shrink", policy, float(held), 100.0 + rep)
            r.repeat = rep
            results.append(r)
    results[-1].workload_failures = [{"kind": "fork", "detail": "os.fork: EAGAIN"}]
    rows = {r["policy"]: r for r in summarise(results)}
    p = rows["pressure"]
    assert p["runs"] == 3 and p["failed_runs"] == 1 and p["failures"] == {"fork": 1}
    assert p["held_gib_s"] == 60.0 and p["held_gib_s_spread"] == (50.0, 72.0)
    assert p["held_vs_classic"] == pytest.approx(0.75)
    # The suite ratio leaves out the failed run: (60 + 72) / (80 + 90).
    assert suite_ratio(results, "pressure") == pytest.approx(132 / 170)
    table = render_table(results)
    assert "**FAIL** 1/3" in table and "fork 1" in table and "[50.0-72.0]" in table
    summary = render_summary(results)
    assert "0 failures on every workload: NOT MET" in summary
    assert "anon-grow-shrink" in summary


def test_the_spike_line_counts_answers_after_the_trigger_per_pressure_policy() -> None:
    """A raise after the PSI trigger is an answer time; one before it (met before any stall)
    is counted apart, never as a time; a variant of ``pressure`` gets its own line."""
    shipped = run("sharp-spikes", "pressure", 60.0)
    shipped.spikes = [SpikeResponse("spike1", raised_after_psi_s=-0.4),
                      SpikeResponse("spike2", raised_after_psi_s=None)]
    small = run("sharp-spikes", "pressure-r16", 50.0)
    small.spikes = [SpikeResponse("spike1", raised_after_psi_s=0.21),
                    SpikeResponse("spike2", raised_after_psi_s=0.35),
                    SpikeResponse("spike3", raised_after_psi_s=-0.1)]
    lines = render_summary([shipped, small]).splitlines()
    assert "pressure: no spike answered after a PSI trigger; 1 raised before it " \
        "(target <= 0.5 s)" in lines
    assert "pressure-r16: target raised after the PSI trigger: max 0.35 s over 2 spikes; " \
        "1 raised before it (target <= 0.5 s)" in lines
    assert spike_target_line([]) == "pressure: no spike answered after a PSI trigger " \
        "(target <= 0.5 s)"
    # A run of the variant alone: no verdict on the default policy, which did not run.
    alone = render_summary([small]).splitlines()
    assert alone[0] == "pressure: not in this run" and alone[1].startswith("pressure-r16: ")
    assert len(alone) == 2


def test_a_run_that_did_not_finish_shows_as_fail_not_as_small_memory() -> None:
    results = [run("big-alloc-after-idle", "none", 60.0),
               run("big-alloc-after-idle", "classic", 40.0),
               run("big-alloc-after-idle", "pressure", 10.0, 47.0, done=False, exit_status=1,
                   workload_failures=[{"kind": "enomem", "detail": "mmap 512 MiB"}])]
    line = next(x for x in render_table(results).splitlines() if "| pressure |" in x)
    assert "**FAIL** 1/1" in line and "enomem 1" in line and "did-not-finish 1" in line
    assert suite_ratio(results, "pressure") is None


def test_select_workloads() -> None:
    assert select_workloads("tuned") == list(wl.TUNED)
    assert select_workloads("held-out") == list(wl.HELD_OUT)
    assert select_workloads("all") == [*wl.TUNED, *wl.HELD_OUT]
    assert select_workloads("sharp-spikes,jvm-heap") == ["sharp-spikes", "jvm-heap"]
    with pytest.raises(ValueError, match="nope"):
        select_workloads("sharp-spikes,nope")


def test_tuned_and_held_out_halves_split_the_suite() -> None:
    assert len(wl.TUNED) == len(wl.HELD_OUT) == 4
    assert set(wl.TUNED).isdisjoint(wl.HELD_OUT)
    assert set(wl.TUNED) | set(wl.HELD_OUT) | {"phased"} == set(wl.WORKLOADS)
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert all(name in readme for name in wl.HELD_OUT)
    assert "held out: " + ", ".join(f"`{n}`" for n in wl.HELD_OUT) in readme


def test_analyse_one_run_from_its_files() -> None:
    samples = "".join(
        f"{2000 + i}|bal1 3 {mem} 2 -b---- 1.0|{phase}\n"
        for i, (mem, phase) in enumerate([(1024, "ready"), (700, "base"), (700, "spike-1"),
                                          (900, "spike-1"), (1024, "end"), (1024, "exit-0")]))
    res = RunResult("sharp-spikes", "pressure", 0)
    analyse(res, {"samples": samples, "workload": WORKLOAD_OUT, "events": EVENTS_OUT,
                  "dmesg": "", "trace": ""}, "bal1")
    assert res.errors == [] and res.done and res.run_time_s == 43.0
    assert res.held_gib_s == pytest.approx((700 + 700 + 900) / 1024)
    assert (res.min_mib, res.max_mib) == (700, 1024)
    assert res.start_mib == 700  # the first sample of the workload's first phase
    assert [s.phase for s in res.spikes] == ["spike-1", "spike-2"]
    assert not run_failed(res)
    empty = RunResult("sharp-spikes", "pressure", 0)
    analyse(empty, {}, "bal1")
    assert "no workload window in the Dom0 samples" in empty.errors
    assert "the agent never said started" in empty.errors
    assert run_failed(empty)


# --------------------------------------------------------------------------------------------
# The workload suite, run here (sizes scaled down 64 times, no sleeps)


def run_workload(name: str, *extra: str, limit_as: int | None = None,
                 files: Path | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    args = [sys.executable, str(WORKLOAD), name, "--time-scale", "0", *extra]
    if files is not None:
        args += ["--files", str(files)]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120,
                          preexec_fn=limit)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "files"
    d.mkdir()
    for i in range(4):
        (d / f"f{i}").write_bytes(os.urandom(1 << 20))
    return d


@pytest.mark.parametrize("name", sorted(wl.WORKLOADS))
def test_every_workload_runs_to_its_end_and_reports_ok(name: str, files: Path) -> None:
    extra = ["--ceiling-mib", "16"]
    if name == "phased":
        extra += ["--arena-mib", "4", "--anon-mib", "2", "--cache-mib", "2", "--spike-mib", "2"]
    proc = run_workload(name, *extra, files=files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = parse_workload(proc.stdout)
    assert report.summary is not None
    assert report.summary["ok"] is True and report.summary["done"] is True
    assert report.summary["workload"] == name and report.failures == []
    assert report.marks[-1].phase == "end"
    assert set(report.summary["phases"]) == {m.phase for m in report.marks[:-1]}
    assert report.summary["busy_s"] <= report.summary["run_time_s"]
    if name in ("big-alloc-after-idle", "sharp-spikes", "jvm-heap", "phased"):
        assert any(m.spike for m in report.marks)
    if name in ("cache-scan-twice", "long-idle", "phased"):
        assert any(m.cache for m in report.marks)
    assert proc.stderr == ""


def test_the_old_phased_workload_keeps_its_phases(files: Path) -> None:
    proc = run_workload("phased", "--arena-mib", "4", "--anon-mib", "2", "--cache-mib", "2",
                        "--spike-mib", "2", "--idle-s", "0", files=files)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x.get("phase") for x in lines[:-1]] == ["grow", "cache", "idle", "spike", "shrink",
                                                    "end"]
    assert lines[1]["files"] == 2


def test_big_allocation_refused_is_reported_as_enomem_without_a_traceback() -> None:
    # RLIMIT_AS makes mmap fail with ENOMEM, as overcommit's heuristic does in a shrunk guest.
    proc = run_workload("big-alloc-after-idle", limit_as=300 << 20)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    report = parse_workload(proc.stdout)
    assert report.summary is not None and report.summary["done"] is False
    (failure,) = report.failures
    assert failure["kind"] == "enomem" and failure["phase"] == "alloc"
    assert "mmap 512 MiB" in failure["detail"] and "Cannot allocate memory" in failure["detail"]
    assert [m.phase for m in report.marks] == ["warm", "idle", "alloc", "failed"]


def test_malloc_refused_is_reported_as_enomem() -> None:
    proc = run_workload("slow-leak", "--ceiling-mib", "8192", limit_as=300 << 20)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = parse_workload(proc.stdout)
    (failure,) = report.failures
    assert failure["kind"] == "enomem" and failure["detail"].startswith("malloc 32 MiB")
    assert "Traceback" not in proc.stderr


def wl_args(name: str, **kw: Any) -> Any:
    args = wl.parse_args([name, "--time-scale", "0", "--ceiling-mib", "16"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_failed_fork_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(wl.os, "fork", no_fork)
    out = io.StringIO()
    assert wl.run_body(wl_args("fork-heavy"), out) == 1
    report = parse_workload(out.getvalue())
    (failure,) = report.failures
    assert failure["kind"] == "fork" and failure["phase"] == "forks"
    assert "os.fork in round 1" in failure["detail"]


def test_killed_and_failed_children_are_reported() -> None:
    pids = []
    for action in ("kill", "exit3", "ok", "enomem"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit({"exit3": 3, "ok": 0, "enomem": wl.CHILD_ENOMEM}[action])
        pids.append(pid)
    out = io.StringIO()
    r = wl.Run(wl_args("fork-heavy"), out)
    r.phase = "forks"
    with pytest.raises(wl.Failure):
        wl.reap_children(r, pids)
    kinds = [(f["kind"], f["detail"]) for f in r.failures]
    assert kinds == [("child-killed", "child killed by SIGKILL"),
                     ("child-failed", "child exited 3"),
                     ("enomem", "child's mmap failed (ENOMEM)")]


def test_the_supervisor_reports_an_oom_kill_of_the_workload() -> None:
    proc = subprocess.Popen([sys.executable, str(WORKLOAD), "long-idle", "--ceiling-mib", "16",
                             "--files", "/nonexistent"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    body = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        obj = json.loads(line)
        if obj.get("phase") == "idle":
            body = obj["pid"]
            break
    assert body is not None and body != proc.pid
    os.kill(body, signal.SIGKILL)  # what the OOM killer does
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    report = parse_workload("".join(lines) + rest)
    assert report.summary is not None and report.summary["done"] is False
    (failure,) = report.failures
    assert failure == {"kind": "killed", "phase": "idle", "t": failure["t"],
                       "detail": "the workload was killed by SIGKILL"}
    assert set(report.summary["phases"]) == {"warm", "idle"}


def test_list_names_both_halves() -> None:
    proc = subprocess.run([sys.executable, str(WORKLOAD), "--list"], stdout=subprocess.PIPE,
                          text=True, check=True, timeout=60)
    got = json.loads(proc.stdout)
    assert got["tuned"] == list(wl.TUNED) and got["held_out"] == list(wl.HELD_OUT)


def test_workload_refuses_a_working_set_larger_than_its_arena() -> None:
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), "phased", "--arena-mib", "4", "--anon-mib", "8"],
        stderr=subprocess.PIPE, check=False, timeout=60,
    )
    assert proc.returncode == 2 and b"--anon-mib <= --arena-mib" in proc.stderr


# --------------------------------------------------------------------------------------------
# The monitor, around a stand-in for the agent


def test_monitor_stamps_the_agents_lines_and_stops_it(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    agent = ("trap 'echo level=info event=stopping reason=SIGTERM; exit 0' TERM; "
             "echo 'level=info event=started role=guest'; "
             "while :; do sleep 0.1; done")
    proc = subprocess.Popen([sys.executable, str(MONITOR), "--out", str(out), "--interval",
                             "0.05", "--", "sh", "-c", agent])
    deadline = time.monotonic() + 30
    while "event=started" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the monitor never wrote the agent's first line"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    ev = parse_events(out.read_text())
    assert ev.agent_started and ev.agent_exit == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert any("event=stopping" in str(x.get("agent")) for x in lines)
    assert lines[-1].get("end") is True and all("mono" in x for x in lines)


def test_the_bound_of_a_none_run_survives_a_cut_trace(tmp_path: Path) -> None:
    trace = (ROOT / "tests" / "traces" / "synthetic-phases-1g.jsonl").read_text()
    # 60 snapshots from the monitor's offset 990.4: they cover the workload (1000.0 to 1043.0).
    lines = [*trace.splitlines()[:61], '{"balloon_current_kb":10485']
    res = RunResult("sharp-spikes", "none", 0)
    files = {"_dir": str(tmp_path), "trace": "\n".join(lines), "events": EVENTS_OUT,
             "workload": WORKLOAD_OUT}
    add_bound(res, files)
    assert res.notes == [] and res.bound_gib_s is not None and res.bound_mean_mib is not None
    assert 0 < res.bound_mean_mib < 1024
    none = RunResult("sharp-spikes", "none", 0)
    add_bound(none, {"_dir": str(tmp_path), "trace": "", "events": ""})
    assert none.bound_gib_s is None and none.notes and none.errors == []


def test_reanalyse_a_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "sharp-spikes.pressure.0"
    run_dir.mkdir()
    (run_dir / "samples.txt").write_text("".join(
        f"{2000 + i}|bal1 3 {mem} 2 -b---- 1.0|{phase}\n"
        for i, (mem, phase) in enumerate([(1024, "ready"), (700, "base"), (900, "spike-1"),
                                          (1024, "end"), (1024, "exit-0")])))
    (run_dir / "workload.out").write_text(WORKLOAD_OUT)
    (run_dir / "events.jsonl").write_text(EVENTS_OUT)
    (run_dir / "dmesg.txt").write_text(DMESG)
    (tmp_path / "results.json").write_text("{}")
    (res,) = reanalyse(tmp_path)
    assert (res.workload, res.policy, res.repeat, res.exit_status) == (
        "sharp-spikes", "pressure", 0, 0)
    assert res.held_gib_s == pytest.approx((700 + 900) / 1024)
    assert failure_kinds(res) == {"oom-kill": 1, "page-alloc-failure": 2}



#: Recorded on the testbed (run 20261204-122731-13311-balloon-bench, benchmarks/README.md):
#: sharp-spikes under pressure, OOM-killed in its third spike (and the kernel's line for it), and
#: big-alloc-after-idle under classic, its 512 MiB mmap refused after the idle.
RECORDED = ROOT / "tests" / "traces" / "balloon-bench-20261204"


def test_recorded_failures_from_the_testbed() -> None:
    killed = parse_workload((RECORDED / "sharp-spikes.pressure.workload.out").read_text())
    assert killed.summary is not None and killed.summary["done"] is False
    assert [f["kind"] for f in killed.failures] == ["killed"]
    assert killed.failures[0]["phase"] == "spike-3"
    assert [m.phase for m in killed.marks if m.spike] == ["spike-1", "spike-2", "spike-3"]
    enomem = parse_workload((RECORDED / "big-alloc-after-idle.classic.workload.out").read_text())
    assert [(f["kind"], f["phase"]) for f in enomem.failures] == [("enomem", "alloc")]
    assert "Cannot allocate memory" in enomem.failures[0]["detail"]
    oom = (RECORDED / "sharp-spikes.pressure.oom.dmesg").read_text()
    assert scan_kernel_log(oom).oom_lines == 1


def test_only_the_wrappers_exit_phase_ends_a_run() -> None:
    """jvm-heap has a phase of its own named ``exit``: on the bed (run
    20261204-155220-8943-balloon-bench) the harness took it for the wrapper's ``exit-N`` and
    collected the run before the workload's summary."""
    from benchmarks.balloon_testbed import wrapper_exit

    assert wrapper_exit("exit") is None and wrapper_exit("exit-") is None
    assert wrapper_exit("exit-0") == 0 and wrapper_exit("exit--9") == -9
    assert wrapper_exit("exit-137") == 137 and wrapper_exit("gc") is None


def test_collect_moves_the_guest_files_with_fetch(tmp_path: Path) -> None:
    """Issue 13 item 4: ``collect`` decoded ``run_ok("tar ... | base64")`` itself, stderr
    included, and a run ended in ``binascii.Error``. It asks ``Guest.fetch`` for the tar's bytes
    (checked against their MD5 there) and never decodes a console answer itself."""
    import tarfile

    from benchmarks.balloon_testbed import collect

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (("events.jsonl", '{"event": "x"}\n'), ("dmesg.txt", "[ 1.0] hi\n")):
            info = tarfile.TarInfo(f"sharp-spikes.pressure/{name}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    scripts: list[str] = []

    class FakeGuest:
        def fetch(self, script: str, timeout: float = 300) -> bytes:
            scripts.append(script)
            return buf.getvalue()

        def run_ok(self, script: str, timeout: float = 120) -> str:
            raise AssertionError(f"collect used run_ok: {script}")

    files = collect(FakeGuest(), "sharp-spikes.pressure", tmp_path)
    assert files["events"] == '{"event": "x"}\n' and files["dmesg"] == "[ 1.0] hi\n"
    assert files["trace"] == "" and files["_dir"] == str(tmp_path / "sharp-spikes.pressure")
    assert len(scripts) == 1
    assert scripts[0].endswith("tar czf - -C /tmp/bench sharp-spikes.pressure")
    assert "base64" not in scripts[0]


def test_a_policy_variant_runs_the_policy_with_its_keys(tmp_path: Path) -> None:
    """``--policies pressure-r32``: the daemon's file names the policy and sets the variant's
    key, which the agent's own loader accepts and the policy gets (R at least 32 MiB); an
    unknown name is refused before any bed."""
    from benchmarks.balloon_testbed import balloon_section, parse_args, start_script
    from guestagent.balloon.config import policy_config
    from guestagent.config import load

    text = balloon_section("pressure-r32")
    assert text == ('[balloon]\nenabled = true\nallow_hvm = true\npolicy = "pressure"\n'
                    'reserve_mb = 32\n')
    assert "reserve_mb" not in balloon_section("pressure")
    (tmp_path / "guestagent.toml").write_text(text)
    cfg = load(str(tmp_path / "guestagent.toml"), str(tmp_path / "conf.d"))
    assert policy_config(cfg.section("balloon")).reserve_min_kb == 32 * 1024  # type: ignore[attr-defined]
    assert cfg.section("balloon")["allow_hvm"] is True
    script = start_script("w.pressure-r32.0", "w", "pressure-r32", "note")
    config_part = script.split("; dmesg")[0].replace("/tmp/bench", str(tmp_path))
    subprocess.run(["sh", "-c", config_part], check=True)
    assert (tmp_path / "w.pressure-r32.0" / "guestagent.toml").read_text() == text
    assert parse_args(["--policies", "none,pressure,pressure-r32"]).policy_list == [
        "none", "pressure", "pressure-r32"]
    with pytest.raises(SystemExit):
        parse_args(["--policies", "pressure-r8"])
    (tmp_path / "guestagent.toml").write_text(balloon_section("pressure-1s"))
    cfg = load(str(tmp_path / "guestagent.toml"), str(tmp_path / "conf.d"))
    assert policy_config(cfg.section("balloon")).interval_s == 1.0  # type: ignore[attr-defined]


def test_the_workload_is_sized_to_the_guest_it_runs_in() -> None:
    """``--memory 2048``: the workload's command line carries the guest's ceiling, which the
    workload's own parser reads (its sizes are written for 1 GiB and scale with it)."""
    import shlex

    from benchmarks.balloon_testbed import workload_script
    from benchmarks.balloon_workload import parse_args as workload_args

    def workload_argv(script: str) -> list[str]:
        inner = shlex.split(script)[3]  # setsid sh -c '<the workload's command>'
        argv = shlex.split(inner.split(">")[0])
        assert argv[0] == "python3" and argv[1].endswith("balloon_workload.py")
        return argv[2:]

    sized = workload_args(workload_argv(workload_script("w.pressure.0", "sharp-spikes", 2048)))
    assert (sized.workload, sized.ceiling_mib) == ("sharp-spikes", 2048)
    default = workload_args(workload_argv(workload_script("w.none.0", "long-idle")))
    assert default.ceiling_mib == 1024


def test_the_agents_cpu_is_read_from_proc_and_counted_over_the_workloads_run() -> None:
    """The monitor's ``agent_cpu_s`` lines (``/proc/PID/stat``, the agent and its waited-for
    helpers) become the agent's CPU over the workload's run, as % of one CPU, in the table."""
    from benchmarks.balloon_monitor import process_cpu_s
    from benchmarks.balloon_testbed import cpu_pct_between, parse_events

    own = os.times()
    mine = process_cpu_s(os.getpid())
    assert mine is not None
    assert abs(mine - (own.user + own.system + own.children_user + own.children_system)) < 0.1
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_cpu_s(gone.pid) is None

    text = "\n".join(json.dumps({"agent_cpu_s": c, "mono": m})
                     for m, c in ((10.0, 5.0), (11.0, 5.1), (12.0, 5.3), (13.0, 5.4)))
    ev = parse_events(text)
    assert ev.agent_cpu == [(10.0, 5.0), (11.0, 5.1), (12.0, 5.3), (13.0, 5.4)]
    # From the last sample at or before the start to the first at or after the end.
    pct = cpu_pct_between(ev.agent_cpu, 10.5, 12.5)
    assert pct is not None and abs(pct - 40.0 / 3) < 1e-9
    assert cpu_pct_between(ev.agent_cpu, 9.0, 12.0) is None  # nothing before the start
    assert cpu_pct_between(ev.agent_cpu, 10.0, 13.5) is None  # nothing after the end
    assert cpu_pct_between([], 0.0, 1.0) is None


def test_the_guest_type_is_chosen_and_recorded() -> None:
    """``--type hvm`` boots an HVM guest of the same image; the result file says which type ran."""
    from benchmarks.balloon_testbed import parse_args, report_of

    assert parse_args([]).type == "pv"
    args = parse_args(["--type", "hvm", "--workloads", "jvm-heap"])
    assert args.type == "hvm"
    assert report_of(args, "run", [], [])["guest"] == {"memory_mib": 1024, "vcpus": 2,
                                                        "type": "hvm"}
    with pytest.raises(SystemExit):
        parse_args(["--type", "pvh"])


def test_a_run_the_bed_lost_keeps_what_dom0_can_still_tell(tmp_path: Path) -> None:
    """A run whose guest stopped answering (HVM `anon-grow-shrink`, run
    20261206-172548-10978: 600 s without the workload's end, then every console command failed)
    keeps the sampler's lines, the guest's console and Xen's view, from Dom0; a part Dom0 fails
    to give says why in its file."""
    from benchmarks.balloon_testbed import save_forensics
    from tests.e2e.util import BedError

    asked: list[str] = []

    class FakeBed:
        def dom0(self, script: str, timeout: float = 120) -> tuple[str, int]:
            asked.append(script)
            if script.startswith("xl list"):
                raise BedError("Dom0 command timed out")
            return f"out of {script.split()[0]}\n", 0

    class FakeGuest:
        domid = 7

    save_forensics(FakeBed(), FakeGuest(), "w.pressure.0", tmp_path)
    run = tmp_path / "w.pressure.0"
    assert asked[0] == "cat /run/e2e/bench-w.pressure.0.samples"
    assert asked[1] == "e2e-guest log 7 200000"
    assert (run / "samples.txt").read_text() == "out of cat\n"
    assert (run / "console.txt").read_text() == "out of e2e-guest\n"
    assert (run / "xl.txt").read_text() == "not saved: Dom0 command timed out\n"
    assert "/local/domain/7/memory" in asked[2]


def test_the_workload_can_meet_a_guest_the_agent_has_already_sized() -> None:
    """``--settle-seconds S``: S s of idle after the agent starts, before the workload, the same
    for every policy; the result file records S and the table each run's size at the start."""
    from benchmarks.balloon_testbed import parse_args, report_of

    assert parse_args([]).settle_seconds == 0.0
    args = parse_args(["--settle-seconds", "60"])
    assert report_of(args, "run", [], [])["settle_seconds"] == 60.0
    for bad in ("-1", "nan", "1e9"):
        with pytest.raises(SystemExit):
            parse_args(["--settle-seconds", bad])
    results = [run("long-idle", "none", 60.0), run("long-idle", "pressure", 30.0)]
    results[0].start_mib, results[1].start_mib = 1024, 431
    header, _, *rows = render_table(results).splitlines()
    assert header.split(" | ")[3] == "start MiB"
    assert [row.split(" | ")[3] for row in rows] == ["1024", "431"]
