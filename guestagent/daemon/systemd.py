"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG, STOPPING over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

#: One datagram socket for every notification (the watchdog's every 90 s among them): one
#: sendto(2) each instead of socket, sendto and close.
_sock: socket.socket | None = None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``); False when not run by systemd."""
    global _sock
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    if _sock is None:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        _sock.sendto(state.encode("utf-8", "replace"), address)
    except OSError:
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half of WatchdogSec=), or None when no watchdog is set for
    this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6
