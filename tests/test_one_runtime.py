"""Issue 14 item 2: every long-running command is the daemon running one job. Signal handlers and
poll(2) belong to the daemon's event loop alone; the separate loops of ``tiering run`` and
``dom0 run`` are gone, and none may come back.

The same search as ``grep -rn "signal.signal\\|select.poll" guestagent/``."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"signal.signal|select.poll")

#: Where the pattern may still be found, and why. Remove an entry when its loop becomes the daemon
#: with one job (the test fails while a listed file no longer needs its entry).
ALLOWED = {
    "guestagent/daemon/loop.py": "the daemon's event loop itself",
    "guestagent/balloon/controller.py": "`balloon run`'s own loop: not converted yet "
    "(`guestagent run` with the balloon job is what the tests and benchmarks use)",
    "guestagent/balloon/signals.py": "PsiTrigger.poll, for `balloon record`'s loop "
    "(balloon/trace.py): not converted yet",
}


def matches() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PATTERN.search(line):
                found.setdefault(rel, []).append(number)
    return found


def test_signals_and_poll_only_in_the_daemon_loop() -> None:
    found = matches()
    outside = {rel: lines for rel, lines in found.items() if rel not in ALLOWED}
    assert outside == {}, f"a run loop of its own outside the daemon (file: lines): {outside}"
    stale = sorted(set(ALLOWED) - set(found))
    assert stale == [], f"no longer needed in ALLOWED: {stale}"


def test_the_one_job_commands_have_no_loop_of_their_own() -> None:
    """What was a loop is one round (Runner.tick) or one pass (Publisher.publish_all); the
    daemon's timers and watches call them."""
    from guestagent.dom0.publisher import Publisher
    from guestagent.tiering.runner import Runner

    assert not hasattr(Runner, "run") and not hasattr(Publisher, "run")
    for rel in ("guestagent/tiering/runner.py", "guestagent/tiering/commands.py",
                "guestagent/dom0/commands.py", "guestagent/dom0/publisher.py"):
        assert "while " not in (REPO / rel).read_text(), rel
