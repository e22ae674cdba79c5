"""benchmarks/xenstore_ops: the C watch program against Xen's headers and against the test
xenstored, the harness's arithmetic, pyxs's loading, and the agreement checks on fake sides (no
Xen here: the real run is in a guest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import xenstore_ops as xo
from tests.xenstore_server import XenstoreServer

GUEST = 5
CC = os.environ.get("CC", "gcc")
XENSTORE_H = Path("/usr/include/xenstore.h")

needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler {CC}")


def libxenstore_missing() -> bool:
    done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    return "libxenstore.so.4 " not in done.stdout


needs_libxenstore = pytest.mark.skipif(shutil.which(CC) is None or libxenstore_missing(),
                                       reason="no C compiler or no libxenstore.so.4")


@pytest.fixture
def xenstored(monkeypatch: pytest.MonkeyPatch) -> Iterator[XenstoreServer]:
    """The test xenstored, every connection seen as guest 5, named by $XENSTORED_PATH."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    directory = tempfile.mkdtemp(prefix="xsb")  # a Unix socket path has 108 bytes at most
    server = XenstoreServer(f"{directory}/socket", default_domid=GUEST)
    server.populate_guest(GUEST)
    server.start()
    monkeypatch.setenv("XENSTORED_PATH", server.path)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(xenstored: XenstoreServer) -> Iterator[Any]:
    client = xo.open_client()
    try:
        yield client
    finally:
        client.close()


# --- the C watch program ----------------------------------------------------------------------


@needs_libxenstore
def test_watch_program_compiles_with_warnings_as_errors(tmp_path: Path) -> None:
    exe = tmp_path / "w"
    done = subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                           str(xo.C_WATCH_SOURCE), "-l:libxenstore.so.4"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert exe.exists()


@needs_cc
def test_watch_declarations_equal_xenstore_h(tmp_path: Path) -> None:
    if not XENSTORE_H.exists():
        if os.environ.get("CI"):
            pytest.fail("libxen-dev headers missing in CI")
        pytest.skip("Xen headers not installed (apt-get install libxen-dev)")
    # xenstore.h first: a prototype of ours that differs from Xen's is a "conflicting types"
    # error; the numbers are compared at run time.
    src = tmp_path / "probe.c"
    src.write_text("#include <stdbool.h>\n#include <stdint.h>\n#include <xenstore.h>\n"
                   "#include <xen/io/xs_wire.h>\n#include <stdio.h>\n"
                   f'#define XENSTORE_WATCH_ABI_ONLY 1\n#include "{xo.C_WATCH_SOURCE}"\n'
                   "int main(void)\n{\n"
                   '    printf("%d %d\\n", XSW_XBT_NULL, XBT_NULL);\n'
                   '    printf("%d %d\\n", XSW_WATCH_PATH, (int)XS_WATCH_PATH);\n'
                   '    printf("%d %d\\n", XSW_WATCH_TOKEN, (int)XS_WATCH_TOKEN);\n'
                   "    return 0;\n}\n")
    exe = tmp_path / "probe"
    done = subprocess.run([CC, "-Wall", "-Werror", "-o", str(exe), str(src)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    pairs = [tuple(line.split()) for line in out.splitlines()]
    assert pairs == [("0", "0"), ("0", "0"), ("1", "1")]


@needs_cc
def test_a_wrong_declaration_fails_the_probe(tmp_path: Path) -> None:
    """The check above can fail: a prototype that differs from xenstore.h does not compile."""
    if not XENSTORE_H.exists():
        pytest.skip("Xen headers not installed")
    wrong = tmp_path / "wrong.c"
    wrong.write_text(xo.C_WATCH_SOURCE.read_text().replace(
        "bool xs_watch(struct xs_handle *h, const char *path, const char *token);",
        "bool xs_watch(struct xs_handle *h, const char *path, int token);"))
    src = tmp_path / "probe.c"
    src.write_text("#include <xenstore.h>\n#define XENSTORE_WATCH_ABI_ONLY 1\n"
                   f'#include "{wrong}"\nint main(void) {{ return 0; }}\n')
    done = subprocess.run([CC, "-o", str(tmp_path / "probe"), str(src)], capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0
    assert "conflicting types" in done.stderr


@needs_libxenstore
def test_watch_program_against_the_test_xenstored(tmp_path: Path, agent: Any) -> None:
    exe = xo.compile_c_watch(tmp_path)
    run = xo.c_watch(exe, 5)
    assert run.path == xo.WATCHED
    assert run.last_value == "c4"
    assert 0 < run.seconds < 1
    assert agent.read_str(xo.WATCHED) == "c4"
    assert xo.watch_disagreements(run, agent.read_str(xo.WATCHED)) == []


@needs_libxenstore
@pytest.mark.parametrize(("args", "rc", "line"), [
    (["-n", "0", "x"], 1, "xenstore_watch: -n: a positive number of events, not '0'"),
    (["-n", "-3", "x"], 1, "xenstore_watch: -n: a positive number of events, not '-3'"),
    (["x", "y"], 1, "xenstore_watch: usage: xenstore_watch [-n EVENTS] PATH"),
    (["x"], 2, "xenstore_watch: no xenstore: xs_open: No such file or directory"),
])
def test_watch_program_errors_are_one_line(tmp_path: Path, args: list[str], rc: int,
                                           line: str) -> None:
    exe = xo.compile_c_watch(tmp_path)
    env = {**os.environ, "XENSTORED_PATH": str(tmp_path / "no-socket")}
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False,
                          env=env)
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (rc, "", [line])


def test_parse_watch_output() -> None:
    run = xo.parse_watch_output("events 50\nseconds_per_event 2.500000000e-04\n"
                                "path data/xsbench/w\nlast_value c49\nother_events 0\n")
    assert run == xo.WatchRun(250e-6, "data/xsbench/w", "c49")
    with pytest.raises(RuntimeError, match="lacks or garbles 'last_value'"):
        xo.parse_watch_output("events 50\nseconds_per_event 1e-3\npath data/xsbench/w\n")
    with pytest.raises(RuntimeError, match="garbles"):
        xo.parse_watch_output("seconds_per_event soon\npath p\nlast_value v\n")


def test_missing_compiler_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc-xsbench")
    with pytest.raises(RuntimeError, match="no C compiler 'no-such-cc-xsbench'"):
        xo.compile_c_watch(tmp_path)


# --- the agent's watch ------------------------------------------------------------------------


def test_agent_watch_against_the_test_xenstored(agent: Any) -> None:
    run = xo.agent_watch(agent, 4)
    assert (run.path, run.last_value) == (xo.WATCHED, "a3")
    assert 0 < run.seconds < 1
    assert agent.read_str(xo.WATCHED) == "a3"
    assert agent.watches == set()  # unwatched again: the next side's events are its own


def test_agent_wait_event_gives_up(agent: Any) -> None:
    with pytest.raises(RuntimeError, match=f"no watch event for {xo.WATCHED} in 0 s"):
        xo.agent_wait_event(agent, timeout=0.2)


# --- arithmetic -------------------------------------------------------------------------------


def test_c_op_cancels_the_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.5 s of start-up and 2 ms an argument: one operation is 2 ms; the best of the runs."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str]) -> float:
        calls.append(argv)
        args = len(argv) - 1
        per_arg = args // 2 if argv[0] == "xenstore-write" else args
        return 0.5 + 0.002 * per_arg + (0.3 if len(calls) % 3 == 1 else 0.0)

    monkeypatch.setattr(xo, "run_tool", fake_run)
    assert xo.c_op("write", 100, 3) == pytest.approx(0.002)
    assert xo.c_op("read", 10, 3) == pytest.approx(0.002)
    assert [len(c) for c in calls[:6]] == [3] * 3 + [203] * 3
    assert xo.c_tx100({"write": 0.002, "read": 0.001}) == pytest.approx(0.202)


def test_summarize_takes_ratios_per_round() -> None:
    rows = [{"agent_s": 1.0, "agent_plain_s": 2.0, "c_s": 2.0, "pyxs_s": 3.0,
             "agent_cpu_s": 0.1, "pyxs_cpu_s": 0.3},
            {"agent_s": 2.0, "agent_plain_s": 2.0, "c_s": 1.0, "pyxs_s": 8.0,
             "agent_cpu_s": 0.2, "pyxs_cpu_s": 0.2},
            {"agent_s": 4.0, "agent_plain_s": 5.0, "c_s": 4.0, "pyxs_s": 4.0,
             "agent_cpu_s": 0.4, "pyxs_cpu_s": 2.0}]
    s = xo.summarize(rows)
    assert s["agent_us"] == pytest.approx(2e6)
    assert s["agent_plain_us"] == pytest.approx(2e6)
    assert (s["ratio"], s["ratio_min"], s["ratio_max"]) == (1.0, 0.5, 2.0)
    assert s["c_us"] == pytest.approx(2e6)
    assert (s["pyxs_ratio"], s["pyxs_ratio_min"], s["pyxs_ratio_max"]) == (3.0, 1.0, 4.0)
    assert s["pyxs_us"] == pytest.approx(4e6)
    assert s["agent_cpu_us"] == pytest.approx(0.2e6)
    assert s["pyxs_cpu_us"] == pytest.approx(0.3e6)
    assert s["pyxs_cpu_ratio"] == pytest.approx(3.0)  # 3, 1 and 5 a round: the median
    assert set(xo.summarize([{"agent_s": 1.0}])) == {"agent_us"}


def result_of(ops: dict[str, dict[str, Any]], missing: dict[str, str]) -> dict[str, Any]:
    return {"rounds": 5, "n": 200, "extra": 100, "repeat": 3, "watch_events": 50, "host": "h",
            "kernel": "k", "python": "3.11.2", "xenbus": True, "ops": ops,
            "not_measured": missing,
            "pyxs": {"version": "0.4.1", "dir": "/tmp/pyxs-0.4.1", "transport": "XenBus"}}


def test_report_targets_name_the_lowest() -> None:
    ops = {"read": xo.summarize([{"agent_s": 1.0, "agent_plain_s": 1.0, "c_s": 0.9,
                                  "pyxs_s": 2.5, "agent_cpu_s": 1e-4, "pyxs_cpu_s": 3e-4}]),
           "write": xo.summarize([{"agent_s": 1.0, "agent_cpu_s": 2e-4}]),
           "watch": xo.summarize([{"agent_s": 1.0, "c_s": 0.7}])}
    text = xo.report(result_of(ops, {"pyxs watch": "refused"}))
    lines = text.splitlines()
    assert lines[1] == "pyxs 0.4.1 from /tmp/pyxs-0.4.1, XenBus"
    assert "| read | 1000000 | 1000000 | 900000 | x0.90 (0.90-0.90) | 2500000 | " \
           "x2.50 (2.50-2.50) |" in lines
    assert "| watch | 1000000 | - | 700000 | x0.70 (0.70-0.70) | - | - |" in lines
    assert ("client CPU us/op in a transaction (the process's, threads included; median): "
            "read agent 100, pyxs 300 (x3.00 the agent's); write agent 200") in lines
    assert "target: agent/C >= 0.8 on every median: MISSED (lowest x0.70, watch)" in lines
    assert "target: agent/pyxs >= 2.0 on every median: met (lowest x2.50, read)" in lines
    assert lines[-1] == "not measured: pyxs watch: refused"


def test_report_without_other_sides_has_no_target() -> None:
    text = xo.report(result_of({"read": xo.summarize([{"agent_s": 1.0}])}, {}))
    assert "target" not in text
    assert "| read | 1000000 | - | - | - | - | - |" in text.splitlines()


# --- agreement --------------------------------------------------------------------------------


AGENT_VIEW = {"read": ["initial"] * 10, "directory": [f"k{i}" for i in range(10)]}


def test_disagreements_on_fake_sides() -> None:
    same = {"read": list(AGENT_VIEW["read"]), "directory": list(AGENT_VIEW["directory"])}
    assert xo.disagreements(AGENT_VIEW, {"C": same, "pyxs": same},
                            {"C": ("C-wrote", "C-wrote")}) == []
    lying = {"read": ["initial"] * 9 + ["stale"], "directory": AGENT_VIEW["directory"]}
    short = {"read": AGENT_VIEW["read"], "directory": AGENT_VIEW["directory"][:-1]}
    wrong = xo.disagreements(AGENT_VIEW, {"C": short, "pyxs": lying},
                             {"pyxs": ("pyxs-wrote", "initial")})
    assert len(wrong) == 3
    assert wrong[0].startswith("C directory of data/xsbench: ['k0', ")
    assert wrong[1].startswith("pyxs read of data/xsbench: [")
    assert wrong[2] == ("pyxs wrote 'pyxs-wrote' to data/xsbench/k0, the agent read back "
                        "'initial'")


def test_is_watched() -> None:
    assert xo.is_watched("data/xsbench/w")
    assert xo.is_watched("/local/domain/5/data/xsbench/w")  # the absolute form, if reported
    assert not xo.is_watched("data/xsbench/wx")
    assert not xo.is_watched("xdata/xsbench/w")
    assert not xo.is_watched("/local/domain/5/data/xsbench/w/x")


def test_watch_disagreements() -> None:
    good = xo.WatchRun(1e-3, xo.WATCHED, "c49")
    assert xo.watch_disagreements(good, "c49") == []
    assert xo.watch_disagreements(xo.WatchRun(1e-3, "data/other", "c49"), "c48") == [
        "C watch: event path 'data/other', watched 'data/xsbench/w'",
        "C watch: wrote 'c49' last, the agent read 'c48'"]


# --- pyxs -------------------------------------------------------------------------------------

#: A stand-in for pyxs's Client (its API, bytes in and out) over the agent's own client, so it
#: talks to the test xenstored; LIE makes its reads wrong.
FAKE_PYXS = '''
from guestagent.xen.xenstore import XenstoreClient
from guestagent.xen.xsconn import connect_unix

LIE = {lie}


class Connection:
    def __init__(self, path):
        self.path = path

    def __repr__(self):
        return "FakeConnection(%r)" % self.path


class Router:
    def __init__(self, path):
        self.connection = Connection(path)


class Client:
    def __init__(self, unix_socket_path=None, xen_bus_path=None):
        self.router = Router(unix_socket_path or xen_bus_path)
        self.tx = None

    def connect(self):
        self.client = XenstoreClient(connect_unix(self.router.connection.path))

    def close(self):
        self.client.close()

    def ops(self):
        return self.tx or self.client

    def read(self, path):
        return b"stale" if LIE else self.ops().read(path.decode())

    def write(self, path, value):
        self.ops().write(path.decode(), value)

    def list(self, path):
        return [name.encode() for name in self.ops().directory(path.decode())]

    def transaction(self):
        self.tx = self.client.start_transaction()

    def commit(self):
        tx, self.tx = self.tx, None
        tx.commit()
        return True
'''


def fake_pyxs(tmp_path: Path, lie: bool = False) -> Path:
    tree = tmp_path / "pyxs-0.0.0"
    (tree / "pyxs").mkdir(parents=True)
    (tree / "pyxs" / "__init__.py").write_text(FAKE_PYXS.format(lie=lie))
    (tree / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: pyxs\nVersion: 0.0.0\n")
    return tree


def test_load_pyxs_from_the_directory_only(tmp_path: Path) -> None:
    module = xo.load_pyxs(str(fake_pyxs(tmp_path)))
    assert Path(module.__file__).parent == tmp_path / "pyxs-0.0.0" / "pyxs"
    assert xo.sdist_version(tmp_path / "pyxs-0.0.0") == "0.0.0"
    with pytest.raises(xo.BadPyxsDir, match=r"^xenstore_ops: --pyxs-dir .*/nowhere: no "
                                            r"pyxs/__init__.py in it"):
        xo.load_pyxs(str(tmp_path / "nowhere"))


def test_pyxs_transport_follows_the_agents_choice() -> None:
    assert xo.pyxs_transport({"XENSTORED_PATH": "/s"}, True) == {"unix_socket_path": "/s"}
    assert xo.pyxs_transport({}, True) == {"xen_bus_path": "/dev/xen/xenbus"}
    assert xo.pyxs_transport({}, False) == {"unix_socket_path": "/var/run/xenstored/socket"}


def test_with_deadline() -> None:
    assert xo.with_deadline(lambda: 3, 5) == 3
    with pytest.raises(ZeroDivisionError):
        xo.with_deadline(lambda: 1 / 0, 5)
    with pytest.raises(TimeoutError, match="no answer in 0 s"):
        xo.with_deadline(lambda: __import__("time").sleep(2), 0.1)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    # no xenstore-utils here (and none wanted): the C tools are not run
    monkeypatch.setattr(xo, "C_TOOLS", ("xsbench-no-such-tool",))
    rc = xo.main(["--rounds", "1", "-n", "4", "--repeat", "1", "--watch-events", "3", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_main_against_the_test_xenstored_with_a_fake_pyxs(
        tmp_path: Path, xenstored: XenstoreServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_main(["--pyxs-dir", str(fake_pyxs(tmp_path)), "--json"], capsys,
                            monkeypatch)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[1] == (f"pyxs 0.0.0 from {tmp_path}/pyxs-0.0.0, "
                        f"FakeConnection('{xenstored.path}')")
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert set(rows) == {"operation", "read", "write", "directory", "tx100", "watch"}
    assert rows["read"].endswith(" |") and rows["read"].count(" - ") == 2  # no C tools
    assert "not measured: C tools: no xenstore-utils" in out
    if not libxenstore_missing():  # the watch row's C side: xenstore_watch.c, built here
        assert rows["watch"].split(" | ")[3:5] != ["-", "-"]
        assert "not measured: C watch" not in out
    assert "not measured: pyxs watch: pyxs refuses watches over xenbus" in out
    assert xenstored.get_node(f"/local/domain/{GUEST}/data/xsbench") is None  # removed
    assert lines[-1].startswith("JSON {")


#: A stand-in for xenstore-read, -write and -list (one process, one transaction, one operation
#: per argument, as the real ones) over the agent's client; READ_AS makes every read say that.
FAKE_TOOL = """#!{python}
import os
import sys

from guestagent.host import real_xenstore
from guestagent.hostfs import HostFS

READ_AS = {read_as!r}
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]


def body(tx):
    if tool == "xenstore-read":
        return [READ_AS or tx.read_str(p) for p in args]
    if tool == "xenstore-list":
        return [name for p in args for name in tx.directory(p)]
    for p, v in zip(args[::2], args[1::2]):
        tx.write(p, v)
    return []


client = real_xenstore(HostFS("/"))
for line in client.run_transaction(body):
    print(line)
client.close()
"""


def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_as: str = "") -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xenstore-tool"
    script.write_text(FAKE_TOOL.format(python=sys.executable, read_as=read_as))
    script.chmod(0o755)
    for name in xo.C_TOOLS:
        (bin_dir / name).symlink_to(script)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))


def test_main_with_stand_in_c_tools_and_pyxs(
        tmp_path: Path, xenstored: XenstoreServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every side at once: the C tools' reads see the agent's keys before the C write-back
    (which the pyxs check must not mistake for a disagreement), every row has its C figures."""
    fake_tools(tmp_path, monkeypatch)
    rc = xo.main(["--rounds", "1", "-n", "4", "--repeat", "1", "--extra", "3",
                  "--watch-events", "3", "--pyxs-dir", str(fake_pyxs(tmp_path))])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| operation")}
    for op in ("read", "write", "directory", "tx100"):
        assert rows[op][3] != "-" and rows[op][4].startswith("x"), rows[op]
        assert rows[op][5] != "-" and rows[op][6].startswith("x"), rows[op]
    assert "target: agent/C >= 0.8 on every median: " in out
    assert "not measured: C tools" not in out


def test_main_stops_on_c_tools_that_disagree(
        tmp_path: Path, xenstored: XenstoreServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(tmp_path, monkeypatch, read_as="stale")
    rc = xo.main(["--rounds", "1", "-n", "4", "--repeat", "1", "--watch-events", "3"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("DISAGREE: C read of data/xsbench: ['stale', ")


def test_main_stops_on_a_pyxs_that_disagrees(
        tmp_path: Path, xenstored: XenstoreServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, _ = run_main(["--pyxs-dir", str(fake_pyxs(tmp_path, lie=True))], capsys,
                          monkeypatch)
    assert rc == 1
    assert out.startswith("DISAGREE: pyxs read of data/xsbench: ['stale', ")
    assert "| read |" not in out


def test_main_refuses_a_directory_without_pyxs(
        tmp_path: Path, xenstored: XenstoreServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_main(["--pyxs-dir", str(tmp_path)], capsys, monkeypatch)
    assert (rc, out) == (2, "")
    assert err == f"xenstore_ops: --pyxs-dir {tmp_path}: no pyxs/__init__.py in it " \
                  "(an unpacked pyxs source tree, e.g. pyxs-0.4.1/)\n"


@pytest.mark.skipif(not os.environ.get("XSBENCH_PYXS_DIR"),
                    reason="XSBENCH_PYXS_DIR: an unpacked pyxs source tree (benchmarks/README)")
def test_real_pyxs_against_the_test_xenstored(xenstored: XenstoreServer,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_main(["--pyxs-dir", os.environ["XSBENCH_PYXS_DIR"]], capsys,
                            monkeypatch)
    assert (rc, err) == (0, "")
    assert "UnixSocketConnection(" in out.splitlines()[1]
    tx_row = next(line for line in out.splitlines() if line.startswith("| tx100 |"))
    assert tx_row.count(" - ") == 3  # no plain, no C tools; pyxs measured
