"""What one tick of the tiering job reads and writes (issue 18 item 1): the steady state reads
the nodes' ``meminfo``, ``/proc/vmstat`` and, while a kdamond runs, its ``sz_applied`` (its
``state`` only when the kernel refused the request for fresh stats); the online nodes, the
distances and the MGLRU switch are taken over from an earlier snapshot; a commit does not read
the counters the same tick just read; idle ticks are spaced out."""

from __future__ import annotations

import errno
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from guestagent.config import defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.errors import InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.tiering import readers
from guestagent.tiering.damon import DamonBackend
from guestagent.tiering.job import TieringJob
from guestagent.tiering.model import TieringConfig
from guestagent.tiering.policy import IDLE_MAX_FACTOR, next_interval
from guestagent.tiering.runner import LAYOUT_MAX_AGE_S, Runner
from tests.test_tiering_damon import FIXTURES, FakeDamonKernel, kd_path, make_tree

MIB = 1 << 20
NODE = "/sys/devices/system/node"
MEMINFO0 = "sys/devices/system/node/node0/meminfo"
SZ_APPLIED = kd_path(0, "contexts/0/schemes/0/stats/sz_applied")


class CountingFS(HostFS):
    """A HostFS that remembers every file it read."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read_text(self, host_path: str) -> str:
        self.reads.append(host_path)
        return super().read_text(host_path)


def job_context(tmp_path: Path, hostfs: HostFS, backends: list[tuple[str, Any]],
                loop: EventLoop | None = None, **tiering: Any) -> JobContext:
    """A tiering job's context on the fixture tree: the default configuration (state under
    ``tmp_path``, ``tiering`` overrides), no xenstore, the given backends."""
    loop = EventLoop() if loop is None else loop
    config = defaults()
    config.values["agent"]["state_dir"] = str(tmp_path / "state")
    config.values["tiering"].update(tiering)
    return JobContext(loop, hostfs, config, XenstoreHub(loop, lambda: None), "guest",
                      host=Host(hostfs, tiering_backends=backends))


def world(tmp_path: Path) -> tuple[Path, FakeDamonKernel, CountingFS, Runner]:
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = CountingFS(str(root))
    clock = iter(float(2 * i) for i in range(1000))
    config = TieringConfig(source_high_pct=45.0, target_min_pct=45.0, interval_s=2.0)
    backend = DamonBackend(hostfs, writer=kernel.write)
    return root, kernel, hostfs, Runner(hostfs, backend, config, clock=lambda: next(clock))


def one_tick(runner: Runner, kernel: FakeDamonKernel, hostfs: CountingFS) -> tuple[
    list[str], list[tuple[str, str]]
]:
    hostfs.reads.clear()
    kernel.writes.clear()
    runner.tick()
    return sorted(hostfs.reads), list(kernel.writes)


STEADY_READS = sorted([f"{NODE}/node0/meminfo", f"{NODE}/node1/meminfo", "/proc/vmstat",
                       SZ_APPLIED])


def test_a_tick_at_a_steady_rate_reads_four_files_and_asks_for_fresh_stats_once(
    tmp_path: Path,
) -> None:
    _, kernel, hostfs, runner = world(tmp_path)
    moved = 0
    for _ in range(40):  # 4 MiB/s up to max_rate (64) by 2 per tick, the quota used in full
        runner.tick()
        quota = 2 * runner.state.of(0).rate
        kernel.advance(0, sz_applied=quota, sz_tried=quota)
        moved += quota
    assert runner.state.of(0).rate == runner.config.max_rate
    reads, writes = one_tick(runner, kernel, hostfs)
    assert reads == STEADY_READS
    assert writes == [(kd_path(0, "state"), "update_schemes_stats")]
    # What moved still reaches the policy and the summary (sz_applied alone each tick).
    assert runner.state.of(0).out_bytes == moved
    stats = runner.backend.stats()
    assert stats.moved_by_source == {0: moved, 1: 0}
    assert stats.bytes_tried == moved


def test_a_tick_that_commits_reads_the_counters_once(tmp_path: Path) -> None:
    _, kernel, hostfs, runner = world(tmp_path)
    runner.tick()  # start: 4 MiB/s
    kernel.advance(0, sz_applied=8 * MIB)  # the quota used in full over 2 s
    reads, writes = one_tick(runner, kernel, hostfs)  # 6 MiB/s: a commit
    assert reads == STEADY_READS
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert writes == [
        (kd_path(0, "state"), "update_schemes_stats"),
        (f"{s0}/target_nid", "1"),
        (f"{s0}/quotas/bytes", str(6 * MIB)),
        (kd_path(0, "state"), "commit"),
    ]


def test_a_kdamond_turned_off_behind_the_agents_back_is_seen_and_turned_on_again(
    tmp_path: Path,
) -> None:
    root, kernel, hostfs, runner = world(tmp_path)
    runner.tick()  # start: 4 MiB/s
    kernel.advance(0, sz_applied=8 * MIB)
    runner.tick()  # 6 MiB/s, committed; sz_applied read
    (root / kd_path(0, "state").lstrip("/")).write_text("off\n")  # another DAMON user's "off"
    reads, writes = one_tick(runner, kernel, hostfs)
    # The request for stats is refused (EINVAL: not running): the state is read instead of the
    # counters (those of an "off" kdamond are as the last request left them).
    assert reads == sorted([f"{NODE}/node0/meminfo", f"{NODE}/node1/meminfo", "/proc/vmstat",
                            kd_path(0, "state")])
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert writes == [
        (kd_path(0, "state"), "update_schemes_stats"),
        (f"{s0}/target_nid", "1"),
        (f"{s0}/quotas/bytes", str(8 * MIB)),
        (kd_path(0, "state"), "on"),
    ]
    assert kernel.kdamond_states() == ["on", "off"]
    assert runner.backend.stats().moved_by_source[0] == 8 * MIB  # nothing lost, nothing doubled


def test_stats_refused_by_a_running_kdamond_keep_it_running_as_it_was(tmp_path: Path) -> None:
    _, kernel, hostfs, runner = world(tmp_path)
    for _ in range(40):  # up to max_rate: a steady plan after
        runner.tick()
        quota = 2 * runner.state.of(0).rate
        kernel.advance(0, sz_applied=quota, sz_tried=quota)
    moved_before = runner.backend.stats().moved_by_source[0]
    original = kernel._state

    def busy(p: Path, path: str, value: str) -> None:
        if value == "update_schemes_stats":
            kernel._fail(path, value, errno.EBUSY)  # another command in flight
        original(p, path, value)

    kernel._state = busy  # type: ignore[method-assign]
    reads, writes = one_tick(runner, kernel, hostfs)
    assert reads == sorted([f"{NODE}/node0/meminfo", f"{NODE}/node1/meminfo", "/proc/vmstat",
                            kd_path(0, "state")])
    assert writes == [(kd_path(0, "state"), "update_schemes_stats")]  # no commit, no "on"
    assert kernel.kdamond_states() == ["on", "off"]
    kernel._state = original  # type: ignore[method-assign]
    kernel.advance(0, sz_applied=5 * MIB)
    one_tick(runner, kernel, hostfs)
    assert runner.state.of(0).out_bytes == moved_before + 5 * MIB  # counted once, when read


def test_an_idle_tick_reads_three_files_and_nothing_of_damon(tmp_path: Path) -> None:
    root, kernel, hostfs, runner = world(tmp_path)
    runner.tick()
    kernel.advance(0, sz_applied=40 * MIB, sz_tried=40 * MIB)
    text = (root / MEMINFO0).read_text().replace("61836 kB", "600000 kB")  # node 0: 58 % free
    (root / MEMINFO0).write_text(text)
    runner.tick()  # pressure over: node 0's kdamond off, its counters read first
    assert kernel.kdamond_states() == ["off", "off"]
    assert runner.backend.stats().moved_by_source[0] == 40 * MIB
    reads, writes = one_tick(runner, kernel, hostfs)
    assert reads == sorted([f"{NODE}/node0/meminfo", f"{NODE}/node1/meminfo", "/proc/vmstat"])
    assert writes == []
    assert runner.idle_ticks == 2


def test_the_layout_is_read_again_after_a_minute_or_after_a_snapshot_failed(
    tmp_path: Path,
) -> None:
    root, _, hostfs, runner = world(tmp_path)
    nodes = root / "sys/devices/system/node"
    distance0 = nodes / "node0/distance"
    runner.tick()
    distance0.write_text("10 30\n")
    runner.tick()
    assert runner._snapshot().distance(0, 1) == 20  # taken over from the first snapshot
    runner.layout_max_age_s = 0.0  # a minute later
    assert runner._snapshot().distance(0, 1) == 30
    runner.layout_max_age_s = LAYOUT_MAX_AGE_S
    # Node 1 comes online only now (it was not in the layout): seen at the minute's read.
    distance0.write_text("10 40\n")
    (nodes / "online").write_text("0\n")
    assert list(runner._snapshot().nodes) == [0, 1]  # within the minute: the layout's nodes
    runner.layout_max_age_s = 0.0
    one_node = runner._snapshot()  # read again: the row no longer fits the online nodes
    assert list(one_node.nodes) == [0] and one_node.distances == {}
    assert "node0/distance" in one_node.problems[0]
    runner.layout_max_age_s = LAYOUT_MAX_AGE_S
    (nodes / "online").write_text("0-1\n")
    assert runner._snapshot().distance(0, 1) == 40  # a snapshot with a problem is not kept
    # Node 1 goes offline within the minute: its meminfo goes with it. One tick paused (its
    # reason logged), the next reads ``online`` again and serves node 0 alone.
    assert runner._snapshot().distance(0, 1) == 40
    meminfo1 = (nodes / "node1/meminfo").read_text()
    (nodes / "node1/meminfo").unlink()
    (nodes / "online").write_text("0\n")
    assert runner.tick() is None and runner.plan.moves == ()
    hostfs.reads.clear()
    assert list(runner._snapshot().nodes) == [0]
    assert f"{NODE}/online" in hostfs.reads
    (nodes / "node1/meminfo").write_text(meminfo1)
    (nodes / "online").write_text("0-1\n")


def test_a_snapshot_with_a_problem_is_not_taken_over(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    hostfs = HostFS(str(root))
    (root / "sys/devices/system/node/node1/distance").write_text("20 x\n")
    first = readers.read_snapshot(hostfs)
    assert first.problems
    (root / "sys/devices/system/node/node1/distance").write_text("20 10\n")
    again = readers.read_snapshot(hostfs, first)
    assert again.problems == [] and again.distance(1, 0) == 20


def test_returned_pages_parses_its_own_line_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    vmstat = root / "proc/vmstat"
    vmstat.write_text("nr_free_pages lots\nnuma_pages_migrated_x 9\nnuma_pages_migrated 77\n")
    assert readers.returned_pages(HostFS(str(root))) == 77
    vmstat.write_text("nr_free_pages 5\n")
    assert readers.returned_pages(HostFS(str(root))) is None
    vmstat.write_text("nr_free_pages 5\nnuma_pages_migrated 7 8\n")
    with pytest.raises(InputError, match=r"/proc/vmstat line 2: expected 'name number'"):
        readers.returned_pages(HostFS(str(root)))


def test_idle_ticks_are_spaced_out_up_to_the_factor() -> None:
    config = TieringConfig(interval_s=2.0)
    assert [next_interval(config, n) for n in range(6)] == [2.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert IDLE_MAX_FACTOR == 4
    assert next_interval(config, 10_000) == 2.0 * IDLE_MAX_FACTOR


def test_the_job_spaces_its_ticks_out_while_idle_and_not_once_a_node_is_short(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    short = (root / MEMINFO0).read_text()
    (root / MEMINFO0).write_text(short.replace("61836 kB", "600000 kB"))
    damon = ("damon", lambda h: DamonBackend(h, writer=kernel.write))
    ctx = job_context(tmp_path, hostfs, [damon])
    job = TieringJob()
    job.start(ctx)
    every = ctx.config.section("tiering")["interval_seconds"]
    seen = []
    for _ in range(4):
        job._tick()
        assert job._timer is not None
        seen.append(job._timer.interval)
    assert seen == [every, 2 * every, 4 * every, 4 * every]
    assert kernel.writes == []  # idle: nothing created
    (root / MEMINFO0).write_text(short)  # node 0 short again
    job._tick()
    assert job._timer is not None and job._timer.interval == every
    assert kernel.kdamond_states() == ["on", "off"]
    assert job.ticks == 5 and job.cpu_at_first_tick_s is not None
    job.stop()
    ctx.loop.close()


def test_a_source_paused_for_want_of_room_is_spaced_out_and_logged_once(
    tmp_path: Path, log_events: list[MutableMapping[str, Any]],
) -> None:
    """Node 0 short, node 1 under its own watermark: nothing can move, nothing runs. The ticks
    are spaced out as when idle (a guest whose other node stays full would otherwise tick and
    log a line every interval for as long as it waits); the first tick after node 1's room is
    back moves, and the interval is back."""
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    meminfo1 = root / "sys/devices/system/node/node1/meminfo"
    roomy = meminfo1.read_text()
    short0 = (root / MEMINFO0).read_text()
    ctx = job_context(tmp_path, hostfs, [("damon", lambda h: DamonBackend(h, writer=kernel.write))])
    job = TieringJob()
    job.start(ctx)
    every = ctx.config.section("tiering")["interval_seconds"]
    seen = []
    for free1_kb, free0_kb in ((200000, 61836), (190000, 60000), (180000, 58000), (170000, 59000)):
        meminfo1.write_text(roomy.replace("643477 kB", f"{free1_kb} kB"))  # 18-21 %: full
        (root / MEMINFO0).write_text(short0.replace("61836 kB", f"{free0_kb} kB"))  # 6 %
        job._tick()
        assert job._timer is not None
        seen.append(job._timer.interval)
    assert seen == [every, 2 * every, 4 * every, 4 * every]
    assert kernel.writes == []  # nothing was ever started
    reasons = [e for e in log_events if e["event"] == "tiering_reason"]
    assert [e["log_level"] for e in reasons] == ["info", "debug", "debug", "debug"]
    assert "paused" in reasons[0]["reason"]
    meminfo1.write_text(roomy)  # node 1's room is back
    job._tick()
    assert job._timer is not None and job._timer.interval == every
    assert kernel.kdamond_states() == ["on", "off"]
    assert [e["log_level"] for e in log_events if e["event"] == "tiering_reason"][-1] == "info"
    job.stop()
    ctx.loop.close()


def test_between_full_snapshots_only_the_meminfo_lines_used_are_parsed(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    hostfs = HostFS(str(root))
    first = readers.read_snapshot(hostfs)
    meminfo1 = root / "sys/devices/system/node/node1/meminfo"
    good = meminfo1.read_text()
    meminfo1.write_text(good + "Node 1 Bogus: lots\n")
    with pytest.raises(InputError, match=r"node1/meminfo line \d+: expected 'Key: number"):
        readers.read_snapshot(hostfs)  # a full snapshot checks every line
    again = readers.read_snapshot(hostfs, first)
    assert again.nodes == first.nodes and again.distances is first.distances
    meminfo1.write_text(good.replace("Node 1 MemFree", "Node 0 MemFree"))
    with pytest.raises(InputError, match="has lines for node 0, expected node 1"):
        readers.read_snapshot(hostfs, first)
    meminfo1.write_text("garbage\n")
    with pytest.raises(InputError, match="node1/meminfo: has no MemTotal line"):
        readers.read_snapshot(hostfs, first)


def test_the_benchmark_sets_start_up_and_steady_state_against_kdamond() -> None:
    from benchmarks.tiering_testbed import cpu_split, split_lines

    split = cpu_split({"agent_cpu_s": 2.5, "process_cpu_s": 3.0, "startup_cpu_s": 2.0,
                       "steady_cpu_s": 1.0, "ticks": 11, "tick_cpu_s": 0.4}, 4.0)
    assert split["agent_to_kdamond"] == 2.5 / 4.0
    assert (split["startup_to_kdamond"], split["steady_to_kdamond"]) == (0.5, 0.25)
    assert split["agent_steady_cpu_per_tick_s"] == 0.1
    assert split["ticks_to_kdamond"] == 0.1
    lines = split_lines(split)
    assert "steady state 1.00 s (0.25x kdamond) over 11 ticks, 100.0 ms per later tick" in (
        lines[1])
    assert lines[2] == "  the tiering job's own ticks: 0.40 s (0.10x kdamond)"
    old = cpu_split({"agent_cpu_s": 2.5}, 4.0)  # a record from before the split
    assert old["startup_to_kdamond"] is None and old["agent_to_kdamond"] == 0.625
    assert "not in this record" in split_lines(old)[1]
    assert split_lines(cpu_split({"agent_cpu_s": 2.5}, 0.0)) == [
        "agent / kdamond CPU: no kdamond CPU seen"]


def _sample(t: float, agent_cpu: float | None, free0_kb: int) -> Any:
    from tests.e2e.tiering_scenario import Sample

    meminfo = {0: {"MemTotal": 500_000, "MemFree": free0_kb}, 1: {"MemTotal": 500_000,
                                                                   "MemFree": 300_000}}
    return Sample(t=t, meminfo=meminfo, cold_pages={}, damon={}, kdamond_cpu={},
                  agent_cpu=agent_cpu, agent_sys_cpu=None if agent_cpu is None else agent_cpu / 4)


def test_under_the_daemon_the_run_counts_from_before_the_fill_and_the_start_apart(
    tmp_path: Path,
) -> None:
    """A record of the scenario under ``guestagent run``: the agent's CPU over the run is the
    daemon's from the sample before the fill to the last that saw it (the sample after SIGTERM
    has none); its start (to the first tick) is apart; node 0 regains from its least."""
    from benchmarks.tiering_testbed import agent_cpu_parts, numbers
    from tests.e2e.tiering_scenario import Record

    rec = Record(agent_command="guestagent run --config /tmp/run.toml",
                 daemon_startup_cpu_s=3.0, before_fill=_sample(100.0, 3.25, 400_000),
                 summary={"ticks": 40, "tick_cpu_s": 0.5, "bytes_moved": 200 << 20})
    rec.samples = [_sample(130.0, 3.5, 20_000), _sample(180.0, 4.0, 150_000),
                   _sample(190.0, None, 210_000)]
    parts = agent_cpu_parts(rec)
    assert parts["elapsed_s"] == 80.0 and parts["agent_cpu_s"] == 0.75
    assert (parts["process_cpu_s"], parts["startup_cpu_s"], parts["steady_cpu_s"]) == (
        4.0, 3.0, 1.0)
    assert (parts["ticks"], parts["tick_cpu_s"]) == (40, 0.5)
    assert parts["agent_sys_cpu_s"] == round((4.0 - 3.25) / 4, 3)
    rec.kdamond_cpu_tracked = {4200: 2.5, 4201: 0.25}  # both exited before the last sample
    rec.samples[1].kdamond_cpu = {4200: 1.5}
    n = numbers(rec)
    assert n["kdamond_cpu_s"] == 2.75 and n["agent_to_kdamond"] == 0.75 / 2.75
    assert n["node0_free_regained_bytes"] == (210_000 - 20_000) * 1024
    assert n["agent_command"].startswith("guestagent run")
    assert n["status_cpu_in_run_s"] is None and n["agent_without_status_to_kdamond"] is None
    rec.save(tmp_path / "tier-tiering.json")  # and read back as the benchmark's --record does
    again = Record.load(tmp_path / "tier-tiering.json")
    assert again.before_fill == rec.before_fill and again.samples == rec.samples
    assert again.kdamond_cpu_tracked == rec.kdamond_cpu_tracked
    assert numbers(again) == n


def test_the_daemons_status_answers_are_taken_out_by_its_own_count() -> None:
    """The daemon counts the CPU of each status answer (with the answer); the scenario takes
    the answers between its status before the fill and its last, and the benchmark sets the
    agent without them against kdamond. A daemon without the count gives None, not a guess."""
    from benchmarks.tiering_testbed import numbers, split_lines
    from tests.e2e.tiering_scenario import Record, status_cpu_between

    before = {"status_answers": 3, "status_cpu_s": 0.3, "status_cpu_this_s": 0.1}
    after = {"status_answers": 5, "status_cpu_s": 0.9, "status_cpu_this_s": 0.2}
    assert status_cpu_between(before, after) == 0.4  # the one answer between them
    assert status_cpu_between({}, after) is None
    assert status_cpu_between(before, {"status_cpu_s": "x", "status_cpu_this_s": 0}) is None
    rec = Record(agent_command="guestagent run --config /tmp/run.toml",
                 daemon_startup_cpu_s=3.0, before_fill=_sample(100.0, 3.25, 400_000),
                 summary={"ticks": 40, "tick_cpu_s": 0.5, "bytes_moved": 200 << 20},
                 status_cpu_in_run_s=0.25, kdamond_cpu_tracked={4200: 2.5})
    rec.samples = [_sample(130.0, 3.5, 20_000), _sample(180.0, 4.0, 150_000)]
    n = numbers(rec)
    assert n["agent_cpu_s"] == 0.75 and n["kdamond_cpu_s"] == 2.5
    assert n["agent_without_status_to_kdamond"] == round(0.5 / 2.5, 4)
    assert any("status requests (the daemon's own count): 0.25 s; without them 0.20x" in line
               for line in split_lines(n))


def test_a_reason_is_logged_once_until_it_changes_and_a_new_rate_once(
    tmp_path: Path, log_events: list[dict[str, object]]
) -> None:
    _, kernel, _, runner = world(tmp_path)
    for _ in range(33):  # the ramp (4 -> 64 MiB/s: 31 ticks), then 2 at 64
        runner.tick()
    reasons = [str(e["reason"]) for e in log_events if e["event"] == "tiering_reason"]
    assert len(reasons) == 31 and reasons[-1].endswith("at 64.0 MiB/s")
    moves = [(e["log_level"], e["rate"]) for e in log_events if e["event"] == "damon_move"]
    # on at 4 MiB/s (info), then each new rate once, at debug: the reason line says it
    assert moves[0] == ("info", 4 * MIB)
    assert {level for level, _ in moves[1:]} == {"debug"} and len(moves) == 31
    assert kernel.kdamond_states() == ["on", "off"]


def test_the_job_probes_no_backend_after_the_first_that_serves(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    made: list[str] = []

    def tmem(h: HostFS) -> Any:
        made.append("tmem")
        raise ImportError("not this one")

    damon = ("damon", lambda h: DamonBackend(h, writer=kernel.write))
    loop = EventLoop()
    for wanted, expected in (("auto", []), ("damon", ["tmem"])):
        ctx = job_context(tmp_path, hostfs, [damon, ("tmem", tmem)], loop, backend=wanted)
        made.clear()
        job = TieringJob()
        job.start(ctx)
        assert job.backend is not None and job.backend.name == "damon"
        assert made == expected, wanted
        job.stop()
    loop.close()


def test_the_job_spaces_its_ticks_out_while_the_plan_is_kept_and_not_once_it_changes(
    tmp_path: Path,
) -> None:
    """DAMON moving more than min_rate but under half its quota: the rate is held, the plan
    kept, no commit, ticks spaced out; the quota used in full: the rate grows again and the
    ticks are back at the interval."""
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    damon = ("damon", lambda h: DamonBackend(h, writer=kernel.write))
    ctx = job_context(tmp_path, hostfs, [damon])
    now = [0.0]

    class TimedRunner(Runner):  # the time the loop's timer would have let pass
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "clock": lambda: now[0]})

    job = TieringJob(runner=TimedRunner)
    job.start(ctx)
    every = ctx.config.section("tiering")["interval_seconds"]
    seen = []
    for _ in range(5):
        job._tick()
        assert job._timer is not None
        seen.append(job._timer.interval)
        now[0] += job._timer.interval
        # 1.5 MiB/s: more than min_rate (1), under half of the 4 MiB/s quota
        kernel.advance(0, sz_applied=int(1.5 * MIB * job._timer.interval))
    # Node 0 lacks ~91 MiB to its source_high_pct: at the 1.5 MiB/s DAMON moves (under its
    # 4 MiB/s quota) the plan's horizon is ~60 s, past 4 intervals.
    assert job._runner is not None
    horizon = job._runner.horizon_s
    assert 4 * every < horizon < 7 * every
    assert seen == [every, every, 2 * every, 4 * every, 4 * every]
    assert [v for _, v in kernel.writes].count("commit") == 0
    kernel.advance(0, sz_applied=4 * MIB * int(4 * every))  # the quota used in full
    job._tick()
    # Back at the interval, or sooner where the move's horizon ends first.
    assert job._timer is not None and job._timer.interval <= every
    assert [v for _, v in kernel.writes].count("commit") == 1
    job.stop()
    ctx.loop.close()


def test_the_benchmark_names_a_record_it_cannot_read_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import tiering_testbed

    missing = tmp_path / "tier3-tiering.json"
    assert tiering_testbed.main(["--record", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "FileNotFoundError" in err[0]
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"samples": [')
    assert tiering_testbed.main(["--record", str(damaged)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged.json" in err[0]


@pytest.mark.parametrize("value", ["0.5", "-2", "nan", "601"])
def test_the_benchmark_refuses_an_interval_the_daemon_would_not_run_with(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import tiering_testbed

    with pytest.raises(SystemExit) as caught:
        tiering_testbed.main(["--interval", value, "--record", "/nonexistent"])
    assert caught.value.code == 2
    assert f"--interval {float(value)}" in capsys.readouterr().err
