"""``guestagent tiering status|run`` and the tiering round, on fixture trees with simulated
backends. ``tiering run`` is the daemon running the tiering job alone: it is run in-process here
(signals need the main thread; the simulated DAMON kernel lives in this process)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from guestagent.cli import Context
from guestagent.errors import GuestAgentError
from guestagent.host import TIERING_BACKENDS, BackendFactory, Host
from guestagent.hostfs import HostFS
from guestagent.tiering import commands
from guestagent.tiering.damon import NR_KDAMONDS, DamonBackend
from guestagent.tiering.job import TieringJob
from guestagent.tiering.model import Backend, TieringConfig
from guestagent.tiering.runner import Runner
from tests.test_tiering_damon import FIXTURES, FakeDamonKernel, kd_path, make_tree

MEMINFO0 = "sys/devices/system/node/node0/meminfo"


#: The world's backends (a fake DAMON kernel, a simulated tmem), set by each test's fixture.
BACKENDS: Sequence[BackendFactory] = TIERING_BACKENDS


def config_files() -> tuple[str, str]:
    """Hermetic: an empty main file and drop-in directory, not this machine's /etc/guestagent."""
    return str(CONFIG_FILE), str(CONFIG_FILE.parent)


def Ctx(hostfs: HostFS) -> Context:
    """A command's context with the test's host (its backends) and configuration files: nothing
    swapped in a module."""
    return Context(hostfs=hostfs, host=host_of(hostfs), config_files=config_files())


def host_of(hostfs: HostFS) -> Host:
    return Host(hostfs, tiering_backends=BACKENDS)


def main(words: list[str]) -> int:
    """``guestagent WORDS`` with the test's host and configuration files."""
    from guestagent import cli

    return cli.main(words, make_host=host_of, config_files=config_files())


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level", default=None)
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "guestagent.conf").write_text("")  # not *.toml: the drop-in directory is empty
    monkeypatch.setattr(sys.modules[__name__], "CONFIG_FILE", conf / "guestagent.conf")


CONFIG_FILE = Path("/nonexistent")


def tmem_factory(**sim_kwargs: Any) -> Any:
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    from guestagent.tiering.tmem import TmemBackend
    from tests.tmem_simulator import SimulatedTmemXen

    sim = SimulatedTmemXen(**sim_kwargs)
    return lambda h: TmemBackend(h, opener=lambda _h: sim, frame_of=sim.frame_of)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeDamonKernel]:
    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    monkeypatch.setattr(
        sys.modules[__name__],
        "BACKENDS",
        [
            ("damon", lambda h: DamonBackend(h, writer=kernel.write)),
            ("tmem", tmem_factory(removed=True, version=(4, 17))),
        ],
    )
    return root, kernel


def test_status_names_the_serving_backend_and_why_the_others_do_not(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    root, kernel = world
    args = parse(["tiering", "status"])
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "serving: damon"
    assert "tmem   unavailable  Xen 4.17 answered ENOSYS to tmem_op: tmem was removed in Xen 4.13" \
        in out
    assert "cannot choose a node" in out
    assert "node 0 -> node 1 at 4.0 MiB/s" in out
    assert kernel.writes == []  # status never writes DAMON sysfs


def test_status_json(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = world
    args = parse(["tiering", "status", "--json"])
    args.func(args, Ctx(HostFS(str(root))))
    doc = json.loads(capsys.readouterr().out)
    assert doc["serving"] == "damon"
    by = {b["name"]: b for b in doc["backends"]}
    assert by["damon"]["serving"] and by["damon"]["targets_node"]
    assert not by["tmem"]["ok"] and not by["tmem"]["targets_node"]
    assert doc["plan"] == [{"source": 0, "target": 1, "rate_bytes_per_s": 4 << 20}]
    assert [n["node"] for n in doc["nodes"]] == [0, 1]
    assert doc["lru_gen"] is False
    mglru = root / "sys/kernel/mm/lru_gen/enabled"
    mglru.parent.mkdir(parents=True, exist_ok=True)
    mglru.write_text("0x0007\n")
    text = parse(["tiering", "status"])
    text.func(text, Ctx(HostFS(str(root))))
    assert "nodes: (MGLRU on: inactive lists are generations, not coldness; DAMON decides)" in (
        capsys.readouterr().out
    )


def test_a_working_tmem_is_reported_but_never_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree(tmp_path, None)  # no DAMON
    (root / "sys/hypervisor/guest_type").write_text("HVM\n")
    monkeypatch.setattr(
        sys.modules[__name__], "BACKENDS", [("damon", DamonBackend), ("tmem", tmem_factory())]
    )
    args = parse(["tiering", "status", "--json"])
    args.func(args, Ctx(HostFS(str(root))))
    doc = json.loads(capsys.readouterr().out)
    assert doc["serving"] is None
    tmem = next(b for b in doc["backends"] if b["name"] == "tmem")
    assert tmem["ok"]
    assert tmem["reason"].startswith("available but not used: it cannot place pages on a chosen")
    run = parse(["tiering", "run", "--duration", "1"])
    with pytest.raises(GuestAgentError,
                       match="no tiering backend can serve: damon: /sys/kernel/mm/damon"):
        run.func(run, Ctx(HostFS(str(root))))
    assert not (root / "run/guestagent/status.sock").exists()  # the daemon shut down


# --- tiering status's exit status (guestagent(8) EXIT STATUS) -------------------------------------

def no_damon_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A guest where nothing can serve: no DAMON in sysfs, tmem removed from Xen (4.17)."""
    root = make_tree(tmp_path, None)
    monkeypatch.setattr(sys.modules[__name__], "BACKENDS",
                        [("damon", DamonBackend), ("tmem", tmem_factory(removed=True))])
    return root


def test_status_when_nothing_serves_and_tiering_is_off_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiering is off by default: nothing serving is the expected state, not a finding."""
    root = no_damon_world(tmp_path, monkeypatch)
    args = parse(["tiering", "status", "--json"])
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["serving"] is None and doc["enabled"] is False
    text = parse(["tiering", "status"])
    assert text.func(text, Ctx(HostFS(str(root)))) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "serving: none ([tiering] is off: nothing to serve)"
    assert out.err == ""


def test_status_when_tiering_is_on_and_nothing_serves_exits_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's tiering job would not start: a finding (4, as topology's), not a failure to
    read (1), for scripts and monitoring checks; the output still says why each backend cannot."""

    root = no_damon_world(tmp_path, monkeypatch)
    config = tmp_path / "on.toml"
    config.write_text("[tiering]\nenabled = true\n")
    empty = tmp_path / "conf.d"
    empty.mkdir()
    words = ["--root", str(root), "tiering", "status", "--config", str(config),
             "--conf-dir", str(empty)]
    assert main(words) == commands.EXIT_NONE_SERVES == 4
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "serving: none ([tiering] enabled = true)"
    assert "damon  unavailable  /sys/kernel/mm/damon/admin missing" in out.out
    assert out.err.strip() == ("guestagent: [tiering] is enabled and no backend can serve: the "
                               "daemon's tiering job would not start")
    assert main([*words, "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["serving"] is None and doc["enabled"] is True
    # The group's options before the action word are the same files.
    assert main(["--root", str(root), "tiering", "--config", str(config), "--conf-dir",
                 str(empty), "status"]) == 4


def test_status_follows_the_configured_backend(
    world: tuple[Path, FakeDamonKernel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DAMON works, but [tiering] backend = tmem (which never serves): the job would not start."""
    root, _ = world
    config = tmp_path / "tmem.toml"
    config.write_text('[tiering]\nenabled = true\nbackend = "tmem"\n')
    args = parse(["tiering", "status", "--json", "--config", str(config), "--conf-dir",
                  str(tmp_path / "etc")])
    assert args.func(args, Ctx(HostFS(str(root)))) == 4
    doc = json.loads(capsys.readouterr().out)
    by = {b["name"]: b for b in doc["backends"]}
    assert doc["serving"] is None and by["damon"]["ok"] and not by["damon"]["serving"]
    assert by["damon"]["reason"] == "not used: [tiering] backend = tmem"
    config.write_text('[tiering]\nenabled = true\nbackend = "damon"\n')
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == "damon"


def test_status_plans_with_the_configured_watermarks(
    world: tuple[Path, FakeDamonKernel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Node 0 has 5 % free: short by default (below 10 %), not below a 3 % watermark."""
    root, _ = world
    config = tmp_path / "low.toml"
    config.write_text("[tiering]\nsource_low_pct = 3.0\nsource_high_pct = 4.0\n")
    args = parse(["tiering", "status", "--json", "--config", str(config), "--conf-dir",
                  str(tmp_path / "etc")])
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == []


def test_status_with_a_missing_named_configuration_exits_1(
    world: tuple[Path, FakeDamonKernel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    root, _ = world
    missing = tmp_path / "nope.toml"
    assert main(["--root", str(root), "tiering", "status", "--config", str(missing)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"guestagent: {missing}: does not exist (named on the command line by --config)")


def test_run_moves_pauses_and_undoes(world: tuple[Path, FakeDamonKernel]) -> None:
    root, kernel = world
    hostfs = HostFS(str(root))
    clock = iter(float(i * 10) for i in range(100))
    backend = DamonBackend(hostfs, writer=kernel.write)
    runner = Runner(hostfs, backend, TieringConfig(), clock=lambda: next(clock))
    d = runner.tick()
    assert d is not None and [(m.source, m.target) for m in d.plan.moves] == [(0, 1)]
    assert kernel.kdamond_states() == ["on", "off"]
    kernel.advance(0, sz_applied=40 << 20, sz_tried=40 << 20)
    # Node 0 recovers: 30 % free.
    text = (root / MEMINFO0).read_text().replace("61836 kB", "309183 kB")
    (root / MEMINFO0).write_text(text)
    d = runner.tick()
    assert d is not None and d.plan.moves == ()
    assert kernel.kdamond_states() == ["off", "off"]
    assert runner.state.of(0).out_bytes == 40 << 20
    # Garbage meminfo: pause, do not act on stale numbers.
    (root / MEMINFO0).write_text("garbage\n")
    assert runner.tick() is None
    runner.backend.stop()
    assert (root / NR_KDAMONDS.lstrip("/")).read_text().strip() == "0"


def test_an_idle_guest_creates_nothing(world: tuple[Path, FakeDamonKernel]) -> None:
    root, kernel = world
    text = (root / MEMINFO0).read_text().replace("61836 kB", "309183 kB")
    (root / MEMINFO0).write_text(text)
    hostfs = HostFS(str(root))
    runner = Runner(hostfs, DamonBackend(hostfs, writer=kernel.write), TieringConfig())
    runner.tick()
    runner.tick()
    runner.backend.stop()
    assert kernel.writes == []


def test_sigterm_stops_the_loop_and_undoes_everything(
    world: tuple[Path, FakeDamonKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, kernel = world
    ticks: list[int] = []

    class Terminated(Runner):
        def tick(self) -> Any:
            ticks.append(1)
            if len(ticks) == 1:  # the daemon's handlers are in place once its job ticks
                timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
                timer.start()
            return super().tick()

    args = parse(["tiering", "run", "--interval", "1"])
    # No --duration: SIGTERM ended it.
    assert commands.run(args, Ctx(HostFS(str(root))), TieringJob(Terminated)) == 0
    assert (kd_path(0, "state"), "on") in kernel.writes
    assert kernel.writes[-1] == (NR_KDAMONDS, "0")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_run_prints_a_summary_with_the_agents_cpu_time(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    root, kernel = world
    args = parse(["tiering", "run", "--duration", "0.3", "--json"])
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "damon"
    assert doc["bytes_moved"] == 0 and doc["bytes_tried"] == 0
    assert doc["moved_by_source"] == {"0": 0, "1": 0}
    assert doc["agent_cpu_s"] >= 0 and doc["elapsed_s"] > 0
    assert kernel.writes[-1] == (NR_KDAMONDS, "0")
    text = parse(["tiering", "run", "--duration", "0.1"])
    assert text.func(text, Ctx(HostFS(str(root)))) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiering: damon moved 0.0 MiB (tried 0.0 MiB) in "), out
    assert "(node 0: 0.0 MiB, node 1: 0.0 MiB); agent CPU " in out, out


def test_run_splits_the_process_cpu_time_at_the_end_of_the_first_tick(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: start-up (interpreter, imports, probe, the first tick and its kdamonds) and
    the steady state, so each can be set against the kernel's kdamond CPU."""
    root, _ = world
    args = parse(["tiering", "run", "--duration", "0.3", "--json"])
    assert args.func(args, Ctx(HostFS(str(root)))) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ticks"] == 1  # at once, then every 10 s
    assert 0 < doc["startup_cpu_s"] <= doc["process_cpu_s"]
    assert doc["startup_cpu_s"] + doc["steady_cpu_s"] == pytest.approx(doc["process_cpu_s"],
                                                                       abs=0.002)
    assert doc["agent_cpu_s"] <= doc["process_cpu_s"]


def test_run_takes_the_watermarks_and_rate_bound_from_the_command_line(
    world: tuple[Path, FakeDamonKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = world
    seen: list[TieringConfig] = []

    class Recording(Runner):
        def tick(self) -> Any:
            seen.append(self.config)
            return super().tick()

    args = parse(
        ["tiering", "run", "--source-high-pct", "45", "--target-min-pct", "50",
         "--max-rate-mb", "2", "--interval", "3", "--duration", "0.1"]
    )
    assert commands.run(args, Ctx(HostFS(str(root))), TieringJob(Recording)) == 0
    c = seen[0]
    assert (c.source_low_pct, c.source_high_pct, c.target_min_pct) == (10.0, 45.0, 50.0)
    assert (c.max_rate, c.initial_rate, c.interval_s) == (2 << 20, 2 << 20, 3.0)
    # A target watermark under the source's high one would let a target be a short node; the
    # problem names the option, as a file's problem names the file.
    bad = parse(["tiering", "run", "--source-high-pct", "45", "--target-min-pct", "30"])
    with pytest.raises(GuestAgentError,
                       match=r"--target-min-pct: \[tiering\] target_min_pct = .30.*source_high"):
        commands.run(bad, Ctx(HostFS(str(root))), TieringJob(Recording))
    zero = parse(["tiering", "run", "--max-rate-mb", "0"])
    with pytest.raises(GuestAgentError,
                       match=r"--max-rate-mb: \[tiering\] max_rate_mb = '0': below the minimum 1"):
        commands.run(zero, Ctx(HostFS(str(root))), TieringJob(Recording))
    assert len(seen) == 1  # a refused configuration starts nothing


def test_run_options_override_the_configuration_files(
    world: tuple[Path, FakeDamonKernel], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The files ``guestagent run`` reads, then the options given; an option not given leaves
    the file's value."""
    root, _ = world
    seen: list[TieringConfig] = []

    class Recording(Runner):
        def tick(self) -> Any:
            seen.append(self.config)
            return super().tick()

    main = tmp_path / "guestagent.toml"
    main.write_text("[tiering]\nsource_high_pct = 20.0\ntarget_min_pct = 40.0\n")
    args = parse(["tiering", "run", "--config", str(main), "--conf-dir", str(tmp_path / "etc"),
                  "--target-min-pct", "30", "--duration", "0.1"])
    assert commands.run(args, Ctx(HostFS(str(root))), TieringJob(Recording)) == 0
    assert (seen[0].source_high_pct, seen[0].target_min_pct) == (20.0, 30.0)


def test_run_refuses_a_bad_interval(world: tuple[Path, FakeDamonKernel]) -> None:
    root, _ = world
    for value in ("0", "0.5"):  # [tiering] interval_seconds is at least 1 s, in a file too
        args = parse(["tiering", "run", "--interval", value])
        with pytest.raises(GuestAgentError,
                           match=r"--interval: \[tiering\] interval_seconds = .*minimum 1"):
            args.func(args, Ctx(HostFS(str(root))))
    args = parse(["tiering", "run", "--duration", "0"])
    with pytest.raises(GuestAgentError, match="--duration: must be positive"):
        args.func(args, Ctx(HostFS(str(root))))


def test_backends_satisfy_the_protocol() -> None:
    def check(b: Backend) -> None:
        assert b.name in ("damon", "tmem")

    check(DamonBackend(HostFS("/nonexistent")))


def test_through_the_cli_contract(
    world: tuple[Path, FakeDamonKernel],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from guestagent import cli

    root, _ = world
    assert "guestagent.tiering.commands" in cli.COMMAND_MODULES
    assert main(["--root", str(root), "tiering", "status"]) == 0
    assert capsys.readouterr().out.startswith("serving: damon\n")
    # no action: help on stderr
    assert main(["--root", str(root), "tiering"]) == 2
    (root / MEMINFO0).write_text("garbage\n")
    assert main(["--root", str(root), "tiering", "status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("guestagent: /sys/devices/system/node/node0/meminfo line 1:")


def test_run_is_the_daemon_with_the_tiering_job_alone(
    world: tuple[Path, FakeDamonKernel], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tiering run --duration`` is the daemon: it notifies READY with the one job, answers on
    the status socket (the topology job, on by default, is off), journals its kdamonds in the
    undo journal while it runs, and after the duration shuts down as on SIGTERM: STOPPING, the
    kdamonds and the journal gone, the socket removed, the summary printed."""
    import socket

    from guestagent.daemon.service import read_status

    root, kernel = world
    state_dir = root / "run/guestagent"
    # systemd's end of sd_notify: a datagram socket named by $NOTIFY_SOCKET (abstract: no path
    # length limit, nothing left behind).
    name = f"guestagent-test-notify-{os.getpid()}-{id(root)}"
    systemd_end = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd_end.bind("\0" + name)
    systemd_end.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    seen: dict[str, Any] = {}

    def look() -> None:  # from another thread while the daemon's loop serves
        seen["status"] = read_status(str(state_dir))
        seen["journal"] = (state_dir / "tiering.json").exists()

    probe = threading.Timer(0.5, look)
    probe.start()
    args = parse(["tiering", "run", "--duration", "1.5", "--json"])
    try:
        assert args.func(args, Ctx(HostFS(str(root)))) == 0
    finally:
        probe.cancel()
    notified: list[str] = []
    with systemd_end, contextlib.suppress(BlockingIOError):
        while True:
            notified.append(systemd_end.recv(4096).decode())
    status = seen["status"]
    assert status["pid"] == os.getpid() and status["role"] == "guest"
    assert list(status["jobs"]) == ["tiering"], status["jobs"]
    assert status["jobs"]["tiering"]["running"] and status["jobs"]["tiering"]["active"]
    assert status["jobs"]["tiering"]["backend"] == "damon"
    assert status["config_files"][-1] == "command line"
    assert seen["journal"], "the kdamonds were journalled while they ran"
    assert notified[0].startswith("READY=1\nSTATUS=jobs: tiering"), notified
    assert notified[-1] == "STOPPING=1", notified
    assert not (state_dir / "tiering.json").exists()
    assert not (state_dir / "status.sock").exists()
    assert kernel.writes[-1] == (NR_KDAMONDS, "0")
    assert json.loads(capsys.readouterr().out)["backend"] == "damon"


def test_run_keeps_its_options_across_a_reload(
    world: tuple[Path, FakeDamonKernel], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGHUP reloads the files as the daemon does, and the options are applied again over
    them: a file changed in between is read, an option still wins."""
    root, _ = world
    main = tmp_path / "guestagent.toml"
    main.write_text("[tiering]\nsource_high_pct = 20.0\n")
    seen: list[TieringConfig] = []

    class Recording(Runner):
        def tick(self) -> Any:
            seen.append(self.config)
            if len(seen) == 1:  # the daemon's handlers are in place once its job ticks
                main.write_text("[tiering]\nsource_high_pct = 25.0\n")
                os.kill(os.getpid(), signal.SIGHUP)
            return super().tick()

    # What the test runner started with (SIG_IGN under nohup), to be put back as it was.
    hup_before = signal.getsignal(signal.SIGHUP)
    args = parse(["tiering", "run", "--config", str(main), "--conf-dir", str(tmp_path / "etc"),
                  "--target-min-pct", "35", "--duration", "1"])
    assert commands.run(args, Ctx(HostFS(str(root))), TieringJob(Recording)) == 0
    assert (seen[0].source_high_pct, seen[0].target_min_pct) == (20.0, 35.0)
    assert (seen[-1].source_high_pct, seen[-1].target_min_pct) == (25.0, 35.0), seen
    assert signal.getsignal(signal.SIGHUP) is hup_before


# --- tiering status beside a running daemon ------------------------------------------------------

@contextlib.contextmanager
def daemon_answers(root: Path, answer: dict[str, Any]) -> Iterator[list[int]]:
    """A daemon's status socket in the fixture tree's state directory that answers ``answer`` to
    each connection (the connections served, counted in the list it yields)."""
    import socket

    path = root / "run/guestagent/status.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    served: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            served.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept (Linux), then it is closed
        server.close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def daemon_kdamonds_on(root: Path, kernel: FakeDamonKernel) -> None:
    """The daemon's kdamond 0 running, as this command's probe sees it: "another DAMON user"."""
    from guestagent.tiering.model import Move, Plan

    DamonBackend(HostFS(str(root)), writer=kernel.write).start(Plan((Move(0, 1, 4 << 20),)))


def test_status_beside_the_daemon_says_the_daemon_serves_and_shows_its_plan(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen on real Xen (run 20261207-102508-28537-pytest): ``tiering status`` while the daemon
    moved pages said "serving: none" and "kdamond 0 is on (another DAMON user)" about the
    daemon's own kdamond, and planned nothing at 12 % free where the daemon, a source until
    45 %, still moved."""
    root, kernel = world
    daemon_kdamonds_on(root, kernel)
    plan = [{"source": 0, "target": 1, "rate_bytes_per_s": 6 << 20}]
    answer = {"pid": 4242, "jobs": {"tiering": {
        "backend": "damon", "active": True, "bytes_moved": 8 << 20, "plan": plan,
        "reasons": ["node 0: under pressure (free 12.4%) -> node 1 (distance 20) at 6.0 MiB/s"],
    }}}
    with daemon_answers(root, answer) as served:
        args = parse(["tiering", "status", "--json"])
        assert args.func(args, Ctx(HostFS(str(root)))) == 0
        doc = json.loads(capsys.readouterr().out)
        text = parse(["tiering", "status"])
        text.func(text, Ctx(HostFS(str(root))))
        out = capsys.readouterr().out
    assert len(served) == 2
    assert (doc["serving"], doc["daemon_pid"], doc["plan"]) == ("damon", 4242, plan)
    damon = next(b for b in doc["backends"] if b["name"] == "damon")
    assert damon["ok"] and damon["serving"]
    assert damon["reason"] == (
        "serving in the running daemon (pid 4242): 8.0 MiB moved since it started")
    assert out.startswith("serving: damon\n")
    assert "plan now (the running daemon's):\n  node 0 -> node 1 at 6.0 MiB/s\n" in out


def test_status_without_a_daemon_that_answers_probes_for_itself(
    world: tuple[Path, FakeDamonKernel], capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon that answers with a status this command does not understand (here: a plan that
    is not a list of moves) is named in one line and not used; the probe's view is shown."""
    root, kernel = world
    daemon_kdamonds_on(root, kernel)
    capsys.readouterr()  # the kdamonds' start logged its line
    with daemon_answers(root, {"pid": 4242, "jobs": {"tiering": {
            "backend": "damon", "plan": "soon"}}}):
        args = parse(["tiering", "status", "--json"])
        args.func(args, Ctx(HostFS(str(root))))
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["serving"], doc["daemon_pid"]) == (None, None)
    assert "another DAMON user" in next(
        b["reason"] for b in doc["backends"] if b["name"] == "damon")
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not understood" in err[0] and "plan 'soon'" in err[0], err
