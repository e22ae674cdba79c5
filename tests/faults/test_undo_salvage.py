"""The undo journal's salvage (:mod:`guestagent.undo`, issue 15): a journal file that is no
longer JSON gives back every whole entry it holds, each checked on its own, and one line per bad
piece; the damaged file is kept as ``.bad`` at the next write. Path confinement and each kind's
rules apply to a salvaged entry exactly as to a read one. The log lines come from the
``logfmt`` fixture of ``tests/faults/conftest.py``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.undo import Change, Journal, KindRule, damaged_stretches, salvage

PATH = "/run/guestagent/test.json"
KINDS = {"sysctl": KindRule(re.compile(r"/proc/sys/vm/[a-z_]{1,40}"), re.compile("[0-9]"))}


def entry(name: str, previous: str = "0") -> dict[str, str]:
    return {"applied": "1", "bdf": "", "kind": "sysctl", "path": f"/proc/sys/vm/{name}",
            "previous": previous}


def write(root: Path, data: bytes) -> Path:
    path = root / PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def journal_bytes(*entries: dict[str, str]) -> bytes:
    text = json.dumps({"version": 1, "changes": list(entries)}, indent=1, sort_keys=True)
    return (text + "\n").encode()


def load(root: Path) -> Journal:
    return Journal(HostFS(str(root)), PATH, "test", KINDS).load()


def test_an_undamaged_file_has_no_damaged_stretch() -> None:
    """The journal's own punctuation, in both key orders, is not damage (else every salvage
    would report lines that are not there)."""
    for text in (journal_bytes(entry("a"), entry("b")).decode(),
                 json.dumps({"version": 1, "changes": [entry("a"), entry("b")]})):
        found = salvage(text, PATH, lambda item, source: Change.from_dict(item, source, KINDS))
        assert len(found.changes) == 2 and not found.skipped
        assert damaged_stretches(text, found.spans, PATH) == []


def test_garbage_between_entries_and_a_hostile_entry_each_give_one_line(
    tmp_path: Path, logfmt: io.StringIO
) -> None:
    good = journal_bytes(entry("a"), entry("escape"), entry("b")).replace(
        b"/proc/sys/vm/escape", b"/proc/sys/vm/../../../etc/passwd")
    cut = good.index(b"},") + 2
    path = write(tmp_path, good[:cut] + b"\xffjunk" + good[cut:] + b"\x00tail")
    journal = load(tmp_path)
    assert sorted(journal.changes) == ["/proc/sys/vm/a", "/proc/sys/vm/b"]
    assert len(journal.problems) == 3, journal.problems
    assert "piece 1.path: not a file the test job writes" in journal.problems[0]
    assert "damaged: not part of a whole entry" in journal.problems[1]
    assert "not the end of a journal" in journal.problems[2]
    (line,) = [ln for ln in logfmt.getvalue().splitlines() if "event=journal_unreadable" in ln]
    assert "salvaged=2 skipped=3" in line and "owner=test" in line, line
    # nothing written on the host outside the root; the damaged file kept at the next write
    damaged = path.read_bytes()
    journal.forget("/proc/sys/vm/a")
    assert path.with_name("test.json.bad").read_bytes() == damaged
    assert [c["path"] for c in json.loads(path.read_text())["changes"]] == ["/proc/sys/vm/b"]
    assert load(tmp_path).problems == []


@pytest.mark.parametrize(("data", "why"), [
    (b"{not json", "not JSON"),
    (b'{"version": 1, "changes": [{"kind": "sysctl", "pa', "not JSON"),
    (b"[]", "expected a version 1 state object"),
])
def test_a_file_without_one_whole_entry_still_raises(
    tmp_path: Path, data: bytes, why: str
) -> None:
    write(tmp_path, data)
    with pytest.raises(InputError, match=f"{why}.*no whole entry in it"):
        load(tmp_path)


def test_another_versions_journal_is_refused_not_salvaged(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({"version": 2, "changes": [entry("a")]}).encode())
    with pytest.raises(InputError, match="a version 2 journal"):
        load(tmp_path)


def test_a_file_that_cannot_be_read_is_refused_not_salvaged(tmp_path: Path) -> None:
    (tmp_path / PATH.lstrip("/")).mkdir(parents=True)
    with pytest.raises(InputError, match="is a directory"):
        load(tmp_path)
