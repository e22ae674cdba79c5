"""The numa job (issue 19 part 1): readers on fixture trees and their garbage, the rate function,
the published payload's bounds, the balancing warning and ``auto`` mode with its undo, the
metrics.

The tree is ``tests/fixtures/numa-2node`` (``PROVENANCE``): a 2-vnode HVM guest with
``numa_balancing`` 0. A second sample is made by rewriting its counters in a copy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent.config import defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.metrics import render
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.hostfs import HostFS
from guestagent.numa import balancing, figures, readers
from guestagent.numa.job import NumaJob
from guestagent.numa.model import CpuTime, NodeSample, Sample
from guestagent.schema import MAX_NUMA_VNODES, numa_tree
from guestagent.xen.xs_sync import MAX_TREE_NODES, check_desired
from tests.xenstore_server import XenstoreServer

FIXTURE = Path(__file__).parent / "fixtures" / "numa-2node"
NODE = "sys/devices/system/node"
SYSCTL = "proc/sys/kernel/numa_balancing"
Events = list[MutableMapping[str, Any]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    tree = tmp_path / "root"
    shutil.copytree(FIXTURE, tree)
    return tree


def write_numastat(root: Path, node: int, **counters: int) -> None:
    path = root / NODE / f"node{node}/numastat"
    values = dict(line.split() for line in path.read_text().splitlines())
    values.update({k: str(v) for k, v in counters.items()})
    path.write_text("".join(f"{k} {v}\n" for k, v in values.items()))


def advance(root: Path) -> None:
    """The counters 60 s later: node 0 allocated 6000 pages locally and 600 remotely; CPU 0
    ran 3000 of 6000 ticks, CPU 1 none; 1200 hint faults, 60 pages migrated."""
    write_numastat(root, 0, numa_hit=11006000, local_node=10906000, other_node=120600)
    stat = (root / "proc/stat").read_text().splitlines()
    stat[1] = "cpu0 152000 2000 31000 803000 3000 0 800 1500 0 0"
    stat[2] = "cpu1 140000 2000 25000 816000 2000 0 600 1500 0 0"
    (root / "proc/stat").write_text("\n".join(stat) + "\n")
    vmstat = (root / "proc/vmstat").read_text()
    vmstat = vmstat.replace("numa_hint_faults 40000", "numa_hint_faults 41200")
    vmstat = vmstat.replace("numa_pages_migrated 5120", "numa_pages_migrated 5180")
    (root / "proc/vmstat").write_text(vmstat)


# --- readers -------------------------------------------------------------------------------------

def test_the_fixture_reads_whole() -> None:
    sample = readers.read_sample(HostFS(str(FIXTURE)), 1.0)
    assert sample.problems == ()
    assert sorted(sample.nodes) == [0, 1]
    node0 = sample.nodes[0]
    assert node0.cpus == (0, 1) and node0.numastat is not None
    assert node0.numastat["local_node"] == 10900000 and node0.numastat["other_node"] == 120000
    assert node0.mem_total == 1030612 * 1024 and node0.mem_free == 61836 * 1024
    assert sample.cpu is not None and sorted(sample.cpu) == [0, 1, 2, 3]
    assert sample.cpu[0] == CpuTime(busy=150000 + 2000 + 30000 + 0 + 800,
                                    total=182800 + 800000 + 3000 + 1500)
    assert sample.vmstat == {"numa_hint_faults": 40000, "numa_pages_migrated": 5120}
    assert sample.pressure is not None and sample.pressure.some_avg10 == 0.25
    assert sample.pressure.full_avg10 == 0.1
    assert sample.balancing == 0


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        (f"{NODE}/node0/numastat", "numa_hit 12\nnuma_miss abc\n", "numa_miss abc"),
        (f"{NODE}/node0/numastat", "numa_hit 1\n", "has no numa_miss"),
        (f"{NODE}/node0/numastat", "x" * 4096, "expected 'name number'"),
        (f"{NODE}/node0/numastat", "", "is empty"),
        (f"{NODE}/node0/numastat", "numa_hit 99999999999999999999\n", "64-bit counter"),
        (f"{NODE}/node0/numastat", "numa_hit -5\n", "expected 'name number'"),
    ],
)
def test_numastat_garbage_is_one_line_and_the_rest_is_read(
    root: Path, path: str, text: str, expected: str
) -> None:
    (root / path).write_text(text)
    sample = readers.read_sample(HostFS(str(root)), 1.0)
    assert len(sample.problems) == 1, sample.problems
    line = sample.problems[0]
    assert "/sys/devices/system/node/node0/numastat" in line and expected in line, line
    assert len(line) < 300, "the value is shown bounded"
    assert sample.nodes[0].numastat is None
    assert sample.nodes[0].mem_free is not None and sample.nodes[0].cpus == (0, 1)
    assert sample.nodes[1].numastat is not None and sample.cpu is not None


@pytest.mark.parametrize(
    ("path", "text", "expected", "unknown"),
    [
        ("proc/stat", "cpu0 1 2 x 4\n", "/proc/stat line 1", "cpu"),
        ("proc/stat", "intr 5\n", "has no cpuN line", "cpu"),
        ("proc/vmstat", "numa_hint_faults lots\n", "/proc/vmstat line 1", "vmstat"),
        ("proc/pressure/memory", "some avg10=many\n", "/proc/pressure/memory line 1", "pressure"),
        ("proc/pressure/memory", "some avg10=101.00 avg60=0.00 avg300=0.00 total=1\n",
         "avg10=101.00", "pressure"),
        (SYSCTL, "7\n", "above the maximum 3", "balancing"),
        (SYSCTL, "on\n", "expected an integer", "balancing"),
        (f"{NODE}/node1/meminfo", "Node 1 MemTotal: 100 kB\n", "has no MemFree", None),
        (f"{NODE}/node1/meminfo", "Node 0 MemTotal: 100 kB\nNode 0 MemFree: 1 kB\n",
         "expected node 1", None),
    ],
)
def test_other_garbage_is_one_line_naming_the_file_and_value(
    root: Path, path: str, text: str, expected: str, unknown: str | None
) -> None:
    (root / path).write_text(text)
    sample = readers.read_sample(HostFS(str(root)), 1.0)
    assert len(sample.problems) == 1 and expected in sample.problems[0], sample.problems
    empty = {"cpu": sample.cpu is None, "vmstat": sample.vmstat == {},
             "pressure": sample.pressure is None, "balancing": sample.balancing is None}
    if unknown is not None:
        assert empty[unknown] and sum(empty.values()) == 1, empty
    else:
        assert sample.nodes[1].mem_free is None and sum(empty.values()) == 0
    assert all(n.numastat is not None for n in sample.nodes.values())


def test_what_a_kernel_may_lack_is_unknown_not_a_problem(root: Path) -> None:
    (root / "proc/pressure/memory").unlink()
    (root / SYSCTL).unlink()
    (root / "proc/vmstat").write_text("nr_free_pages 5\n")
    sample = readers.read_sample(HostFS(str(root)), 1.0)
    assert sample.problems == ()
    assert sample.pressure is None and sample.balancing is None and sample.vmstat == {}


def test_a_missing_numastat_is_a_problem(root: Path) -> None:
    (root / NODE / "node1/numastat").unlink()
    sample = readers.read_sample(HostFS(str(root)), 1.0)
    assert sample.problems == (f"{root}/sys/devices/system/node/node1/numastat: does not exist",)


# --- the rate function ---------------------------------------------------------------------------

def two_samples(root: Path) -> tuple[Sample, Sample]:
    first = readers.read_sample(HostFS(str(root)), 100.0)
    advance(root)
    return first, readers.read_sample(HostFS(str(root)), 160.0)


def test_rates_over_an_interval(root: Path) -> None:
    first, second = two_samples(root)
    result = figures.compute(first, second)
    assert result.elapsed_s == 60.0 and result.resets == ()
    node0, node1 = result.vnodes
    assert node0.rates["numa_hit"] == 100.0 and node0.rates["local_node"] == 100.0
    assert node0.rates["other_node"] == 10.0 and node0.rates["numa_miss"] == 0.0
    assert node0.local_pct == pytest.approx(100 * 100 / 110)
    assert node0.cpu_busy_pct == pytest.approx(100 * 3000 / 6000 / 2)  # CPU 0 half, CPU 1 idle
    assert node0.mem_used_kb == 1030612 - 61836 and node0.mem_free_kb == 61836
    assert node1.rates["numa_hit"] == 0.0 and node1.local_pct is None  # nothing allocated
    assert node1.cpu_busy_pct is None  # no tick passed on CPUs 2-3 in the fixture
    assert result.balancing_rates == {"numa_hint_faults": 20.0, "numa_pages_migrated": 1.0}


def test_the_first_sample_has_no_rate_but_has_memory(root: Path) -> None:
    result = figures.compute(None, readers.read_sample(HostFS(str(root)), 5.0))
    assert result.elapsed_s is None
    assert all(r is None for v in result.vnodes for r in v.rates.values())
    assert result.vnodes[0].mem_free_kb == 61836 and result.vnodes[0].cpu_busy_pct is None
    assert result.balancing_rates == {"numa_hint_faults": None, "numa_pages_migrated": None}


def test_a_zero_or_backward_interval_gives_no_rate(root: Path) -> None:
    first, second = two_samples(root)
    for at in (first.at, first.at - 1):
        result = figures.compute(first, dataclasses.replace(second, at=at))
        assert result.elapsed_s is None
        assert all(r is None for v in result.vnodes for r in v.rates.values())
        assert all(v.cpu_busy_pct is None or v.cpu_busy_pct >= 0 for v in result.vnodes)


def test_a_counter_that_goes_back_is_a_reset_and_that_interval_is_skipped(root: Path) -> None:
    first = readers.read_sample(HostFS(str(root)), 0.0)
    write_numastat(root, 1, other_node=10, numa_hit=3000600)
    vmstat = (root / "proc/vmstat").read_text().replace("numa_hint_faults 40000",
                                                       "numa_hint_faults 3")
    (root / "proc/vmstat").write_text(vmstat)
    result = figures.compute(first, readers.read_sample(HostFS(str(root)), 60.0))
    node1 = result.vnodes[1]
    assert node1.rates["other_node"] is None and node1.local_pct is None
    assert node1.rates["numa_hit"] == 10.0, "the other counters keep their rates"
    assert result.balancing_rates["numa_hint_faults"] is None
    assert result.resets == ("node1/numastat other_node", "/proc/vmstat numa_hint_faults")


def test_rate_edges() -> None:
    assert figures.rate(10, 70, 60.0) == 1.0
    assert figures.rate(None, 70, 60.0) is None and figures.rate(10, None, 60.0) is None
    assert figures.rate(10, 70, 0.0) is None and figures.rate(10, 70, None) is None
    assert figures.rate(70, 10, 60.0) is None
    assert figures.rate((1 << 64) - 5, 3, 60.0) is None, "a wrap is a reset"


def test_cpu_share_leaves_out_offline_and_reset_cpus() -> None:
    before = {0: CpuTime(100, 1000), 1: CpuTime(100, 1000), 2: CpuTime(500, 5000)}
    after = {0: CpuTime(200, 1200), 2: CpuTime(10, 100)}  # 1 went offline, 2 was reset
    assert figures.cpu_busy_pct(before, after, (0, 1, 2)) == 50.0
    assert figures.cpu_busy_pct(before, after, (1, 2)) is None
    assert figures.cpu_busy_pct(before, after, None) is None


# --- what is published ---------------------------------------------------------------------------

def many_vnodes(count: int) -> Sample:
    counters = dict.fromkeys(("numa_hit", "numa_miss", "numa_foreign", "local_node",
                              "other_node"), 1 << 63)
    nodes = {n: NodeSample(n, (n,), counters, 1 << 40, 1 << 39) for n in range(count)}
    return Sample(at=0.0, nodes=nodes, cpu={n: CpuTime(1, 2) for n in range(count)})


@pytest.mark.parametrize("count", [1, 2, MAX_NUMA_VNODES, 200])
def test_the_payload_is_bounded_and_fixed(count: int) -> None:
    before = many_vnodes(count)
    after = dataclasses.replace(before, at=0.001)
    shown = min(count, MAX_NUMA_VNODES)
    for result in (figures.compute(None, before), figures.compute(before, after)):
        tree = numa_tree(result, 60, 1764870000.4, 0)
        assert len(tree) == 2 + 10 + 9 * shown <= MAX_TREE_NODES
        check_desired("data/guestagent", tree)
        assert all(len(v) <= 24 for v in tree.values()), "numbers, rounded"
    assert tree["numa/nr-vnodes"] == str(count)
    assert tree["numa/updated"] == "1764870000"


def test_published_values_are_rounded(root: Path) -> None:
    first, second = two_samples(root)
    tree = numa_tree(figures.compute(first, second), 60, 0, 0)
    assert tree["numa/vnodes/0/local-pct"] == "90.9"
    assert tree["numa/vnodes/0/other-node-per-s"] == "10"
    assert tree["numa/vnodes/0/cpu-busy-pct"] == "25.0"
    assert tree["numa/vnodes/1/local-pct"] == "", "unknown is the empty string"
    assert tree["numa/psi-some-avg10"] == "0.25" and tree["numa/sampled-seconds"] == "60.0"
    assert tree["numa/balancing"] == "0" and tree["numa/hint-faults-per-s"] == "20"


# --- the job -------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_job(root: Path, connect: Callable[[], Any] = lambda: None,
             **numa: Any) -> tuple[NumaJob, EventLoop, Clock, JobContext]:
    cfg = defaults()
    cfg.values["agent"]["state_dir"] = "/run/guestagent"
    cfg.values["numa"].update(numa)
    clock = Clock()
    loop = EventLoop(clock=clock)
    ctx = JobContext(loop, HostFS(str(root)), cfg, XenstoreHub(loop, connect), "guest")
    return NumaJob(), loop, clock, ctx


def run_for(loop: EventLoop, clock: Clock, seconds: float) -> None:
    end = clock.now + seconds
    while True:
        timeout = loop._next_timeout()
        if timeout is None or clock.now + timeout > end:
            break
        clock.now += timeout
        loop.run_once(max_wait=0)
    clock.now = end


def numa_keys(server: XenstoreServer) -> dict[str, str]:
    base = "/local/domain/5/data/guestagent/numa"
    paths = [p for p in server.nodes if p.startswith(base + "/")]
    leaves = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    return {p[len(base) + 1:]: server.nodes[p].value.decode() for p in leaves}


def test_the_job_publishes_once_per_interval_and_never_on_republish(
    root: Path, xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    job, loop, clock, ctx = make_job(root, lambda: xs_connect(5))
    try:
        job.start(ctx)
        assert job.status()["publishes"] == 0, "one sample is no interval"
        advance(root)
        run_for(loop, clock, 60)
        status = job.status()
        assert status["publishes"] == 1 and status["samples"] == 2, status
        keys = numa_keys(xs_server)
        assert keys["vnodes/0/local-node-per-s"] == "100" and keys["nr-vnodes"] == "2"
        assert len(keys) == 10 + 2 * 9
        run_for(loop, clock, 30)
        job.republish("resumed")  # a new first sample, and a full interval again
        run_for(loop, clock, 59)
        assert job.status()["publishes"] == 1
        run_for(loop, clock, 1)
        assert job.status()["publishes"] == 2
        run_for(loop, clock, 600)
        assert job.status()["publishes"] == 12, "at most once per interval"
        before = len(xs_server.requests)
        run_for(loop, clock, 60)
        assert len(xs_server.requests) - before <= 6, "only the changed keys, no read-back"
        # Someone removed a key; a republish makes the section whole again at the next tick.
        xs_server.nodes.pop("/local/domain/5/data/guestagent/numa/nr-vnodes")
        job.republish("xenstore reconnected")
        run_for(loop, clock, 60)
        assert numa_keys(xs_server)["nr-vnodes"] == "2"
    finally:
        job.stop()
        loop.close()


def test_topology_and_numa_leave_each_others_section(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    from guestagent.schema import TOPOLOGY_SECTION, others
    from guestagent.xen.xs_sync import sync_tree

    client = xs_connect(5)
    numa = {"version": "1", "numa/nr-vnodes": "2", "numa/vnodes/0/local-pct": "99.0"}
    sync_tree(client, "data/guestagent", numa, leave=others("numa"))
    topology = {"version": "1", "vnuma/nr-nodes": "2"}
    changes = sync_tree(client, "data/guestagent", topology, leave=others(TOPOLOGY_SECTION))
    assert changes.removes == []
    assert numa_keys(xs_server) == {"nr-vnodes": "2", "vnodes/0/local-pct": "99.0"}
    changes = sync_tree(client, "data/guestagent", {"version": "1", "numa/nr-vnodes": "1"},
                        leave=others("numa"))
    assert changes.removes == ["numa/vnodes"]
    assert xs_server.get_node("/local/domain/5/data/guestagent/vnuma/nr-nodes") is not None


def test_balancing_off_on_two_vnodes_is_one_warning_and_in_the_status(
    root: Path, log_events: Events
) -> None:
    job, loop, clock, ctx = make_job(root)
    try:
        job.start(ctx)
        run_for(loop, clock, 300)
        warnings = [e for e in log_events if e["event"] == "numa_balancing_off"]
        assert len(warnings) == 1, warnings
        assert warnings[0]["log_level"] == "warning"
        text = warnings[0]["message"]
        assert "numa_balancing = 0" in text and "2 vnodes" in text
        assert "sysctl kernel.numa_balancing=1" in text and 'balancing = "auto"' in text
        assert job.status()["balancing_warning"] == text
        assert (root / SYSCTL).read_text() == "0\n", "leave never writes"
        (root / SYSCTL).write_text("1\n")
        run_for(loop, clock, 60)
        assert "balancing_warning" not in job.status()
    finally:
        job.stop()
        loop.close()


def test_one_vnode_is_no_warning(root: Path, log_events: Events) -> None:
    shutil.rmtree(root / NODE / "node1")
    (root / NODE / "online").write_text("0\n")
    job, loop, clock, ctx = make_job(root, balancing="auto")
    try:
        job.start(ctx)
        run_for(loop, clock, 60)
        assert not [e for e in log_events if e["event"] == "numa_balancing_off"]
        assert (root / SYSCTL).read_text() == "0\n", "auto acts only on more than one vnode"
    finally:
        job.stop()
        loop.close()


def journal_file(root: Path) -> Path:
    return root / "run/guestagent" / balancing.JOURNAL_FILE


def test_auto_turns_balancing_on_journalled_and_stop_puts_it_back(
    root: Path, log_events: Events
) -> None:
    job, loop, _clock, ctx = make_job(root, balancing="auto")
    try:
        job.start(ctx)
        assert (root / SYSCTL).read_text() == "1\n"
        entry = json.loads(journal_file(root).read_text())["changes"]
        assert entry == [{"kind": "numa_balancing", "path": "/proc/sys/kernel/numa_balancing",
                          "bdf": "", "previous": "0", "applied": "1"}]
        status = job.status()
        assert status["balancing"] == 1 and "balancing_warning" not in status
    finally:
        job.stop()
        loop.close()
    assert (root / SYSCTL).read_text() == "0\n"
    assert not journal_file(root).exists()
    undone = [e for e in log_events if e["event"] == "undone"]
    assert undone[0]["owner"] == "numa" and undone[0]["result"] == "1 -> 0"


def test_reload_to_leave_puts_it_back(root: Path) -> None:
    job, loop, _clock, ctx = make_job(root, balancing="auto")
    try:
        job.start(ctx)
        assert (root / SYSCTL).read_text() == "1\n"
        cfg = defaults()
        job.reload(cfg)
        assert (root / SYSCTL).read_text() == "0\n" and not journal_file(root).exists()
    finally:
        job.stop()
        loop.close()


def test_undo_leaves_a_value_someone_else_wrote(root: Path) -> None:
    job, loop, _clock, ctx = make_job(root, balancing="auto")
    try:
        job.start(ctx)
        (root / SYSCTL).write_text("3\n")  # the operator's own choice since
    finally:
        job.stop()
        loop.close()
    assert (root / SYSCTL).read_text() == "3\n" and not journal_file(root).exists()


def test_a_killed_daemons_change_is_undone_by_reset_and_by_the_next_start(root: Path) -> None:
    job, loop, _clock, ctx = make_job(root, balancing="auto")
    job.start(ctx)  # then "kill -9": no stop
    loop.close()
    assert (root / SYSCTL).read_text() == "1\n" and journal_file(root).exists()
    report = balancing.reset_numa(HostFS(str(root)), "/run/guestagent")
    assert report.lines == ["numa_balancing: 1 -> 0"] and report.failures == 0
    assert (root / SYSCTL).read_text() == "0\n" and not journal_file(root).exists()
    assert balancing.reset_numa(HostFS(str(root)), "/run/guestagent").lines == []

    job, loop, _clock, ctx = make_job(root, balancing="auto")
    job.start(ctx)
    loop.close()  # killed again; the next start (leave) undoes it
    job, loop, _clock, ctx = make_job(root)
    try:
        job.start(ctx)
        assert (root / SYSCTL).read_text() == "0\n" and not journal_file(root).exists()
    finally:
        job.stop()
        loop.close()


def test_a_failed_undo_keeps_the_entry_and_says_so(root: Path, log_events: Events) -> None:
    job, loop, _clock, ctx = make_job(root, balancing="auto")
    job.start(ctx)
    loop.close()
    (root / SYSCTL).write_text("garbage\n")
    report = balancing.reset_numa(HostFS(str(root)), "/run/guestagent")
    assert report.failures == 1 and "expected an integer" in report.lines[0]
    assert journal_file(root).exists()
    failed = [e for e in log_events if e["event"] == "undo_failed"]
    assert failed and failed[0]["log_level"] == "error"


def test_a_malformed_journal_entry_is_skipped(root: Path) -> None:
    journal_file(root).parent.mkdir(parents=True)
    journal_file(root).write_text(json.dumps({"version": 1, "changes": [
        {"kind": "numa_balancing", "path": "/proc/sys/vm/overcommit_memory", "previous": "0"}]}))
    report = balancing.reset_numa(HostFS(str(root)), "/run/guestagent")
    assert report.failures == 0 and "not a file the numa job writes" in report.lines[0]
    assert (root / SYSCTL).read_text() == "0\n"


def test_a_guest_without_numa_turns_the_job_off(tmp_path: Path) -> None:
    from guestagent.errors import GuestAgentError

    (tmp_path / "proc").mkdir()
    job, loop, _clock, ctx = make_job(tmp_path)
    try:
        with pytest.raises(GuestAgentError, match="nothing to measure"):
            job.start(ctx)
    finally:
        loop.close()


# --- metrics -------------------------------------------------------------------------------------

def test_metrics_by_vnode(root: Path) -> None:
    job, loop, clock, ctx = make_job(root)
    try:
        job.start(ctx)
        advance(root)
        run_for(loop, clock, 60)
        text = render({"jobs": {"numa": {"running": True, **job.status()}}})
    finally:
        job.stop()
        loop.close()
    lines = set(text.splitlines())
    for line in ('guestagent_numa_vnode_local_node_per_s{vnode="0"} 100',
                 'guestagent_numa_vnode_other_node_per_s{vnode="0"} 10',
                 'guestagent_numa_vnode_local_pct{vnode="0"} 90.91',
                 'guestagent_numa_vnode_mem_free_kb{vnode="1"} 643477',
                 'guestagent_numa_vnode_cpu_busy_pct{vnode="0"} 25',
                 "guestagent_numa_hint_faults_per_s 20",
                 "guestagent_numa_pages_migrated_per_s 1",
                 "guestagent_numa_psi_some_avg10 0.25",
                 "guestagent_numa_balancing 0",
                 "guestagent_numa_vnodes 2",
                 "# TYPE guestagent_numa_vnode_local_pct gauge"):
        assert line in lines, line
    assert 'guestagent_numa_vnode_local_pct{vnode="1"}' not in text, "unknown: no sample"


def test_status_shows_the_warning_and_the_vnodes(capsys: pytest.CaptureFixture[str]) -> None:
    from guestagent.daemon import commands

    status = {"version": "0", "pid": 1, "role": "guest", "xenstore": "connected", "resumes": 0,
              "jobs": {"numa": {"running": True, "balancing_warning": "automatic NUMA "
                                "balancing is off", "by_vnode": {"0": {"local_pct": 99.5}}}}}
    commands.print_status(status)  # what `guestagent status` prints of the daemon's answer
    out = capsys.readouterr().out
    assert "balancing_warning: automatic NUMA balancing is off" in out
    assert "by_vnode:" in out and "0: local_pct=99.5" in out  # no Python repr (issue 17)


@pytest.mark.timeout(120)
def test_the_daemon_runs_the_job_and_sigterm_puts_balancing_back(
    root: Path, tmp_path: Path, xs_server: XenstoreServer
) -> None:
    """``guestagent run`` with ``[numa]`` on and ``balancing = "auto"``: the job starts from the
    configuration, turns balancing on, answers in the status; SIGTERM puts 0 back."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from guestagent.daemon.service import read_status

    config = tmp_path / "guestagent.toml"
    config.write_text('[topology]\nenabled = false\n\n[devices]\nenabled = false\n\n'
                      '[numa]\nenabled = true\nbalancing = "auto"\n')
    xs_server.next_domids.append(5)
    env = dict(os.environ, XENSTORED_PATH=xs_server.path)
    env.pop("NOTIFY_SOCKET", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "guestagent", "--root", str(root), "run", "--config", str(config),
         "--conf-dir", str(tmp_path / "none.d"), "--role", "guest"],
        cwd=Path(__file__).resolve().parents[1], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = read_status(str(root / "run/guestagent"))
                break
            except Exception:
                assert daemon.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        numa = status["jobs"]["numa"]
        assert numa["running"] and numa["balancing"] == 1 and numa["vnodes"] == 2, status
        assert (root / SYSCTL).read_text() == "1\n"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stderr = daemon.stderr.read() if daemon.stderr else ""
    assert (root / SYSCTL).read_text() == "0\n", stderr
    assert "event=numa_balancing_on" in stderr and "event=undone" in stderr, stderr


def test_a_reload_decides_on_the_sysctl_as_it_is_now(root: Path, log_events: Events) -> None:
    """Between two samples the operator turned balancing on: a reload to auto must not journal
    the stale 0 (its undo would turn balancing off); a reload back to leave re-reads too."""
    job, loop, _clock, ctx = make_job(root)
    try:
        job.start(ctx)
        (root / SYSCTL).write_text("1\n")
        cfg = defaults()
        cfg.values["agent"]["state_dir"] = "/run/guestagent"
        cfg.values["numa"]["balancing"] = "auto"
        job.reload(cfg)
        assert not journal_file(root).exists() and job.status()["balancing"] == 1
        assert "balancing_warning" not in job.status()
        (root / SYSCTL).write_text("0\n")
        job.reload(cfg)
        assert (root / SYSCTL).read_text() == "1\n" and journal_file(root).exists()
        cfg.values["numa"]["balancing"] = "leave"
        job.reload(cfg)
        assert (root / SYSCTL).read_text() == "0\n" and job.status()["balancing"] == 0
        assert "balancing_warning" in job.status()
    finally:
        job.stop()
        loop.close()
