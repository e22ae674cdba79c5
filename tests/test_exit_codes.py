"""Exit codes (issue 17, item 5): ``status`` exits 3 when no daemon runs (LSB "not running"), and
every command's codes are documented in guestagent(8) and the README from one table
(packaging/docgen.py: EXIT_STATUS, EXIT_BY_COMMAND)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent import cli

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docgen", REPO / "packaging" / "docgen.py")
assert _spec and _spec.loader
docgen: Any = importlib.util.module_from_spec(_spec)
sys.modules["docgen"] = docgen
_spec.loader.exec_module(docgen)

#: Command words that only group actions (named alone they print their help, exit status 2).
GROUPS = {"tiering", "host", "dom0", "config"}


def documented_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                        ) -> Iterator[str]:
    """Every command line that does something: each sub-command, plus the --reset forms."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                words = (*path, word)
                if " ".join(words) not in GROUPS and words != ("balloon",):
                    yield " ".join(words)
                if "--reset" in sub._option_string_actions:
                    yield " ".join((*words, "--reset"))
                yield from documented_commands(sub, words)


def test_every_command_has_its_exit_codes_documented() -> None:
    documented = [command for command, _ in docgen.EXIT_BY_COMMAND]
    assert len(documented) == len(set(documented))
    assert set(documented) == set(documented_commands(cli.build_parser()))


def test_the_man_page_and_the_readme_carry_the_table() -> None:
    man = docgen.man_page()
    section = man.split(".SH EXIT STATUS")[1].split(".SH ")[0]
    for code, _ in docgen.EXIT_STATUS:
        assert f".TP\n\\fB{code}\\fR\n" in section, code
    for command, _ in docgen.EXIT_BY_COMMAND:
        assert f"\\fB{docgen.roff(f'guestagent {command}')}\\fR" in section, command
    readme = (REPO / "README.md").read_text()
    assert docgen.exit_status_markdown() in readme, (
        "README.md's exit status tables are stale: "
        "python3 packaging/docgen.py exit-status prints them")


def test_status_without_a_daemon_exits_3(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """It exited 1, as for any failure; LSB says 3 for "program is not running"."""
    assert cli.main(["--root", str(tmp_path), "status"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [f"guestagent: no running guestagent daemon "
                   f"({tmp_path}/run/guestagent/status.sock does not answer)"]
    assert cli.main(["status", "--json", "--state-dir", "/run/ga", "--root", str(tmp_path)]) == 3


def test_status_with_a_stale_socket_exits_3(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A daemon killed with -9 leaves its socket behind: nobody listens, it is not running."""
    state_dir = tmp_path / "run/guestagent"
    state_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "status.sock"))
    stale.close()
    assert cli.main(["--root", str(tmp_path), "status"]) == 3
    assert "does not answer" in capsys.readouterr().err


def test_status_of_a_running_daemon_exits_0(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "run/guestagent"
    state_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state_dir / "status.sock"))
    server.listen(1)
    answer = {"version": "0", "pid": 42, "role": "guest", "xenstore": "connected", "resumes": 0,
              "jobs": {"topology": {"running": True, "nodes": 3}}}

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert cli.main(["status", "--json", "--root", str(tmp_path)]) == 0
    finally:
        thread.join(10)
        server.close()
    assert json.loads(capsys.readouterr().out)["pid"] == 42


def test_status_that_cannot_ask_exits_1(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Not "not running": the state directory is not a directory, so nobody can tell."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run/guestagent").write_text("")
    assert cli.main(["--root", str(tmp_path), "status"]) == 1
    assert capsys.readouterr().err.startswith("guestagent: ")


def test_run_without_root_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A non-root ``guestagent run`` ended in an internal error (PermissionError on
    /run/guestagent): one line saying what needs root, exit status 1 (documented)."""
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("GUESTAGENT_ROOT", raising=False)
    for words in (["run"], ["tiering", "run"], ["dom0", "run", "--role", "dom0"]):
        assert cli.main(words) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("guestagent: guestagent "), err
        assert "needs root: it creates its state directory" in err, err
    assert "not run as root" in dict(docgen.EXIT_BY_COMMAND)["run"]


def test_run_as_nobody_really() -> None:
    """The same as a real unprivileged process (dropped to nobody before exec)."""
    from tests.unprivileged import is_root, python_for_nobody, run_as_nobody

    if not is_root():
        pytest.skip("drops to uid nobody: needs root")
    if python_for_nobody() is None:
        pytest.skip("no interpreter nobody can run guestagent with")
    result = run_as_nobody(["run"])
    assert result.returncode == 1, result
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("guestagent: guestagent run needs root"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_run_whose_socket_path_is_too_long_is_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A deep --root made the status socket's path longer than AF_UNIX takes: it ended in an
    internal error; now one line naming the path, exit status 1."""
    import shutil

    root = tmp_path / ("x" * 90) / "hvm-3vnode"
    shutil.copytree(REPO / "tests" / "fixtures" / "hvm-3vnode", root, symlinks=True)
    assert cli.main(["run", "--root", str(root), "--role", "guest"]) == 1
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("guestagent: ")]
    assert line == [f"guestagent: {root}/run/guestagent/status.sock: the status socket cannot "
                    "be made: AF_UNIX path too long"], err
    assert "internal error" not in err
