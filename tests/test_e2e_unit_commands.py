"""The e2e balloon test's crash check runs by hand what the guest unit's ``ExecStopPost=`` lines
run (tests/e2e/test_balloon.py ``UNIT_STOP_POST``; issue 15: after ``kill -9`` the unit's stop
commands undo everything). When the unit's commands change, this fails here, in the fast tier,
instead of on the testbed: switch the constant with them."""

from __future__ import annotations

from tests.e2e.test_balloon import UNIT_STOP_POST
from tests.test_systemd_unit import command_lines

AGENT = "/usr/bin/guestagent "


def test_the_crash_check_runs_the_units_stop_commands() -> None:
    stop_post = [c for k, _p, c in command_lines() if k == "ExecStopPost"]
    # the agent's arguments, without a wrapper (systemd-run --scope ...) in front of the binary
    assert all(AGENT in c for c in stop_post), stop_post
    assert tuple(c.split(AGENT, 1)[1] for c in stop_post) == UNIT_STOP_POST
