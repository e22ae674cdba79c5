"""Metrics in Prometheus text format, made from the daemon's status: served over HTTP on a
loopback address, and/or written atomically to a textfile for node_exporter's collector."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from guestagent.log import get_logger

_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(*parts: str) -> str:
    return "_".join(_NAME_OK.sub("_", p) for p in ("guestagent", *parts))


def _numbers(prefix: str, values: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    for key, value in sorted(values.items()):
        if isinstance(value, (int, float)):  # bool is an int: true -> 1
            yield _metric_name(prefix, key), float(value)


def _sample(value: float) -> str:
    """A sample value in full: ``%g`` would print 1048576 as 1.04858e+06."""
    return str(int(value)) if value.is_integer() else repr(value)


def _labelled(job: str, key: str, rows: Any) -> Iterator[str]:
    """A job's ``by_<label>`` status entry (``{label value: {figure: number}}``) as one gauge per
    figure, ``guestagent_<job>_<label>_<figure>{<label>="<value>"}``; e.g. the numa job's
    ``by_vnode`` gives ``guestagent_numa_vnode_local_pct{vnode="0"}``."""
    if not isinstance(rows, Mapping):
        return
    label = _NAME_OK.sub("_", key[len("by_"):])
    figures = sorted({f for row in rows.values() if isinstance(row, Mapping) for f in row})
    for figure in figures:
        metric = _metric_name(job, label, figure)
        yield f"# TYPE {metric} gauge"
        for value, row in sorted(rows.items()):
            number = row.get(figure) if isinstance(row, Mapping) else None
            if isinstance(number, (int, float)):
                shown = _NAME_OK.sub("_", str(value))
                yield f'{metric}{{{label}="{shown}"}} {_sample(float(number))}'


#: Status entries that list one mapping per item, and the item's field that names it: the entry
#: is exported as its number of items, and each item's numbers (a list: its length; strings and
#: None are left out) as gauges labelled with its name. E.g. the devices job's ``devices`` gives
#: ``guestagent_devices_devices 2`` and ``guestagent_devices_device_irqs{device="0000:00:05.0"} 3``.
ITEM_LISTS: dict[tuple[str, str], tuple[str, str]] = {
    ("devices", "devices"): ("device", "bdf"),
    ("dom0", "guests"): ("guest", "domid"),
}


def _item_figure(value: object) -> float | None:
    if isinstance(value, (list, tuple)):
        return float(len(value))
    if isinstance(value, (int, float)):  # bool is an int: true -> 1
        return float(value)
    return None


def _items(job: str, key: str, label: str, name_field: str, items: Any) -> Iterator[str]:
    """A job's :data:`ITEM_LISTS` entry: ``guestagent_<job>_<key>`` (how many), then per figure
    ``guestagent_<job>_<label>_<figure>{<label>="<item's name>"}``."""
    if not isinstance(items, (list, tuple)):
        return
    rows = [i for i in items if isinstance(i, Mapping) and i.get(name_field) is not None]
    count = _metric_name(job, key)
    yield from (f"# TYPE {count} gauge", f"{count} {len(rows)}")
    series = [{"labels": {label: row[name_field]},
               **{f: n for f, v in row.items()
                  if f != name_field and (n := _item_figure(v)) is not None}}
              for row in rows]
    yield from _series(job, f"series_{label}", series)


def _label_value(value: object) -> str:
    """A label value as the exposition format escapes it (any text: a guest's name)."""
    text = str(value)[:128]
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(job: str, key: str, rows: Any) -> Iterator[str]:
    """A job's ``series_<name>`` status entry (a list of ``{"labels": {...}, figure: number}``)
    as one gauge per figure, ``guestagent_<job>_<name>_<figure>{<labels>}``; e.g. the hostnuma
    job's ``series_guest_vnode`` gives
    ``guestagent_hostnuma_guest_vnode_local_pct{guest="web",vnode="1"}``."""
    if not isinstance(rows, list):
        return
    rows = [r for r in rows if isinstance(r, Mapping) and isinstance(r.get("labels"), Mapping)]
    figures = sorted({f for row in rows for f in row if f != "labels"})
    for figure in figures:
        metric = _metric_name(job, key[len("series_"):], figure)
        yield f"# TYPE {metric} gauge"
        for row in rows:
            number = row.get(figure)
            if isinstance(number, (int, float)):
                labels = ",".join(f'{_NAME_OK.sub("_", str(k))}="{_label_value(v)}"'
                                  for k, v in row["labels"].items())
                yield f"{metric}{{{labels}}} {_sample(float(number))}"


def render(status: Mapping[str, Any]) -> str:
    """The exposition text for one status snapshot (pure)."""
    lines = [
        "# HELP guestagent_up 1 while the daemon runs.",
        "# TYPE guestagent_up gauge",
        "guestagent_up 1",
        "# TYPE guestagent_resumes_total counter",
        f"guestagent_resumes_total {int(status.get('resumes', 0))}",
        "# TYPE guestagent_loop_errors_total counter",
        f"guestagent_loop_errors_total {int(status.get('loop_errors', 0))}",
        "# HELP guestagent_xenstore_connected 1 while the xenstore connection is up, 0 while "
        "it is down or there is none.",
        "# TYPE guestagent_xenstore_connected gauge",
        f"guestagent_xenstore_connected {int(bool(status.get('xenstore_connected')))}",
        "# HELP guestagent_xenstore_reconnects_total Connections to xenstore made again after "
        "one broke.",
        "# TYPE guestagent_xenstore_reconnects_total counter",
        f"guestagent_xenstore_reconnects_total {int(status.get('xenstore_reconnects', 0))}",
        "# HELP guestagent_xenstore_down_since_seconds Unix time the xenstore connection broke, "
        "while it is down (reconnecting); 0 while it is up.",
        "# TYPE guestagent_xenstore_down_since_seconds gauge",
        f"guestagent_xenstore_down_since_seconds {float(status.get('xenstore_down_since') or 0)}",
        "# HELP guestagent_xenstore_reconnect_attempt The reconnect attempt in progress while "
        "the xenstore connection is down; 0 while it is up.",
        "# TYPE guestagent_xenstore_reconnect_attempt gauge",
        f"guestagent_xenstore_reconnect_attempt {int(status.get('xenstore_attempt') or 0)}",
        # The label is "name", not "job": Prometheus keeps "job" for the scrape job and would
        # rename ours to exported_job.
        "# HELP guestagent_job_running 1 when the job runs, 0 when it is off or failed.",
        "# TYPE guestagent_job_running gauge",
    ]
    jobs: Mapping[str, Any] = status.get("jobs", {})
    for name, job in sorted(jobs.items()):
        lines.append(
            f'guestagent_job_running{{name="{_NAME_OK.sub("_", name)}"}} '
            f"{int(bool(job.get('running')))}"
        )
    for name, job in sorted(jobs.items()):
        for metric, value in _numbers(name, {k: v for k, v in job.items() if k != "running"}):
            lines += [f"# TYPE {metric} gauge", f"{metric} {_sample(value)}"]
        for key, rows in sorted(job.items()):
            if key.startswith("by_"):
                lines += _labelled(name, key, rows)
            elif (name, key) in ITEM_LISTS:
                lines += _items(name, key, *ITEM_LISTS[name, key], rows)
            elif key.startswith("series_"):
                lines += _series(name, key, rows)
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` atomically (node_exporter must never read half a file)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".guestagent.", suffix=".prom.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """A minimal HTTP/1.0 responder on loopback, driven by the daemon's event loop: every GET
    gets the current metrics; nothing else is understood.

    A connection whose request has not arrived yet waits in the loop as its own descriptor
    (given ``loop``): at most :attr:`MAX_PENDING` of them, each dropped after
    :attr:`PENDING_SECONDS`, so an idle client never holds the loop."""

    MAX_REQUEST = 4096
    MAX_PENDING = 8
    PENDING_SECONDS = 5.0

    def __init__(self, listen: str, text: Callable[[], str], loop: Any = None) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self._text = text
        self._loop = loop
        self._pending: dict[int, tuple[socket.socket, Any]] = {}
        self._log = get_logger("metrics")

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> int:
        """Connections accepted whose request has not arrived yet."""
        return len(self._pending)

    def on_readable(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        try:
            request = conn.recv(self.MAX_REQUEST, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if self._loop is not None:
                self._wait_for_request(conn)
                return
            conn.settimeout(0.5)  # no loop to wait in (a caller of its own): a short wait
            try:
                request = conn.recv(self.MAX_REQUEST)
            except OSError as e:
                self._log.debug("metrics_client_failed", error=str(e))
                conn.close()
                return
        except OSError as e:
            self._log.debug("metrics_client_failed", error=str(e))
            conn.close()
            return
        self._answer(conn, request)

    def _wait_for_request(self, conn: socket.socket) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            self._drop(next(iter(self._pending)))  # the oldest waits longest: it goes
        fd = conn.fileno()
        timer = self._loop.call_later(self.PENDING_SECONDS, lambda: self._drop(fd))
        self._pending[fd] = (conn, timer)
        self._loop.add_reader(fd, lambda: self._on_request(fd))

    def _on_request(self, fd: int) -> None:
        conn, timer = self._pending.pop(fd)
        timer.cancel()
        self._loop.remove_reader(fd)
        try:
            request = conn.recv(self.MAX_REQUEST, socket.MSG_DONTWAIT)
        except OSError as e:
            self._log.debug("metrics_client_failed", error=str(e))
            conn.close()
            return
        self._answer(conn, request)

    def _drop(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is not None:
            conn, timer = entry
            timer.cancel()
            self._loop.remove_reader(fd)
            conn.close()

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        with conn:
            conn.settimeout(0.5)
            try:
                if request.startswith(b"GET "):
                    body = self._text().encode()
                    head = (
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n"
                    )
                else:
                    body = b"only GET\n"
                    head = f"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)
            except OSError as e:
                self._log.debug("metrics_client_failed", error=str(e))

    def close(self) -> None:
        for fd in list(self._pending):
            self._drop(fd)
        self.sock.close()
