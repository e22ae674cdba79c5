"""benchmarks/balloon_tick.py: the host mode really runs both trees; the guest mode's pieces."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks import balloon_tick

#: The baseline is a commit: the host mode needs the clone's history (HEAD at least).
needs_git = pytest.mark.skipif(
    subprocess.run(["git", "-C", str(balloon_tick.REPO), "rev-parse", "HEAD"],
                   capture_output=True).returncode != 0,
    reason="not a git clone",
)


@needs_git
def test_the_host_mode_runs_the_baseline_and_this_tree(capsys: pytest.CaptureFixture[str]) -> None:
    got = balloon_tick.main(["host", "--baseline", "HEAD", "--rounds", "1", "--ticks", "3"])
    assert got == 0
    out = capsys.readouterr().out
    assert "CPU per tick on the fixture: this tree" in out and "ratio" in out


def test_the_tick_loop_measures_a_positive_cpu_time() -> None:
    result = balloon_tick.tick_once(balloon_tick.REPO, 3)
    assert 0 < result["min_us"] <= result["median_us"]


@needs_git
def test_a_baseline_that_is_not_a_commit_fails() -> None:
    with pytest.raises(subprocess.CalledProcessError):
        balloon_tick.main(["host", "--baseline", "no-such-commit-xyz", "--rounds", "1"])


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--ticks", "0"], ["--seconds", "-1"]])
def test_non_positive_counts_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        balloon_tick.main(["host", "--baseline", "HEAD", *bad])


def test_the_ratio_line_is_this_tree_over_the_baseline() -> None:
    line = balloon_tick.ratio_line("x", [3.0, 1.0, 2.0], [4.0, 4.0, 4.0], "us")
    assert line.endswith("ratio 0.50x") and "this tree 2.00 us" in line

