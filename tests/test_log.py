"""Logging: key=value or JSON lines, and a repeated error at most once a minute."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from guestagent import log


def test_repeats_within_the_window_are_dropped_then_counted() -> None:
    now = [0.0]
    f = log.RepeatFilter(window=60, clock=lambda: now[0])
    event = {"event": "balloon_write_failed", "error": "EBUSY"}
    assert f(None, "error", dict(event)) == event
    for _ in range(5):
        now[0] += 1
        with pytest.raises(structlog.DropEvent):
            f(None, "error", dict(event))
    assert f(None, "info", {"event": "x"}) == {"event": "x"}, "info lines are never dropped"
    other = {"event": "balloon_write_failed", "error": "EIO"}
    assert f(None, "error", dict(other)) == other, "a different error is not a repeat"
    now[0] = 61
    assert f(None, "error", dict(event))["repeated"] == 5


@pytest.mark.parametrize("as_json", [False, True])
def test_lines_are_key_value_or_json(as_json: bool) -> None:
    out = io.StringIO()
    log.configure(level="info", json=as_json, stream=out)
    log.get_logger("test").info("target_set", target_kb=1024)
    line = out.getvalue().strip()
    if as_json:
        record = json.loads(line)
        assert record["event"] == "target_set" and record["target_kb"] == 1024
    else:
        assert "event='target_set'" in line and "target_kb=1024" in line
    log.configure()
