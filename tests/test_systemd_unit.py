"""The guest unit's privileged steps for the balloon's allocation guard (docs/BALLOON.md, "Under
the systemd unit"): exactly two command lines run outside the daemon's sandbox, both with the
``-`` and ``+`` prefixes (systemd.service(5): "-", "@", ":" and one of "+", "!", "!!" combine in
any order), in a scope of their own (the device policy is a control-group rule that ``+`` does not
lift), and everything else keeps the sandbox. The one after the daemon is ``guestagent reset``,
the unit's only ``ExecStopPost`` (issue 14 item 6): it undoes the balloon, the devices and the
agent's kdamonds."""

from __future__ import annotations

import re

from tests.test_packaging import SYSTEMD, parse_unit

#: The scope the two privileged steps run in: outside the unit's control group (DevicePolicy).
SCOPE = "/usr/bin/systemd-run --scope --quiet --property=DefaultDependencies=no"
PREPARE = f"{SCOPE} /usr/bin/guestagent balloon --prepare-guard"
RESET = f"{SCOPE} /usr/bin/guestagent reset"

#: Every setting that takes a command line (systemd.service(5)).
EXEC_KEYS = ("ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload",
             "ExecStop", "ExecStopPost")
_PREFIX = re.compile(r"^([-@:+!]*)(.*)$")


def command_lines() -> list[tuple[str, str, str]]:
    """(key, prefixes, command) of each command line of the guest unit."""
    service = parse_unit(SYSTEMD / "guestagent.service")["Service"]
    out = []
    for key in EXEC_KEYS:
        for value in service.get(key, []):
            m = _PREFIX.match(value)
            assert m is not None
            out.append((key, m.group(1), m.group(2)))
    return out


def test_exactly_two_lines_run_outside_the_sandbox() -> None:
    privileged = [(k, p, c) for k, p, c in command_lines() if "+" in p]
    assert privileged == [("ExecStartPre", "-+", PREPARE), ("ExecStopPost", "-+", RESET)]


def test_the_privileged_prefixes_are_a_valid_combination() -> None:
    for _key, prefixes, _command in command_lines():
        # systemd.service(5), "Special executable prefixes": each at most once, and only one of
        # "+", "!", "!!"
        single = prefixes.replace("!!", "!")
        assert len(set(single)) == len(single), prefixes
        assert sum(c in single for c in "+!") <= 1, prefixes


def test_the_daemon_and_the_other_steps_keep_the_sandbox() -> None:
    lines = command_lines()
    assert ("ExecStart", "", "/usr/bin/guestagent run") in lines
    # the prepare step comes before the daemon, the reset after it: nothing else is privileged
    assert [k for k, p, _c in lines if "+" not in p] == ["ExecStart", "ExecReload"]


def test_reset_is_the_only_stop_post_command() -> None:
    """One command undoes everything (balloon, devices, tiering); the per-feature resets are no
    longer in the unit (they stay as commands)."""
    assert [(p, c) for k, p, c in command_lines() if k == "ExecStopPost"] == [("-+", RESET)]


def test_the_privileged_commands_parse() -> None:
    """The words after the scope are a command line the agent's own parser takes."""
    from guestagent.cli import build_parser

    words = PREPARE.split()[PREPARE.split().index("/usr/bin/guestagent") + 1:]
    args = build_parser("balloon").parse_args(words)
    assert args.command == "balloon" and args.prepare_guard
    words = RESET.split()[RESET.split().index("/usr/bin/guestagent") + 1:]
    args = build_parser("reset").parse_args(words)
    assert args.command == "reset"
    assert args.func.__module__ == "guestagent.reset"
