"""One CLI grammar (issue 17, item 4): the global options before or after the command word,
usage errors with the sub-command's usage, and ``--log-level`` winning over the configuration for
``run``."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from guestagent import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HVM = str(FIXTURES / "hvm-3vnode")


def parsed(*words: str) -> argparse.Namespace:
    return cli.parse(cli.build_parser(cli.command_word(words)), words)


@pytest.mark.parametrize(
    "words",
    [
        ("--root", HVM, "--log-level", "debug", "topology", "--json"),
        ("topology", "--root", HVM, "--log-level", "debug", "--json"),
        ("topology", "--json", f"--root={HVM}", "--log-level=debug"),
        ("--log-level", "debug", "topology", "--root", HVM, "--json"),
    ],
    ids=["before", "after", "after, with =", "split"],
)
def test_global_options_before_or_after_the_command_word(words: tuple[str, ...]) -> None:
    args = parsed(*words)
    assert (args.command, args.root, args.log_level, args.json) == ("topology", HVM, "debug", True)


@pytest.mark.parametrize(
    "words",
    [
        ("balloon", "simulate", "--trace", "t.jsonl", "--root", "/x"),
        ("balloon", "--reset", "--root", "/x"),
        ("config", "check", "--root", "/x"),
        ("devices", "apply", "--root", "/x"),
        ("tiering", "status", "--root", "/x"),
        ("host", "topology", "--root", "/x"),
        ("dom0", "publish", "--root", "/x"),
        ("run", "--root", "/x", "--role", "guest"),
        ("status", "--root", "/x"),
        ("publish", "--root", "/x"),
    ],
)
def test_every_command_takes_them_after_its_words(words: tuple[str, ...]) -> None:
    args = parsed(*words)
    assert args.root == "/x" and args.log_level is None


def test_after_the_command_word_wins_and_unset_means_none() -> None:
    assert parsed("--root", "/a", "status", "--root", "/b").root == "/b"
    args = parsed("status")
    assert args.root is None and args.log_level is None


def test_main_runs_with_options_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``guestagent topology --root X`` gave "unrecognized arguments"."""
    assert cli.main(["topology", "--root", HVM, "--json"]) == 0
    before = capsys.readouterr().out
    assert cli.main(["--root", HVM, "topology", "--json"]) == 0
    assert capsys.readouterr().out == before and '"nodes"' in before


@pytest.mark.parametrize(
    ("words", "usage"),
    [
        (["topology", "--bogus"], "usage: guestagent topology "),
        (["--root", HVM, "balloon", "simulate", "--trace", "x", "extra"],
         "usage: guestagent balloon simulate "),
        (["config", "check", "--nope"], "usage: guestagent config check "),
        (["devices", "apply", "--rebind", "--x"], "usage: guestagent devices apply "),
        (["--bogus"], "usage: guestagent [-h]"),
    ],
)
def test_unrecognized_arguments_print_the_sub_commands_usage(
    capsys: pytest.CaptureFixture[str], words: list[str], usage: str
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(words)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"error: unrecognized arguments: {words[-1]}" in err


@pytest.fixture
def run_words(tmp_path: Path) -> list[str]:
    """``run``'s words for a guest fixture tree and the test's own configuration files."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    (tmp_path / "conf.d").mkdir()
    return ["--root", str(root), "--config", str(tmp_path / "guestagent.toml"),
            "--conf-dir", str(tmp_path / "conf.d"), "--role", "guest"]


def run_until_start(words: list[str]) -> None:
    """``guestagent run WORDS`` as cli.main takes it (parsed, logging set up from --log-level),
    up to the daemon's start (``daemon_for``: the configuration loaded, the daemon's logging set
    up), then one line at each level, as the daemon's jobs would log."""
    from guestagent.daemon.commands import daemon_for
    from guestagent.hostfs import HostFS
    from guestagent.log import configure, get_logger

    args = cli.parse(cli.build_parser("run"), ["run", *words])
    configure(level=args.log_level or "warning")
    daemon = daemon_for(args, cli.Context(hostfs=HostFS.from_env(args.root)))
    try:
        assert (daemon.role, daemon.records) == ("guest", [])  # made, not started
        log = get_logger("probe")
        log.debug("probe_debug")
        log.info("probe_info")
    finally:
        daemon.loop.close()


@pytest.mark.parametrize(
    ("configured", "words", "shown", "override"),
    [
        ("error", [], set(), False),
        ("error", ["--log-level", "debug"], {"probe_debug", "probe_info"}, True),
        ("debug", ["--log-level", "info"], {"probe_info"}, True),
        ("info", ["--log-level", "info"], {"probe_info"}, False),
        ("info", [], {"probe_info"}, False),
    ],
)
def test_run_log_level_from_the_command_line_wins(
    run_words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    configured: str, words: list[str], shown: set[str], override: bool
) -> None:
    """``--log-level`` had no effect on ``run``: the configuration silently won. Now the command
    line wins, and a warning says so when the two differ (journalctl -p warning shows it)."""
    (tmp_path / "guestagent.toml").write_text(f'[agent]\nlog_level = "{configured}"\n')
    run_until_start([*run_words, *words])
    err = capsys.readouterr().err
    assert {e for e in ("probe_debug", "probe_info") if f"event={e}" in err} == shown, err
    line = [x for x in err.splitlines() if "event=log_level_from_command_line" in x]
    if override:
        assert len(line) == 1, err
        assert "level=warning" in line[0] and f"command_line={words[-1]}" in line[0], line
        assert f"configured={configured}" in line[0], line
    else:
        assert line == [], err


def _options_named(parser: argparse.ArgumentParser, flag: str,
                   path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.Action]:
    """Every command's action for ``flag``, by command path."""
    found = {path: parser._option_string_actions[flag]} if flag in parser._option_string_actions \
        else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                found.update(_options_named(sub, flag, (*path, word)))
    return found


def test_role_has_one_set_of_choices_everywhere() -> None:
    """``--role`` took ``guest|dom0`` on ``run`` and ``auto|dom0`` on the host commands."""
    from guestagent import config
    from guestagent.dom0.role import ROLES

    roles = _options_named(cli.build_parser(), "--role")
    assert {path[0] for path in roles} == {"run", "host", "dom0"}, roles
    for path, action in roles.items():
        assert tuple(action.choices or ()) == ROLES == ("auto", "guest", "dom0"), path
    key = next(k for k in config.KEYS if (k.section, k.name) == ("agent", "role"))
    assert key.choices == ROLES


@pytest.mark.parametrize(
    ("given", "configured", "expected"),
    [(None, "guest", "guest"), (None, "auto", "guest"), ("dom0", "guest", "dom0"),
     ("auto", "dom0", "guest"), ("guest", "auto", "guest")],
)
def test_run_role_auto_detects(given: str | None, configured: str, expected: str) -> None:
    """``run --role auto`` detects (the hvm-3vnode tree is a domU), whatever the file says."""
    from guestagent.config import defaults
    from guestagent.daemon.commands import resolve_role
    from guestagent.hostfs import HostFS

    cfg = defaults()
    cfg.values["agent"]["role"] = configured
    assert resolve_role(cfg, HostFS(HVM), given) == expected


@pytest.mark.parametrize(
    ("tree", "says", "advises_role"),
    [("laptop", "no Xen hypervisor found", False),
     ("hvm-3vnode", "this is a Xen guest (domU)", False)],
)
def test_host_commands_outside_dom0_give_advice_that_works(
    capsys: pytest.CaptureFixture[str], tree: str, says: str, advises_role: bool
) -> None:
    """Without Xen or in a guest, ``--role dom0`` only leads to the next error (no privcmd; Xen
    refusing the sysctls): the line says where these commands run instead."""
    root = str(FIXTURES / tree)
    for words in (["host", "topology"], ["host", "numa"], ["dom0", "publish"]):
        assert cli.main(["--root", root, *words]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and "Dom0" in err, err
        assert ("--role dom0" in err) == advises_role, err
        assert f"{root}/" in err  # the path tried, with the root


def test_one_name_and_one_form_per_option_across_commands() -> None:
    """An option spelt the same on two commands takes the same value (metavar, choices) into
    the same place: ``--config FILE`` everywhere (not ``--file`` here and ``--config`` there),
    ``--duration SECONDS``, ``--role auto|guest|dom0``."""
    forms: dict[str, set[tuple[object, ...]]] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.option_strings and action.help != argparse.SUPPRESS:
                form = (action.dest, None if action.nargs == 0 else action.metavar,
                        tuple(action.choices or ()))
                for flag in action.option_strings:
                    forms.setdefault(flag, set()).add(form)

    walk(cli.build_parser())
    assert {flag: f for flag, f in forms.items() if len(f) > 1} == {}
    assert forms["--file"] == forms["--config"]  # --file: the older name of --config


@pytest.mark.parametrize(
    ("words", "json"),
    [(("balloon", "--json", "status"), True), (("balloon", "status", "--json"), True),
     (("balloon", "status"), False), (("tiering", "--json", "status"), True),
     (("tiering", "status"), False), (("devices", "--json", "apply"), True),
     (("devices", "apply"), False), (("devices", "--json"), True)],
)
def test_json_before_or_after_the_action_word(words: tuple[str, ...], json: bool) -> None:
    """A group's ``--json`` given before its action word was overwritten by the action's
    default (``balloon --json status`` printed text)."""
    assert parsed(*words).json is json
