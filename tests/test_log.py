"""Logging: logfmt or JSON lines, the journal's priority prefix, and a repeated error at most
once a minute."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from guestagent import log


def parse_logfmt(line: str) -> dict[str, str]:
    """A logfmt reader written from the format's grammar (as go-logfmt reads it), independent of
    guestagent.log: ``key=value`` pairs split by spaces; a value is bare (no space, quote or
    ``=``) or double-quoted with backslash escapes; a key without ``=`` is a flag."""
    pairs: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        start = i
        while i < n and line[i] not in " =":
            i += 1
        key = line[start:i]
        assert key and all(c > " " and c not in '"' for c in key), (key, line)
        if i >= n or line[i] == " ":
            pairs[key] = "true"
            continue
        i += 1  # "="
        if i < n and line[i] == '"':
            end = i + 1
            while line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            pairs[key] = json.loads(line[i : end + 1])
            i = end + 1
            assert i >= n or line[i] == " ", f"junk after a quoted value: {line[i:]!r}"
        else:
            start = i
            while i < n and line[i] != " ":
                assert line[i] not in '"=', f"bare value with a quote or '=': {line!r}"
                i += 1
            pairs[key] = line[start:i]
    return pairs


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
        fields = parse_logfmt(line)
        assert fields["event"] == "target_set" and fields["target_kb"] == "1024"
        assert fields["level"] == "info" and fields["timestamp"].endswith("Z")
        assert line.startswith("timestamp="), line
    log.configure()


def test_logfmt_has_no_python_reprs() -> None:
    line = log.logfmt({
        "event": "started", "jobs": ["topology", "devices"], "psi_trigger": None,
        "sources": ("sysfs",), "ok": True, "off": False, "ratio": 0.5,
        "reason": "no xenstore: neither /dev/xen/xenbus nor a socket",
        "nested": [{"domid": 5, "error": None}], "mixed": ["a,b", "c"], "empty": "",
    })
    for repr_text in ("None", "['", "('", "True", "False", "{'"):
        assert repr_text not in line, (repr_text, line)
    fields = parse_logfmt(line)
    assert fields["jobs"] == "topology,devices"
    assert fields["psi_trigger"] == "" and fields["empty"] == ""
    assert fields["sources"] == "sysfs"
    assert fields["ok"] == "true" and fields["off"] == "false" and fields["ratio"] == "0.5"
    assert fields["reason"] == "no xenstore: neither /dev/xen/xenbus nor a socket"
    assert json.loads(fields["nested"]) == [{"domid": 5, "error": None}]
    assert json.loads(fields["mixed"]) == ["a,b", "c"], "a comma inside an item: JSON"


@given(st.text())
def test_any_string_value_reads_back_from_one_line(text: str) -> None:
    line = log.logfmt({"event": "x", "value": text})
    assert "\n" not in line and "\r" not in line, "one event, one line"
    assert parse_logfmt(line) == {"event": "x", "value": text}


@pytest.mark.parametrize(("method", "prefix"), [
    ("debug", "<7>"), ("info", "<6>"), ("warning", "<4>"), ("error", "<3>"), ("critical", "<2>"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_journal_lines_start_with_their_priority_and_have_no_timestamp(
    method: str, prefix: str, as_json: bool
) -> None:
    out = io.StringIO()
    log.configure(level="debug", json=as_json, stream=out, journal=True)
    getattr(log.get_logger("test"), method)("something_" + method, jobs=["a", "b"])
    line = out.getvalue().strip()
    log.configure()
    assert line.startswith(prefix), line
    body = line[len(prefix):]
    record: dict[str, Any] = json.loads(body) if as_json else parse_logfmt(body)
    assert "timestamp" not in record
    assert record["event"] == "something_" + method


def test_stderr_is_the_journal_only_when_the_stream_matches(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    path.write_text("")
    st_file = os.stat(path)
    with open(path) as f:
        fd = f.fileno()
        match = {"JOURNAL_STREAM": f"{st_file.st_dev}:{st_file.st_ino}"}
        assert log.stderr_is_journal(match, fd)
        assert not log.stderr_is_journal({}, fd)
        assert not log.stderr_is_journal({"JOURNAL_STREAM": f"{st_file.st_dev}:1"}, fd)
        assert not log.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd)
        assert not log.stderr_is_journal({"JOURNAL_STREAM": "1:x"}, fd)
    assert not log.stderr_is_journal(match, 987), "a closed descriptor is not the journal"


def test_two_different_failures_of_one_event_are_both_logged() -> None:
    """Each failed restore (devices_undo_failed) carries its text in error=, which the repeat
    filter keys on: a second, different failure within the window is not dropped."""
    from guestagent.log import RepeatFilter

    f = RepeatFilter(window=60.0, clock=lambda: 0.0)
    a = f(None, "error", {"event": "devices_undo_failed", "error": "/proc/irq/24: EACCES"})
    b = f(None, "error", {"event": "devices_undo_failed", "error": "/proc/irq/25: EACCES"})
    assert a["error"] != b["error"]
