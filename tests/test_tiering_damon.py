"""The DAMON backend on fixture trees, with a fake kernel behind the sysfs writes.

``FakeDamonKernel`` does what ``mm/damon/sysfs.c`` does on a write, as far as the backend can
tell: an ``nr_*`` write removes the children and creates N fresh directories from the fixture's
``template/`` (``nr_kdamonds`` refuses with EBUSY while any kdamond is on), an unknown action or
operations set or state command gets EINVAL, a missing file ENOENT, ``on`` needs exactly one
context and resets the scheme counters (a new context), ``commit`` and ``update_schemes_stats``
need a running kdamond. Every write is recorded so tests can assert the exact files and values.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.tiering.damon import (
    KDAMONDS,
    NR_KDAMONDS,
    DamonBackend,
    DamonConfig,
    SysfsWriteError,
)
from guestagent.tiering.model import BackendUnavailable, Move, Plan

FIXTURES = Path(__file__).parent / "fixtures"
MIB = 1 << 20
GIB = 1 << 30
STATS = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")


class FakeDamonKernel:
    def __init__(self, root: Path, version_fixture: Path) -> None:
        self.root = root
        self.template = version_fixture / "template"
        self.actions = (self.template / "actions").read_text().split()
        self.writes: list[tuple[str, str]] = []
        self.counters: dict[int, dict[str, int]] = {}
        self.ran: set[int] = set()

    def _fail(self, path: str, value: str, err: int) -> None:
        raise SysfsWriteError(path, value, err)

    def _recreate(self, parent: Path, kind: str, n: int) -> None:
        for child in parent.iterdir():
            if child.is_dir() and child.name.isdigit():
                shutil.rmtree(child)
        for i in range(n):
            shutil.copytree(self.template / kind, parent / str(i))

    def kdamond_states(self) -> list[str]:
        kd = self.root / KDAMONDS.lstrip("/")
        n = int((kd / "nr_kdamonds").read_text())
        return [(kd / str(i) / "state").read_text().strip() for i in range(n)]

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        p = self.root / path.lstrip("/")
        if not p.is_file():
            self._fail(path, value, errno.ENOENT)
        name = p.name
        kinds = {
            "nr_kdamonds": "kdamond",
            "nr_contexts": "context",
            "nr_targets": "target",
            "nr_regions": "region",
            "nr_schemes": "scheme",
        }
        if name in kinds:
            if not value.isdigit():
                self._fail(path, value, errno.EINVAL)
            n = int(value)
            if name == "nr_kdamonds" and "on" in self.kdamond_states():
                self._fail(path, value, errno.EBUSY)
            if name == "nr_contexts" and n > 1:
                self._fail(path, value, errno.EINVAL)
            self._recreate(p.parent, kinds[name], n)
        elif name == "action" and value not in self.actions:
            self._fail(path, value, errno.EINVAL)
        elif name == "operations":
            if value not in (p.parent / "avail_operations").read_text().split():
                self._fail(path, value, errno.EINVAL)
        elif name == "metric" and value not in ("none", "free_mem_rate"):
            self._fail(path, value, errno.EINVAL)
        elif name == "state":
            self._state(p, path, value)
            return
        elif name not in ("action", "operations", "metric"):
            try:
                int(value, 0)
            except ValueError:
                self._fail(path, value, errno.EINVAL)
        p.write_text(value + "\n")

    def _state(self, p: Path, path: str, value: str) -> None:
        kd = p.parent
        index = int(kd.name)
        running = p.read_text().strip() == "on"
        if value == "on":
            if running:
                self._fail(path, value, errno.EBUSY)
            if (kd / "contexts/nr_contexts").read_text().strip() != "1":
                self._fail(path, value, errno.EINVAL)
            p.write_text("on\n")
            (kd / "pid").write_text(f"{4200 + index}\n")
            self.counters[index] = dict.fromkeys(STATS, 0)  # a new DAMON context
            self.ran.add(index)
        elif value == "off":
            if index not in self.ran:
                self._fail(path, value, errno.EINVAL)
            p.write_text("off\n")
            (kd / "pid").write_text("-1\n")
        elif value in ("commit", "update_schemes_stats"):
            if not running:
                self._fail(path, value, errno.EINVAL)
            if value == "update_schemes_stats":
                stats = kd / "contexts/0/schemes/0/stats"
                for k, v in self.counters[index].items():
                    (stats / k).write_text(f"{v}\n")
        else:
            self._fail(path, value, errno.EINVAL)

    def advance(self, index: int, **delta: int) -> None:
        for k, v in delta.items():
            self.counters[index][k] += v


def make_tree(tmp_path: Path, damon: str | None = "damon-6.12") -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "tiering-2node", root, symlinks=True)
    if damon is not None:
        shutil.copytree(FIXTURES / damon / "root", root, dirs_exist_ok=True)
    return root


def setup(tmp_path: Path, damon: str = "damon-6.12") -> tuple[Path, FakeDamonKernel, DamonBackend]:
    root = make_tree(tmp_path, damon)
    versioned = FIXTURES / damon
    kernel = FakeDamonKernel(
        root, versioned if (versioned / "template").is_dir() else FIXTURES / "damon-6.12"
    )
    return root, kernel, DamonBackend(HostFS(str(root)), writer=kernel.write)


def start_both_configured(backend: DamonBackend) -> None:
    """Started, with node 1 a source once since (so both kdamonds have a context), and node 0's
    move alone now: kdamond 0 on, kdamond 1 off."""
    backend.start(Plan((Move(0, 1, 4 * MIB),)))
    backend.update(Plan((Move(0, 1, 4 * MIB), Move(1, 0, 4 * MIB))))
    backend.update(Plan((Move(0, 1, 4 * MIB),)))


def kd_path(index: int, rel: str = "") -> str:
    return f"{KDAMONDS}/{index}" + (f"/{rel}" if rel else "")


def configure_writes(index: int, start: int, end: int) -> list[tuple[str, str]]:
    ctx = "contexts/0"
    s = f"{ctx}/schemes/0"
    # Not written: what a fresh context and scheme have already (monitoring_attrs at DamonConfig's
    # defaults, nr_accesses 0..0, sz/min 0, weights/sz_permil 0); a test below reads them back.
    rows = [
        ("contexts/nr_contexts", "1"),
        (f"{ctx}/operations", "paddr"),
        (f"{ctx}/targets/nr_targets", "1"),
        (f"{ctx}/targets/0/regions/nr_regions", "1"),
        (f"{ctx}/targets/0/regions/0/start", str(start)),
        (f"{ctx}/targets/0/regions/0/end", str(end)),
        (f"{ctx}/schemes/nr_schemes", "1"),
        (f"{s}/action", "migrate_cold"),
        (f"{s}/access_pattern/sz/max", "18446744073709551615"),
        (f"{s}/access_pattern/age/min", "50"),
        (f"{s}/access_pattern/age/max", "4294967295"),
        (f"{s}/quotas/ms", "100"),
        (f"{s}/quotas/reset_interval_ms", "1000"),
        (f"{s}/quotas/weights/nr_accesses_permil", "1000"),
        (f"{s}/quotas/weights/age_permil", "1000"),
        (f"{s}/watermarks/metric", "free_mem_rate"),
        (f"{s}/watermarks/interval_us", "1000000"),
        (f"{s}/watermarks/high", "1000"),
        (f"{s}/watermarks/mid", "1000"),
        (f"{s}/watermarks/low", "50"),
    ]
    return [(kd_path(index, r), v) for r, v in rows]


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text().strip()


def test_probe_ok_on_6_12(tmp_path: Path) -> None:
    _, _, b = setup(tmp_path)
    a = b.probe()
    assert a.ok, a.reason
    assert "Linux 6.12" in a.reason and "2 memory nodes" in a.reason


def test_probe_without_damon_sysfs(tmp_path: Path) -> None:
    root = make_tree(tmp_path, None)
    a = DamonBackend(HostFS(str(root))).probe()
    assert not a.ok
    assert a.reason == (
        "/sys/kernel/mm/damon/admin missing (CONFIG_DAMON_SYSFS=n, or no DAMON in this kernel)"
    )
    with pytest.raises(BackendUnavailable, match="CONFIG_DAMON_SYSFS=n"):
        DamonBackend(HostFS(str(root))).start(Plan())


def test_probe_on_6_1_names_the_missing_action(tmp_path: Path) -> None:
    _, _, b = setup(tmp_path, "damon-6.1")
    a = b.probe()
    assert not a.ok
    assert a.reason == "kernel 6.1 lacks DAMOS migrate_cold (needs Linux 6.11)"


def test_a_kernel_that_rejects_migrate_cold_is_detected_on_the_write_and_undone(
    tmp_path: Path,
) -> None:
    # A 6.1-era DAMON behind an osrelease that claims 6.12 (a vendor kernel, say): the probe
    # cannot tell, the action write does.
    root, kernel, b = setup(tmp_path, "damon-6.1")
    (root / "proc/sys/kernel/osrelease").write_text("6.12.0-vendor\n")
    assert b.probe().ok
    with pytest.raises(BackendUnavailable, match="rejects action migrate_cold"):
        b.start(Plan((Move(0, 1, 4 * MIB),)))
    assert (kd_path(0, "contexts/0/schemes/0/action"), "migrate_cold") in kernel.writes
    assert kernel.writes[-3:] == [
        (kd_path(1, "contexts/nr_contexts"), "0"),
        (kd_path(0, "contexts/nr_contexts"), "0"),
        (NR_KDAMONDS, "0"),
    ]
    assert read(root, NR_KDAMONDS) == "0"
    assert b.kdamonds == {}


def test_another_users_running_kdamond_is_left_alone(tmp_path: Path) -> None:
    # The real tree of the development machine (Linux 6.18): someone's pageout kdamond runs.
    root, kernel, b = setup(tmp_path, "damon-6.18-observed")
    a = b.probe()
    assert not a.ok
    assert a.reason.startswith("kdamond 0 is on (another DAMON user)")
    with pytest.raises(BackendUnavailable, match="kdamond 0 is on"):
        b.start(Plan((Move(0, 1, 4 * MIB),)))
    assert kernel.writes == []
    assert read(root, kd_path(0, "contexts/0/schemes/0/action")) == "pageout"


def test_start_writes_exactly_this(tmp_path: Path) -> None:
    # Both kdamonds are added (nr_kdamonds cannot grow while one runs); only the source's is
    # configured (issue 18: 24 writes where there were 63).
    root, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert kernel.writes == [
        (NR_KDAMONDS, "2"),
        *configure_writes(0, 0, GIB),
        (f"{s0}/target_nid", "1"),
        (f"{s0}/quotas/bytes", str(4 * MIB)),
        (kd_path(0, "state"), "on"),
    ]
    assert len(kernel.writes) == 24
    assert b.kdamonds == {0: 0, 1: 1}
    assert kernel.kdamond_states() == ["on", "off"]
    assert read(root, f"{s0}/target_nid") == "1"
    assert read(root, kd_path(1, "contexts/nr_contexts")) == "0"


def test_the_fresh_context_holds_what_was_not_written(tmp_path: Path) -> None:
    # What the kdamond runs with, read back from the (fake) kernel's tree: the values skipped
    # because a fresh context has them are the ones DamonConfig wants.
    root, _, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    c = DamonConfig()
    attrs = kd_path(0, "contexts/0/monitoring_attrs")
    pattern = kd_path(0, "contexts/0/schemes/0/access_pattern")
    assert [read(root, f"{attrs}/{f}") for f in (
        "intervals/sample_us", "intervals/aggr_us", "intervals/update_us",
        "nr_regions/min", "nr_regions/max",
    )] == [str(v) for v in (
        c.sample_us, c.aggr_us, c.update_us, c.min_nr_regions, c.max_nr_regions,
    )]
    assert [read(root, f"{pattern}/{f}") for f in (
        "nr_accesses/min", "nr_accesses/max", "sz/min", "sz/max",
    )] == ["0", "0", "0", "18446744073709551615"]


def test_monitoring_attrs_other_than_a_fresh_contexts_are_written(tmp_path: Path) -> None:
    root, kernel, b = setup(tmp_path)
    b.config = DamonConfig(sample_us=10_000, aggr_us=200_000, max_nr_regions=500)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    attrs = kd_path(0, "contexts/0/monitoring_attrs")
    assert [(p, v) for p, v in kernel.writes if "/monitoring_attrs/" in p] == [
        (f"{attrs}/intervals/sample_us", "10000"),
        (f"{attrs}/intervals/aggr_us", "200000"),
        (f"{attrs}/nr_regions/max", "500"),
    ]
    assert read(root, f"{attrs}/nr_regions/min") == "10"


def test_a_node_is_configured_when_first_a_source_while_the_other_runs(
    tmp_path: Path,
) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.writes.clear()
    b.update(Plan((Move(1, 0, 2 * MIB),)))  # node 0 paused, node 1 a source for the first time
    s1 = kd_path(1, "contexts/0/schemes/0")
    assert kernel.writes == [
        (kd_path(0, "state"), "update_schemes_stats"),
        (kd_path(0, "state"), "off"),
        *configure_writes(1, GIB, 2 * GIB),
        (f"{s1}/target_nid", "0"),
        (f"{s1}/quotas/bytes", str(2 * MIB)),
        (kd_path(1, "state"), "on"),
    ]
    assert kernel.kdamond_states() == ["off", "on"]
    kernel.writes.clear()
    b.update(Plan((Move(0, 1, 4 * MIB), Move(1, 0, 2 * MIB))))
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert kernel.writes == [  # configured once: the context kept, the move given again
        (f"{s0}/target_nid", "1"),
        (f"{s0}/quotas/bytes", str(4 * MIB)),
        (kd_path(0, "state"), "on"),
    ]


def test_a_configure_that_failed_runs_again_whole_at_the_next_move(tmp_path: Path) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    write = kernel.write
    refused = kd_path(1, "contexts/0/schemes/0/quotas/ms")

    def flaky(path: str, value: str) -> None:
        if path == refused:
            raise SysfsWriteError(path, value, errno.ENOMEM)
        write(path, value)

    b.write = flaky
    with pytest.raises(SysfsWriteError, match="quotas/ms"):
        b.update(Plan((Move(0, 1, 4 * MIB), Move(1, 0, 2 * MIB))))
    assert kernel.kdamond_states() == ["on", "off"]
    b.write = write
    kernel.writes.clear()
    b.update(Plan((Move(0, 1, 4 * MIB), Move(1, 0, 2 * MIB))))
    assert kernel.writes[: len(configure_writes(1, GIB, 2 * GIB))] == configure_writes(
        1, GIB, 2 * GIB
    )
    assert kernel.kdamond_states() == ["on", "on"]


def test_update_commits_new_targets_and_pauses_with_off_never_a_zero_quota(
    tmp_path: Path,
) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.writes.clear()
    b.update(Plan((Move(0, 1, 8 * MIB),)))
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert kernel.writes == [
        (f"{s0}/target_nid", "1"),
        (f"{s0}/quotas/bytes", str(8 * MIB)),
        (kd_path(0, "state"), "update_schemes_stats"),
        (kd_path(0, "state"), "commit"),
    ]
    kernel.writes.clear()
    b.update(Plan())
    assert kernel.writes == [
        (kd_path(0, "state"), "update_schemes_stats"),
        (kd_path(0, "state"), "off"),
    ]
    assert not any(p.endswith("quotas/bytes") and v == "0" for p, v in kernel.writes)
    assert kernel.kdamond_states() == ["off", "off"]
    with pytest.raises(InputError, match="node 7 has no memory kdamond"):
        b.update(Plan((Move(7, 1, MIB),)))


def test_update_with_unchanged_target_and_quota_writes_nothing(tmp_path: Path) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.writes.clear()
    b.update(Plan((Move(0, 1, 4 * MIB),)))
    assert kernel.writes == []  # running with these parameters already: no commit
    b.update(Plan((Move(0, 1, 2 * MIB),)))
    s0 = kd_path(0, "contexts/0/schemes/0")
    assert kernel.writes[-2:] == [
        (kd_path(0, "state"), "update_schemes_stats"),
        (kd_path(0, "state"), "commit"),
    ]
    assert (f"{s0}/quotas/bytes", str(2 * MIB)) in kernel.writes
    # Paused and resumed with the old parameters: written again and turned on.
    b.update(Plan())
    kernel.writes.clear()
    b.update(Plan((Move(0, 1, 2 * MIB),)))
    assert kernel.writes[-1] == (kd_path(0, "state"), "on")
    assert (f"{s0}/target_nid", "1") in kernel.writes


def test_whole_folios_moved_past_the_tried_size_are_not_failures(tmp_path: Path) -> None:
    """``paddr`` counts a large folio in full though it runs past the region: applied > tried."""
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.advance(0, sz_tried=225 * MIB, sz_applied=234 * MIB)
    s = b.stats()
    assert (s.pages_moved_or_put, s.bytes_tried, s.failures) == (234 * 256, 225 * MIB, 0)
    b.stop()


def test_quota_is_never_zero() -> None:
    assert DamonConfig().quota_bytes(1) == 4096
    assert DamonConfig(quota_reset_ms=500).quota_bytes(8 * MIB) == 4 * MIB


def test_stats_accumulate_across_restarts(tmp_path: Path) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.advance(0, nr_tried=3, sz_tried=40 * 4096, nr_applied=2, sz_applied=30 * 4096)
    s = b.stats()
    assert (s.pages_moved_or_put, s.failures, s.bytes_tried) == (30, 10, 40 * 4096)
    assert s.moved_by_source == {0: 30 * 4096, 1: 0}
    kernel.advance(0, sz_applied=10 * 4096, sz_tried=10 * 4096, qt_exceeds=1)
    b.update(Plan())  # pause: stats read before off
    b.update(Plan((Move(0, 1, 4 * MIB),)))  # on again: the kernel's counters restart at 0
    kernel.advance(0, sz_applied=5 * 4096, sz_tried=5 * 4096)
    s = b.stats()
    assert s.pages_moved_or_put == 45
    assert s.failures == 10
    assert s.quota_exceeds == 1
    b.stop()
    assert b.stats().pages_moved_or_put == 45  # kept after stop


def test_garbage_stats_are_one_line_naming_the_file(tmp_path: Path) -> None:
    root, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    stats = kd_path(0, "contexts/0/schemes/0/stats")
    # The kernel would never print this; a broken or hostile tree might.
    kernel.counters[0]["sz_applied"] = -5
    with pytest.raises(InputError, match=r"stats/sz_applied: below the minimum 0") as caught:
        b.stats()
    assert "\n" not in str(caught.value)
    kernel.counters[0]["sz_applied"] = 0
    original = kernel._state

    def garbage(p: Path, path: str, value: str) -> None:
        original(p, path, value)
        if value == "update_schemes_stats":
            (root / stats.lstrip("/") / "nr_tried").write_text("lots\n")

    kernel._state = garbage  # type: ignore[method-assign]
    with pytest.raises(InputError, match="stats/nr_tried: expected an integer"):
        b.stats()


def test_stop_turns_off_empties_and_removes_its_kdamonds(tmp_path: Path) -> None:
    root, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.writes.clear()
    b.stop()
    assert kernel.writes == [
        (kd_path(1, "contexts/nr_contexts"), "0"),
        (kd_path(0, "state"), "update_schemes_stats"),
        (kd_path(0, "state"), "off"),
        (kd_path(0, "contexts/nr_contexts"), "0"),
        (NR_KDAMONDS, "0"),
    ]
    assert read(root, NR_KDAMONDS) == "0"
    b.stop()  # idempotent
    assert len(kernel.writes) == 5


def test_idle_empty_kdamonds_of_others_are_kept_and_ours_added_after_them(
    tmp_path: Path,
) -> None:
    root, kernel, b = setup(tmp_path)
    kernel.write(NR_KDAMONDS, "1")  # somebody's leftover: off, no context
    kernel.writes.clear()
    b.start(Plan((Move(1, 0, 2 * MIB),)))
    assert kernel.writes[0] == (NR_KDAMONDS, "3")
    assert b.kdamonds == {0: 1, 1: 2}
    assert kernel.kdamond_states() == ["off", "off", "on"]
    b.stop()
    assert kernel.writes[-1] == (NR_KDAMONDS, "1")
    assert read(root, NR_KDAMONDS) == "1"


def test_a_configured_kdamond_of_another_user_is_never_wiped(tmp_path: Path) -> None:
    _, kernel, b = setup(tmp_path)
    kernel.write(NR_KDAMONDS, "1")
    kernel.write(kd_path(0, "contexts/nr_contexts"), "1")  # configured, not running
    kernel.writes.clear()
    assert "off but configured" in b.probe().reason
    with pytest.raises(BackendUnavailable, match="would wipe it"):
        b.start(Plan())
    assert kernel.writes == []


def test_stop_leaves_its_kdamonds_off_and_empty_when_another_user_came_in_between(
    tmp_path: Path,
) -> None:
    root, kernel, b = setup(tmp_path)
    kernel.write(NR_KDAMONDS, "1")
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    # Another tool configures kdamond 0 while the agent runs.
    (root / kd_path(0, "contexts/nr_contexts").lstrip("/")).write_text("1\n")
    kernel.writes.clear()
    b.stop()
    assert (NR_KDAMONDS, "1") not in kernel.writes
    assert read(root, NR_KDAMONDS) == "3"
    assert kernel.kdamond_states() == ["off", "off", "off"]
    assert read(root, kd_path(1, "contexts/nr_contexts")) == "0"
    assert read(root, kd_path(2, "contexts/nr_contexts")) == "0"


def test_a_single_node_guest_is_not_served(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    node = root / "sys/devices/system/node"
    shutil.rmtree(node / "node1")
    (node / "online").write_text("0\n")
    (node / "node0/distance").write_text("10\n")
    a = DamonBackend(HostFS(str(root))).probe()
    assert not a.ok and "two NUMA nodes" in a.reason


def test_sysfs_writer_never_creates_files(tmp_path: Path) -> None:
    from guestagent.tiering.sysfs import sysfs_writer

    w = sysfs_writer(HostFS(str(tmp_path)))
    with pytest.raises(SysfsWriteError, match="ENOENT"):
        w("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds", "1")
    assert not (tmp_path / "sys").exists()
    f = tmp_path / "x"
    f.write_text("12345\n")
    w("/x", "7")
    assert f.read_text() == "7"


def test_a_restart_is_folded_in_even_when_the_new_counters_overtake_the_old(
    tmp_path: Path,
) -> None:
    _, kernel, b = setup(tmp_path)
    b.start(Plan((Move(0, 1, 4 * MIB),)))
    kernel.advance(0, sz_applied=10 * 4096, sz_tried=10 * 4096)
    b.update(Plan())  # off, after reading 10 pages
    b.update(Plan((Move(0, 1, 4 * MIB),)))  # on: a new context
    kernel.advance(0, sz_applied=50 * 4096, sz_tried=50 * 4096)  # 50 > 10: no visible decrease
    assert b.stats().pages_moved_or_put == 60
