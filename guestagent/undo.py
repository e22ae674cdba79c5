"""The undo journal: what a job changed on the host, recorded before each change, in a small JSON
file per owner in the state directory (``/run/guestagent/<owner>.json`` below the HostFS root).

The file lets ``guestagent <owner> --reset`` (and the next start of the daemon) undo everything
after a crash, ``kill -9``, an OOM kill or a watchdog kill. One record per changed host object,
keyed by its path: the first ``previous`` value is kept across re-applications, so undo always
restores the state from before guestagent touched it. The entries stay in the order they were
first recorded (in memory and in the file), and an undo goes newest first
(:meth:`Journal.newest_first`): what was changed last, possibly on top of an earlier change, is
put back first.

On disk (version 1, the devices job's format since it was written)::

    {"version": 1, "changes": [{"kind": ..., "path": ..., "bdf": ..., "previous": ...,
                                "applied": ...}, ...]}

Each owner declares its kinds (:class:`KindRule`): the only paths a kind may name and the values
its ``previous`` (and, where it matters, ``applied``) may hold. Each entry is checked on its own
when the file is read: a malformed one is skipped with one line in :attr:`Journal.problems`, the
others are kept, so one bad entry never blocks the undo of the rest. Writes are atomic (temporary
file + rename); an empty journal removes its file.

A file that is no longer a journal (a garbled or non-ASCII byte, a NUL, trailing garbage, cut
short: not JSON, or JSON without the journal's shape) still gives back every whole entry it holds
(:func:`salvage`): each brace-free ``{...}`` is read and checked on its own, and every stretch of
the file between them that is not the journal's own punctuation is one more line in
:attr:`Journal.problems` (so each bad piece is reported once); one ``event=journal_unreadable``
warning names the file with ``salvaged=N skipped=M``, and the journal's next write first keeps
the damaged file as ``<name>.bad``. A file without one whole ``{...}`` raises InputError as before
(nothing in it can be known), and so does a journal of another version.

Users: the devices job (``devices.json``, :mod:`guestagent.devices.state`), the tiering job's
DAMON backend (``tiering.json``, :mod:`guestagent.tiering.journal`), the numa job's
``numa_balancing`` (``numa.json``, :mod:`guestagent.numa.balancing`) and the balloon (its original
target, toolstack offset and allocation guard: ``balloon.json``, :mod:`guestagent.balloon.journal`;
its status, not undo, in ``balloon-status.json``). Each feature's reset returns
an :class:`UndoReport`; ``guestagent reset`` (:mod:`guestagent.reset`) runs them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import MAX_READ_BYTES, HostFS

JOURNAL_VERSION = 1

BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]")


@dataclass
class UndoReport:
    """What one feature's reset did: one line per step (done, skipped or failed, as logged) and
    how many of them failed. No line and no failure: there was nothing to undo (``idle`` may say
    why, e.g. no balloon driver)."""

    lines: list[str] = field(default_factory=list)
    failures: int = 0
    idle: str = ""

    @property
    def nothing(self) -> bool:
        return not self.lines and not self.failures


@dataclass(frozen=True)
class KindRule:
    """What a journal entry of one kind may hold: every path and value read back is checked
    against these, so an undo never writes outside the files the owner writes."""

    path: re.Pattern[str]
    previous: re.Pattern[str]
    #: None: any string (the devices job's ``applied`` is only shown, never written back).
    applied: re.Pattern[str] | None = None


@dataclass
class Change:
    """One host object guestagent changed: what it held before and what guestagent left in it."""

    kind: str
    #: The host path written (a device's sysfs directory for a rebind, a kdamond's directory).
    path: str
    #: The PCI device this change was for ("" when it was for none, e.g. hugepages, a kdamond).
    bdf: str
    previous: str
    #: What guestagent left there ("" until known; each owner documents its kinds).
    applied: str = ""

    @classmethod
    def from_dict(
        cls, data: Any, source: str, kinds: Mapping[str, KindRule], owner: str = "devices"
    ) -> Change:
        """One entry of the file, checked against ``kinds``; InputError names what is wrong."""
        if not isinstance(data, dict):
            raise InputError(source, "a change must be an object", data)
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            raise InputError(source, "unknown change kind", kind)
        values: dict[str, str] = {}
        for key in ("path", "bdf", "previous", "applied"):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise InputError(f"{source}.{key}", "expected a string", value)
            values[key] = value
        rule = kinds[kind]
        if rule.path.fullmatch(values["path"]) is None:
            raise InputError(f"{source}.path", f"not a file the {owner} job writes for {kind} "
                             f"(expected {rule.path.pattern})", values["path"])
        if rule.previous.fullmatch(values["previous"]) is None:
            raise InputError(f"{source}.previous", f"not a {kind} value", values["previous"])
        if rule.applied is not None and rule.applied.fullmatch(values["applied"]) is None:
            raise InputError(f"{source}.applied", f"not a {kind} value", values["applied"])
        if values["bdf"] and BDF.fullmatch(values["bdf"]) is None:
            raise InputError(f"{source}.bdf", "not a PCI address", values["bdf"])
        return cls(kind=kind, path=values["path"], bdf=values["bdf"],
                   previous=values["previous"], applied=values["applied"])


# -- a damaged file: its whole entries, one by one -----------------------------------------------

#: One entry of a journal: a JSON object holding no brace (entries are flat).
PIECE = re.compile(r"\{[^{}]*\}")
#: What may stand between the whole entries of an undamaged journal file (both key orders).
_HEAD = re.compile(r'\s*\{\s*("version"\s*:\s*1\s*,\s*)?"changes"\s*:\s*\[\s*')
_BETWEEN = re.compile(r"\s*,\s*")
_TAIL = re.compile(r'\s*\]\s*(,\s*"version"\s*:\s*1\s*)?\}\s*')

#: Checks one piece (parsed JSON) as an entry, naming ``source``; raises InputError.
Check = Callable[[Any, str], Change]


@dataclass
class Salvage:
    """What :func:`salvage` found: the whole entries that passed the check (the first for each
    path), the pieces refused (each its error line and its text) and where the pieces were."""

    changes: dict[str, Change] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)


def read_damaged(hostfs: HostFS, path: str) -> str | None:
    """A damaged file's text, bounded, one character per byte (a NUL or a non-ASCII byte is
    damage, not the end: it becomes U+FFFD); None when it cannot be read."""
    try:
        with open(hostfs.path(path), "rb") as f:
            return f.read(MAX_READ_BYTES).decode("ascii", "replace")
    except OSError:
        return None


def salvage(text: str, source: str, check: Check) -> Salvage:
    """Each brace-free ``{...}`` of ``text`` parsed and checked on its own (linear: the pieces
    do not nest). A piece that is not JSON or that ``check`` refuses is skipped, not fatal."""
    found = Salvage()
    for i, m in enumerate(PIECE.finditer(text)):
        found.spans.append(m.span())
        where = f"{source} piece {i}"
        try:
            change = check(json.loads(m.group(0)), where)
        except (ValueError, RecursionError) as e:
            found.skipped.append((str(InputError(where, f"not JSON: {e}")), m.group(0)))
            continue
        except InputError as e:
            found.skipped.append((str(e), m.group(0)))
            continue
        found.changes.setdefault(change.path, change)
    return found


def damaged_stretches(text: str, spans: list[tuple[int, int]], source: str) -> list[str]:
    """One line per stretch of a journal file's ``text`` between its pieces (``spans``, in
    order, at least one) that is not the journal's own punctuation: what was garbled there, a
    lost brace, trailing garbage, or an end cut short."""
    edges = [0] + [x for span in spans for x in span] + [len(text)]
    last = len(spans)
    lines = []
    for k in range(last + 1):
        start, end = edges[2 * k], edges[2 * k + 1]
        rule = _HEAD if k == 0 else _TAIL if k == last else _BETWEEN
        if rule.fullmatch(text[start:end]) is not None:
            continue
        why = ("not the end of a journal (cut short or garbled)" if k == last
               else "damaged: not part of a whole entry")
        lines.append(str(InputError(f"{source} bytes {start}-{end}", why, text[start:end])))
    return lines


class _Damaged(InputError):
    """The file is not a journal any more (not JSON, or not its shape): salvage what is whole."""


class Journal:
    """One owner's changes in force, mirrored to its file on every update."""

    def __init__(self, hostfs: HostFS, path: str, owner: str,
                 kinds: Mapping[str, KindRule]) -> None:
        self.hostfs = hostfs
        self.path = path
        self.owner = owner
        self.kinds = kinds
        self.changes: dict[str, Change] = {}
        #: One line per entry of the file that was refused (and skipped) by :meth:`load`.
        self.problems: list[str] = []
        #: The file read was damaged (salvaged): the next :meth:`save` keeps it as ``.bad``.
        self.damaged = False

    def load(self) -> Journal:
        """Read the file; an absent file is an empty journal.

        Each entry is checked on its own: a malformed one is skipped (one line in
        ``problems``) and the others are kept, so one bad entry never blocks the undo of the
        rest. A damaged file gives back its whole entries (module docstring); InputError when
        it holds none, when it is another version's or cannot be read at all."""
        self.damaged = False
        try:
            text = self.hostfs.read_text(self.path)
            raw = self._entries(text)
        except MissingInputError:
            self.changes = {}
            return self
        except _Damaged as e:
            return self._salvage(e)
        except InputError as e:  # HostFS.read_text's words for a byte that is not text
            if e.reason not in ("not ASCII text", "contains a NUL byte"):
                raise  # a directory, EACCES, over 1 MiB: not damage to salvage from
            return self._salvage(e)
        changes: dict[str, Change] = {}
        problems: list[str] = []
        for i, item in enumerate(raw):
            try:
                change = Change.from_dict(item, f"{self.path} changes[{i}]", self.kinds,
                                          self.owner)
            except InputError as e:
                problems.append(str(e))
                continue
            changes[change.path] = change
        self.changes = changes
        self.problems = problems
        return self

    def _entries(self, text: str) -> list[Any]:
        """The file's ``changes`` list; _Damaged when the text is not a journal's, InputError
        when it is another version's journal."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise _Damaged(self.path, f"not JSON: {e}") from None
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, int) and version != JOURNAL_VERSION:
            raise InputError(self.path, f"a version {version} journal, this agent reads "
                             f"version {JOURNAL_VERSION}")
        if version != JOURNAL_VERSION:
            raise _Damaged(self.path, f"expected a version {JOURNAL_VERSION} state object",
                           text[:60])
        raw = data.get("changes", [])
        if not isinstance(raw, list):
            raise _Damaged(f"{self.path} changes", "expected a list", raw)
        return raw

    def _check(self, item: Any, source: str) -> Change:
        return Change.from_dict(item, source, self.kinds, self.owner)

    def _salvage(self, error: InputError) -> Journal:
        """The whole entries of a damaged file (module docstring); ``error`` (why it is not a
        journal) is raised again when it holds none."""
        from guestagent.log import get_logger

        text = read_damaged(self.hostfs, self.path)
        found = salvage(text or "", self.path, self._check)
        if not found.spans:
            raise InputError(error.source, f"{error.reason}; no whole entry in it",
                             error.value) from None
        self.changes = found.changes
        self.problems = [line for line, _piece in found.skipped]
        self.problems += damaged_stretches(text or "", found.spans, self.path)
        self.damaged = True
        get_logger("journal").warning(
            "journal_unreadable", owner=self.owner, journal=self.path, error=str(error),
            salvaged=len(found.changes), skipped=len(self.problems),
            kept_as=f"{self.path}.bad (at the journal's next write)")
        return self

    def get(self, path: str) -> Change | None:
        return self.changes.get(path)

    def record(self, change: Change) -> Change:
        """Remember a change before it is made; an existing record keeps its first ``previous``."""
        existing = self.changes.get(change.path)
        if existing is not None:
            return existing
        self.changes[change.path] = change
        self.save()
        return change

    def record_all(self, changes: Iterable[Change]) -> None:
        """Several changes in one write (existing records keep their first ``previous``)."""
        for change in changes:
            self.changes.setdefault(change.path, change)
        self.save()

    def set_applied(self, path: str, applied: str) -> None:
        change = self.changes.get(path)
        if change is not None:
            change.applied = applied
            self.save()

    def forget(self, path: str) -> None:
        if self.changes.pop(path, None) is not None:
            self.save()

    def forget_all(self, paths: Iterable[str]) -> None:
        removed = [p for p in list(paths) if self.changes.pop(p, None) is not None]
        if removed:
            self.save()

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes.values() if c.kind == kind]

    def newest_first(self, kind: str | None = None) -> list[Change]:
        """The changes (of ``kind``, or all) in the order an undo takes them: the reverse of the
        order they were first recorded in (a re-recorded path keeps its first place)."""
        return [c for c in reversed(list(self.changes.values())) if kind is None or c.kind == kind]

    def for_device(self, bdf: str) -> list[Change]:
        return [c for c in self.changes.values() if c.bdf == bdf]

    def save(self) -> None:
        """Write atomically (temporary file + rename); an empty journal removes the file."""
        import tempfile

        target = self.hostfs.path(self.path)
        if self.damaged:  # what was read was salvaged: the damaged file stays for a person
            with contextlib.suppress(OSError):
                os.replace(target, target.with_name(target.name + ".bad"))
            self.damaged = False
        if not self.changes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": JOURNAL_VERSION,
                   "changes": [asdict(c) for c in self.changes.values()]}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.owner}.", dir=str(target.parent))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
