"""Run guestagent as an unprivileged user (``nobody``) from a test process that runs as root.

The checkout, pytest's ``tmp_path`` (``/tmp/pytest-of-root``) and CI's interpreter (pyenv under
``/root``) may all be unreadable to ``nobody``. So the package and the fixture trees are copied
to a directory anyone can read (:func:`staging`), and the interpreter is the first of
``sys.executable`` and Debian's ``/usr/bin/python3`` that ``nobody`` can run with the runtime
dependencies (``.ci/run`` installs Debian's python3-cffi, -psutil, -pyudev, -pyroute2,
-structlog). The child drops to ``nobody`` before exec (setgroups, setgid, setuid), as
``setpriv --reuid=nobody`` would.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
INTERPRETERS = (sys.executable, "/usr/bin/python3")
DEPENDENCIES = "import cffi, psutil, pyudev, pyroute2, structlog"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _drop_to_nobody() -> Callable[[], None]:
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return drop


def _readable(base: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


@cache
def staging() -> Path:
    """``guestagent/``, ``tests/fixtures`` and ``tests/traces`` copied where anyone can read
    them, plus ``scratch/``, which anyone can write (removed when the tests end)."""
    base = Path(tempfile.mkdtemp(prefix="guestagent-unprivileged-"))
    atexit.register(shutil.rmtree, base, True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "guestagent", base / "guestagent", symlinks=True, ignore=skip)
    shutil.copytree(REPO / "tests" / "fixtures", base / "fixtures", symlinks=True, ignore=skip)
    shutil.copytree(REPO / "tests" / "traces", base / "traces", symlinks=True, ignore=skip)
    _readable(base)
    (base / "scratch").mkdir()
    os.chmod(base / "scratch", 0o1777)
    return base


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GUESTAGENT_ROOT", "PYTHONPATH", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env.update(PYTHONPATH=str(base), HOME=str(base / "scratch"), PYTHONDONTWRITEBYTECODE="1")
    return env


@cache
def python_for_nobody() -> str | None:
    """An interpreter ``nobody`` can run guestagent with; None when there is none."""
    base = staging()
    for python in INTERPRETERS:
        if not python or not os.path.exists(python):
            continue
        try:
            probe = subprocess.run([python, "-c", f"{DEPENDENCIES}; import guestagent.cli"],
                                   capture_output=True, timeout=60, cwd=str(base),
                                   env=_env(base), preexec_fn=_drop_to_nobody())
        except OSError:  # not executable by nobody (pyenv under /root)
            continue
        if probe.returncode == 0:
            return python
    return None


def run_as_nobody(argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m guestagent ARGV`` as ``nobody`` (only when :func:`is_root` and
    :func:`python_for_nobody` found one)."""
    python = python_for_nobody()
    assert python is not None
    base = staging()
    return subprocess.run([python, "-m", "guestagent", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=str(base / "scratch"), env=_env(base),
                          stdin=subprocess.DEVNULL, preexec_fn=_drop_to_nobody())
