"""The xenstore wire protocol: message types, header, error names, paths and payload codecs.

Everything here is pure (no I/O). Source: reference ``xen-abi.md`` section 3 (``xs_wire.h`` and
``docs/misc/xenstore.txt`` of Xen 4.17).

Every ``decode_*`` function is total: it returns a value or raises
:class:`~guestagent.errors.InputError` naming the message it decoded, never another exception.
Encoders raise :class:`~guestagent.errors.InputError` for a bad path or token from the caller.
"""

from __future__ import annotations

import errno as _errno
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from guestagent.errors import InputError

# --- message types (enum xsd_sockmsg_type, Xen 4.17) ---------------------------------------------

XS_CONTROL = 0
XS_DEBUG = XS_CONTROL
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESTRICT = 20  # removed from Xen; the number stays reserved
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_TYPE_COUNT = 23
XS_INVALID = 0xFFFF

TYPE_NAMES: dict[int, str] = {
    XS_CONTROL: "XS_CONTROL",
    XS_DIRECTORY: "XS_DIRECTORY",
    XS_READ: "XS_READ",
    XS_GET_PERMS: "XS_GET_PERMS",
    XS_WATCH: "XS_WATCH",
    XS_UNWATCH: "XS_UNWATCH",
    XS_TRANSACTION_START: "XS_TRANSACTION_START",
    XS_TRANSACTION_END: "XS_TRANSACTION_END",
    XS_INTRODUCE: "XS_INTRODUCE",
    XS_RELEASE: "XS_RELEASE",
    XS_GET_DOMAIN_PATH: "XS_GET_DOMAIN_PATH",
    XS_WRITE: "XS_WRITE",
    XS_MKDIR: "XS_MKDIR",
    XS_RM: "XS_RM",
    XS_SET_PERMS: "XS_SET_PERMS",
    XS_WATCH_EVENT: "XS_WATCH_EVENT",
    XS_ERROR: "XS_ERROR",
    XS_IS_DOMAIN_INTRODUCED: "XS_IS_DOMAIN_INTRODUCED",
    XS_RESUME: "XS_RESUME",
    XS_SET_TARGET: "XS_SET_TARGET",
    XS_RESTRICT: "XS_RESTRICT",
    XS_RESET_WATCHES: "XS_RESET_WATCHES",
    XS_DIRECTORY_PART: "XS_DIRECTORY_PART",
    XS_INVALID: "XS_INVALID",
}


def type_name(msg_type: int) -> str:
    """``XS_READ`` for 2; ``type 99`` for a number xenstore does not define."""
    return TYPE_NAMES.get(msg_type, f"type {msg_type}")


# --- sizes ---------------------------------------------------------------------------------------

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16
_U32_MAX = 0xFFFFFFFF
#: domid_t is a uint16_t.
DOMID_MAX = 0xFFFF
#: Longest watch token accepted (xenstored bounds it only by the payload; this is generous).
TOKEN_MAX = 1024

# --- error names (xsd_errors[], table order) -----------------------------------------------------

XSD_ERRORS: tuple[tuple[str, int], ...] = (
    ("EINVAL", _errno.EINVAL),
    ("EACCES", _errno.EACCES),
    ("EEXIST", _errno.EEXIST),
    ("EISDIR", _errno.EISDIR),
    ("ENOENT", _errno.ENOENT),
    ("ENOMEM", _errno.ENOMEM),
    ("ENOSPC", _errno.ENOSPC),
    ("EIO", _errno.EIO),
    ("ENOTEMPTY", _errno.ENOTEMPTY),
    ("ENOSYS", _errno.ENOSYS),
    ("EROFS", _errno.EROFS),
    ("EBUSY", _errno.EBUSY),
    ("EAGAIN", _errno.EAGAIN),
    ("EISCONN", _errno.EISCONN),
    ("E2BIG", _errno.E2BIG),
    ("EPERM", _errno.EPERM),
)
ERRNO_BY_NAME: dict[str, int] = dict(XSD_ERRORS)
NAME_BY_ERRNO: dict[int, str] = {num: name for name, num in XSD_ERRORS}


def errno_for_name(name: str) -> int:
    """The errno of a xenstore error name; EIO for a name xenstore does not define."""
    return ERRNO_BY_NAME.get(name, _errno.EIO)


def name_for_errno(num: int) -> str:
    """The xenstore error name of an errno; ``EIO`` for one xenstore cannot send."""
    return NAME_BY_ERRNO.get(num, "EIO")


# --- the transport seen by the client ------------------------------------------------------------


class Message(Protocol):
    """One framed message as a transport returns it (``xsconn.RawMessage`` fits)."""

    @property
    def type(self) -> int: ...

    @property
    def req_id(self) -> int: ...

    @property
    def tx_id(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


class Transport(Protocol):
    """What :class:`~guestagent.xen.xenstore.XenstoreClient` needs from a connection.

    ``recv`` blocks for one whole message; it raises :class:`TimeoutError` when ``timeout``
    (seconds) passes, :class:`ConnectionError` at end of stream and ``InputError`` for a header
    whose length exceeds the payload limit.
    """

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None: ...

    def recv(self, timeout: float | None = None) -> Message: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WireMessage:
    """A decoded message (header fields plus payload); satisfies :class:`Message`."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


def describe(msg: Message) -> str:
    """``XS_READ reply (req_id 5, tx_id 0, 12 bytes)``: names a message in an error or log line."""
    return (
        f"{type_name(msg.type)} reply (req_id {msg.req_id}, tx_id {msg.tx_id}, "
        f"{len(msg.payload)} bytes)"
    )


# --- header --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """``struct xsd_sockmsg``."""

    type: int
    req_id: int
    tx_id: int
    length: int


def pack_header(msg_type: int, req_id: int, tx_id: int, length: int) -> bytes:
    """The 16 little-endian header bytes. ``ValueError`` for a field outside uint32."""
    for field_name, value in (
        ("type", msg_type),
        ("req_id", req_id),
        ("tx_id", tx_id),
        ("len", length),
    ):
        if not 0 <= value <= _U32_MAX:
            raise ValueError(f"xsd_sockmsg.{field_name} {value} does not fit in uint32")
    return HEADER.pack(msg_type, req_id, tx_id, length)


def unpack_header(data: bytes, source: str = "xenstore message header") -> Header:
    """Decode exactly 16 header bytes; a length above the payload limit is an InputError."""
    if len(data) != HEADER_SIZE:
        raise InputError(source, f"header must be {HEADER_SIZE} bytes, got {len(data)}", data)
    msg_type, req_id, tx_id, length = HEADER.unpack(data)
    if length > XENSTORE_PAYLOAD_MAX:
        raise InputError(
            source,
            f"payload length {length} exceeds XENSTORE_PAYLOAD_MAX {XENSTORE_PAYLOAD_MAX}",
            length,
        )
    return Header(msg_type, req_id, tx_id, length)


def pack_message(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Header plus payload; ``ValueError`` if the payload exceeds the limit."""
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise ValueError(
            f"{type_name(msg_type)} payload of {len(payload)} bytes exceeds "
            f"XENSTORE_PAYLOAD_MAX {XENSTORE_PAYLOAD_MAX}"
        )
    return pack_header(msg_type, req_id, tx_id, len(payload)) + payload


# --- paths ---------------------------------------------------------------------------------------

_PATH_CHARS = re.compile(r"[A-Za-z0-9\-/_@]+")
_NAME_CHARS = re.compile(r"[A-Za-z0-9\-_@]+")
_SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")


def path_problem(path: str, *, watch: bool = False) -> str | None:
    """Why ``path`` is not a valid xenstore path, or None when it is.

    Absolute (leading ``/``) or relative to the domain's home; ``watch=True`` also admits the
    special watch paths ``@introduceDomain`` and ``@releaseDomain``.
    """
    if watch and path in _SPECIAL_WATCHES:
        return None
    if not path:
        return "path is empty"
    if not _PATH_CHARS.fullmatch(path):
        return "path has a character outside A-Za-z0-9-/_@"
    if path == "/":
        return None
    if "//" in path:
        return "path contains '//'"
    if path.endswith("/"):
        return "path ends with '/'"
    limit = XENSTORE_ABS_PATH_MAX if path.startswith("/") else XENSTORE_REL_PATH_MAX
    if len(path) > limit:
        kind = "absolute" if path.startswith("/") else "relative"
        return f"{kind} path of {len(path)} bytes exceeds {limit}"
    return None


def validate_path(path: str, *, watch: bool = False, source: str = "xenstore path") -> str:
    """Return ``path`` if valid, else raise InputError naming it."""
    problem = path_problem(path, watch=watch)
    if problem is not None:
        raise InputError(source, problem, path)
    return path


def validate_token(token: str) -> str:
    """A watch token: 1..1024 printable ASCII characters (no NUL)."""
    if not token or len(token) > TOKEN_MAX or not _is_printable(token):
        raise InputError("xenstore watch token", "must be 1-1024 printable ASCII characters", token)
    return token


def _is_printable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def encode_path(path: str, *, watch: bool = False) -> bytes:
    return validate_path(path, watch=watch).encode("ascii") + b"\0"


# --- permissions ---------------------------------------------------------------------------------

PERM_NONE = "n"
PERM_READ = "r"
PERM_WRITE = "w"
PERM_BOTH = "b"
_PERM_LETTERS = (PERM_NONE, PERM_READ, PERM_WRITE, PERM_BOTH)
_PERM_RE = re.compile(r"([nrwb])([0-9]{1,5})")


@dataclass(frozen=True)
class Permission:
    """One entry of a node's permission list: ``access`` in ``n r w b`` for domain ``domid``.

    The first entry of a list names the owner and the access of every domain not listed.
    """

    access: str
    domid: int

    def __post_init__(self) -> None:
        if self.access not in _PERM_LETTERS:
            raise ValueError(f"permission access {self.access!r} is not one of n, r, w, b")
        if not 0 <= self.domid <= DOMID_MAX:
            raise ValueError(f"permission domid {self.domid} outside 0..{DOMID_MAX}")

    @property
    def can_read(self) -> bool:
        return self.access in (PERM_READ, PERM_BOTH)

    @property
    def can_write(self) -> bool:
        return self.access in (PERM_WRITE, PERM_BOTH)

    def to_wire(self) -> str:
        return f"{self.access}{self.domid}"

    @classmethod
    def parse(cls, text: str, source: str = "xenstore permission") -> Permission:
        """``r5`` -> Permission("r", 5); InputError for anything else."""
        match = _PERM_RE.fullmatch(text)
        if match is None or (len(match.group(2)) > 1 and match.group(2).startswith("0")):
            raise InputError(source, "permission must be n/r/w/b followed by a domain id", text)
        domid = int(match.group(2))
        if domid > DOMID_MAX:
            raise InputError(source, f"permission domain id above {DOMID_MAX}", text)
        return cls(match.group(1), domid)


def encode_perms(path: str, perms: Sequence[Permission]) -> bytes:
    """The XS_SET_PERMS payload ``<path>\\0<perm>\\0``+."""
    if not perms:
        raise InputError(path, "a permission list needs at least the owner entry", "[]")
    return encode_path(path) + b"".join(p.to_wire().encode("ascii") + b"\0" for p in perms)


# --- request encoders ----------------------------------------------------------------------------


def encode_write(path: str, value: bytes) -> bytes:
    """``<path>\\0<value>`` (the value is not NUL-terminated)."""
    return encode_path(path) + value


def encode_watch(path: str, token: str) -> bytes:
    return encode_path(path, watch=True) + validate_token(token).encode("ascii") + b"\0"


def encode_directory_part(path: str, offset: int) -> bytes:
    if offset < 0:
        raise ValueError(f"directory offset {offset} is negative")
    return encode_path(path) + str(offset).encode("ascii") + b"\0"


def encode_domid(domid: int) -> bytes:
    if not 0 <= domid <= DOMID_MAX:
        raise InputError("xenstore domid", f"domain id outside 0..{DOMID_MAX}", domid)
    return str(domid).encode("ascii") + b"\0"


# --- payload decoders (total: value or InputError) ----------------------------------------------


def _ascii(data: bytes, source: str, what: str) -> str:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(source, f"{what} is not ASCII", data) from None
    if not _is_printable(text):
        raise InputError(source, f"{what} has a non-printable character", data)
    return text


def decode_string_list(payload: bytes, source: str) -> list[str]:
    """``<s>\\0``*: every element NUL-terminated printable ASCII; empty payload -> []."""
    if not payload:
        return []
    if not payload.endswith(b"\0"):
        raise InputError(source, "list is not NUL-terminated", payload)
    return [_ascii(item, source, "list element") for item in payload[:-1].split(b"\0")]


def _check_children(names: list[str], source: str) -> list[str]:
    for name in names:
        if not _NAME_CHARS.fullmatch(name):
            raise InputError(
                source, "child name is empty or has a character outside A-Za-z0-9-_@", name
            )
    return names


def decode_directory(payload: bytes, source: str) -> list[str]:
    """An XS_DIRECTORY reply: child names (leaf names only)."""
    return _check_children(decode_string_list(payload, source), source)


@dataclass(frozen=True)
class DirectoryPart:
    """One XS_DIRECTORY_PART reply: the generation token, names, and whether the list ended."""

    gencnt: str
    children: list[str]
    complete: bool


_GENCNT_RE = re.compile(r"[0-9A-Fa-fx]{1,32}")


def decode_directory_part(payload: bytes, source: str) -> DirectoryPart:
    """``<gencnt>\\0<child>\\0``* with an extra ``\\0`` when the end of the list was reached."""
    head, sep, rest = payload.partition(b"\0")
    if not sep:
        raise InputError(source, "no NUL after the generation count", payload)
    gencnt = _ascii(head, source, "generation count")
    if not _GENCNT_RE.fullmatch(gencnt):
        raise InputError(source, "generation count is not a number", head)
    complete = False
    if rest == b"\0":
        return DirectoryPart(gencnt, [], True)
    if rest.endswith(b"\0\0"):
        complete = True
        rest = rest[:-1]
    names = decode_directory(rest, source)
    return DirectoryPart(gencnt, names, complete)


def decode_ok(payload: bytes, source: str) -> None:
    """``OK\\0`` (``OK`` without the NUL is tolerated)."""
    if payload not in (b"OK\0", b"OK"):
        raise InputError(source, "expected OK", payload)


def decode_value(payload: bytes, source: str) -> str:
    """A node value as printable ASCII text (one trailing NUL is tolerated)."""
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return _ascii(payload, source, "value")


def _single_string(payload: bytes, source: str, what: str) -> str:
    if not payload.endswith(b"\0") or b"\0" in payload[:-1]:
        raise InputError(source, f"{what} must be one NUL-terminated string", payload)
    return _ascii(payload[:-1], source, what)


def decode_perms(payload: bytes, source: str) -> list[Permission]:
    """``<perm>\\0``+ as :class:`Permission` objects; at least one (the owner)."""
    items = decode_string_list(payload, source)
    if not items:
        raise InputError(source, "empty permission list", payload)
    return [Permission.parse(item, source) for item in items]


def decode_transaction_id(payload: bytes, source: str) -> int:
    """A TRANSACTION_START reply: decimal uint32, non-zero (0 means 'no transaction')."""
    text = _single_string(payload, source, "transaction id")
    if not text.isdigit() or len(text) > 10:
        raise InputError(source, "transaction id is not a decimal number", payload)
    tx_id = int(text)
    if not 0 < tx_id <= _U32_MAX:
        raise InputError(source, "transaction id outside 1..4294967295", payload)
    return tx_id


def decode_domain_path(payload: bytes, source: str) -> str:
    """A GET_DOMAIN_PATH reply: one absolute path."""
    text = _single_string(payload, source, "domain path")
    if not text.startswith("/"):
        raise InputError(source, "domain path is not absolute", payload)
    problem = path_problem(text)
    if problem is not None:
        raise InputError(source, problem, payload)
    return text


def decode_bool(payload: bytes, source: str) -> bool:
    """``T\\0`` / ``F\\0``."""
    if payload in (b"T\0", b"T"):
        return True
    if payload in (b"F\0", b"F"):
        return False
    raise InputError(source, "expected T or F", payload)


@dataclass(frozen=True)
class XsErrorReply:
    """A decoded XS_ERROR payload: the name as sent and its errno (EIO if unknown)."""

    name: str
    errno: int


_ERRNAME_RE = re.compile(r"E[A-Z0-9]{1,31}")


def decode_error(payload: bytes, source: str) -> XsErrorReply:
    """``<ERRNAME>\\0``; a well-formed name xenstore does not define maps to EIO (name kept)."""
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    name = _ascii(payload, source, "error name")
    if not _ERRNAME_RE.fullmatch(name):
        raise InputError(source, "error name is not of the form E[A-Z0-9]+", payload)
    return XsErrorReply(name, errno_for_name(name))


@dataclass(frozen=True)
class WatchEvent:
    """An XS_WATCH_EVENT: the path that changed (relative if the watch was) and the token."""

    path: str
    token: str


def decode_watch_event(payload: bytes, source: str = "XS_WATCH_EVENT") -> WatchEvent:
    """``<epath>\\0<token>\\0``."""
    items = decode_string_list(payload, source)
    if len(items) != 2:
        raise InputError(source, f"expected path and token, got {len(items)} fields", payload)
    path, token = items
    problem = path_problem(path, watch=True)
    if problem is not None:
        raise InputError(source, problem, path)
    if not token:
        raise InputError(source, "empty watch token", payload)
    return WatchEvent(path, token)
