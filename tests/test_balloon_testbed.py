"""The balloon testbed benchmark's arithmetic and its guest workload, without a testbed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.balloon_testbed import (
    RunResult,
    Sample,
    memory_held,
    parse_samples,
    render_summary,
    render_table,
    trace_stats,
    workload_window,
)

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "benchmarks" / "balloon_workload.py"

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


def test_window_of_a_killed_workload_ends_at_its_exit() -> None:
    samples = [Sample(0, 1024, "grow"), Sample(1, 800, "spike"), Sample(2, 1024, "exit-137")]
    assert workload_window(samples) == (0, 2)
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


def test_table_and_target_use_classic_and_none_of_the_same_repeat() -> None:
    results = [
        RunResult("none", 0, held_gib_s=100.0, run_time_s=200.0, busy_s=100.0, oom_kills=0),
        RunResult("classic", 0, held_gib_s=80.0, run_time_s=201.0, busy_s=101.0, oom_kills=0),
        RunResult("pressure", 0, held_gib_s=56.0, run_time_s=205.0, busy_s=104.0, oom_kills=0),
    ]
    table = render_table(results)
    assert "   0.700 " in table.splitlines()[3]  # 56 / 80
    assert "1.025" in table.splitlines()[3]  # 205 / 200
    assert "target" in render_summary(results) and "MET" in render_summary(results)
    results[2].oom_kills = 1
    assert "NOT MET" in render_summary(results)
    results[2].oom_kills = 0
    results[2].held_gib_s = 61.0  # 0.7625 of classic
    assert "NOT MET" in render_summary(results)


def test_workload_runs_its_phases(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for i in range(3):
        (files / f"f{i}").write_bytes(b"x" * (1 << 20))
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), "--arena-mib", "4", "--anon-mib", "2", "--cache-mib", "2",
         "--files", str(files), "--idle-s", "0", "--spike-mib", "2", "--spike-hold-s", "0",
         "--tail-s", "0"],
        stdout=subprocess.PIPE, check=True, timeout=60,
    )
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert [x.get("phase") for x in lines[:-1]] == ["grow", "cache", "idle", "spike", "shrink",
                                                    "end"]
    assert lines[1]["files"] == 2
    summary = lines[-1]
    assert summary["done"] is True
    assert set(summary["phases"]) == {"grow", "cache", "idle", "spike", "shrink"}
    assert summary["busy_s"] <= summary["run_time_s"]


def test_workload_refuses_a_working_set_larger_than_its_arena() -> None:
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), "--arena-mib", "4", "--anon-mib", "8"],
        stderr=subprocess.PIPE, check=False, timeout=60,
    )
    assert proc.returncode == 2 and b"--anon-mib <= --arena-mib" in proc.stderr
