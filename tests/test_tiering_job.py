"""The tiering job under the daemon: refuses with the reasons when nothing can serve; the
[tiering] keys become the policy's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent.config import defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.tiering.config import tiering_config
from guestagent.tiering.job import TieringJob

FIXTURES = Path(__file__).parent / "fixtures"


def test_without_a_serving_backend_the_job_says_why(tmp_path: Path) -> None:
    loop = EventLoop()
    cfg = defaults()
    hub = XenstoreHub(loop, lambda: None)
    ctx = JobContext(loop, HostFS(str(FIXTURES / "hvm-2vnode")), cfg, hub, "guest")
    with pytest.raises(GuestAgentError) as caught:
        TieringJob().start(ctx)
    text = str(caught.value)
    assert text.startswith("no tiering backend can serve: ")
    assert "damon:" in text and "tmem:" in text
    loop.close()


def test_keys_become_the_policy_configuration() -> None:
    section = defaults().section("tiering")
    section.update(source_low_pct=5.0, source_high_pct=8.0, max_rate_mb=16)
    config = tiering_config(section)
    assert (config.source_low_pct, config.source_high_pct) == (5.0, 8.0)
    assert config.max_rate == 16 << 20
    section.update(source_low_pct=20.0, source_high_pct=15.0)
    with pytest.raises(GuestAgentError):
        tiering_config(section)


def test_a_start_after_a_kill_undoes_the_predecessors_kdamonds_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 5: the journal a killed daemon left is undone at start; the job serves
    instead of calling the kdamonds another DAMON user's; a clean stop leaves no journal."""
    from guestagent.host import Host
    from guestagent.tiering.damon import NR_KDAMONDS, DamonBackend
    from guestagent.tiering.journal import TieringJournal
    from guestagent.tiering.model import Move, Plan
    from tests.test_tiering_damon import FakeDamonKernel, make_tree, read

    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    damon = ("damon", lambda h: DamonBackend(h, writer=kernel.write))
    host = Host(hostfs, tiering_backends=[damon])
    killed = DamonBackend(hostfs, writer=kernel.write)
    killed.take_journal(TieringJournal(hostfs, "/run/guestagent/tiering.json").load())
    killed.start(Plan((Move(0, 1, 4 << 20),)))  # ... and never stopped
    assert "another DAMON user" in DamonBackend(hostfs, writer=kernel.write).probe().reason

    loop = EventLoop()
    ctx = JobContext(loop, hostfs, defaults(), XenstoreHub(loop, lambda: None), "guest",
                     host=host)
    job = TieringJob()
    job.start(ctx)  # serves: no GuestAgentError
    assert read(root, NR_KDAMONDS) == "0"  # the predecessor's kdamonds are gone
    assert not (root / "run/guestagent/tiering.json").exists()
    job._tick()  # node 0 is short: its own kdamonds, journalled
    assert kernel.kdamond_states() == ["on", "off"]
    assert (root / "run/guestagent/tiering.json").exists()
    assert job.status()["active"] is True
    job.stop()
    assert read(root, NR_KDAMONDS) == "0"
    assert not (root / "run/guestagent/tiering.json").exists()
    loop.close()


def test_the_status_gives_the_counters_ticks_and_the_ticks_cpu_time(tmp_path: Path) -> None:
    """Issue 18, under ``guestagent run``: the daemon's status carries what ``tiering run``'s
    summary says (bytes moved and tried, per source) and the job's own CPU time in its ticks,
    which is the job's cost apart from the other jobs of the same daemon."""
    from guestagent.host import Host
    from guestagent.tiering.damon import DamonBackend
    from tests.test_tiering_damon import FakeDamonKernel, make_tree

    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    damon = ("damon", lambda h: DamonBackend(h, writer=kernel.write))
    loop = EventLoop()
    ctx = JobContext(loop, hostfs, defaults(), XenstoreHub(loop, lambda: None), "guest",
                     host=Host(hostfs, tiering_backends=[damon]))
    job = TieringJob()
    job.start(ctx)
    before = job.status()
    assert (before["active"], before["ticks"], before["tick_cpu_s"]) == (False, 0, 0.0)
    assert (before["bytes_moved"], before["bytes_tried"], before["moved_by_source"]) == (0, 0, {})
    job._tick()  # node 0 is short: kdamonds added and on
    kernel.advance(0, sz_tried=12 << 20, sz_applied=8 << 20, qt_exceeds=3)
    after = job.status()
    assert after["active"] is True and after["ticks"] == 1 and after["tick_cpu_s"] > 0
    assert (after["bytes_moved"], after["bytes_tried"], after["quota_exceeds"]) == (
        8 << 20, 12 << 20, 3)
    assert after["moved_by_source"] == {"0": 8 << 20, "1": 0}
    assert after["pages_moved"] == (8 << 20) // 4096
    job.stop()
    loop.close()
