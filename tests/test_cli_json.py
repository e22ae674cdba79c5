"""``--json`` on every command that reports state, in one style (issue 17, item 7).

The parser is walked: every command that does something either takes ``--json`` or is in
:data:`NOT_REPORTING` with the reason. Each reporting command runs with ``--json`` on a fixture
tree (a copy where it writes) and its standard output must be exactly one JSON document as
:func:`guestagent.cli.json_text` writes it (indent 2, keys sorted) and a newline.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent import cli
from guestagent.host import Host
from guestagent.hostfs import HostFS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TRACE = REPO / "tests" / "traces" / "synthetic-phases-1g.jsonl"

#: Commands that report no state, and why they have no --json.
NOT_REPORTING = {
    "run": "the daemon; what it does is `guestagent status --json`",
    "balloon run": "the daemon with one job; what it does is `guestagent status --json`",
    "dom0 run": "the daemon with one job; what it does is `guestagent status --json`",
    "balloon record": "writes a trace of JSON lines to --out ('-': standard output)",
    "balloon --prepare-guard": "the unit's ExecStartPre: it logs, prints nothing",
    "devices irqbalance-policy": "irqbalance's policy-script protocol: key=value lines",
    "config doc": "the reference of every key (Markdown), not state",
}

#: Reporting commands whose --json needs a Xen or xenstore the fixture trees lack: here they
#: only take --json and print nothing on standard output when they fail; the test named runs
#: them with --json against a simulated Xen and xenstore.
ELSEWHERE = {
    "host numa": "tests/test_hostnuma.py (simulated Xen, xenstore server)",
    "dom0 publish": "tests/test_dom0_commands.py (xenstore server)",
    "host devices": "tests/test_dom0_own_devices.py (simulated Xen)",
    "host devices --reset": "tests/test_dom0_own_devices.py (a journal --apply wrote)",
    "tiering run": "tests/test_tiering_commands.py (a backend that serves)",
}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command, its parser) for every command that does something, with the group options that
    are actions of their own (``--reset``, ``--prepare-guard``)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for word, sub in action.choices.items():
            words = (*path, word)
            children = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
            if not children or words == ("devices",):  # 'devices' alone shows the devices
                yield " ".join(words), sub
            for flag in ("--reset", "--prepare-guard"):
                if flag in sub._option_string_actions:
                    yield f"{' '.join(words)} {flag}", sub
            yield from _commands(sub, words)


def test_every_reporting_command_takes_json() -> None:
    commands = dict(_commands(cli.build_parser()))
    assert len(commands) >= 25, sorted(commands)
    assert set(NOT_REPORTING) <= set(commands), set(NOT_REPORTING) - set(commands)
    missing = [c for c, p in commands.items()
               if c not in NOT_REPORTING and "--json" not in p._option_string_actions]
    assert missing == [], f"reporting commands without --json: {missing}"
    for command in NOT_REPORTING:
        assert "--json" not in commands[command]._option_string_actions or \
            command.endswith("--prepare-guard"), command


def test_one_json_helper_in_the_code() -> None:
    """No command prints JSON its own way: a json.dump(s) with an indent, or with keys left
    unsorted, is only in guestagent/cli.py (json_text)."""
    styled = re.compile(r"json\.dumps?\([^\n]*(indent=|sort_keys=False)")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "guestagent").rglob("*.py")
                 if p.name != "cli.py" and styled.search(p.read_text())
                 and p.relative_to(REPO).as_posix() not in OWN_FILES]
    assert offenders == []


#: Files guestagent writes for itself (not command output): their own formats.
OWN_FILES = {"guestagent/undo.py", "guestagent/balloon/journal.py",
             "guestagent/cloudinit/schema.py"}


def _tree(tmp_path: Path, name: str) -> str:
    root = tmp_path / name
    if not root.exists():
        shutil.copytree(FIXTURES / name, root, symlinks=True)
    return str(root)


#: (command, its words with --json, the fixture tree, the exit status there).
CASES = [
    ("topology", ["topology", "--json"], "hvm-3vnode", 0),
    ("publish", ["publish", "--dry-run", "--json"], "hvm-3vnode", 0),
    ("balloon status", ["balloon", "status", "--json"], "balloon-pv-1g", 0),
    ("balloon simulate", ["balloon", "simulate", "--trace", str(TRACE), "--json"],
     "balloon-pv-1g", 0),
    ("balloon set", ["balloon", "set", "--target-mib", "700", "--json"], "balloon-pv-1g", 0),
    ("balloon --reset", ["balloon", "--reset", "--json"], "balloon-pv-1g", 0),
    ("devices", ["devices", "--json"], "devices-2node", 0),
    ("devices apply", ["devices", "apply", "--json"], "devices-2node", 0),
    ("devices --reset", ["devices", "--reset", "--json"], "devices-2node", 0),
    ("tiering status", ["tiering", "status", "--json"], "tiering-2node", 0),
    ("tiering --reset", ["tiering", "--reset", "--json"], "tiering-2node", 0),
    ("reset", ["reset", "--json"], "balloon-pv-1g", 0),
    ("config check", ["config", "check", "--json"], "hvm-3vnode", 0),
    ("config show", ["config", "show", "--json"], "hvm-3vnode", 0),
]


def _check_style(out: str) -> Any:
    doc = json.loads(out)
    assert out == cli.json_text(doc) + "\n", "not the one JSON style (indent 2, sorted keys)"
    return doc


@pytest.mark.parametrize(("command", "words", "tree", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_json_output_is_one_document_in_the_style(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, words: list[str], tree: str, code: int
) -> None:
    root = _tree(tmp_path, tree)
    assert cli.main(["--root", root, *words]) == code
    out, err = capsys.readouterr()
    doc = _check_style(out)
    assert doc not in (None, {}, []), out
    assert "Traceback" not in err


def test_every_reporting_command_is_run_here_or_elsewhere() -> None:
    commands = dict(_commands(cli.build_parser()))
    here = {c[0] for c in CASES} | {"status", "host topology"}
    reporting = {c for c in commands if c not in NOT_REPORTING}
    assert reporting == here | set(ELSEWHERE), reporting ^ (here | set(ELSEWHERE))


@pytest.mark.parametrize("words", [["host", "numa", "--json", "--window", "2"],
                                   ["dom0", "publish", "--json"],
                                   ["tiering", "run", "--json", "--duration", "1"]])
def test_json_commands_that_fail_here_print_no_half_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], words: list[str]
) -> None:
    tree = "tiering-2node" if words[0] == "tiering" else "dom0-three-node"
    assert cli.main(["--root", _tree(tmp_path, tree), *words]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip(), (out, err)


def test_config_check_json_names_the_problems(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "guestagent.toml"
    conf.write_text('[agent]\nlog_level = "loud"\n')
    (tmp_path / "conf.d").mkdir()
    assert cli.main(["config", "check", "--json", "--config", str(conf),
                     "--conf-dir", str(tmp_path / "conf.d")]) == 1
    doc = _check_style(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["problems"]) == 1 and "log_level" in doc["problems"][0]


def test_config_show_toml_reads_back_the_same(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``config show`` prints TOML that, read as a configuration file, gives the same values."""
    conf = tmp_path / "guestagent.toml"
    conf.write_text('[balloon]\nenabled = true\nfloor_mb = 512\n')
    empty = tmp_path / "conf.d"
    empty.mkdir()
    names = ["--config", str(conf), "--conf-dir", str(empty)]
    assert cli.main(["config", "show", "--json", *names]) == 0
    first = json.loads(capsys.readouterr().out)["values"]
    assert cli.main(["config", "show", *names]) == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out)
    assert cli.main(["config", "show", "--json", "--config", str(shown),
                     "--conf-dir", str(empty)]) == 0
    assert json.loads(capsys.readouterr().out)["values"] == first
    assert first["balloon"]["floor_mb"] == 512


def test_host_topology_json_with_a_simulated_xen(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    from tests.test_dom0_commands import FakeXen

    xen = FakeXen()
    make: Callable[[HostFS], Host] = xen.host
    assert cli.main(["--root", _tree(tmp_path, "dom0-three-node"), "host", "topology",
                     "--json"], make_host=make) == 0
    doc = _check_style(capsys.readouterr().out)
    assert doc["nodes"] and doc["devices"]


def test_status_json_and_text_from_a_daemon(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``status --json`` in the style; the text has no Python reprs (None, ['sysfs'])."""
    state_dir = tmp_path / "run/guestagent"
    state_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state_dir / "status.sock"))
    server.listen(2)
    answer = {"version": "0", "pid": 42, "role": "guest", "xenstore": "connected", "resumes": 0,
              "jobs": {"topology": {"running": True, "nodes": 3, "sources": ["sysfs"],
                                    "publish_error": None, "by_vnode": {"0": [1, 2]}}}}

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert cli.main(["--root", str(tmp_path), "status", "--json"]) == 0
        assert _check_style(capsys.readouterr().out) == answer
        assert cli.main(["--root", str(tmp_path), "status"]) == 0
        text = capsys.readouterr().out
    finally:
        thread.join(10)
        server.close()
    assert "sources: sysfs\n" in text and "publish_error: -\n" in text, text
    assert "None" not in text and "[" not in text, text


def test_publish_json_against_the_xenstore_server(
    xs_server: Any, xs_connect: Callable[[int], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``publish --json`` (not a dry run): what it wrote and removed, in the style."""
    from tests.test_publish import HOME, three_vnodes

    xs_server.set_node(f"{HOME}/data/guestagent/vnuma/nodes/7/cpus", b"9")

    def make(hostfs: HostFS) -> Host:
        return Host(hostfs, open_vnuma=lambda _fs: three_vnodes,
                    open_xenstore=lambda _fs: xs_connect(5))

    root = str(FIXTURES / "hvm-3vnode")
    assert cli.main(["--root", root, "publish", "--json"], make_host=make) == 0
    doc = _check_style(capsys.readouterr().out)
    assert doc["dry_run"] is False and doc["base"] == "data/guestagent"
    assert doc["keys"]["data/guestagent/vnuma/nr-nodes"] == "3"
    assert "vnuma/nr-nodes" in doc["written"] and doc["removed"] == ["vnuma/nodes/7"]
    assert cli.main(["--root", root, "publish", "--json"], make_host=make) == 0
    again = _check_style(capsys.readouterr().out)
    assert again["written"] == [] and again["removed"] == []
