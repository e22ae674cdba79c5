"""The idle daemon stays small and quiet: what it imports, which commands' code it loads, how its
timers share wakeups (benchmarks/footprint.py measures the result; benchmarks/README.md has it)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestagent import cli
from guestagent.daemon.loop import MAX_SLACK, EventLoop
from guestagent.daemon.service import RESUME_CHECK_SECONDS
from tests.xenstore_server import XenstoreServer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"

#: Modules the idle daemon with its default jobs (topology, devices) must not load: each costs
#: megabytes resident (ssl about 6 MiB of OpenSSL, pyroute2 about 25 MB, psutil) or is code of a
#: command or job that is not running.
HEAVY = (
    "ssl",
    "_ssl",
    "asyncio",  # structlog's, for async methods guestagent never calls: about 1.5 MiB
    # structlog's standard-library integration (guestagent.log sets the level by number): 0.4 MiB
    "logging",
    "structlog.stdlib",
    "concurrent.futures",
    "pyroute2",
    "psutil",
    "cffi",  # the build-time package; the extension needs only _cffi_backend
    # Deferred by guestagent.lazyimport (stand-ins that load on first use): dataclasses' inspect
    # (with ast, dis; loaded again by any dataclass without a docstring), pathlib's urllib.parse
    # (with ipaddress), structlog's uuid (with platform), pyudev's ctypes.util and subprocess
    # (with shutil, tempfile, random, bz2, lzma; argparse's shutil: cli.Parser).
    "inspect",
    "ast",
    "dis",
    "urllib",
    "ipaddress",
    "uuid",
    "platform",
    "ctypes.util",
    "subprocess",
    "shutil",
    "tempfile",
    "random",
    "bz2",
    "lzma",
    # pyudev, with ctypes and libudev (about 0.9 MiB): the devices job reads udev's netlink group
    # itself (guestagent.devices.hotplug.UdevNetlink) when the C extension is there, as here.
    "pyudev",
    "ctypes",
    "_ctypes",
    # Imported only to check a non-default [balloon] or [tiering] section (config.cross_checks).
    "guestagent.balloon.policy",
    "guestagent.balloon.pressure",
    "guestagent.tiering.model",
    # Dom0's sysctl wrappers: a guest reads the Dom0 hints through dom0.schema (xen.hostids).
    "guestagent.xen.sysctl",
    "guestagent.daemon.metrics",
    "guestagent.publish",
    "guestagent.balloon.commands",
    "guestagent.balloon.job",
    "guestagent.balloon.actuator",
    "guestagent.devices.commands",
    "guestagent.tiering.commands",
    "guestagent.tiering.job",
    "guestagent.dom0.commands",
    "guestagent.dom0.job",
)

#: Runs ``guestagent run`` and writes ``sys.modules`` to a file when the daemon says READY=1 (all
#: jobs started), then goes on as the daemon.
DUMP_AT_READY = """
import json, sys
out = sys.argv[1]
from guestagent.daemon import systemd
real = systemd.notify
def notify(state, environ=None):
    if state.startswith("READY=1"):
        with open(out + ".tmp", "w") as f:
            json.dump(sorted(sys.modules), f)
        import os
        os.replace(out + ".tmp", out)
    return real(state, environ)
systemd.notify = notify
from guestagent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def interpreter_modules(python: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter (as the daemon's) before any code runs."""
    script = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([python, "-c", script], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return set(json.loads(done.stdout))


#: Debian's own interpreter, the guest's (CI installs the dependencies from Debian's packages).
DEBIAN_PYTHON = "/usr/bin/python3"


def interpreters() -> list[str]:
    """This interpreter, and Debian's when it has the agent's dependencies and is another one."""
    found = [sys.executable]
    if (os.path.exists(DEBIAN_PYTHON) and os.path.realpath(DEBIAN_PYTHON)
            != os.path.realpath(sys.executable)):
        probe = subprocess.run(
            [DEBIAN_PYTHON, "-c", "import structlog, pyudev, guestagent.xen._xenc"],
            cwd=REPO, capture_output=True)
        if probe.returncode == 0:
            found.append(DEBIAN_PYTHON)
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", interpreters())
def test_idle_daemon_loads_no_heavy_module(tmp_path: Path, xs_server: XenstoreServer,
                                           python: str) -> None:
    """The daemon's import path, run for real (default jobs, xenstore connected), in a fresh
    interpreter (this one, and Debian's as in the guest): fails when an import of a heavy module
    creeps back in."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "pv-guest", root, symlinks=True)
    dump = tmp_path / "modules.json"
    xs_server.next_domids.append(5)
    env = dict(os.environ, XENSTORED_PATH=xs_server.path)
    env.pop("NOTIFY_SOCKET", None)
    daemon = subprocess.Popen(
        [python, "-c", DUMP_AT_READY, str(dump), "--root", str(root), "run",
         "--config", str(tmp_path / "none.toml"), "--conf-dir", str(tmp_path / "none.d"),
         "--role", "guest"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not dump.exists():
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "the daemon never said READY=1"
            time.sleep(0.05)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stderr = daemon.communicate()[1]
    modules = set(json.loads(dump.read_text()))
    assert "guestagent.topology.job" in modules and "guestagent.devices.job" in modules, stderr
    assert "job_started" in stderr and "xenstore_unavailable" not in stderr, stderr
    # Not the daemon's doing: what this interpreter loads before any code runs (a pyenv or venv
    # site loads pathlib, urllib.parse, shutil... for its .pth files; Debian's loads none).
    allowed = interpreter_modules(python)
    loaded = sorted(m for m in modules - allowed
                    if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == [], (
        f"the idle daemon imports {loaded}: import them where they are used (inspect: a dataclass "
        "without a docstring makes dataclasses import it; guestagent.lazyimport says more)")


def test_structlog_import_leaves_ssl_importable() -> None:
    code = (
        "import sys\n"
        "from guestagent.log import get_logger, import_structlog\n"
        "import_structlog(); get_logger('t').info('x')\n"
        "assert 'ssl' not in sys.modules, 'structlog loaded OpenSSL'\n"
        "assert 'colorama' not in sys.modules and 'ctypes' not in sys.modules\n"
        "import ssl\n"
        "assert ssl.OPENSSL_VERSION\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('colorama') is not None:\n"
        "    import colorama\n"
        "    assert colorama.Fore.RED == '\\033[31m'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


def test_structlog_loads_asyncio_only_when_its_async_methods_run() -> None:
    """structlog imports asyncio at module level: it gets a stand-in (guestagent.log), which
    must import the real asyncio on first use, and leave ``import asyncio`` working as usual."""
    code = (
        "import io, sys\n"
        "from guestagent import log\n"
        "out = io.StringIO()\n"
        "log.configure(level='info', stream=out)\n"
        "logger = log.get_logger('t')\n"
        "logger.info('plain', n=1)\n"
        "assert 'asyncio' not in sys.modules, 'structlog loaded asyncio'\n"
        "import structlog._log_levels  # noqa: F401\n"
        "import asyncio\n"
        "assert asyncio.run.__module__ == 'asyncio.runners', asyncio\n"
        "async def main():\n"
        "    await logger.ainfo('async_event', n=2)\n"
        "asyncio.run(main())\n"
        "print(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                          capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines if line] == [
        "level=info event=plain component=t n=1",
        "level=info event=async_event component=t n=2",
    ], done.stdout


def test_structlog_loads_logging_only_when_its_stdlib_integration_is_used() -> None:
    """structlog's ``stdlib`` module and ``logging`` are stand-ins while structlog is imported
    (guestagent.log): the first use of either imports the real one, which then works as usual."""
    code = (
        "import io, sys\n"
        "from guestagent import log\n"
        "out = io.StringIO()\n"
        "log.configure(level='warning', stream=out)\n"
        "logger = log.get_logger('t')\n"
        "logger.info('dropped'); logger.warning('kept', n=1)\n"
        "assert 'logging' not in sys.modules and 'structlog.stdlib' not in sys.modules\n"
        "import structlog\n"
        "assert structlog.stdlib.BoundLogger.__module__ == 'structlog.stdlib'\n"
        "import logging\n"
        "assert sys.modules['logging'] is logging and logging.getLogger('x').name == 'x'\n"
        "stdlib_logger = structlog.stdlib.get_logger('s')\n"
        "assert isinstance(structlog.stdlib.LoggerFactory()('s'), logging.Logger)\n"
        "print(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line] == [
        "level=warning event=kept component=t n=1"], done.stdout


@pytest.mark.parametrize(("name", "number"), [("debug", 10), ("info", 20), ("warning", 30),
                                              ("WARNING", 30), ("error", 40), (25, 25)])
def test_log_levels_are_the_standard_librarys_numbers(name: str | int, number: int) -> None:
    import logging

    from guestagent.log import level_number

    assert level_number(name) == number
    if isinstance(name, str):
        assert logging.getLevelName(name.upper()) == number


def test_an_unknown_log_level_is_one_line_naming_it() -> None:
    from guestagent.log import level_number

    with pytest.raises(ValueError, match="log level 'verbose' is not one of debug, info"):
        level_number("verbose")


def test_command_words_match_what_each_module_registers() -> None:
    registered: dict[str, str] = {}
    for module in cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        __import__(module, fromlist=["register"]).register(sub)
        for word in sub.choices:
            registered[word] = module
    assert registered == cli.COMMAND_WORDS


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["run"], "run"),
        (["--root", "/x", "--log-level", "debug", "status", "--json"], "status"),
        (["--root=/x", "config", "check"], "config"),
        (["--help"], None),
        (["-h", "run"], None),
        (["--version"], None),
        (["bogus"], None),
        ([], None),
    ],
)
def test_command_word(argv: list[str], word: str | None) -> None:
    assert cli.command_word(argv) == word


def test_run_parses_with_only_the_daemon_commands() -> None:
    args = cli.build_parser("run").parse_args(["run", "--role", "guest"])
    assert args.role == "guest" and args.func.__module__ == "guestagent.daemon.commands"


@pytest.mark.parametrize("feed_s, feeds", [(90.0, 41), (360.0, 11)])
def test_timers_of_commensurate_intervals_share_wakeups(feed_s: float, feeds: int) -> None:
    """An hour of the idle daemon's timers (the watchdog fed every 90 s, half the unit's
    WatchdogSec=3min, or every 360 s, half the idle 12 min; the resume check every 360 s; the
    topology refresh every hour; started 1.5 s apart) on a fake clock: every wakeup feeds the
    watchdog, none is spent on another timer alone."""
    now = [1000.0]
    loop = EventLoop(clock=lambda: now[0])
    runs: dict[str, int] = {"watchdog": 0, "resume": 0, "refresh": 0}

    def counter(name: str) -> None:
        runs[name] += 1

    try:
        loop.call_every(3600, lambda: counter("refresh"))
        now[0] += 1.5  # the jobs' start takes a moment
        loop.call_every(RESUME_CHECK_SECONDS, lambda: counter("resume"))
        loop.call_every(feed_s, lambda: counter("watchdog"), first=0)
        wakeups = 0
        while True:
            timeout = loop._next_timeout()
            assert timeout is not None
            if now[0] + timeout > 1001.5 + 3600 + 5:
                break
            now[0] += timeout
            loop.run_once(max_wait=0)
            wakeups += 1
    finally:
        loop.close()
    # The refresh is due 1.5 s before the last watchdog feed, which runs early with it.
    assert runs == {"watchdog": feeds, "resume": 10, "refresh": 1}
    assert wakeups == runs["watchdog"]


def test_a_timer_never_runs_more_than_its_slack_early() -> None:
    now = [0.0]
    loop = EventLoop(clock=lambda: now[0])
    ran: list[float] = []
    try:
        loop.call_later(100.0, lambda: ran.append(now[0]))
        now[0] = 100.0 - MAX_SLACK - 0.01
        loop.run_once(max_wait=0)
        assert ran == []
        now[0] = 100.0 - MAX_SLACK
        loop.run_once(max_wait=0)
        assert ran == [100.0 - MAX_SLACK]
        fast: list[float] = []
        loop.call_every(0.5, lambda: fast.append(now[0]))
        now[0] += 0.46  # within its slack (0.05 s) of the first run
        loop.run_once(max_wait=0)
        loop.run_once(max_wait=0)
        assert len(fast) == 1, "a periodic timer runs once per round, never twice in a row"
    finally:
        loop.close()


def test_the_daemon_gives_back_the_heap_once_its_jobs_have_started(tmp_path: Path) -> None:
    from guestagent.config import defaults
    from guestagent.daemon.service import Daemon
    from guestagent.errors import GuestAgentError
    from guestagent.hostfs import HostFS

    def no_xenstore() -> None:
        raise GuestAgentError("no xenstore in this test")

    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "pv-guest", root, symlinks=True)
    cfg = defaults()
    cfg.values["agent"]["state_dir"] = "/run/guestagent"
    order: list[str] = []

    class Job:
        name = "probe"

        def start(self, ctx: object) -> None:
            order.append("job started")

        def stop(self) -> None:
            order.append("job stopped")

    loop = EventLoop()
    daemon = Daemon(HostFS(str(root)), cfg, lambda: cfg, lambda c, r: [Job()], "guest",  # type: ignore[list-item]
                    loop=loop, xenstore_connect=no_xenstore,
                    release_memory=lambda: order.append("released"))
    try:
        daemon.start()
        assert order == ["job started", "released"]
    finally:
        daemon.shutdown("test")
        loop.close()


def test_release_free_memory_reaches_the_c_library() -> None:
    """glibc's malloc_trim through the C doorway: after a few MiB are allocated and freed in
    pieces, it has pages to give back (a ``False`` here means the call never reached it)."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    if not getattr(os, "confstr", None) or not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.skip("not glibc: there is no malloc_trim to reach")
    from guestagent.daemon.service import release_free_memory

    pieces = [bytearray(4096 + i % 512) for i in range(4096)]  # malloc'd: above pymalloc's 512
    keep = pieces[::64]
    del pieces
    assert release_free_memory() is True
    assert len(keep) == 64
