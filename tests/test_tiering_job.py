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
