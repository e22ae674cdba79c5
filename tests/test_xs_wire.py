"""The xenstore wire codecs: constants against the reference, and every decoder fuzzed."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.errors import InputError
from guestagent.xen import xs_wire as w

# --- constants (reference xen-abi.md section 3.2 / Appendix A) -----------------------------------


def test_message_type_numbers() -> None:
    expected = {
        "XS_CONTROL": 0, "XS_DIRECTORY": 1, "XS_READ": 2, "XS_GET_PERMS": 3, "XS_WATCH": 4,
        "XS_UNWATCH": 5, "XS_TRANSACTION_START": 6, "XS_TRANSACTION_END": 7, "XS_INTRODUCE": 8,
        "XS_RELEASE": 9, "XS_GET_DOMAIN_PATH": 10, "XS_WRITE": 11, "XS_MKDIR": 12, "XS_RM": 13,
        "XS_SET_PERMS": 14, "XS_WATCH_EVENT": 15, "XS_ERROR": 16, "XS_IS_DOMAIN_INTRODUCED": 17,
        "XS_RESUME": 18, "XS_SET_TARGET": 19, "XS_RESET_WATCHES": 21, "XS_DIRECTORY_PART": 22,
        "XS_TYPE_COUNT": 23, "XS_INVALID": 0xFFFF,
    }
    for name, number in expected.items():
        assert getattr(w, name) == number, name
    assert w.XS_DEBUG == w.XS_CONTROL
    assert w.type_name(22) == "XS_DIRECTORY_PART"
    assert w.type_name(99) == "type 99"


def test_sizes() -> None:
    assert w.HEADER_SIZE == 16
    assert w.XENSTORE_PAYLOAD_MAX == 4096
    assert w.XENSTORE_ABS_PATH_MAX == 3072
    assert w.XENSTORE_REL_PATH_MAX == 2048


def test_error_table_matches_reference_order_and_numbers() -> None:
    # Linux x86 errno numbers as listed in the reference, in xsd_errors[] order.
    expected = [
        ("EINVAL", 22), ("EACCES", 13), ("EEXIST", 17), ("EISDIR", 21), ("ENOENT", 2),
        ("ENOMEM", 12), ("ENOSPC", 28), ("EIO", 5), ("ENOTEMPTY", 39), ("ENOSYS", 38),
        ("EROFS", 30), ("EBUSY", 16), ("EAGAIN", 11), ("EISCONN", 106), ("E2BIG", 7),
        ("EPERM", 1),
    ]
    assert list(w.XSD_ERRORS) == expected
    assert w.errno_for_name("ENOENT") == 2
    assert w.errno_for_name("EWHATEVER") == 5
    assert w.name_for_errno(13) == "EACCES"
    assert w.name_for_errno(9999) == "EIO"


# --- header --------------------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


@given(u32, u32, u32, st.integers(min_value=0, max_value=4096))
def test_header_round_trip(msg_type: int, req_id: int, tx_id: int, length: int) -> None:
    data = w.pack_header(msg_type, req_id, tx_id, length)
    assert len(data) == 16
    assert w.unpack_header(data) == w.Header(msg_type, req_id, tx_id, length)


def test_header_is_little_endian() -> None:
    assert w.pack_header(2, 1, 0, 5) == bytes.fromhex("02000000 01000000 00000000 05000000")


@given(st.binary(max_size=40))
def test_unpack_header_total(data: bytes) -> None:
    try:
        header = w.unpack_header(data)
    except InputError:
        return
    assert len(data) == 16 and header.length <= 4096


def test_unpack_header_rejects_oversized_length() -> None:
    with pytest.raises(InputError, match="exceeds XENSTORE_PAYLOAD_MAX"):
        w.unpack_header(w.HEADER.pack(2, 1, 0, 4097))


def test_pack_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        w.pack_header(-1, 0, 0, 0)
    with pytest.raises(ValueError):
        w.pack_message(w.XS_WRITE, 1, 0, b"x" * 4097)
    assert len(w.pack_message(w.XS_WRITE, 1, 0, b"x" * 4096)) == 4112


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/local/domain/1", "data/x", "memory/target", "a-b_c@d", "/" + "a" * 3071, "a" * 2048],
)
def test_valid_paths(path: str) -> None:
    assert w.validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "a//b", "/a/", "data/", "a b", "a\0b", "ä", "/" + "a" * 3072, "a" * 2049, "//"],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(InputError) as info:
        w.validate_path(path)
    assert info.value.source == "xenstore path"


def test_special_watch_paths() -> None:
    assert w.validate_path("@introduceDomain", watch=True) == "@introduceDomain"
    assert w.path_problem("@releaseDomain", watch=True) is None


@given(st.text(max_size=80))
def test_path_problem_total(path: str) -> None:
    problem = w.path_problem(path)
    assert problem is None or isinstance(problem, str)


# --- permissions ---------------------------------------------------------------------------------

perm_st = st.builds(w.Permission, st.sampled_from("nrwb"), st.integers(0, 0xFFFF))


@given(st.lists(perm_st, min_size=1, max_size=6))
def test_perms_round_trip(perms: list[w.Permission]) -> None:
    payload = w.encode_perms("/a", perms)
    path, _, rest = payload.partition(b"\0")
    assert path == b"/a"
    assert w.decode_perms(rest, "test") == perms


def test_permission_flags() -> None:
    assert w.Permission.parse("b3") == w.Permission("b", 3)
    assert w.Permission("r", 5).can_read and not w.Permission("r", 5).can_write
    assert w.Permission("w", 1).can_write and not w.Permission("w", 1).can_read
    assert not w.Permission("n", 0).can_read
    for bad in ("x1", "r", "r-1", "r65536", "r05", "R1", "r1 "):
        with pytest.raises(InputError):
            w.Permission.parse(bad)


# --- decoders ------------------------------------------------------------------------------------

Decoder = Callable[[bytes, str], Any]
DECODERS: list[Decoder] = [
    w.decode_string_list,
    w.decode_directory,
    w.decode_directory_part,
    w.decode_ok,
    w.decode_value,
    w.decode_perms,
    w.decode_transaction_id,
    w.decode_domain_path,
    w.decode_bool,
    w.decode_error,
    w.decode_watch_event,
]

#: Pieces that reach deeper into the decoders than uniform random bytes do.
_PIECES = [b"\0", b"OK", b"T", b"F", b"r5", b"n0", b"b65535", b"E2BIG", b"ENOENT", b"/local",
           b"/", b"data", b"12", b"0", b"4294967296", b"@introduceDomain", b"\xff", b" ", b"\n",
           b"a", b"x", b"//", b"-"]
payloads = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join),
)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=400)
@given(payload=payloads)
def test_decoders_are_total(decoder: Decoder, payload: bytes) -> None:
    try:
        decoder(payload, "fuzz source")
    except InputError as exc:
        assert exc.source == "fuzz source"


names_st = st.lists(
    st.text(alphabet="abcXYZ019-_@", min_size=1, max_size=12), max_size=30
)


@given(names_st)
def test_directory_round_trip(names: list[str]) -> None:
    payload = b"".join(n.encode() + b"\0" for n in names)
    assert w.decode_directory(payload, "t") == names


def test_directory_part() -> None:
    assert w.decode_directory_part(b"7\0a\0b\0\0", "t") == w.DirectoryPart("7", ["a", "b"], True)
    assert w.decode_directory_part(b"7\0a\0b\0", "t") == w.DirectoryPart("7", ["a", "b"], False)
    assert w.decode_directory_part(b"7\0\0", "t") == w.DirectoryPart("7", [], True)
    for bad in (b"", b"7", b"\0a\0", b"7\0a", b"7\0\0\0", b"z!\0a\0\0"):
        with pytest.raises(InputError):
            w.decode_directory_part(bad, "t")


def test_simple_decoders() -> None:
    w.decode_ok(b"OK\0", "t")
    w.decode_ok(b"OK", "t")
    with pytest.raises(InputError, match="t: expected OK"):
        w.decode_ok(b"NO\0", "t")
    assert w.decode_transaction_id(b"17\0", "t") == 17
    for bad in (b"0\0", b"17", b"-1\0", b"4294967296\0", b"1\0\0"):
        with pytest.raises(InputError):
            w.decode_transaction_id(bad, "t")
    assert w.decode_domain_path(b"/local/domain/3\0", "t") == "/local/domain/3"
    assert w.decode_bool(b"T\0", "t") is True
    assert w.decode_value(b"524288", "t") == "524288"
    with pytest.raises(InputError, match="non-printable"):
        w.decode_value(b"a\nb", "t")


def test_decode_error() -> None:
    assert w.decode_error(b"ENOENT\0", "t") == w.XsErrorReply("ENOENT", 2)
    assert w.decode_error(b"EQUOTA\0", "t") == w.XsErrorReply("EQUOTA", 5)
    for bad in (b"\0", b"enoent\0", b"ENO ENT\0", b"\xff\0"):
        with pytest.raises(InputError):
            w.decode_error(bad, "t")


def test_decode_watch_event() -> None:
    assert w.decode_watch_event(b"/a/b\0tok\0") == w.WatchEvent("/a/b", "tok")
    assert w.decode_watch_event(b"memory/target\0t 1\0") == w.WatchEvent("memory/target", "t 1")
    assert w.decode_watch_event(b"@releaseDomain\0x\0").path == "@releaseDomain"
    for bad in (b"/a\0", b"/a\0t", b"/a\0t\0x\0", b"/a//b\0t\0", b"/a\0\0"):
        with pytest.raises(InputError) as info:
            w.decode_watch_event(bad)
        assert info.value.source == "XS_WATCH_EVENT"


def test_encoders() -> None:
    assert w.encode_write("data/x", b"v") == b"data/x\0v"
    assert w.encode_watch("data", "tok") == b"data\0tok\0"
    assert w.encode_directory_part("/a", 10) == b"/a\x0010\0"
    assert w.encode_domid(3) == b"3\0"
    with pytest.raises(InputError):
        w.encode_watch("data", "")
    with pytest.raises(InputError):
        w.encode_domid(70000)
    with pytest.raises(InputError):
        w.encode_path("a//b")


def test_describe_names_the_message() -> None:
    msg = w.WireMessage(w.XS_READ, 5, 0, b"abc")
    assert w.describe(msg) == "XS_READ reply (req_id 5, tx_id 0, 3 bytes)"
