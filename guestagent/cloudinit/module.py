"""What cloud-init runs: the module ``cc_guestagent`` (its file in cloud-init's ``cloudinit/config``
directory only imports ``meta`` and ``handle`` from here).

From the cloud-config key ``guestagent:`` it writes ``/etc/guestagent/guestagent.toml`` and enables
and starts the agent's unit (``enabled: false``: disables and stops it). It runs once per instance,
from ``guestagent-cloud-config.service`` (``cloud-init single --name guestagent``, after
cloud-config.service and before guestagent.service) or from a ``cloud_config_modules`` list.

cloud-init's module API changed in 23.2: before, ``handle(name, cfg, cloud, log, args)`` is called
with positional arguments (Debian 12 ships 22.4); from 23.2 on, ``handle(name=, cfg=, cloud=,
args=)`` is called with keywords, and a handle with five parameters still gets ``log=`` but with a
deprecation warning. :data:`handle` is whichever of the two this cloud-init calls.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from guestagent.cloudinit.settings import CloudSettings, parse, render_toml

#: Under cloud-init's logger, so the lines land in /var/log/cloud-init.log.
LOG = logging.getLogger("cloudinit.config.cc_guestagent")

CONFIG_FILE = "/etc/guestagent/guestagent.toml"
#: cloudinit.settings.PER_INSTANCE and cloudinit.distros.ALL_DISTROS, spelled out so that this
#: module imports without cloud-init (tests, docs).
PER_INSTANCE = "once-per-instance"
ALL_DISTROS = "all"

meta: dict[str, Any] = {
    "id": "cc_guestagent",
    "name": "guestagent",
    "title": "Configure and start guestagent",
    "description": (
        "Writes /etc/guestagent/guestagent.toml from the ``guestagent`` key (one mapping per "
        "configuration section, see ``guestagent config doc``) and enables and starts "
        "guestagent.service (guestagent-dom0.service when ``agent.role`` is ``dom0``); "
        "``enabled: false`` disables and stops it instead. The JSON schema of the key is "
        "/usr/share/guestagent/cloud-config.schema.json."
    ),
    "distros": [ALL_DISTROS],
    "frequency": PER_INSTANCE,
    "activate_by_schema_keys": ["guestagent"],
    "examples": [
        "guestagent:\n  enabled: true\n  agent:\n    log_level: info\n"
        "  topology:\n    refresh_seconds: 600\n",
        "guestagent:\n  enabled: false\n",
    ],
}

Runner = Callable[[Sequence[str]], None]

#: Where the configuration file goes (tests point it at a temporary directory).
ROOT = "/"


def run_command(argv: Sequence[str]) -> None:
    """Run a command; raise with its output when it fails (cloud-init logs the exception)."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")


#: How commands are run (tests replace it).
RUN: Runner = run_command


def write_config(text: str, path: str) -> None:
    """Replace ``path`` atomically (temporary file in the same directory, then rename), 0644."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".guestagent.toml.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def service_commands(settings: CloudSettings) -> list[list[str]]:
    """systemctl calls that turn the unit on or off.

    ``--no-block``: this runs inside a unit ordered before guestagent.service (or inside
    cloud-config.service, which guestagent.service is ordered after), so waiting for the start
    job would wait for ourselves. ``reload-or-restart`` starts a stopped unit and makes a running
    one read the new file (SIGHUP).
    """
    unit = settings.unit
    if settings.enabled:
        return [["systemctl", "enable", unit],
                ["systemctl", "--no-block", "reload-or-restart", unit]]
    return [["systemctl", "disable", unit], ["systemctl", "--no-block", "stop", unit]]


def apply(settings: CloudSettings, root: str = "/", run: Runner | None = None) -> list[str]:
    """Write the configuration (when the key holds any section), then switch the unit.

    Returns what was done, one line each.
    """
    runner = run if run is not None else run_command
    done = []
    if settings.sections:
        write_config(render_toml(settings.sections), os.path.join(root, CONFIG_FILE.lstrip("/")))
        done.append(f"wrote {CONFIG_FILE} ({', '.join(settings.sections)})")
    for argv in service_commands(settings):
        runner(argv)
        done.append(" ".join(argv))
    return done


def _run(name: str, cfg: Mapping[str, Any]) -> None:
    value = cfg.get("guestagent")
    if value is None:
        LOG.debug("Skipping module named %s, no 'guestagent' key in configuration", name)
        return
    settings = parse(value)
    for line in apply(settings, root=ROOT, run=RUN):
        LOG.info("%s: %s", name, line)


def handle_current(name: str, cfg: dict[str, Any], cloud: Any, args: list[Any]) -> None:
    """cloud-init 23.2 and later."""
    _run(name, cfg)


def handle_legacy(name: str, cfg: dict[str, Any], cloud: Any, log: Any, args: list[Any]) -> None:
    """cloud-init before 23.2 (Debian 12: 22.4)."""
    _run(name, cfg)


def cloud_init_passes_log(version: str | None = None) -> bool:
    """Whether this cloud-init calls ``handle(name, cfg, cloud, log, args)`` (before 23.2)."""
    if version is None:
        try:
            cloudinit_version = importlib.import_module("cloudinit.version")
        except ImportError:
            return False
        version = str(cloudinit_version.version_string())
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) < (23, 2)


handle: Callable[..., None] = handle_legacy if cloud_init_passes_log() else handle_current
