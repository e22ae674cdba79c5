"""benchmarks/balloon_replay.py's gap to the no-headroom bound (``--bound``) and its lever table
(``--levers``): the parts add up to the gap, and a recorded ``none`` run is read the way
``balloon_testbed`` reads it (the workload's clock, its cache flags, the trace offset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.balloon_replay import (
    GAP_PARTS,
    LEVERS,
    attribute,
    bound_replay,
    lever_table,
    main,
    run_window,
)
from guestagent.balloon.trace import load_trace

HERE = Path(__file__).resolve().parent
BENCH = HERE / "traces" / "balloon-bench-20261204"
CACHE_SCAN = BENCH / "cache-scan-twice.none.212118.jsonl"


def test_attribute_fills_the_parts_in_order_and_keeps_the_sum() -> None:
    parts = (("reserve", 64), ("second_reserve", 64), ("burst", 100), ("rising", 0),
             ("floor", 50))
    got = attribute(200, parts)
    assert got == {"reserve": 64, "second_reserve": 64, "burst": 72, "rising": 0, "floor": 0,
                   "rest_above": 0, "rest_below": 0}
    got = attribute(400, parts)
    assert got["floor"] == 50 and got["rest_above"] == 400 - 64 - 64 - 100 - 50
    got = attribute(-30, parts)
    assert got["rest_below"] == -30 and sum(got.values()) == -30


def _run_dir(tmp_path: Path) -> Path:
    """A ``none`` run directory made from a recorded trace: the workload starts 20 s into the
    trace (its monotonic clock 1000 s ahead of the trace's) and reads a cache from 40 to 60 s."""
    run = tmp_path / "cache-scan-twice.none.0"
    run.mkdir()
    text = CACHE_SCAN.read_text()
    (run / "trace.jsonl").write_text(text + '{"cut": ')  # the recorder's last line may be cut
    start = load_trace(str(CACHE_SCAN)).snapshots[0].timestamp
    phases = [("anon", 20.0, False), ("scan", 40.0, True), ("tail", 60.0, False),
              ("end", 80.0, False)]
    (run / "workload.out").write_text("".join(
        json.dumps({"phase": p, "mono": 1000.0 + start + t, "t": t, "cache": c}) + "\n"
        for p, t, c in phases))
    (run / "events.jsonl").write_text(json.dumps({"mono": 1.0, "trace_offset": 1000.0}) + "\n")
    return run


def test_the_gap_to_the_bound_is_the_sum_of_its_parts(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    snaps, window, cache_at = run_window(run)
    assert window[1] - window[0] == 60.0
    inside = [c for s, c in zip(snaps, cache_at) if 40.0 <= s.timestamp - snaps[0].timestamp < 60]
    assert inside and max(inside) > snaps[0].cached_kb  # the scan's cache counts as in use
    for every in (1, 5):
        gap, short = bound_replay(run, every, None)
        assert short == 0
        assert gap.seconds > 55
        assert abs(gap.held - gap.bound - sum(gap.parts.values())) < 0.5
        assert set(gap.parts) == set(GAP_PARTS)
        assert gap.parts["reserve"] == 32.0  # R = 32 MiB in a 1 GiB guest, never under demand + R
        assert 28.0 <= gap.parts["second_reserve"] <= 32.0
        assert 1.0 < gap.ratio() < 3.0


def test_a_plain_trace_is_its_own_window_with_the_boot_cache() -> None:
    snaps, window, cache_at = run_window(CACHE_SCAN)
    assert window == (snaps[0].timestamp, snaps[-1].timestamp)
    assert set(cache_at) == {snaps[0].cached_kb}


def test_the_lever_table_replays_each_lever() -> None:
    table = lever_table(CACHE_SCAN, 5, None)
    assert set(table) == {"law", *LEVERS}
    law_held, law_short = table["law"]
    assert law_short == 0
    # halving R holds less on this trace; every variant holds something between floor and ceiling
    assert table["R halved"][0] < law_held
    assert all(256 <= held <= 1024 for held, _ in table.values())


def test_the_command_line_is_checked_before_any_trace_is_read(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` is help (it was once read as a trace's path); a bad value is one usage line."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--populate-mib-s" in capsys.readouterr().out
    for argv, said in ((["--every", "0", "x"], "--every: expected 1 or more, got 0"),
                       (["--populate-mib-s", "-1"], "--populate-mib-s: expected more than 0"),
                       (["--bound"], "need one or more none-run directories"),
                       (["--bound", "--levers", "x"], "not allowed with argument")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err, argv
