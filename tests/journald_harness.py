"""Run a command with its stderr on a real systemd-journald's stream, as systemd runs a service.

    unshare -m --propagation private python -m tests.journald_harness OUTDIR -- COMMAND...

Must run as root in a private mount namespace (``unshare -m``): it mounts tmpfs on /run and
/var/log/journal (the host's journal and sockets are never touched),
starts /lib/systemd/systemd-journald there, connects to its stdout stream socket with the header
systemd itself sends for a service (identifier ``guestagent``, priority info, level prefixes on),
sets ``$JOURNAL_STREAM`` to that socket's device and inode, and runs COMMAND with stderr on it and
``$NOTIFY_SOCKET`` on a datagram socket of its own. After READY=1 it sends SIGTERM, waits for the
exit, and writes into OUTDIR:

- ``all.json``: ``journalctl -o json`` of the command's entries (one JSON object a line);
- ``warning.json``: the same with ``-p warning``;
- ``result.json``: the command's exit status and the notifications it sent.

Used by tests/test_journal.py, which skips where this cannot run (no root, no unshare, no
systemd-journald).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

JOURNALD = "/lib/systemd/systemd-journald"
STREAM = "/run/systemd/journal/stdout"
IDENTIFIER = "guestagent"


def mount_private_journal() -> None:
    """A tmpfs on /run (journald's sockets and its volatile journal in /run/log/journal) and on
    /var/log/journal where it exists, so journald writes nothing persistent: nothing is created
    outside the namespace's own mounts."""
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    if os.path.isdir("/var/log/journal"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var/log/journal"], check=True)
    os.makedirs("/run/systemd/journal")
    os.makedirs("/run/log/journal")


def start_journald() -> subprocess.Popen[bytes]:
    # Its own messages go to its stderr, not to the host's kernel log.
    env = dict(os.environ, SYSTEMD_LOG_TARGET="console")
    journald = subprocess.Popen([JOURNALD], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(STREAM):
            return journald
        time.sleep(0.05)
    journald.kill()
    raise SystemExit(f"journald harness: {STREAM} never appeared")


def journal_stream() -> socket.socket:
    """A stream connection to journald, set up as systemd does for StandardError=journal."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(STREAM)
    sock.shutdown(socket.SHUT_RD)
    # identifier, unit id, priority, level prefix, forward to syslog, to kmsg, to console
    sock.sendall(f"{IDENTIFIER}\n\n6\n1\n0\n0\n0\n".encode())
    return sock


def run(outdir: Path, argv: list[str]) -> int:
    mount_private_journal()
    journald = start_journald()
    try:
        stream = journal_stream()
        st = os.fstat(stream.fileno())
        notify_path = str(outdir / "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(60)
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
                   NOTIFY_SOCKET=notify_path)
        child = subprocess.Popen(argv, env=env, stdout=stream.fileno(), stderr=stream.fileno(),
                                 stdin=subprocess.DEVNULL)
        stream.close()
        messages: list[str] = []
        try:
            while not any("READY=1" in m for m in messages):
                messages.append(notify.recv(4096).decode())
        except socket.timeout:
            messages.append("(no READY=1 within 60 s)")
        child.send_signal(signal.SIGTERM)
        status = child.wait(timeout=60)
        time.sleep(0.5)  # journald reads the closed stream's last lines
        journalctl = ["journalctl", "-D", "/run/log/journal", "--no-pager", "-o", "json",
                      f"SYSLOG_IDENTIFIER={IDENTIFIER}"]
        for name, extra in (("all.json", []), ("warning.json", ["-p", "warning"])):
            with open(outdir / name, "w") as out:
                subprocess.run([*journalctl, *extra], stdout=out, check=False)
        (outdir / "result.json").write_text(
            json.dumps({"status": status, "notifications": messages}))
        return 0
    finally:
        journald.terminate()
        journald.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit(__doc__)
    sys.exit(run(Path(sys.argv[1]), sys.argv[3:]))
