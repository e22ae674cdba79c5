"""Paths, logging and subprocess helpers shared by the testbed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("E2E_CACHE", str(HERE / "cache")))
RUNS = Path(os.environ.get("E2E_RUNS", str(HERE / "runs")))

_T0 = time.monotonic()

#: What the guest unit's ExecStopPost= lines run after the daemon is gone, a crash included
#: (packaging/systemd/guestagent.service, without the systemd-run wrapper), in order:
#: ``guestagent ARGS`` each. Every e2e crash check (``kill -9``, then these by hand) runs this one
#: tuple; tests/test_e2e_unit_commands.py keeps it equal to the unit.
UNIT_STOP_POST = ("reset",)

#: Multiplies every boot and command timeout (a loaded 2-core machine is slower under TCG).
TIMEOUT_SCALE = float(os.environ.get("E2E_TIMEOUT_SCALE", "1"))


class BedError(RuntimeError):
    """A testbed step failed (download, build, boot, command transport)."""


class GuestDied(BedError):
    """A guest that had booted died under a test (seen: a vCPU triple fault under TCG, about one
    guest in 17, mid-test as well as during boot). The e2e tests are rerun up to twice for it."""


class Dom0Lost(BedError):
    """Dom0's runner stopped answering, even a PING (seen once in 61 passthrough boots under
    credit, 2026-12-05, not explained): the bed typed Xen's debug keys into the run directory
    and started Xen again (:meth:`tests.e2e.bed.XenBed.restart`). The e2e tests are rerun for it."""


def log(msg: str) -> None:
    """Progress line on stderr with the time since the testbed started."""
    print(f"[e2e {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    input_bytes: bytes | None = None,
) -> str:
    """Run a host command; raise :class:`BedError` with its output when it fails."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            cwd=str(cwd) if cwd else None,
            env=dict(env) if env is not None else None,
            input=input_bytes,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BedError(f"{args[0]}: timed out after {timeout:.0f}s: {' '.join(args)}") from e
    out = proc.stdout.decode(errors="replace") if capture and proc.stdout else ""
    if proc.returncode != 0:
        raise BedError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n{out[-4000:]}"
        )
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(*parts: str) -> str:
    """A short cache key of some strings."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final``; publish it with :func:`publish_dir`."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def which_missing(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
