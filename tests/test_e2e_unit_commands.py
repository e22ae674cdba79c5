"""The e2e crash checks run by hand what the guest unit's ``ExecStopPost=`` lines run
(tests/e2e/util.py ``UNIT_STOP_POST``; issue 15: after ``kill -9`` the unit's stop commands undo
everything): the balloon's (tests/e2e/test_balloon.py), tiering's (tests/e2e/test_tiering.py) and
the devices' (tests/e2e/test_dom0_devices.py). When the unit's commands change, this fails here,
in the fast tier, instead of on the testbed: switch the constant with them."""

from __future__ import annotations

import pytest

from tests.e2e import test_balloon, test_dom0_devices, test_tiering
from tests.e2e.util import UNIT_STOP_POST
from tests.test_systemd_unit import command_lines

AGENT = "/usr/bin/guestagent "


def test_the_crash_checks_run_the_units_stop_commands() -> None:
    stop_post = [c for k, _p, c in command_lines() if k == "ExecStopPost"]
    # the agent's arguments, without a wrapper (systemd-run --scope ...) in front of the binary
    assert all(AGENT in c for c in stop_post), stop_post
    assert tuple(c.split(AGENT, 1)[1] for c in stop_post) == UNIT_STOP_POST


@pytest.mark.parametrize("module", [test_balloon, test_tiering, test_dom0_devices])
def test_every_crash_check_uses_the_one_constant(module: object) -> None:
    """No e2e test keeps a copy of its own that could drift from the unit."""
    assert module.UNIT_STOP_POST is UNIT_STOP_POST  # type: ignore[attr-defined]
