"""Configurations that ``config check`` accepted and that then did harm (issue 15, item 2).

Seen before the fix:
- ``[metrics] listen = "127.0.0.1:99999"``: ``run`` died with a traceback after the devices job
  had applied its changes; start-up was outside the code that undoes, so 7 changes and a stale
  status socket stayed.
- ``interval_seconds = nan`` passed every range check; the timer never fired again and the loop
  spun.
- ``state_dir = "/tmp"`` (or ``/run``, or ``/``): the agent chmodded it to 0700, and /tmp lost its
  sticky bit for good. A relative ``state_dir``: a traceback.
- ``node_overrides = ["0000:00:05.0=banana"]``: the devices job turned itself off at run time.
- ``source_low_pct > source_high_pct``: tiering turned itself off at run time.

Now ``config check`` applies the validation ``run`` applies, and each refusal is one line naming
the file, the key and the value (exit status 1: "a configuration was refused", guestagent(8)).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guestagent import cli
from guestagent.config import ConfigError, defaults, load
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import Daemon
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS

REPO = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    main = tmp_path / "guestagent.toml"
    main.write_text(text)
    (tmp_path / "conf.d").mkdir(exist_ok=True)  # named, so it must exist
    rc = cli.main(["--root", str(root), "config", "check", "--file", str(main),
                   "--conf-dir", str(tmp_path / "conf.d")])
    return rc, capsys.readouterr().err, str(main)


HOSTILE = [
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "[metrics] listen = '127.0.0.1:99999'", "port"),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', "[metrics] listen = '127.0.0.1:0'", "port"),
    ('[metrics]\nlisten = "[::1]:65536"\n', "[metrics] listen = '[::1]:65536'", "port"),
    ("[balloon]\ninterval_seconds = nan\n", "[balloon] interval_seconds = 'nan'", "finite"),
    ("[balloon]\ninterval_seconds = inf\n", "[balloon] interval_seconds = 'inf'", "finite"),
    ("[balloon]\npsi_target_pct = -inf\n", "[balloon] psi_target_pct = '-inf'", "finite"),
    ("[tiering]\ninterval_seconds = nan\n", "[tiering] interval_seconds = 'nan'", "finite"),
    ("[tiering]\nsource_low_pct = nan\n", "[tiering] source_low_pct = 'nan'", "finite"),
    ('[agent]\nstate_dir = "/tmp"\n', "[agent] state_dir = '/tmp'", "shared"),
    ('[agent]\nstate_dir = "/run"\n', "[agent] state_dir = '/run'", "shared"),
    ('[agent]\nstate_dir = "/"\n', "[agent] state_dir = '/'", "shared"),
    ('[agent]\nstate_dir = "/var/tmp/"\n', "[agent] state_dir = '/var/tmp/'", "shared"),
    ('[agent]\nstate_dir = "/run/../tmp"\n', "[agent] state_dir = '/run/../tmp'", ".."),
    ('[agent]\nstate_dir = "run/guestagent"\n', "[agent] state_dir = 'run/guestagent'",
     "absolute"),
    ('[devices]\nnode_overrides = ["0000:00:05.0=banana"]\n',
     "[devices] node_overrides = '0000:00:05.0=banana'", "BDF=N"),
    ('[devices]\nnode_overrides = ["0000:00:05.0\\n=1"]\n',
     "[devices] node_overrides = '0000:00:05.0\\n=1'", "BDF=N"),
    ("[tiering]\nsource_low_pct = 20.0\nsource_high_pct = 15.0\n",
     "[tiering] source_high_pct = '15.0'", "source_low_pct"),
    ("[tiering]\nsource_high_pct = 30.0\ntarget_min_pct = 25.0\n",
     "[tiering] target_min_pct = '25.0'", "source_high_pct"),
]


@pytest.mark.parametrize(("text", "names", "why"), HOSTILE,
                         ids=[t.replace("\n", " ").strip() for t, _, _ in HOSTILE])
def test_config_check_refuses_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, names: str, why: str
) -> None:
    rc, err, main = check(tmp_path, text, capsys)
    lines = err.splitlines()
    assert rc == 1, err
    assert lines[-1] == "configuration refused: 1 problem(s)", err
    (line,) = lines[:-1]
    assert line.startswith(f"{main}: {names}: "), line
    assert why in line, line
    assert "Traceback" not in err


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o1755, 0o775])
def test_a_shared_state_dir_is_refused_and_never_chmodded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    """A directory others can write to (or sticky, as /tmp) is not the agent's own: refused by
    ``config check`` and by ``run``, and left exactly as it was."""
    root = tmp_path / "root"
    shared = root / "srv/shared"
    shared.mkdir(parents=True)
    os.chmod(shared, mode)
    rc, err, main = check(tmp_path, '[agent]\nstate_dir = "/srv/shared"\n', capsys)
    assert rc == 1 and f"{main}: [agent] state_dir = '/srv/shared': " in err, err
    assert stat.S_IMODE(os.stat(shared).st_mode) == mode
    result = subprocess.run(
        [sys.executable, "-m", "guestagent", "--root", str(root), "run", "--config", main,
         "--conf-dir", str(tmp_path / "conf.d"), "--role", "guest"],
        cwd=REPO, env=dict(os.environ, XENSTORED_PATH=str(tmp_path / "none.sock")),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "state_dir" in result.stderr and "/srv/shared" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert stat.S_IMODE(os.stat(shared).st_mode) == mode, "the agent changed a shared directory"
    assert os.listdir(shared) == []


def test_the_agents_own_state_dir_is_kept_as_it_is(tmp_path: Path) -> None:
    """An existing directory the agent may use (owned by it or by root, writable by nobody else)
    is used without a chmod; a missing one is created 0700."""
    from guestagent.config import state_dir_problem

    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    assert state_dir_problem(str(own)) is None
    assert state_dir_problem(str(tmp_path / "missing")) is None
    assert "symbolic link" in str(state_dir_problem(_symlink(tmp_path, own)))
    (tmp_path / "file").write_text("")
    assert "not a directory" in str(state_dir_problem(str(tmp_path / "file")))


def _symlink(tmp_path: Path, target: Path) -> str:
    link = tmp_path / "link"
    link.symlink_to(target)
    return str(link)


def test_load_refuses_a_non_finite_number_everywhere_a_float_is_read(tmp_path: Path) -> None:
    main = tmp_path / "g.toml"
    main.write_text("[balloon]\ninterval_seconds = nan\n")
    with pytest.raises(ConfigError) as caught:
        load(str(main), str(tmp_path / "d"))
    assert len(caught.value.problems) == 1
    loop = EventLoop()
    try:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError):
                loop.call_every(bad, lambda: None)
            with pytest.raises(ValueError):
                loop.call_later(bad, lambda: None)
    finally:
        loop.close()


def test_cloud_config_with_nan_is_refused() -> None:
    from guestagent.cloudinit.settings import CloudConfigError, parse

    with pytest.raises(CloudConfigError) as caught:
        parse({"balloon": {"interval_seconds": float("nan")}})
    assert "finite" in str(caught.value), caught.value


@pytest.mark.parametrize("argv", [
    ["tiering", "run", "--interval", "nan"],
    ["tiering", "run", "--source-low-pct", "inf"],
    ["dom0", "run", "--resync", "nan"],
])
def test_float_options_refuse_nan_and_inf(argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert "finite" in capsys.readouterr().err


class _Recorder:
    """A job that changes a file on start and puts it back on stop."""

    name = "recorder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, ctx: Any) -> None:
        self.path.write_text("changed")

    def stop(self) -> None:
        self.path.write_text("original")

    def reload(self, config: Any) -> None: ...
    def republish(self, reason: str) -> None: ...

    def status(self) -> dict[str, Any]:
        return {}


def test_a_failure_late_in_start_undoes_what_the_jobs_did(tmp_path: Path) -> None:
    """Start-up is inside the code that undoes: a failure after a job applied its changes (here
    the metrics server, as with ``listen = "127.0.0.1:99999"`` before the port was checked) stops
    the started jobs, which undo, and removes the status socket."""
    made: list[str] = []

    def refuse(listen: str, text: Any, loop: Any) -> Any:
        made.append(listen)
        raise OverflowError("bind(): port must be 0-65535.")

    target = tmp_path / "target"
    target.write_text("original")
    config = defaults()
    config.values["metrics"]["enabled"] = True
    root = tmp_path / "root"
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    daemon = Daemon(HostFS(str(root)), config, lambda: config,
                    lambda cfg, role: [_Recorder(target)], "guest",
                    xenstore_connect=lambda: (_ for _ in ()).throw(GuestAgentError("no xs")),
                    metrics_server=refuse)
    try:
        with pytest.raises(OverflowError):
            daemon.run()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert made == [config.get("metrics", "listen")]
    assert target.read_text() == "original"
    assert not (root / "run/guestagent/status.sock").exists()


class _Broken(_Recorder):
    """A job with a bug: it changes its file, then raises something no one expected."""

    name = "broken"

    def start(self, ctx: Any) -> None:
        super().start(ctx)
        raise KeyError("a bug")


def test_a_job_that_fails_in_start_is_undone_and_the_others_run(tmp_path: Path) -> None:
    broken, fine = tmp_path / "broken", tmp_path / "fine"
    broken.write_text("original")
    fine.write_text("original")
    config = defaults()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loop = EventLoop()
    daemon = Daemon(HostFS(str(tmp_path / "root")), config, lambda: config,
                    lambda cfg, role: [_Broken(broken), _Recorder(fine)], "guest", loop=loop,
                    xenstore_connect=lambda: (_ for _ in ()).throw(GuestAgentError("no xs")))
    try:
        daemon.start()
        jobs = daemon.status()["jobs"]
        assert jobs["broken"] == {"running": False, "error": "KeyError: 'a bug'"}
        assert jobs["recorder"]["running"] is True
        assert broken.read_text() == "original" and fine.read_text() == "changed"
        daemon.shutdown("test")
        assert fine.read_text() == "original"
    finally:
        loop.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
