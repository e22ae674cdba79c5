"""A xenstore connection: framed ``xsd_sockmsg`` messages over the xenbus device (guest) or the
xenstored Unix socket (Dom0). The framing itself is done in C (csrc/xenc.c); this wraps it in
exceptions and chooses the transport (reference section 3.1).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import guestagent.xen._xenc as _xenc
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.xen.errors import NotOnXen, XenUnavailable

ffi: Any = _xenc.ffi
lib: Any = _xenc.lib

PAYLOAD_MAX = int(lib.GA_XENSTORE_PAYLOAD_MAX)
SOCKET_PATHS = ("/run/xenstored/socket", "/var/run/xenstored/socket")
DEVICE_PATHS = ("/dev/xen/xenbus", "/proc/xen/xenbus")

#: Once a message has started, the rest must follow within this time or the stream is broken.
MESSAGE_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class RawMessage:
    """One xenstore wire message: its header fields and payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


class XenstoreConnection:
    """One connection to xenstore; ``fileno()`` can be polled for incoming messages."""

    def __init__(self, fd: int, description: str, owner: socket.socket | None = None) -> None:
        self._fd = fd
        self._owner = owner
        self.description = description
        self._broken: str | None = None
        self._hdr: Any = ffi.new("struct ga_xsd_sockmsg *")
        self._buf: Any = ffi.new("uint8_t[]", PAYLOAD_MAX)

    def fileno(self) -> int:
        return self._fd

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """Send one message. A payload over 4096 bytes is refused before anything is written:
        xenstored would drop the whole connection."""
        if len(payload) > PAYLOAD_MAX:
            raise ValueError(
                f"xenstore payload of {len(payload)} bytes exceeds the {PAYLOAD_MAX}-byte limit"
            )
        self._check_usable()
        rc = lib.ga_xs_send(self._fd, msg_type, req_id, tx_id, payload, len(payload))
        if rc == 0:
            return
        if rc in (-errno.EPROTO, -errno.EPIPE, -errno.ECONNRESET, -errno.EBADF):
            self._broken = (
                "stalled in the middle of a message"
                if rc == -errno.EPROTO
                else f"send failed: {os.strerror(-rc)}"
            )
            raise ConnectionError(f"{self.description}: {self._broken}")
        # Refused before anything was written (the xenbus device answers a bad WATCH this way):
        # the request failed, the connection is fine.
        raise OSError(-rc, f"{self.description}: {os.strerror(-rc)}")

    def recv(self, timeout: float | None = None) -> RawMessage:
        """Wait for one whole message; ``timeout`` (seconds) bounds the wait for it to start."""
        self._check_usable()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            rc = lib.ga_xs_recv(
                self._fd, self._hdr, self._buf, PAYLOAD_MAX, left, MESSAGE_TIMEOUT_MS
            )
            if rc != -errno.EINTR:
                break
            # A signal arrived before the message started; its Python handler has run by now.
        if rc == -errno.ETIMEDOUT:
            raise TimeoutError(f"{self.description}: no message within {timeout} s")
        if rc == -errno.EMSGSIZE:
            self._broken = "a message announced an oversized payload"
            raise InputError(
                self.description,
                f"message of type {int(self._hdr.type)} announces {int(self._hdr.len)} payload "
                f"bytes, more than {PAYLOAD_MAX}; connection dropped",
            )
        if rc < 0:
            self._broken = (
                "closed by the other end"
                if rc == -errno.EPIPE
                else "stalled in the middle of a message"
                if rc == -errno.EPROTO
                else f"receive failed: {os.strerror(-rc)}"
            )
            raise ConnectionError(f"{self.description}: {self._broken}")
        hdr = self._hdr
        return RawMessage(
            int(hdr.type), int(hdr.req_id), int(hdr.tx_id), bytes(ffi.buffer(self._buf, rc))
        )

    def close(self) -> None:
        if self._fd >= 0:
            if self._owner is not None:
                self._owner.close()
            else:
                os.close(self._fd)
            self._fd = -1

    def _check_usable(self) -> None:
        if self._fd < 0:
            raise ConnectionError(f"{self.description}: connection is closed")
        if self._broken is not None:
            raise ConnectionError(f"{self.description}: {self._broken}")

    def __enter__(self) -> XenstoreConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_unix(path: str) -> XenstoreConnection:
    """Connect to xenstored's Unix socket (Dom0)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return XenstoreConnection(sock.fileno(), f"xenstore socket {path}", owner=sock)


def open_device(path: str) -> XenstoreConnection:
    """Open the kernel's xenbus device (a guest, or Dom0 with a xenstore stub domain)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    return XenstoreConnection(fd, f"xenstore device {path}")


def open_xenstore(hostfs: HostFS, environ: Mapping[str, str] | None = None) -> XenstoreConnection:
    """The way libxenstore's ``xs_open`` chooses: ``$XENSTORED_PATH``, then the xenstored socket,
    then the xenbus device. Raises NotOnXen when there is none."""
    env = os.environ if environ is None else environ
    # An explicit $XENSTORED_PATH is taken as given (as libxenstore does); the defaults are host
    # paths below the root prefix.
    candidates = [Path(env["XENSTORED_PATH"])] if env.get("XENSTORED_PATH") else []
    candidates += [hostfs.path(p) for p in (*SOCKET_PATHS, *DEVICE_PATHS)]
    for real in candidates:
        if not real.exists():
            continue
        try:
            if real.is_socket():
                return connect_unix(str(real))
            return open_device(str(real))
        except PermissionError:
            raise XenUnavailable(f"cannot open {real}: permission denied (run as root)") from None
        except OSError as e:
            raise XenUnavailable(f"cannot open {real}: {os.strerror(e.errno or 0)}") from None
    raise NotOnXen(f"no xenstore: neither {hostfs.shown(DEVICE_PATHS[0])} nor a xenstored socket "
                   f"({hostfs.shown(SOCKET_PATHS[0])}) exists")
