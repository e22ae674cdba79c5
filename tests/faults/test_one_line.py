"""No traceback reaches a user; systemd always hears READY=1 after RELOADING=1 (issue 15,
items 6 and 7).

Seen before the fix: ``status`` against a busy or hung daemon (TimeoutError); ``publish`` when
xenstored answered EACCES; a symlink loop where a directory is read (ELOOP); a 5,000-digit
integer or 100,000 nested arrays in TOML (ValueError, RecursionError); a conf.d entry that is a
FIFO or a link to /dev/zero (hangs, or reads without bound); and a reload that failed with an
error other than a configuration error left systemd with RELOADING=1 and no READY=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from guestagent import cli
from guestagent.config import ConfigError, defaults, load
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import STATUS_SOCKET, Daemon, read_status
from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS


def test_status_of_a_daemon_that_never_answers_is_one_line(tmp_path: Path) -> None:
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp_path / STATUS_SOCKET))
    hung.listen(1)  # accepts into the backlog, never answers
    try:
        with pytest.raises(GuestAgentError, match="did not answer"):
            read_status(str(tmp_path), timeout=0.2)
    finally:
        hung.close()


def test_a_symlink_loop_where_a_directory_is_read_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    os.symlink("loop", tmp_path / "sys/loop")
    with pytest.raises(InputError, match="/sys/loop"):
        HostFS(str(tmp_path)).listdir("/sys/loop")


@pytest.mark.parametrize(("name", "text"), [
    ("digits", "[topology]\nrefresh_seconds = " + "9" * 5000 + "\n"),
    ("nesting", "[metrics]\nlisten = " + "[" * 100_000 + "]" * 100_000 + "\n"),
])
def test_hostile_toml_is_one_problem(tmp_path: Path, name: str, text: str) -> None:
    main = tmp_path / "guestagent.toml"
    main.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(str(main), str(tmp_path / "conf.d"))
    (line,) = caught.value.problems
    assert line.startswith(f"{main}: "), line


@pytest.mark.timeout(30)
def test_a_conf_d_entry_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    os.mkfifo(conf_d / "10-fifo.toml")  # opening it for reading would block
    os.symlink("/dev/zero", conf_d / "20-zero.toml")  # reading it would never end
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "none.toml"), str(conf_d))
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert all("not a regular file" in p for p in problems), problems


def test_an_oversized_configuration_file_is_refused(tmp_path: Path) -> None:
    main = tmp_path / "guestagent.toml"
    main.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        load(str(main), str(tmp_path / "conf.d"))


def hvm_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures/hvm-3vnode", root,
                    symlinks=True)
    return root


def test_an_unexpected_error_is_one_line_naming_its_type_and_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bug anywhere below a command (here the host's xenstore opener, a test's, raising what
    nothing expects) is one line: its type, its text and where it was raised."""
    from guestagent.host import Host

    def broken(hostfs: HostFS) -> Any:
        raise ZeroDivisionError("division by zero")

    assert cli.main(["--root", str(hvm_tree(tmp_path)), "publish"],
                    make_host=lambda fs: Host(fs, open_xenstore=broken)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "ZeroDivisionError: division by zero" in err
    assert "test_one_line.py:" in err, err


def test_publish_refused_by_xenstored_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import errno

    from guestagent.host import Host
    from guestagent.xen.xenstore import XenstoreError

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise XenstoreError(errno.EACCES, "data/guestagent", "XS_TRANSACTION_START")

            return refuse

        def close(self) -> None:
            pass

    refusing = Refusing()
    assert cli.main(["--root", str(hvm_tree(tmp_path)), "publish"],
                    make_host=lambda fs: Host(fs, open_xenstore=lambda _fs: refusing)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EACCES" in err and "Traceback" not in err, err


def test_a_reload_that_fails_otherwise_still_sends_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    config = defaults()

    def load_config() -> Any:
        raise PermissionError(13, "Permission denied", "/etc/guestagent/guestagent.toml")

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loop = EventLoop()
    daemon = Daemon(HostFS(str(tmp_path / "root")), config, load_config,
                    lambda cfg, role: [], "guest", loop=loop,
                    xenstore_connect=lambda: (_ for _ in ()).throw(GuestAgentError("no xs")))
    try:
        daemon.start()
        daemon.reload()
        sent = []
        while True:
            try:
                sent.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert sent[-2] == "RELOADING=1", sent
        assert sent[-1].startswith("READY=1\nSTATUS=reload refused"), sent
        daemon.shutdown("test")
    finally:
        loop.close()
        notify.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
