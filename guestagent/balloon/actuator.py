"""The balloon actuator: writes ``target_kb``, reads back what the driver achieved, and can undo.

It never decides: :meth:`BalloonActuator.apply` writes exactly the target it is given (whether a
change is worth writing, and every limit, is the step's: :mod:`guestagent.balloon.step`), logs
every change with its reason, remembers the driver's original target in the balloon's undo
journal under ``/run`` (:mod:`guestagent.balloon.journal`; so ``guestagent balloon --reset`` can
undo after a crash: ``/run`` lives as long as the boot, exactly as long as the driver's target
does), and notices when the toolstack rewrote ``memory/target`` behind it.

Targets are in the driver's units (reference section 4.3): ``target_kb`` and ``info/current_kb``,
not MemTotal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from guestagent.balloon.common import MAX_TOOLSTACK_OFFSET_KB, decide_reset, toolstack_offset
from guestagent.balloon.journal import RECORD_PATH, STATUS_PATH, BalloonJournal
from guestagent.balloon.policy import hard_minimum_kb
from guestagent.balloon.signals import (
    BALLOON_TARGET,
    XS_STATIC_MAX,
    XS_TARGET,
    BalloonState,
    XenstoreReader,
    balloon_unavailable_reason,
    read_balloon,
    read_xenstore_kb,
)
from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.units import MIB_KB

__all__ = ["RECORD_PATH", "STATUS_PATH", "ApplyResult", "BalloonActuator", "BalloonUnavailable"]


class BalloonUnavailable(GuestAgentError):
    """No balloon driver, or not on Xen: the feature stays off."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(f"balloon unavailable: {why}")


@dataclass(frozen=True)
class ApplyResult:
    written: bool
    #: The driver's target after this call (the new one if written, else the unchanged one).
    target_kb: int
    #: What the driver holds right now (it may lag behind the target or stop short of it).
    current_kb: int
    previous_kb: int


class BalloonActuator:
    """Writes the balloon target through a :class:`HostFS`; see the module docstring."""

    def __init__(
        self,
        hostfs: HostFS,
        xenstore: XenstoreReader | None = None,
        record_path: str = RECORD_PATH,
    ) -> None:
        self.hostfs = hostfs
        self.xenstore = xenstore
        self.record_path = record_path
        self.store = BalloonJournal(hostfs, record_path)
        self.log = get_logger("balloon")
        self._last_xs_target: int | None = None

    # -- availability and reads ---------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`BalloonUnavailable` (one clear line) without a balloon driver."""
        why = balloon_unavailable_reason(self.hostfs)
        if why is not None:
            raise BalloonUnavailable(why)

    def read(self) -> BalloonState:
        state = read_balloon(self.hostfs)
        if state is None:
            self.check()
            raise BalloonUnavailable("balloon driver vanished")
        return state

    def toolstack_targets(self) -> tuple[int | None, int | None]:
        """(memory/target, memory/static-max) in KiB, None where unknown."""
        if self.xenstore is None:
            return None, None
        return (
            read_xenstore_kb(self.xenstore, XS_TARGET),
            read_xenstore_kb(self.xenstore, XS_STATIC_MAX),
        )

    def observe_toolstack(self, xs_target_kb: int | None) -> bool:
        """True (and a log line) when memory/target changed since the last look."""
        previous, self._last_xs_target = self._last_xs_target, xs_target_kb
        if previous is None or xs_target_kb is None or previous == xs_target_kb:
            return False
        self.log.warning(
            "balloon_toolstack_override",
            old_target_kb=previous,
            new_target_kb=xs_target_kb,
            action="following the toolstack's target",
        )
        self.store.update_status(toolstack_target_kb=xs_target_kb)
        return True

    # -- the record ---------------------------------------------------------------------------

    def load_record(self) -> dict[str, Any]:
        """The undo records as a dict (:func:`guestagent.balloon.journal.view`); {} if there are
        none. A damaged record raises InputError."""
        from guestagent.balloon.journal import view

        return view(self.store.load())

    def save_record(self, record: dict[str, Any]) -> None:
        """Write what ``record`` holds to undo, only if that changed (other keys: ignored)."""
        from guestagent.balloon.journal import changes_of

        self.store.save(changes_of(record))

    def start(self) -> dict[str, Any]:
        """Remember the driver's original target (once per boot) and learn the toolstack offset.

        Returns the record. If a record already exists (a previous run died without reset), its
        original target is kept: that is the value to go back to, not the current one. The
        journal is written only when it had no original target.
        """
        self.check()
        record = self.load_record()
        driver = self.read()
        xs_target, xs_static_max = self.toolstack_targets()
        self._last_xs_target = xs_target
        if record.get("original_target_kb") is None:
            offset = toolstack_offset(xs_target, driver.target_kb)
            if offset is None:
                self.log.warning(
                    "balloon_offset_unknown",
                    xs_target_kb=xs_target,
                    driver_target_kb=driver.target_kb,
                    note="driver target already moved; assuming offset 0",
                )
                offset = 0
            record.update(original_target_kb=driver.target_kb, toolstack_offset_kb=offset)
            self.save_record(record)
        self.store.update_status(active=True, toolstack_target_kb=xs_target,
                                 static_max_kb=xs_static_max)
        return record

    def record_decision(self, entry: dict[str, Any]) -> None:
        """One decision for ``balloon status`` (the status file: never read by an undo)."""
        self.store.add_decision(entry)

    # -- writes -------------------------------------------------------------------------------

    def _write(self, target_kb: int) -> None:
        try:
            self.hostfs.write_text(BALLOON_TARGET, f"{target_kb}\n")
        except PermissionError:
            raise InputError(
                BALLOON_TARGET, "permission denied (writing needs root)", target_kb
            ) from None
        except OSError as e:
            reason = f"write failed: {e.strerror or e}"
            raise InputError(BALLOON_TARGET, reason, target_kb) from None

    def apply(self, target_kb: int, reason: str) -> ApplyResult:
        """Write ``target_kb``, exactly (a target <= 0 is refused: InputError, nothing written)."""
        if target_kb <= 0:
            raise InputError("balloon target", "must be positive", target_kb)
        before = self.read()
        delta = target_kb - before.target_kb
        self._write(target_kb)
        after = self.read()
        self.log.info(
            "balloon_target_set",
            target_kb=target_kb,
            previous_kb=before.target_kb,
            delta_kb=delta,
            current_kb=after.current_kb,
            reason=reason,
        )
        return ApplyResult(True, target_kb, after.current_kb, before.target_kb)

    def set_target(self, target_kb: int, reason: str = "set by hand") -> ApplyResult:
        """Write one target chosen by an operator, within the limits every policy obeys.

        Refused (InputError, nothing written) below the hard minimum, max(256 MiB,
        static-max / 16) of :func:`~guestagent.balloon.policy.hard_minimum_kb`, and above the
        ceiling (the toolstack's memory/target and static-max, or the driver's original target
        without xenstore). The driver's original target is remembered first, as :meth:`start`
        does, so ``guestagent balloon --reset`` goes back to it; a running controller follows the
        new target as a change made behind its back.
        """
        self.check()
        before = self.read()
        record = self.load_record()
        if record.get("original_target_kb") is None:
            record.update(
                original_target_kb=before.target_kb,
                toolstack_offset_kb=record.get("toolstack_offset_kb") or 0,
            )
        ceiling = self.ceiling_kb()
        ceiling_source = "the toolstack's memory/target and static-max"
        if ceiling is None:
            ceiling = int(record["original_target_kb"])
            ceiling_source = "the driver's original target (no xenstore)"
        _, static_max = self.toolstack_targets()
        floor = min(hard_minimum_kb(static_max if static_max is not None else ceiling), ceiling)
        if target_kb < floor:
            raise InputError(
                "balloon target",
                f"below the hard minimum {floor} KiB (max(256 MiB, static-max/16)); refused",
                target_kb,
            )
        if target_kb > ceiling:
            raise InputError(
                "balloon target", f"above the ceiling {ceiling} KiB ({ceiling_source}); refused",
                target_kb,
            )
        self.save_record(record)
        result = self.apply(target_kb, reason)
        self.record_decision({
            "policy": "manual",
            "t": 0.0,
            "wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": "set",
            "target_kb": result.target_kb,
            "current_kb": result.current_kb,
            "written": result.written,
            "reason": reason,
        })
        return result

    def ceiling_kb(self, record: dict[str, Any] | None = None) -> int | None:
        """min(memory/target, memory/static-max) minus the recorded offset; None without them.

        The offset is bounds-checked (:meth:`checked_offset_kb`): a damaged one counts as 0.
        """
        xs_target, xs_static_max = self.toolstack_targets()
        known = [v for v in (xs_target, xs_static_max) if v is not None]
        if not known:
            return None
        if record is None:
            record = self.load_record()
        return max(1, min(known) - self.checked_offset_kb(record))

    def checked_offset_kb(self, record: dict[str, Any]) -> int:
        """The record's toolstack offset if it is an integer in 0..MAX_TOOLSTACK_OFFSET_KB.

        :meth:`start` never records anything else; any other value is damage (a corrupted
        offset once put the target at 1 KiB, a negative one at 1,001,048,575 KiB): one line, 0.
        """
        offset = record.get("toolstack_offset_kb")
        if offset is None:
            return 0
        if isinstance(offset, int) and not isinstance(offset, bool) and (
            0 <= offset <= MAX_TOOLSTACK_OFFSET_KB
        ):
            return offset
        self.log.warning(
            "balloon_record_bad_value", source=self.record_path, field="toolstack_offset_kb",
            value=str(offset)[:40], used=0,
            expected=f"an integer 0..{MAX_TOOLSTACK_OFFSET_KB}",
        )
        return 0

    def record_for_reset(self) -> dict[str, Any]:
        """The records for a reset, or what can be kept of them (one line). Each entry stands
        alone (issue 15): a malformed ``target`` entry (the original target) is dropped from the
        journal with one line (``balloon_record_bad_value``; the guard's entries are still
        undone; the target falls back to xenstore, static-max or the last reset's), other
        malformed entries are skipped by the load (``undo_entry_skipped``). A file that is not a
        journal at all (not JSON: garbled, cut short) is moved aside (``.bad``), the whole
        entries it still holds are written back as the journal (:meth:`BalloonJournal.salvage`:
        each piece checked on its own, a bad one skipped with one line) and the reset goes on
        with them; what was not whole is lost (the line says so). Idempotent: the reset reads
        it again."""
        from guestagent.balloon.journal import view

        try:
            changes, bad_target = self.store.load_for_reset()
        except InputError as e:
            changes, skipped = self.store.salvage()
            moved = self.store.move_aside()
            if changes:
                self.store.save(changes, force=True)
            self.log.warning(
                "balloon_record_unreadable", source=self.record_path, error=str(e),
                moved_to=moved, salvaged=len(changes), skipped=skipped,
                fallback="xenstore memory/target, static-max",
                lost=("every change it held (no whole entry), the allocation guard's too"
                      if not changes else "what was not a whole entry"),
            )
            return view(changes)
        if bad_target is not None:
            self.log.warning(
                "balloon_record_bad_value", source=self.record_path, field="original_target_kb",
                value=bad_target[:40], used="none",
                fallback="xenstore memory/target, static-max, the last reset's target",
            )
            self.store.save(changes, force=True)  # dropped: the next start records afresh
        return view(changes)

    def reset_target(self, record: dict[str, Any]) -> tuple[int, str]:
        """The target a reset goes back to, and where it came from: the toolstack's figures and
        the record read, then :func:`~guestagent.balloon.common.decide_reset` (pure) decides,
        never under the hard floor nor over static-max."""
        xs_target, static_max = self.toolstack_targets()
        offset = self.checked_offset_kb(record) if (xs_target, static_max) != (None, None) else 0
        original = record.get("original_target_kb")
        # the last resort (no xenstore, no original target): the status file's last reset
        last = self.store.load_status().get("last_reset") if original is None else None
        done = last.get("target_kb") if isinstance(last, dict) else None
        last_kb = done if isinstance(done, int) and not isinstance(done, bool) else None
        where = decide_reset(xs_target, static_max, offset, original, last_kb)
        if where is None:
            raise InputError(
                "balloon reset",
                f"no xenstore memory/target and no saved original target (nor static-max) in "
                f"{self.record_path}",
            )
        if where.clamped_from_kb is not None:
            floor = hard_minimum_kb(static_max if static_max is not None else where.clamped_from_kb)
            self.log.warning(
                "balloon_reset_clamped", source=where.source, bad_value=where.clamped_from_kb,
                used=where.target_kb, floor_kb=floor, static_max_kb=static_max,
            )
        return where.target_kb, where.source

    def reset(self) -> int:
        """Put the target back to the ceiling (:meth:`reset_target`); log it.

        Works with a damaged record (it falls back to xenstore). Returns the target written.
        Without a balloon driver this raises BalloonUnavailable.
        """
        self.check()
        before = self.read()
        record = self.record_for_reset()
        target, source = self.reset_target(record)
        self._write(target)
        after = self.read()
        self.log.info(
            "balloon_reset",
            target_kb=target,
            previous_kb=before.target_kb,
            current_kb=after.current_kb,
            source=source,
        )
        if record.get("original_target_kb") is not None:
            # undone: the next start records the driver's target afresh (offset and guard kept)
            self.save_record({**record, "original_target_kb": None})
        if record or self.store.load_status():
            self.store.update_status(active=False,
                                     last_reset={"target_kb": target, "source": source})
        return target

    def wait_populated(self, target_kb: int, timeout_s: float, slack_kb: int = 4 * MIB_KB) -> int:
        """Wait until the driver holds ``target_kb`` (less ``slack_kb``) or ``timeout_s`` passed;
        returns the driver's current_kb then. Used before a swapoff that needs the memory back."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.read().current_kb
            if current >= target_kb - slack_kb or time.monotonic() >= deadline:
                return current
            time.sleep(0.25)
