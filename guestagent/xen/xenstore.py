"""A xenstore client over any framed transport (the Dom0 Unix socket or ``/dev/xen/xenbus``).

One reader: every message that arrives passes through :meth:`XenstoreClient._dispatch`, which hands
the reply with the awaited ``req_id`` back to the caller, queues ``XS_WATCH_EVENT`` messages as
:class:`WatchEvent` objects, and logs and drops anything else (a reply nobody waits for, an unknown
type). Every wait has a deadline (``timeout``, 10 s by default).

Poll-loop use::

    client.watch("memory/target", "target")
    poller.register(client.fileno(), select.POLLIN)
    while True:
        events = client.pending_events()          # queued while waiting for replies
        if not events:
            poller.poll(1000)
            events = client.read_events(0)
        for event in events: ...

Over ``/dev/xen/xenbus`` the Linux kernel handles WATCH/UNWATCH itself and synthesises the ``OK``
reply (older kernels with ``req_id`` 0); both forms are accepted (reference section 3.2).
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.xen.xs_wire import (
    NAME_BY_ERRNO,
    XENSTORE_PAYLOAD_MAX,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_MKDIR,
    XS_READ,
    XS_RM,
    XS_SET_PERMS,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    Message,
    Permission,
    Transport,
    WatchEvent,
    decode_directory,
    decode_directory_part,
    decode_domain_path,
    decode_error,
    decode_ok,
    decode_perms,
    decode_transaction_id,
    decode_value,
    decode_watch_event,
    describe,
    encode_directory_part,
    encode_domid,
    encode_path,
    encode_perms,
    encode_watch,
    encode_write,
    name_for_errno,
    type_name,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "PayloadTooLargeError",
    "Permission",
    "Transaction",
    "WatchEvent",
    "XenstoreClient",
    "XenstoreError",
]

T = TypeVar("T")

#: Seconds to wait for a reply before giving up.
DEFAULT_TIMEOUT = 10.0
#: Watch events kept while nobody reads them; beyond this the oldest are dropped (and counted).
MAX_QUEUED_EVENTS = 4096
#: XS_DIRECTORY_PART round trips for one listing (4096 parts hold at least 16 MiB of names).
MAX_DIRECTORY_PARTS = 4096
#: Restarts of a partial listing because the node changed meanwhile.
MAX_DIRECTORY_RESTARTS = 8
#: Messages already waiting that read_events() also consumes after the first one.
_MAX_DRAIN = 256
#: Longest single blocking read in read_events(), so other threads get the lock in between.
_READ_SLICE = 0.2
#: Abandoned (timed-out) request ids remembered to tell a late reply from a stray packet.
_MAX_ABANDONED = 64

_log_cache: list[Any] = []


def _log() -> Any:
    if not _log_cache:
        from guestagent.log import get_logger

        _log_cache.append(get_logger("xenstore"))
    return _log_cache[0]


class XenstoreError(OSError):
    """xenstored answered a request with ``XS_ERROR``.

    ``errno`` is the error's number (EIO for a name xenstore does not define), ``name`` the name
    as sent (``ENOENT``), ``path`` the path of the request and ``op`` the request type.
    """

    def __init__(self, err: int, path: str, op: str, name: str | None = None) -> None:
        self.name = name if name is not None else name_for_errno(err)
        self.path = path
        self.op = op
        super().__init__(err, f"xenstore {op} failed with {self.name}", path)


class PayloadTooLargeError(InputError, ValueError):
    """A request would exceed XENSTORE_PAYLOAD_MAX; it was not sent (xenstored would drop us)."""


class _Operations:
    """The node operations, shared by the client (no transaction) and :class:`Transaction`."""

    def _call(self, msg_type: int, payload: bytes, path: str) -> Message:
        raise NotImplementedError

    @staticmethod
    def _source(reply: Message, path: str) -> str:
        return f"{describe(reply)} for {path}"

    def read(self, path: str) -> bytes:
        """The node's value, as bytes."""
        return self._call(XS_READ, encode_path(path), path).payload

    def read_str(self, path: str) -> str:
        """The node's value as printable ASCII text; InputError naming the path otherwise."""
        reply = self._call(XS_READ, encode_path(path), path)
        return decode_value(reply.payload, path)

    def exists(self, path: str) -> bool:
        """True if the node exists (ENOENT -> False; other errors propagate)."""
        try:
            self._call(XS_READ, encode_path(path), path)
        except XenstoreError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def write(self, path: str, value: bytes | str) -> None:
        """Set the node's value, creating missing parents (empty values)."""
        if isinstance(value, str):
            try:
                value = value.encode("ascii")
            except UnicodeEncodeError:
                raise InputError(path, "xenstore value is not ASCII", value) from None
        reply = self._call(XS_WRITE, encode_write(path, value), path)
        decode_ok(reply.payload, self._source(reply, path))

    def mkdir(self, path: str) -> None:
        """Create the node with an empty value (no error if it exists)."""
        reply = self._call(XS_MKDIR, encode_path(path), path)
        decode_ok(reply.payload, self._source(reply, path))

    def rm(self, path: str) -> None:
        """Remove the node and everything below it (no error if missing but the parent exists)."""
        reply = self._call(XS_RM, encode_path(path), path)
        decode_ok(reply.payload, self._source(reply, path))

    def directory(self, path: str) -> list[str]:
        """The names of the node's children.

        One XS_DIRECTORY; when the list does not fit in one reply xenstored answers E2BIG and the
        listing is fetched with XS_DIRECTORY_PART (Xen >= 4.9), restarting if the node changes.
        """
        try:
            reply = self._call(XS_DIRECTORY, encode_path(path), path)
        except XenstoreError as exc:
            if exc.errno != errno.E2BIG:
                raise
            try:
                return self._directory_parts(path)
            except XenstoreError as part_exc:
                if part_exc.errno in (errno.EINVAL, errno.ENOSYS):
                    raise exc from part_exc  # xenstored older than 4.9
                raise
        return decode_directory(reply.payload, self._source(reply, path))

    def _directory_parts(self, path: str) -> list[str]:
        names: list[str] = []
        offset = 0
        gencnt: str | None = None
        restarts = 0
        for _ in range(MAX_DIRECTORY_PARTS):
            reply = self._call(XS_DIRECTORY_PART, encode_directory_part(path, offset), path)
            source = self._source(reply, path)
            part = decode_directory_part(reply.payload, source)
            if gencnt is not None and part.gencnt != gencnt:
                restarts += 1
                if restarts > MAX_DIRECTORY_RESTARTS:
                    raise XenstoreError(errno.EAGAIN, path, "XS_DIRECTORY_PART", "EAGAIN")
                _log().info("xenstore_directory_restart", path=path, restarts=restarts)
                names, offset, gencnt = [], 0, None
                continue
            gencnt = part.gencnt
            names.extend(part.children)
            offset += sum(len(name) + 1 for name in part.children)
            if part.complete:
                return names
            if not part.children:
                raise InputError(source, "partial listing with no names and no end marker",
                                 reply.payload)
        raise InputError(path, f"directory listing needs more than {MAX_DIRECTORY_PARTS} parts",
                         len(names))

    def get_perms(self, path: str) -> list[Permission]:
        """The node's permissions; the first entry is the owner and the default for others."""
        reply = self._call(XS_GET_PERMS, encode_path(path), path)
        return decode_perms(reply.payload, self._source(reply, path))

    def set_perms(self, path: str, perms: Sequence[Permission]) -> None:
        """Replace the node's permissions (only the owner or dom0 may; only dom0 changes owner)."""
        reply = self._call(XS_SET_PERMS, encode_perms(path, perms), path)
        decode_ok(reply.payload, self._source(reply, path))


class Transaction(_Operations):
    """Node operations inside one xenstore transaction; ended by :meth:`commit` or :meth:`abort`."""

    def __init__(self, client: XenstoreClient, tx_id: int) -> None:
        self._client = client
        self.tx_id = tx_id
        self.ended = False

    def _call(self, msg_type: int, payload: bytes, path: str) -> Message:
        if self.ended:
            raise RuntimeError(f"xenstore transaction {self.tx_id} has already ended")
        return self._client._request(msg_type, self.tx_id, payload, path)

    def _end(self, commit: bool) -> None:
        path = f"transaction {self.tx_id}"
        reply = self._call(XS_TRANSACTION_END, b"T\0" if commit else b"F\0", path)
        self.ended = True
        decode_ok(reply.payload, self._source(reply, path))

    def commit(self) -> None:
        """Commit; XenstoreError with errno EAGAIN if another change conflicted (retry it all)."""
        try:
            self._end(True)
        finally:
            self.ended = True

    def abort(self) -> None:
        """Discard every change of the transaction."""
        try:
            self._end(False)
        finally:
            self.ended = True


class XenstoreClient(_Operations):
    """Xenstore requests, transactions and watches over one :class:`~xs_wire.Transport`.

    Thread-safe (one lock serialises the reader); meant for one poll loop. Paths may be absolute
    or relative to the domain's home (``/local/domain/<domid>``).
    """

    def __init__(
        self,
        transport: Transport,
        timeout: float = DEFAULT_TIMEOUT,
        max_events: int = MAX_QUEUED_EVENTS,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"xenstore timeout must be positive, got {timeout}")
        self._transport = transport
        self.timeout = timeout
        self._max_events = max_events
        self._lock = threading.RLock()
        self._next_id = 1
        self._events: deque[WatchEvent] = deque()
        self._watches: set[tuple[str, str]] = set()
        self._abandoned: deque[int] = deque(maxlen=_MAX_ABANDONED)
        self._broken: str | None = None
        self._closed = False
        #: Watch events dropped because the queue was full.
        self.dropped_events = 0
        #: Packets logged and dropped (unknown req_id, unexpected type, malformed event).
        self.dropped_packets = 0

    @classmethod
    def open(
        cls, hostfs: HostFS | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> XenstoreClient:
        """Connect the way ``xs_open`` does (``$XENSTORED_PATH``, the socket, ``/dev/xen/xenbus``).

        ``hostfs`` defaults to ``HostFS.from_env()``. Raises ``guestagent.xen.errors.NotOnXen``
        when there is no xenstore and ``XenUnavailable`` when it cannot be opened.
        """
        from guestagent.xen.xsconn import open_xenstore

        return cls(open_xenstore(hostfs if hostfs is not None else HostFS.from_env()), timeout)

    # --- lifecycle -------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The transport's descriptor, readable when a reply or watch event is waiting."""
        return self._transport.fileno()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._transport.close()

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def broken(self) -> str | None:
        """Why this connection can no longer be used (closed, or the stream broke), or None."""
        if self._closed:
            return "connection closed"
        return self._broken

    def take_over(self, other: XenstoreClient) -> None:
        """Go on over ``other``'s connection (opened after this one broke); ``other`` is spent.

        Whoever holds this client keeps a working one. Replies still awaited and queued events
        of the old connection are gone, and so are its watches: register them again."""
        with self._lock, other._lock:
            old = self._transport
            self._transport = other._transport
            other._closed = True
            self._closed = False
            self._broken = None
            self._events.clear()
            self._abandoned.clear()
            self._watches.clear()
        if old is not self._transport:
            try:
                old.close()
            except OSError as exc:
                _log().info("xenstore_old_connection_close_failed", error=str(exc))

    def _check_usable(self) -> None:
        if self._closed:
            raise ConnectionError("xenstore connection is closed")
        if self._broken is not None:
            raise ConnectionError(f"xenstore connection is unusable: {self._broken}")

    # --- the one reader --------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        req_id = self._next_id
        # 0 is what watch events and old kernels' synthesised WATCH replies carry: never use it.
        self._next_id = req_id + 1 if req_id < 0xFFFFFFFF else 1
        return req_id

    def _recv(self, timeout: float) -> Message | None:
        """One message, or None if none arrived in time. A broken stream marks the client."""
        try:
            return self._transport.recv(max(timeout, 0.0))
        except TimeoutError:
            return None
        except (OSError, InputError) as exc:
            self._broken = str(exc)
            raise

    def _request(self, msg_type: int, tx_id: int, payload: bytes, path: str) -> Message:
        """Send one request and return its reply (type ``msg_type``); XS_ERROR -> XenstoreError."""
        op = type_name(msg_type)
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise PayloadTooLargeError(
                path,
                f"{op} payload of {len(payload)} bytes exceeds XENSTORE_PAYLOAD_MAX "
                f"{XENSTORE_PAYLOAD_MAX}; not sent",
            )
        with self._lock:
            self._check_usable()
            req_id = self._allocate_id()
            try:
                self._transport.send(msg_type, req_id, tx_id, payload)
            except ValueError as exc:
                raise PayloadTooLargeError(path, f"{op} refused by the transport: {exc}") from exc
            except ConnectionError as exc:
                self._broken = str(exc)
                raise
            except OSError as exc:
                # /dev/xen/xenbus reports some failures (WATCH, bad tx_id) from write(2).
                if exc.errno in NAME_BY_ERRNO and exc.errno not in (errno.EIO, errno.EBADF):
                    raise XenstoreError(exc.errno, path, op) from exc
                self._broken = str(exc)
                raise
            deadline = time.monotonic() + self.timeout
            reply: Message | None = None
            while reply is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned.append(req_id)
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"xenstore {op} got no reply within {self.timeout:g} s (req_id {req_id})",
                        path,
                    )
                msg = self._recv(remaining)
                if msg is not None:
                    reply = self._dispatch(msg, req_id, msg_type)
        if reply.type == XS_ERROR:
            err = decode_error(reply.payload, self._source(reply, path))
            raise XenstoreError(err.errno, path, op, err.name)
        return reply

    def _dispatch(self, msg: Message, req_id: int | None, req_type: int) -> Message | None:
        """Route one message: the awaited reply is returned, everything else queued or dropped."""
        if msg.type == XS_WATCH_EVENT:
            try:
                event = decode_watch_event(msg.payload, describe(msg))
            except InputError as exc:
                self.dropped_packets += 1
                _log().warning("xenstore_bad_watch_event", error=str(exc))
                return None
            self._queue_event(event)
            return None
        if req_id is not None:
            if msg.req_id == req_id:
                if msg.type in (req_type, XS_ERROR):
                    return msg
                raise InputError(
                    describe(msg),
                    f"reply to {type_name(req_type)} (req_id {req_id}) has the wrong type",
                    type_name(msg.type),
                )
            if msg.req_id == 0 and msg.type == req_type and req_type in (XS_WATCH, XS_UNWATCH):
                return msg  # older kernels' xenbus device synthesise this reply with req_id 0
        self.dropped_packets += 1
        if msg.req_id in self._abandoned:
            _log().info("xenstore_late_reply_dropped", type=type_name(msg.type), req_id=msg.req_id)
        else:
            _log().warning(
                "xenstore_unexpected_packet_dropped",
                type=type_name(msg.type),
                req_id=msg.req_id,
                tx_id=msg.tx_id,
                length=len(msg.payload),
                awaiting=req_id,
            )
        return None

    def _queue_event(self, event: WatchEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.dropped_events += 1
            _log().warning("xenstore_watch_event_dropped", dropped=self.dropped_events)
        self._events.append(event)

    # --- watches ---------------------------------------------------------------------------------

    def watch(self, path: str, token: str) -> None:
        """Watch ``path`` and everything below it; an event fires at once and on every change.

        Also accepts ``@introduceDomain`` / ``@releaseDomain``. Events for a relative path are
        reported relative.
        """
        reply = self._request(XS_WATCH, 0, encode_watch(path, token), path)
        decode_ok(reply.payload, self._source(reply, path))
        with self._lock:
            self._watches.add((path, token))

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch; queued events whose token no other watch uses are discarded."""
        reply = self._request(XS_UNWATCH, 0, encode_watch(path, token), path)
        decode_ok(reply.payload, self._source(reply, path))
        with self._lock:
            self._watches.discard((path, token))
            if all(other != token for _, other in self._watches):
                self._events = deque(e for e in self._events if e.token != token)

    @property
    def watches(self) -> set[tuple[str, str]]:
        """The (path, token) pairs registered through this client."""
        with self._lock:
            return set(self._watches)

    def pending_events(self) -> list[WatchEvent]:
        """Events already queued (read while waiting for replies); no I/O. Clears the queue."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events

    def read_events(self, timeout: float = 0.0) -> list[WatchEvent]:
        """Queued events, else wait up to ``timeout`` s for at least one; drains what is waiting.

        Returns [] when nothing arrived in time. Replies nobody waits for are logged and dropped.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._lock:
                self._check_usable()
                if self._events:
                    break
                remaining = deadline - time.monotonic()
                msg = self._recv(min(max(remaining, 0.0), _READ_SLICE))
                if msg is not None:
                    self._dispatch(msg, None, XS_WATCH_EVENT)
                if time.monotonic() >= deadline or (msg is None and remaining <= _READ_SLICE):
                    break
        with self._lock:
            if self._events:
                for _ in range(_MAX_DRAIN):
                    msg = self._recv(0.0)
                    if msg is None:
                        break
                    self._dispatch(msg, None, XS_WATCH_EVENT)
            return self.pending_events()

    # --- domain and transactions -----------------------------------------------------------------

    def get_domain_path(self, domid: int) -> str:
        """``/local/domain/<domid>`` as xenstored reports it."""
        path = f"domain {domid}"
        reply = self._request(XS_GET_DOMAIN_PATH, 0, encode_domid(domid), path)
        return decode_domain_path(reply.payload, self._source(reply, path))

    def _call(self, msg_type: int, payload: bytes, path: str) -> Message:
        return self._request(msg_type, 0, payload, path)

    def start_transaction(self) -> Transaction:
        """Start a transaction; prefer :meth:`transaction` or :meth:`run_transaction`."""
        reply = self._request(XS_TRANSACTION_START, 0, b"\0", "transaction")
        return Transaction(self, decode_transaction_id(reply.payload, describe(reply)))

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``with client.transaction() as tx:`` commits on success, aborts on an exception.

        A conflicting commit raises XenstoreError with errno EAGAIN; use :meth:`run_transaction`
        to retry.
        """
        tx = self.start_transaction()
        try:
            yield tx
        except BaseException:
            if not tx.ended:
                try:
                    tx.abort()
                except (OSError, InputError) as exc:
                    _log().warning("xenstore_transaction_abort_failed", tx_id=tx.tx_id,
                                   error=str(exc))
            raise
        if not tx.ended:
            tx.commit()

    def run_transaction(self, fn: Callable[[Transaction], T], retries: int = 5) -> T:
        """Run ``fn(tx)`` in a transaction and commit, redoing it all on EAGAIN ``retries`` times.

        ``fn`` must only touch xenstore through ``tx`` (it may run several times).
        """
        attempt = 0
        while True:
            try:
                with self.transaction() as tx:
                    result = fn(tx)
                return result
            except XenstoreError as exc:
                if exc.errno != errno.EAGAIN or attempt >= retries:
                    raise
                attempt += 1
                _log().info("xenstore_transaction_retry", attempt=attempt, path=exc.path)
                time.sleep(min(0.005 * (2**attempt), 0.2))
