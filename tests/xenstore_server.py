"""A small xenstored for the tests: the real wire protocol over a Unix socket.

Written from reference ``xen-abi.md`` section 3 and independent of the client's code: it has its
own framing, path checks and permission parser, so a client bug cannot hide behind shared code.

What it implements: a node tree with values and permissions; a domain id per connection (set
``next_domids`` / ``default_domid`` before connecting); relative paths under
``/local/domain/<domid>``; READ, WRITE (creating parents, owner = the writer), MKDIR, RM, DIRECTORY
(E2BIG above 4096 bytes), DIRECTORY_PART with a generation count, GET/SET_PERMS with owner/others
semantics, GET_DOMAIN_PATH, TRANSACTION_START/END (EAGAIN if anything else committed meanwhile),
WATCH/UNWATCH (first event at once, events on change and on commit), errors as ``XS_ERROR`` with
the error name, a 2048-byte value quota for guests, and a payload above 4096 kills the connection.

Hooks for tests: :meth:`XenstoreServer.intercept` (frames sent before a reply, or a reply replaced
by arbitrary bytes), :meth:`XenstoreServer.inject` (a frame sent right now) and :func:`frame`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import select
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

HEADER = struct.Struct("<IIII")
PAYLOAD_MAX = 4096

# Message types (xs_wire.h, Xen 4.17), spelled out here on purpose.
DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH = 1, 2, 3, 4, 5
TRANSACTION_START, TRANSACTION_END, GET_DOMAIN_PATH = 6, 7, 10
WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR = 11, 12, 13, 14, 15, 16
DIRECTORY_PART = 22

#: Largest value a guest may store (C xenstored's default ``-S``).
GUEST_VALUE_MAX = 2048
#: Concurrent transactions per connection.
MAX_TRANSACTIONS = 10

_PATH_RE = re.compile(r"[A-Za-z0-9\-/_@]+")
_PERM_RE = re.compile(r"([nrwb])([0-9]+)")


class XsError(Exception):
    """Reply with XS_ERROR and this name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def frame(msg_type: int, req_id: int, tx_id: int, payload: bytes,
          length: int | None = None) -> bytes:
    """Header and payload as bytes; ``length`` may lie about the payload size."""
    size = len(payload) if length is None else length
    return HEADER.pack(msg_type, req_id, tx_id, size) + payload


Perms = list[tuple[str, int]]


@dataclass
class Node:
    value: bytes = b""
    perms: Perms = field(default_factory=lambda: [("n", 0)])
    children: list[str] = field(default_factory=list)
    gen: int = 0


@dataclass
class Request:
    """One request as received (for hooks and for ``XenstoreServer.requests``)."""

    conn: ServerConnection
    type: int
    req_id: int
    tx_id: int
    payload: bytes


@dataclass
class Intercept:
    """What a hook does to one request.

    ``before``: frames sent ahead of the reply. ``reply``: bytes sent instead of the real reply
    (``b""`` sends nothing). ``process``: whether the request still changes the store.
    """

    before: list[bytes] = field(default_factory=list)
    reply: bytes | None = None
    process: bool = True


Hook = Callable[[Request], Intercept]


@dataclass
class _Watch:
    path: str  # as registered (maybe relative or @special)
    abs_path: str
    token: str


@dataclass
class _Transaction:
    nodes: dict[str, Node]
    start_gen: int
    changes: list[tuple[str, bool]] = field(default_factory=list)  # (abs path, removed)


class ServerConnection:
    """One client connection with its domain id, watches and transactions."""

    def __init__(self, server: XenstoreServer, sock: socket.socket, domid: int) -> None:
        self.server = server
        self.sock = sock
        self.domid = domid
        self.watches: list[_Watch] = []
        self.transactions: dict[int, _Transaction] = {}
        self.send_lock = threading.Lock()
        self.alive = True

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    def send_raw(self, data: bytes) -> None:
        if not data:
            return
        with self.send_lock:
            if not self.alive:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.alive = False

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.send_raw(frame(msg_type, req_id, tx_id, payload))

    def kill(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class XenstoreServer:
    """Threaded xenstored on ``path``: :meth:`start` / :meth:`stop`, or a context manager."""

    def __init__(self, path: str, default_domid: int = 0) -> None:
        self.path = path
        self.default_domid = default_domid
        #: Domain ids for the next accepted connections, in order (then ``default_domid``).
        self.next_domids: deque[int] = deque()
        self.nodes: dict[str, Node] = {"/": Node()}
        #: Bumped by every committed change; a transaction started earlier then fails (EAGAIN).
        self.generation = 0
        self._gen_counter = 0
        self.lock = threading.RLock()
        self.connections: list[ServerConnection] = []
        #: Every request received, in order.
        self.requests: list[Request] = []
        self._hooks: list[tuple[int, Hook, list[int]]] = []
        self._next_tx = 1000
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> XenstoreServer:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="xs-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for conn in list(self.connections):
            conn.kill()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        for conn in self.connections:
            conn.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> XenstoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            with self.lock:
                domid = self.next_domids.popleft() if self.next_domids else self.default_domid
                conn = ServerConnection(self, sock, domid)
                self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="xs-conn",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _recv_exact(self, conn: ServerConnection, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            if self._stop.is_set() or not conn.alive:
                return None
            ready, _, _ = select.select([conn.sock], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = conn.sock.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _serve(self, conn: ServerConnection) -> None:
        while True:
            header = self._recv_exact(conn, HEADER.size)
            if header is None:
                break
            msg_type, req_id, tx_id, length = HEADER.unpack(header)
            if length > PAYLOAD_MAX:
                conn.kill()  # what xenstored does to a client that sends too much
                break
            payload = self._recv_exact(conn, length)
            if payload is None:
                break
            self.handle(Request(conn, msg_type, req_id, tx_id, payload))
        conn.alive = False
        with self.lock:
            conn.watches.clear()
            conn.transactions.clear()

    # --- test hooks --------------------------------------------------------------------------

    def intercept(self, msg_type: int, hook: Hook, count: int = 1) -> None:
        """Apply ``hook`` to the next ``count`` requests of ``msg_type``."""
        with self.lock:
            self._hooks.append((msg_type, hook, [count]))

    def inject(self, data: bytes) -> None:
        """Send raw bytes to every live connection now."""
        for conn in list(self.connections):
            conn.send_raw(data)

    def set_node(self, path: str, value: bytes = b"", perms: Perms | None = None) -> None:
        """Create or change a node as dom0 would (parents created, watches fired)."""
        with self.lock:
            self._write(self.nodes, path, value, 0, None)
            if perms is not None:
                self.nodes[path].perms = list(perms)
            self._commit_change([(path, False)])

    def get_node(self, path: str) -> Node | None:
        with self.lock:
            return self.nodes.get(path)

    def populate_guest(self, domid: int) -> None:
        """The nodes libxl creates for a guest (reference section 3.3)."""
        home = f"/local/domain/{domid}"
        ro: Perms = [("n", 0), ("r", domid)]
        rw: Perms = [("n", domid)]
        self.set_node("/local/domain", b"")
        self.set_node(home, b"", ro)
        for sub in ("cpu", "memory", "control", "device"):
            self.set_node(f"{home}/{sub}", b"", ro)
        self.set_node(f"{home}/name", b"guest", ro)
        self.set_node(f"{home}/domid", str(domid).encode(), ro)
        self.set_node(f"{home}/memory/static-max", b"1048576", ro)
        self.set_node(f"{home}/memory/target", b"524288", ro)
        self.set_node(f"{home}/control/shutdown", b"", rw)
        for sub in ("data", "attr", "feature", "drivers", "error"):
            self.set_node(f"{home}/{sub}", b"", rw)

    # --- request handling --------------------------------------------------------------------

    def _take_hook(self, msg_type: int) -> Hook | None:
        for entry in self._hooks:
            hooked_type, hook, remaining = entry
            if hooked_type == msg_type and remaining[0] > 0:
                remaining[0] -= 1
                if remaining[0] == 0:
                    self._hooks.remove(entry)
                return hook
        return None

    def handle(self, req: Request) -> None:
        conn = req.conn
        with self.lock:
            self.requests.append(req)
            hook = self._take_hook(req.type)
            plan = hook(req) if hook is not None else Intercept()
            for data in plan.before:
                conn.send_raw(data)
            if not plan.process:
                conn.send_raw(plan.reply or b"")
                return
            try:
                reply_type, body, after = self._process(req)
            except XsError as err:
                reply_type, body, after = ERROR, err.name.encode() + b"\0", []
            if plan.reply is not None:
                conn.send_raw(plan.reply)
            else:
                conn.send(reply_type, req.req_id, req.tx_id, body)
            for event in after:
                conn.send_raw(event)

    def _process(self, req: Request) -> tuple[int, bytes, list[bytes]]:
        conn = req.conn
        handlers: dict[int, Callable[[Request, dict[str, Node], _Transaction | None], bytes]]
        handlers = {
            READ: self._do_read,
            WRITE: self._do_write,
            MKDIR: self._do_mkdir,
            RM: self._do_rm,
            DIRECTORY: self._do_directory,
            DIRECTORY_PART: self._do_directory_part,
            GET_PERMS: self._do_get_perms,
            SET_PERMS: self._do_set_perms,
        }
        if req.type == WATCH:
            return WATCH, b"OK\0", self._do_watch(req)
        if req.type == UNWATCH:
            self._do_unwatch(req)
            return UNWATCH, b"OK\0", []
        if req.type == GET_DOMAIN_PATH:
            (domid,) = self._fields(req.payload, 1)
            if not domid.isdigit():
                raise XsError("EINVAL")
            return GET_DOMAIN_PATH, f"/local/domain/{int(domid)}\0".encode(), []
        if req.type == TRANSACTION_START:
            if req.tx_id != 0:
                raise XsError("EBUSY")
            if len(conn.transactions) >= MAX_TRANSACTIONS:
                raise XsError("ENOSPC")
            tx_id = self._next_tx
            self._next_tx += 1
            conn.transactions[tx_id] = _Transaction(copy.deepcopy(self.nodes), self.generation)
            return TRANSACTION_START, f"{tx_id}\0".encode(), []
        if req.type == TRANSACTION_END:
            return TRANSACTION_END, self._do_transaction_end(req), []
        handler = handlers.get(req.type)
        if handler is None:
            raise XsError("EINVAL")
        if req.tx_id:
            tx = conn.transactions.get(req.tx_id)
            if tx is None:
                raise XsError("ENOENT")
            return req.type, handler(req, tx.nodes, tx), []
        return req.type, handler(req, self.nodes, None), []

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _fields(payload: bytes, count: int) -> list[str]:
        """Exactly ``count`` NUL-terminated ASCII strings."""
        if not payload.endswith(b"\0"):
            raise XsError("EINVAL")
        parts = payload[:-1].split(b"\0")
        if len(parts) != count:
            raise XsError("EINVAL")
        try:
            return [p.decode("ascii") for p in parts]
        except UnicodeDecodeError:
            raise XsError("EINVAL") from None

    @staticmethod
    def _canonical(conn: ServerConnection, path: str) -> str:
        if not path or not _PATH_RE.fullmatch(path) or "//" in path:
            raise XsError("EINVAL")
        if path != "/" and path.endswith("/"):
            raise XsError("EINVAL")
        if not path.startswith("/"):
            if len(path) > 2048:
                raise XsError("EINVAL")
            path = f"{conn.home}/{path}"
        if len(path) > 3072:
            raise XsError("EINVAL")
        return path

    @staticmethod
    def _access(domid: int, node: Node) -> str:
        if domid == 0 or node.perms[0][1] == domid:
            return "b"
        for letter, who in node.perms[1:]:
            if who == domid:
                return letter
        return node.perms[0][0]

    def _readable(self, conn: ServerConnection, nodes: dict[str, Node], path: str) -> Node:
        node = nodes.get(path)
        if node is None:
            raise XsError("ENOENT")
        if self._access(conn.domid, node) not in "rb":
            raise XsError("EACCES")
        return node

    @staticmethod
    def _parent(path: str) -> str:
        parent = path.rsplit("/", 1)[0]
        return parent or "/"

    def _write(self, nodes: dict[str, Node], path: str, value: bytes, domid: int,
               conn: ServerConnection | None) -> None:
        node = nodes.get(path)
        if node is not None:
            if conn is not None and self._access(domid, node) not in "wb":
                raise XsError("EACCES")
            node.value = value
            return
        missing = [path]
        ancestor = self._parent(path)
        while ancestor not in nodes:
            missing.append(ancestor)
            ancestor = self._parent(ancestor)
        if conn is not None and self._access(domid, nodes[ancestor]) not in "wb":
            raise XsError("EACCES")
        for new in reversed(missing):
            parent = nodes[self._parent(new)]
            perms = list(parent.perms)
            if domid != 0:
                perms[0] = (perms[0][0], domid)
            nodes[new] = Node(value=value if new == path else b"", perms=perms)
            parent.children.append(new.rsplit("/", 1)[1])
            parent.gen = self._node_gen()

    def _bump(self) -> int:
        self.generation += 1
        return self.generation

    def _node_gen(self) -> int:
        """A fresh child-list generation (independent of commits, so transactions may use it)."""
        self._gen_counter += 1
        return self._gen_counter

    def _changed(self, tx: _Transaction | None, path: str, removed: bool = False) -> None:
        if tx is not None:
            tx.changes.append((path, removed))
        else:
            self._commit_change([(path, removed)])

    def _commit_change(self, changes: list[tuple[str, bool]]) -> None:
        self._bump()
        for path, removed in changes:
            self._fire(path, removed)

    def _fire(self, path: str, removed: bool) -> None:
        for conn in self.connections:
            for watch in conn.watches:
                wpath = watch.abs_path
                if path == wpath or wpath == "/" or path.startswith(wpath + "/"):
                    epath = path
                    if watch.path != watch.abs_path:  # relative watch: relative event path
                        epath = path[len(conn.home) + 1:]
                    self._send_event(conn, epath, watch.token)
                elif removed and wpath.startswith(path + "/"):
                    self._send_event(conn, watch.path, watch.token)

    @staticmethod
    def _send_event(conn: ServerConnection, epath: str, token: str) -> None:
        conn.send(WATCH_EVENT, 0, 0, f"{epath}\0{token}\0".encode())

    # --- operations ----------------------------------------------------------------------

    def _do_read(self, req: Request, nodes: dict[str, Node], tx: _Transaction | None) -> bytes:
        (path,) = self._fields(req.payload, 1)
        return self._readable(req.conn, nodes, self._canonical(req.conn, path)).value

    def _do_write(self, req: Request, nodes: dict[str, Node], tx: _Transaction | None) -> bytes:
        raw_path, sep, value = req.payload.partition(b"\0")
        if not sep:
            raise XsError("EINVAL")
        path = self._canonical(req.conn, raw_path.decode("ascii", "replace"))
        if req.conn.domid != 0 and len(value) > GUEST_VALUE_MAX:
            raise XsError("ENOSPC")
        self._write(nodes, path, value, req.conn.domid, req.conn)
        self._changed(tx, path)
        return b"OK\0"

    def _do_mkdir(self, req: Request, nodes: dict[str, Node], tx: _Transaction | None) -> bytes:
        (raw,) = self._fields(req.payload, 1)
        path = self._canonical(req.conn, raw)
        if path not in nodes:
            self._write(nodes, path, b"", req.conn.domid, req.conn)
            self._changed(tx, path)
        return b"OK\0"

    def _do_rm(self, req: Request, nodes: dict[str, Node], tx: _Transaction | None) -> bytes:
        (raw,) = self._fields(req.payload, 1)
        path = self._canonical(req.conn, raw)
        if path == "/":
            raise XsError("EINVAL")
        node = nodes.get(path)
        if node is None:
            if self._parent(path) in nodes:
                return b"OK\0"
            raise XsError("ENOENT")
        if self._access(req.conn.domid, node) not in "wb":
            raise XsError("EACCES")
        for key in [k for k in nodes if k == path or k.startswith(path + "/")]:
            del nodes[key]
        parent = nodes[self._parent(path)]
        parent.children.remove(path.rsplit("/", 1)[1])
        parent.gen = self._node_gen()
        self._changed(tx, path, removed=True)
        return b"OK\0"

    def _do_directory(self, req: Request, nodes: dict[str, Node],
                      tx: _Transaction | None) -> bytes:
        (raw,) = self._fields(req.payload, 1)
        node = self._readable(req.conn, nodes, self._canonical(req.conn, raw))
        body = b"".join(name.encode() + b"\0" for name in node.children)
        if len(body) > PAYLOAD_MAX:
            raise XsError("E2BIG")
        return body

    def _do_directory_part(self, req: Request, nodes: dict[str, Node],
                           tx: _Transaction | None) -> bytes:
        raw, offset_text = self._fields(req.payload, 2)
        if not offset_text.isdigit():
            raise XsError("EINVAL")
        offset = int(offset_text)
        node = self._readable(req.conn, nodes, self._canonical(req.conn, raw))
        children = b"".join(name.encode() + b"\0" for name in node.children)
        gen = f"{node.gen}\0".encode()
        if offset >= len(children):
            return gen + b"\0"
        maxlen = PAYLOAD_MAX - len(gen) - 1
        length = 0
        while offset + length < len(children):
            size = children.index(b"\0", offset + length) + 1 - (offset + length)
            if length + size > maxlen:
                break
            length += size
        body = gen + children[offset:offset + length]
        if offset + length == len(children):
            body += b"\0"
        return body

    def _do_get_perms(self, req: Request, nodes: dict[str, Node],
                      tx: _Transaction | None) -> bytes:
        (raw,) = self._fields(req.payload, 1)
        node = self._readable(req.conn, nodes, self._canonical(req.conn, raw))
        return b"".join(f"{letter}{who}\0".encode() for letter, who in node.perms)

    def _do_set_perms(self, req: Request, nodes: dict[str, Node],
                      tx: _Transaction | None) -> bytes:
        if not req.payload.endswith(b"\0"):
            raise XsError("EINVAL")
        parts = req.payload[:-1].split(b"\0")
        if len(parts) < 2:
            raise XsError("EINVAL")
        path = self._canonical(req.conn, parts[0].decode("ascii", "replace"))
        perms: Perms = []
        for item in parts[1:]:
            match = _PERM_RE.fullmatch(item.decode("ascii", "replace"))
            if match is None or int(match.group(2)) > 0xFFFF:
                raise XsError("EINVAL")
            perms.append((match.group(1), int(match.group(2))))
        node = nodes.get(path)
        if node is None:
            raise XsError("ENOENT")
        domid = req.conn.domid
        if domid != 0:
            if node.perms[0][1] != domid:
                raise XsError("EACCES")
            if perms[0][1] != domid:
                raise XsError("EPERM")
        node.perms = perms
        self._changed(tx, path)
        return b"OK\0"

    def _do_transaction_end(self, req: Request) -> bytes:
        (flag,) = self._fields(req.payload, 1)
        if flag not in ("T", "F"):
            raise XsError("EINVAL")
        tx = req.conn.transactions.pop(req.tx_id, None)
        if tx is None:
            raise XsError("ENOENT")
        if flag == "T":
            if self.generation != tx.start_gen:
                raise XsError("EAGAIN")
            self.nodes = tx.nodes
            if tx.changes:
                self._commit_change(tx.changes)
        return b"OK\0"

    def _do_watch(self, req: Request) -> list[bytes]:
        fields = req.payload[:-1].split(b"\0") if req.payload.endswith(b"\0") else []
        if len(fields) not in (2, 3):
            raise XsError("EINVAL")
        path, token = fields[0].decode("ascii", "replace"), fields[1].decode("ascii", "replace")
        abs_path = path if path.startswith("@") else self._canonical(req.conn, path)
        if any(w.path == path and w.token == token for w in req.conn.watches):
            raise XsError("EEXIST")
        req.conn.watches.append(_Watch(path, abs_path, token))
        # xenstored acks first, then fires once with epath == wpath.
        return [frame(WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode())]

    def _do_unwatch(self, req: Request) -> None:
        path, token = self._fields(req.payload, 2)
        for watch in req.conn.watches:
            if watch.path == path and watch.token == token:
                req.conn.watches.remove(watch)
                return
        raise XsError("ENOENT")
