"""Every documented command line runs as documented (issue 17, the Proof's first test).

The lines come from README.md, packaging/README.md and guestagent(8)'s EXAMPLES
(tests/documented_lines.py). Each runs in a subprocess on a fixture tree (``--root``, a fresh
copy, so a command that writes changes only the copy), as root and as ``nobody``, and must exit
with the code :data:`RUNS` gives, which must be one its command documents
(packaging/docgen.py ``EXIT_BY_COMMAND``, the README's and the man page's EXIT STATUS), with no
traceback and no "internal error", and a failure must say why on standard error.

Where the host would be Xen, the fixture trees are not (no privcmd character device, no
xenstore): the Xen and Dom0 commands give their documented "cannot" code there (1), and
``status`` its "not running" (3). Lines that cannot run as they are say so in :data:`RUNS`
(``until_sigterm``: the daemon, stopped once its status socket answers).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.documented_lines import documented_lines, load_docgen
from tests.unprivileged import is_root, python_for_nobody, run_as_nobody, staging

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TRACE = "synthetic-phases-1g.jsonl"
docgen = load_docgen()


@dataclass(frozen=True)
class Run:
    """How a documented line runs here: its fixture tree, the exit status as root and as
    nobody, and why where it is not what a real guest would give."""

    tree: str
    root: int
    nobody: int
    why: str = ""
    #: The daemon: started, stopped with SIGTERM once its status socket exists (as root).
    until_sigterm: bool = False


NO_XENSTORE = "a fixture tree has no xenstore: the documented 1 (xenstore did not answer)"
NO_XEN = "a fixture tree has no privcmd device: the documented 1 (Xen cannot be read)"
NO_WRITE = "nobody may not write the tree: one line, the documented 1"
USAGE = "the README's table names the command only; its required options missing: usage, 2"
LOCK = "nobody cannot create the state directory: one line, the documented 1"

RUNS: dict[str, Run] = {
    "guestagent topology": Run("hvm-3vnode", 0, 0),
    "guestagent topology --json": Run("hvm-3vnode", 0, 0),
    "guestagent --root {root} topology": Run("hvm-3vnode", 0, 0),
    "guestagent topology --root {root}": Run("hvm-3vnode", 0, 0),
    "guestagent publish": Run("hvm-3vnode", 1, 1, NO_XENSTORE),
    "guestagent publish --dry-run": Run("hvm-3vnode", 0, 0),
    "guestagent balloon status": Run("balloon-pv-1g", 0, 0),
    "guestagent balloon --reset": Run("balloon-pv-1g", 0, 1, NO_WRITE),
    "guestagent balloon set": Run("balloon-pv-1g", 2, 2, USAGE),
    "guestagent balloon set --target-mib 700": Run("balloon-pv-1g", 0, 1, NO_WRITE),
    "guestagent balloon simulate": Run("balloon-pv-1g", 2, 2, USAGE),
    "guestagent balloon simulate --trace {trace} --policy pressure": Run("balloon-pv-1g", 0, 0),
    "guestagent balloon record": Run("balloon-pv-1g", 2, 2, USAGE),
    "guestagent balloon record --out {out} --duration 2": Run("balloon-pv-1g", 0, 0),
    "guestagent balloon run": Run("balloon-pv-1g", 0, 1, LOCK, until_sigterm=True),
    "guestagent devices": Run("devices-2node", 0, 0),
    "guestagent devices --json": Run("devices-2node", 0, 0),
    "guestagent devices apply": Run("devices-2node", 0, 1, LOCK),
    "guestagent devices --reset": Run("devices-2node", 0, 0, "nothing recorded: nothing to undo"),
    "guestagent devices irqbalance-policy": Run("devices-2node", 2, 2, USAGE),
    "guestagent tiering status": Run("tiering-2node", 0, 0),
    "guestagent tiering status --json": Run("tiering-2node", 0, 0),
    "guestagent tiering run": Run("tiering-2node", 1, 1, "no backend serves on the tree (no "
                                  "DAMON sysfs, no Xen): the documented 1"),
    "guestagent tiering --reset": Run("tiering-2node", 0, 0, "nothing recorded: nothing to undo"),
    "guestagent reset": Run("balloon-pv-1g", 0, 1, NO_WRITE + " (the balloon target)"),
    "guestagent host topology": Run("dom0-three-node", 1, 1, NO_XEN),
    "guestagent host topology --json": Run("dom0-three-node", 1, 1, NO_XEN),
    "guestagent host numa": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent host numa --json": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent host numa --window 2": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent host numa --json --window 2": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent host numa --window 30": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent host devices": Run("dom0-three-node", 1, 1, NO_XEN),
    "guestagent host devices --reset": Run("dom0-three-node", 0, 0,
                                           "nothing recorded: nothing to undo"),
    "guestagent dom0 publish": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent dom0 run": Run("dom0-three-node", 1, 1, NO_XENSTORE),
    "guestagent run": Run("hvm-3vnode", 0, 1, LOCK, until_sigterm=True),
    "guestagent status": Run("hvm-3vnode", 3, 3, "no daemon runs on the tree: not running"),
    "guestagent status --json": Run("hvm-3vnode", 3, 3, "no daemon runs on the tree"),
    "guestagent config check": Run("hvm-3vnode", 0, 0),
    "guestagent config show": Run("hvm-3vnode", 0, 0),
    "guestagent config doc": Run("hvm-3vnode", 0, 0),
}

#: Global options (they are not command words).
GLOBAL = {"--root", "--log-level"}


def command_key(line: str) -> str:
    """The EXIT_BY_COMMAND entry of a line: its command words, ``--reset`` forms apart."""
    words = line.split()[1:]
    plain: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in GLOBAL:
            skip = True
        elif not word.startswith("-") and not word.startswith("{"):
            plain.append(word)
        elif word != "--reset":
            break
    keys = {key for key, _ in docgen.EXIT_BY_COMMAND}
    if "--reset" in words and f"{' '.join(plain)} --reset" in keys:
        return f"{' '.join(plain)} --reset"
    while plain and " ".join(plain) not in keys:
        plain.pop()  # positional values (irqbalance-policy DEVPATH IRQ) are not command words
    return " ".join(plain)


def documented_codes(key: str) -> set[int]:
    """The exit codes a command's EXIT STATUS entry names, plus usage (2) and SIGINT (130)."""
    text = dict(docgen.EXIT_BY_COMMAND)[key]
    codes = {int(c) for c in re.findall(r"(?:^|; |always )(\d+)\b", text)}
    return codes | {2, 130}


def test_every_documented_line_has_its_run() -> None:
    """A line added to the documentation gets its entry here (or the test says which)."""
    lines = documented_lines()
    assert len(lines) >= 30, lines
    assert set(lines) == set(RUNS), (
        f"documented, not in RUNS: {sorted(set(lines) - set(RUNS))}; "
        f"in RUNS, no longer documented: {sorted(set(RUNS) - set(lines))}")


@pytest.mark.parametrize("line", sorted(RUNS))
def test_expected_codes_are_the_documented_ones(line: str) -> None:
    run = RUNS[line]
    codes = documented_codes(command_key(line))
    assert {run.root, run.nobody} <= codes, (line, command_key(line), codes)
    if run.root or run.nobody:
        assert run.why, f"{line}: a non-zero code needs its reason"


def _argv(line: str, root: Path, scratch: Path) -> list[str]:
    words = line.split()[1:]
    words = [w.format(root=root, trace=root.parent.parent / "traces" / TRACE,
                      out=scratch / "trace.jsonl") for w in words]
    return words if "{root}" in line else [*words, "--root", str(root)]


def _check(line: str, code: int, expected: int, out: str, err: str) -> None:
    assert code == expected, (line, code, out[-2000:], err[-2000:])
    for stream in (out, err):
        assert "Traceback" not in stream and "internal error" not in stream, (line, stream)
    if code != 0:
        assert err.strip(), f"{line}: exit {code} with nothing on stderr"


def _until_sigterm(argv: list[str], root: Path) -> tuple[int, str, str]:
    """The daemon: SIGTERM once its status socket exists (or it ended by itself)."""
    proc = subprocess.Popen([sys.executable, "-m", "guestagent", *argv], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    sock = root / "run/guestagent/status.sock"
    deadline = time.monotonic() + 60
    while proc.poll() is None and not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: the status socket's path must fit AF_UNIX's 108 bytes, which pytest's
    tmp_path below /tmp/pytest-of-root/... does not."""
    path = Path(tempfile.mkdtemp(prefix="ga-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("line", sorted(RUNS))
def test_documented_line_as_root(line: str, short_tmp: Path) -> None:
    run = RUNS[line]
    tmp_path = short_tmp
    root = tmp_path / "fixtures" / run.tree
    shutil.copytree(FIXTURES / run.tree, root, symlinks=True)
    shutil.copytree(REPO / "tests" / "traces", tmp_path / "traces")
    argv = _argv(line, root, tmp_path)
    env_note = "runs as the test's user"
    if run.until_sigterm:
        code, out, err = _until_sigterm(argv, root)
    else:
        result = subprocess.run([sys.executable, "-m", "guestagent", *argv], cwd=str(REPO),
                                capture_output=True, text=True, timeout=240,
                                stdin=subprocess.DEVNULL)
        code, out, err = result.returncode, result.stdout, result.stderr
    expected = run.root if is_root() or run.root == run.nobody else None
    if expected is None:
        pytest.skip(f"{env_note}: the root expectation needs root")
    _check(line, code, expected, out, err)


@pytest.mark.timeout(300)
@pytest.mark.skipif(not is_root(), reason="drops to uid nobody: needs root")
@pytest.mark.parametrize("line", sorted(RUNS))
def test_documented_line_as_nobody(line: str) -> None:
    if python_for_nobody() is None:
        pytest.skip("no interpreter nobody can run guestagent with (Debian: python3-cffi "
                    "python3-psutil python3-pyudev python3-pyroute2 python3-structlog)")
    run = RUNS[line]
    base = staging()
    root = base / "fixtures" / run.tree
    result = run_as_nobody(_argv(line, root, base / "scratch"))
    _check(line, result.returncode, run.nobody, result.stdout, result.stderr)
