"""The balloon's undo, in the undo journal (:mod:`guestagent.undo`), and its status file.

The journal is ``/run/guestagent/balloon.json`` (``/run`` lives as long as the boot, exactly as
long as the driver's target does): typed records, written atomically, and only when something an
undo needs changes, never on a tick that changes nothing of it. Its kinds:

* ``target``: path the driver's ``target_kb``; ``previous`` the driver's target before the agent's
  first write (KiB), the reset's fallback when xenstore has no ceiling. Removed by a reset.
* ``toolstack_offset``: path ``memory/target`` (xenstore); ``previous`` how far the driver's
  target sits below the toolstack's memory/target, in KiB (HVM video RAM: the ceiling is
  min(memory/target, static-max) minus it). Learned once per boot, kept across a reset.
* the allocation guard's (:mod:`guestagent.balloon.guard`), each with the path its undo acts on:
  ``sysctl`` (``/proc/sys/vm/overcommit_memory``, ``previous`` 0, 1 or 2), ``zram_module``
  (``/sys/module/zram``, ``previous`` ``not loaded``), ``zram_device`` (``/sys/block/zram<N>``,
  or ``/sys/class/zram-control/hot_add`` until hot_add answered, its ``applied`` then
  ``next=N had=A,B``: the number the kernel will give and the devices present before, so a
  kill before the number is saved still lets the undo find that device and only it;
  ``previous`` ``absent``) and
  ``swap`` (``/dev/zram<N>``, ``previous`` ``off``).

Each entry is checked on its own (issue 15): a malformed one is skipped with one line
(``event=undo_entry_skipped``) and the others are kept and undone. A malformed ``target`` entry
is skipped too when a reset reads the journal (:meth:`BalloonJournal.load_for_reset`: one line
``event=balloon_record_bad_value field=original_target_kb``, the entry dropped from the file, the
guard's entries still undone, the target from xenstore, static-max or the last reset's); a start
(:meth:`BalloonJournal.load`) refuses it instead (InputError), so it never takes a
ballooned-down target for the original. A file that is no longer JSON at all (a garbled byte, a
lost brace, cut short) still gives a reset every whole entry it holds
(:meth:`BalloonJournal.salvage`): one garbled byte loses the entry it fell in, not the guard's
changes beside it.

The balloon code sees the journal through a small dict (:func:`view`: ``original_target_kb``,
``toolstack_offset_kb``, ``guard`` as the guard's change dicts) and hands a changed one back
(:func:`changes_of`); :class:`BalloonJournal` writes it only when the records differ.

An untyped record left by an earlier version (a JSON object without ``version``) is converted on
its first read: its original target, offset and guard changes become records, the file is
rewritten in the journal's format (or removed when nothing is left), one line
``event=balloon_record_converted``. An ``original_target_kb`` that is not a positive integer
refuses the conversion on a start (the file left as it is) and is dropped by a reset's (the rest
converted and undone).

What is not undo (whether a controller runs, its last decisions, the last reset, the toolstack
target last seen) is in the status file ``/run/guestagent/balloon-status.json``, which
``guestagent balloon status`` reads. No undo entry comes from it; a reset reads one figure there,
the last reset's target, and only as the last fallback (no xenstore and no ``target`` entry: a
second reset after the daemon's own stop, :func:`guestagent.balloon.common.decide_reset`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

from guestagent.balloon.guard import (
    GUARD_KEY,
    MAX_ZRAM_ID,
    OVERCOMMIT_MEMORY,
    SYS_BLOCK,
    ZRAM_CONTROL,
)
from guestagent.balloon.signals import BALLOON_TARGET, XS_TARGET
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.undo import Change, Journal, KindRule, read_damaged, salvage

#: The balloon's undo journal.
RECORD_PATH = "/run/guestagent/balloon.json"
#: What ``balloon status`` shows and no undo needs.
STATUS_PATH = "/run/guestagent/balloon-status.json"
#: How many decisions the status file keeps.
STATUS_DECISIONS = 20

OWNER = "balloon"
_ZRAM_N = r"(0|[1-9][0-9]{0,3})"
HOT_ADD = f"{ZRAM_CONTROL}/hot_add"
ZRAM_MODULE = "/sys/module/zram"

KINDS: dict[str, KindRule] = {
    "target": KindRule(re.compile(re.escape(BALLOON_TARGET)), re.compile(r"[1-9][0-9]{0,11}")),
    "toolstack_offset": KindRule(re.compile(re.escape(XS_TARGET)), re.compile(r"-?[0-9]{1,20}")),
    "sysctl": KindRule(re.compile(re.escape(OVERCOMMIT_MEMORY)), re.compile(r"[0-2]")),
    "zram_module": KindRule(re.compile(re.escape(ZRAM_MODULE)), re.compile("not loaded")),
    "zram_device": KindRule(
        re.compile(f"{re.escape(SYS_BLOCK)}/zram{_ZRAM_N}|{re.escape(HOT_ADD)}"),
        re.compile("absent"),
        re.compile(f"(next={_ZRAM_N} had=({_ZRAM_N}(,{_ZRAM_N}){{0,1023}})?)?")),
    "swap": KindRule(re.compile(f"/dev/zram{_ZRAM_N}"), re.compile("off")),
}
_GUARD_KINDS = ("sysctl", "zram_module", "zram_device", "swap")
_DEVICE = re.compile(r".*zram([0-9]+)")


# -- the dict the balloon code sees <-> the records ----------------------------------------------


def _guard_change(entry: Any) -> Change | None:
    """One of the guard's change dicts as a record (None: not an object, nothing to keep)."""
    if not isinstance(entry, dict):
        return None
    kind = str(entry.get("kind"))
    device = entry.get("device")
    if kind == "sysctl":
        return Change(kind, str(entry.get("path")), "", str(entry.get("previous")))
    if kind == "zram_module":
        return Change(kind, ZRAM_MODULE, "", "not loaded")
    if kind == "zram_device" and device is None:
        return Change(kind, HOT_ADD, "", "absent", _pending_text(entry))
    if kind == "zram_device":
        return Change(kind, f"{SYS_BLOCK}/zram{device}", "", "absent")
    return Change(kind, f"/dev/zram{device}", "", "off")


def _pending_text(entry: dict[str, Any]) -> str:
    """A ``zram_device`` entry's ``next`` and ``had`` (before hot_add answered) as its
    ``applied``: ``next=N had=A,B``; "" when it has none (an earlier version's)."""
    if "next" not in entry:
        return ""
    had = entry.get("had")
    return f"next={entry['next']} had={','.join(str(n) for n in had or [])}"


def _pending_fields(applied: str) -> dict[str, Any]:
    """:func:`_pending_text` read back (the kind's rule checked it already)."""
    m = re.fullmatch(r"next=([0-9]+) had=([0-9,]*)", applied)
    if m is None:
        return {}
    return {"next": int(m.group(1)), "had": [int(n) for n in m.group(2).split(",") if n]}


def _guard_entry(change: Change) -> dict[str, Any]:
    """A record of the guard's as the guard's change dict."""
    if change.kind == "sysctl":
        return {"kind": "sysctl", "path": change.path, "previous": change.previous}
    if change.kind == "zram_module":
        return {"kind": "zram_module", "previous": "not loaded"}
    match = _DEVICE.fullmatch(change.path)
    device = int(match.group(1)) if match and int(match.group(1)) <= MAX_ZRAM_ID else None
    if change.kind == "zram_device" and change.path == HOT_ADD:
        return {"kind": change.kind, "device": None, **_pending_fields(change.applied)}
    return {"kind": change.kind, "device": device}


def view(changes: list[Change]) -> dict[str, Any]:
    """The records as the balloon code reads them: ``original_target_kb`` and
    ``toolstack_offset_kb`` (when recorded), ``guard`` (when the guard changed anything)."""
    out: dict[str, Any] = {}
    guard = []
    for change in changes:
        if change.kind == "target":
            out["original_target_kb"] = int(change.previous)
        elif change.kind == "toolstack_offset":
            out["toolstack_offset_kb"] = int(change.previous)
        else:
            guard.append(_guard_entry(change))
    if guard:
        out[GUARD_KEY] = guard
    return out


def changes_of(record: dict[str, Any]) -> list[Change]:
    """The records a dict of :func:`view`'s shape stands for (other keys are not undo: ignored).
    Values are written as given; what a kind may not hold is refused when read back."""
    changes = []
    original = record.get("original_target_kb")
    if original is not None:
        changes.append(Change("target", BALLOON_TARGET, "", str(original)))
    offset = record.get("toolstack_offset_kb")
    if offset is not None:
        changes.append(Change("toolstack_offset", XS_TARGET, "", str(offset)))
    guard = record.get(GUARD_KEY) or []
    for entry in guard if isinstance(guard, list) else []:
        change = _guard_change(entry)
        if change is not None:
            changes.append(change)
    return changes


def _salvaged(item: Any, source: str) -> Change:
    """One piece of a damaged file as a record: this journal's entry, or an earlier version's
    guard change (``{"kind": "zram_device", "device": 1}``); InputError when it is neither."""
    from dataclasses import asdict

    from guestagent.balloon.guard import valid_change

    if not isinstance(item, dict) or "kind" not in item:
        raise InputError(source, "not an entry (an object with a kind)", str(item)[:40])
    try:
        return Change.from_dict(item, source, KINDS, OWNER)
    except InputError:
        if item.get("kind") not in _GUARD_KINDS or "path" in item:
            raise
    change = _guard_change(valid_change(item))
    if change is None:
        raise InputError(source, "not an entry", str(item)[:40])
    return Change.from_dict(asdict(change), source, KINDS, OWNER)


# -- the files -----------------------------------------------------------------------------------


class BalloonJournal:
    """The balloon's journal file and status file below one HostFS root."""

    def __init__(self, hostfs: HostFS, path: str = RECORD_PATH,
                 status_path: str = STATUS_PATH) -> None:
        self.hostfs = hostfs
        self.path = path
        self.status_path = status_path
        self.log = get_logger("balloon")
        self._logged: set[str] = set()

    def _journal(self) -> Journal:
        return Journal(self.hostfs, self.path, OWNER, KINDS)

    def _raw(self) -> Any:
        """The file's JSON (None when there is none); unreadable: InputError."""
        try:
            text = self.hostfs.read_text(self.path)
        except MissingInputError:
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise InputError(self.path, f"unreadable record: {e}") from None
        if not isinstance(data, dict):
            raise InputError(self.path, "record is not a JSON object", data)
        return data

    def load(self) -> list[Change]:
        """The records in force (an earlier version's record converted first). A malformed
        ``target`` entry refuses the record (InputError): see the module docstring."""
        return self._load(strict=True)[0]

    def load_for_reset(self) -> tuple[list[Change], str | None]:
        """The records a reset can use, and the malformed original target skipped (None: none
        was). InputError only when the file is not a journal at all (not JSON, not an object,
        another version, ``changes`` not a list)."""
        return self._load(strict=False)

    def _load(self, strict: bool) -> tuple[list[Change], str | None]:
        data = self._raw()
        if data is None:
            return [], None
        bad: str | None = None
        if "version" not in data:
            try:
                bad = self._convert(data, strict)
            except OSError as e:  # e.g. balloon status without root: one line, nothing lost
                raise InputError(self.path, f"an earlier version's record could not be "
                                 f"converted: {e.strerror or e}") from None
        journal = self._journal()
        journal.load()
        targets = self._bad_targets(data.get("changes"), journal)
        if targets and strict:
            raise InputError(self.path, "bad original_target_kb", next(iter(targets.values())))
        for problem in journal.problems:
            if problem not in self._logged and problem not in targets:
                self._logged.add(problem)  # the guard reads the record many times a step
                self.log.warning("undo_entry_skipped", journal=self.path, error=problem)
        if targets:
            bad = next(iter(targets.values()))
        return list(journal.changes.values()), bad

    def _bad_targets(self, raw: Any, journal: Journal) -> dict[str, str]:
        """{the load's problem line: the value} for each refused ``target`` entry, when no
        ``target`` entry was accepted."""
        if journal.of_kind("target") or not isinstance(raw, list):
            return {}
        out: dict[str, str] = {}
        for i, item in enumerate(raw):
            if not (isinstance(item, dict) and item.get("kind") == "target"):
                continue
            try:
                Change.from_dict(item, f"{self.path} changes[{i}]", KINDS, OWNER)
            except InputError as e:
                out[str(e)] = str(item.get("previous"))
        return out

    def save(self, changes: list[Change], force: bool = False) -> None:
        """Write the records, only when they differ from the file's or ``force`` (an empty
        journal removes the file)."""
        try:
            current = None if force else list(self._journal().load().changes.values())
        except InputError:
            current = None
        if current == changes:
            return
        journal = self._journal()
        journal.changes = {c.path: c for c in changes}
        journal.save()
        self._readable()

    def _readable(self) -> None:
        """World-readable, as the untyped record was (``balloon status`` needs no root)."""
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.hostfs.path(self.path), 0o644)

    def _convert(self, data: dict[str, Any], strict: bool) -> str | None:
        """An earlier version's untyped record: its undo into the journal, its status into the
        status file; the old file is replaced (or removed when nothing is left to undo). A bad
        original target: InputError (``strict``, the file untouched) or dropped and returned."""
        original = data.get("original_target_kb")
        bad = None
        if original is not None and (
            not isinstance(original, int) or isinstance(original, bool) or original <= 0
        ):
            if strict:
                raise InputError(self.path, "bad original_target_kb", original)
            bad = str(original)
            data = {k: v for k, v in data.items() if k != "original_target_kb"}
        changes = changes_of(data)
        kept = ("active", "decisions", "last_reset", "toolstack_target_kb")
        status: dict[str, Any] = {k: data[k] for k in kept if k in data}
        if status:
            self.save_status({**self.load_status(), **status})
        journal = self._journal()
        journal.changes = {c.path: c for c in changes}
        journal.save()
        self._readable()
        self.log.info("balloon_record_converted", source=self.path, records=len(changes),
                      note="an earlier version's record, now in the undo journal's format")
        return bad

    def salvage(self) -> tuple[list[Change], int]:
        """The whole entries of a file that is not a journal (not JSON, cut short, garbled):
        each ``{...}`` holding no brace read on its own (:func:`guestagent.undo.salvage`, shared
        with every journal) and checked as a record of this journal or, failing that, as an
        earlier version's guard change. Returns the records (the first for each path) and how
        many pieces were skipped, each with one line (``event=undo_entry_skipped``)."""
        text = read_damaged(self.hostfs, self.path)
        if text is None:
            return [], 0
        found = salvage(text, self.path, _salvaged)
        for error, piece in found.skipped:
            self.log.warning("undo_entry_skipped", journal=self.path, error=error[:120],
                             piece=piece[:60])
        return list(found.changes.values()), len(found.skipped)

    def move_aside(self) -> str:
        """Rename a damaged file to ``balloon.json.bad``; returns where it is now."""
        path = self.hostfs.path(self.path)
        bad = path.with_name(path.name + ".bad")
        try:
            os.replace(path, bad)
        except OSError:
            return str(path)
        return str(bad)

    # -- the status file (not undo) ----------------------------------------------------------

    def load_status(self) -> dict[str, Any]:
        """The status file's content; {} when there is none or it cannot be read (it only
        informs ``balloon status``)."""
        try:
            data = json.loads(self.hostfs.read_text(self.status_path))
        except (InputError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_status(self, status: dict[str, Any]) -> None:
        import tempfile

        path = self.hostfs.path(self.status_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".balloon-status.", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                # One line, by the C encoder (``indent`` takes the pure-Python one, which was a
                # tenth of a tick at a decision a second); ``balloon status`` shows it.
                f.write(json.dumps(status, sort_keys=True) + "\n")
                os.fchmod(f.fileno(), 0o644)  # readable without root, as the record was
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def update_status(self, **values: Any) -> None:
        self.save_status({**self.load_status(), **values})

    def add_decision(self, entry: dict[str, Any]) -> None:
        status = self.load_status()
        decisions = status.get("decisions")
        decisions = list(decisions) if isinstance(decisions, list) else []
        decisions.append(entry)
        status["decisions"] = decisions[-STATUS_DECISIONS:]
        self.save_status(status)
