"""The host root prefix and the validated sysfs/procfs text readers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from guestagent.errors import InputError, MissingInputError, show_value
from guestagent.hostfs import (
    FIRST_READ_BYTES,
    MAX_CPU_ID,
    MAX_READ_BYTES,
    ROOT_ENV,
    HostFS,
    format_cpulist,
    parse_cpulist,
    parse_int,
    parse_meminfo,
    read_whole,
)

# --- parse_cpulist -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("\n", []),  # the kernel's form of an empty list (a CPU-less node's cpulist)
        ("0\n", [0]),
        ("0-3\n", [0, 1, 2, 3]),
        ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]),
        ("0-15,32-47", [*range(16), *range(32, 48)]),
        ("5-5", [5]),
        ("3,1,2", [1, 2, 3]),  # not the kernel's order, but unambiguous
        ("0-3,2-5", [0, 1, 2, 3, 4, 5]),  # overlaps merge
        ("  0-1  \n", [0, 1]),
        (f"{MAX_CPU_ID}", [MAX_CPU_ID]),
    ],
)
def test_cpulist_valid(text: str, expected: list[int]) -> None:
    assert parse_cpulist(text, "src") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0-", "expected a CPU list"),
        ("-1", "expected a CPU list"),
        ("3-1", "runs backwards"),
        ("a", "expected a CPU list"),
        ("0,,1", "expected a CPU list"),
        ("0,", "expected a CPU list"),
        ("0 1", "expected a CPU list"),
        ("0-3\n4", "expected a CPU list"),
        ("0x1", "expected a CPU list"),
        ("123456", "expected a CPU list"),  # more than 5 digits
        (f"0-{MAX_CPU_ID + 1}", f"exceeds {MAX_CPU_ID}"),
    ],
)
def test_cpulist_garbage_names_source_and_value(text: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        parse_cpulist(text, "/sys/devices/system/node/node1/cpulist")
    message = str(info.value)
    assert message.startswith("/sys/devices/system/node/node1/cpulist: ")
    assert reason in message
    assert show_value(text) in message
    assert "\n" not in message


def test_cpulist_custom_maximum() -> None:
    assert parse_cpulist("0-1,4,6", "online", maximum=1023) == [0, 1, 4, 6]
    with pytest.raises(InputError, match="exceeds 1023"):
        parse_cpulist("1024", "online", maximum=1023)


@pytest.mark.parametrize(
    ("ids", "text"),
    [([], ""), ([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([5, 0, 1, 1], "0-1,5"), ([1, 3, 5], "1,3,5")],
)
def test_format_cpulist(ids: list[int], text: str) -> None:
    assert format_cpulist(ids) == text
    assert parse_cpulist(text, "x") == sorted(set(ids))


# --- parse_int -----------------------------------------------------------------------------------


def test_int_valid() -> None:
    assert parse_int(" 42\n", "f") == 42
    assert parse_int("-1\n", "f") == -1
    assert parse_int("7", "f", minimum=7, maximum=7) == 7


@pytest.mark.parametrize("text", ["", "\n", "4x", "0x10", "1 2", "1.5", "9" * 21, "--1"])
def test_int_garbage(text: str) -> None:
    with pytest.raises(InputError, match=r"^f: expected an integer"):
        parse_int(text, "f")


def test_int_bounds() -> None:
    with pytest.raises(InputError, match="below the minimum 1"):
        parse_int("0", "f", minimum=1)
    with pytest.raises(InputError, match="above the maximum 255"):
        parse_int("256", "f", maximum=255)


# --- parse_meminfo -------------------------------------------------------------------------------


def test_meminfo_units_become_bytes() -> None:
    text = (
        "MemTotal:       24684092 kB\n"
        "HugePages_Total:       3\n"
        "Hugepagesize:       2048 kB\n"
        "Odd:                  1 MB\n"
        "Bytes:                5 B\n"
    )
    values = parse_meminfo(text, "/proc/meminfo")
    assert values["MemTotal"] == 24684092 * 1024
    assert values["HugePages_Total"] == 3  # a count, not a size
    assert values["Hugepagesize"] == 2048 * 1024
    assert values["Odd"] == 1024 * 1024
    assert values["Bytes"] == 5


def test_meminfo_node_prefix_and_parenthesised_keys() -> None:
    text = "Node 0 MemTotal:        4942036 kB\nNode 0 Active(anon):       1536 kB\n\n"
    values = parse_meminfo(text, "node0/meminfo")
    assert values == {"MemTotal": 4942036 * 1024, "Active(anon)": 1536 * 1024}


def test_meminfo_real_file_from_fixture() -> None:
    from tests.fixtures.loader import tree

    text = (tree("laptop") / "sys/devices/system/node/node0/meminfo").read_text()
    values = parse_meminfo(text, "node0/meminfo")
    assert values["MemTotal"] > 0
    assert values["HugePages_Total"] == 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "no meminfo lines"),
        ("\n\n", "no meminfo lines"),
        ("MemTotal: 1 kB\nMemFree 2 kB\n", "line 2"),
        ("Node 0 MemTotal:       ", "line 1"),
        ("MemTotal:       12 kB extra\n", "line 1"),
        ("MemTotal:       -12 kB\n", "line 1"),
        ("MemTotal:       12 TB\n", "line 1"),
    ],
)
def test_meminfo_garbage(text: str, where: str) -> None:
    with pytest.raises(InputError) as info:
        parse_meminfo(text, "/proc/meminfo")
    assert str(info.value).startswith("/proc/meminfo")
    assert where in str(info.value)


# --- HostFS --------------------------------------------------------------------------------------


def test_root_prefix(tmp_path: Path) -> None:
    fs = HostFS(str(tmp_path))
    assert fs.path("/sys/devices/system/node") == tmp_path / "sys/devices/system/node"
    assert not fs.is_real_host
    assert HostFS().is_real_host
    with pytest.raises(ValueError):
        fs.path("sys/devices")


def test_from_env_precedence(tmp_path: Path) -> None:
    assert HostFS.from_env("/a", {ROOT_ENV: "/b"}).root == Path("/a")
    assert HostFS.from_env(None, {ROOT_ENV: "/b"}).root == Path("/b")
    assert HostFS.from_env(None, {}).root == Path("/")
    assert HostFS.from_env(None, {ROOT_ENV: ""}).root == Path("/")


def _fs_with(tmp_path: Path, rel: str, data: bytes) -> HostFS:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return HostFS(str(tmp_path))


def test_read_text_and_typed_readers(tmp_path: Path) -> None:
    fs = _fs_with(tmp_path, "sys/a", b"0-3\n")
    assert fs.read_text("/sys/a") == "0-3\n"
    assert fs.read_cpulist("/sys/a") == [0, 1, 2, 3]
    _fs_with(tmp_path, "sys/n", b"17\n")
    assert fs.read_int("/sys/n", minimum=0) == 17
    _fs_with(tmp_path, "proc/meminfo", b"MemTotal:  1 kB\n")
    assert fs.read_meminfo("/proc/meminfo") == {"MemTotal": 1024}
    assert fs.exists("/sys/a") and not fs.exists("/sys/b")


def test_missing_file_is_missing_input(tmp_path: Path) -> None:
    """With a root, the path actually tried (issue 17: a missing file under --root was named
    without the root); on the real host the host path."""
    fs = HostFS(str(tmp_path))
    with pytest.raises(MissingInputError) as e:
        fs.read_text("/sys/nope")
    assert str(e.value) == f"{tmp_path}/sys/nope: does not exist"
    with pytest.raises(MissingInputError) as e:
        fs.listdir("/sys/nodir")
    assert str(e.value) == f"{tmp_path}/sys/nodir: does not exist"
    with pytest.raises(MissingInputError, match=r"^/nonexistent-guestagent-test: does not exist$"):
        HostFS("/").read_text("/nonexistent-guestagent-test")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "sys/dir").mkdir(parents=True)
    with pytest.raises(InputError, match="is a directory"):
        HostFS(str(tmp_path)).read_text("/sys/dir")


def test_size_limit(tmp_path: Path) -> None:
    fs = _fs_with(tmp_path, "sys/big", b"0" * (MAX_READ_BYTES + 1))
    with pytest.raises(InputError, match=f"larger than {MAX_READ_BYTES} bytes"):
        fs.read_text("/sys/big")
    _fs_with(tmp_path, "sys/edge", b"1" * MAX_READ_BYTES)
    assert len(fs.read_text("/sys/edge")) == MAX_READ_BYTES
    # Around the first read's size: the rest is read too, nothing twice.
    for size in (FIRST_READ_BYTES - 1, FIRST_READ_BYTES, FIRST_READ_BYTES + 1):
        _fs_with(tmp_path, "sys/mid", b"2" * (size - 1) + b"3")
        assert fs.read_text("/sys/mid") == "2" * (size - 1) + "3"


def _pipe_in_two_parts(first: bytes, second: bytes, pause_s: float = 0.2) -> str:
    """A path that reads ``first``, then (after ``pause_s``) ``second`` and end of file: a
    pipe's read end through ``/proc/self/fd``, fed by a thread (a short read before the end,
    as a procfs ``seq_file`` gives a page at a time)."""
    r, w = os.pipe()

    def feed() -> None:
        os.write(w, first)
        time.sleep(pause_s)
        os.write(w, second)
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return f"/proc/self/fd/{r}"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
def test_a_file_that_comes_in_parts_is_read_to_its_end() -> None:
    assert read_whole(_pipe_in_two_parts(b"a" * 4000, b"b" * 100), sysfs=False) == (
        b"a" * 4000 + b"b" * 100)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")
def test_a_sysfs_file_is_whole_after_a_short_first_read() -> None:
    """kernfs prints an attribute in one go: the read that would return nothing is saved."""
    assert read_whole(_pipe_in_two_parts(b"on\n", b"ignored"), sysfs=True) == b"on\n"


@pytest.mark.skipif(not Path("/proc/vmstat").is_file(), reason="needs Linux's /proc/vmstat")
def test_proc_vmstat_of_this_machine_is_read_whole() -> None:
    """/proc/vmstat is a seq_file of one record a line (on a kernel with more counters longer
    than the page one read returns): every line, the last one whole."""
    ours = HostFS("/").read_text("/proc/vmstat")
    with open("/proc/vmstat") as f:
        theirs = f.read()
    assert [line.split()[0] for line in ours.splitlines()] == [
        line.split()[0] for line in theirs.splitlines()]
    assert ours.endswith("\n")


def test_nul_byte(tmp_path: Path) -> None:
    fs = _fs_with(tmp_path, "sys/nul", b"0-3\x00\n")
    with pytest.raises(InputError, match="contains a NUL byte") as info:
        fs.read_text("/sys/nul")
    assert "\\x00" in str(info.value)  # shown escaped, the line stays printable


def test_binary_junk_is_not_ascii(tmp_path: Path) -> None:
    fs = _fs_with(tmp_path, "sys/bin", bytes(range(128, 256)))
    with pytest.raises(InputError, match="not ASCII text") as info:
        fs.read_text("/sys/bin")
    assert "\n" not in str(info.value)


def test_listdir(tmp_path: Path) -> None:
    for name in ("node10", "node2", "online"):
        (tmp_path / "sys/node" / name).mkdir(parents=True)
    (tmp_path / "sys/file").write_text("x")
    fs = HostFS(str(tmp_path))
    assert fs.listdir("/sys/node") == ["node10", "node2", "online"]
    with pytest.raises(MissingInputError):
        fs.listdir("/sys/absent")
    with pytest.raises(InputError, match="is not a directory"):
        fs.listdir("/sys/file")


def test_show_value_truncates_and_escapes() -> None:
    shown = show_value("x" * 200)
    assert "...(200 chars)" in shown
    junk = show_value(b"\xff\x00")
    assert "xff" in junk and "x00" in junk and "\x00" not in junk  # printable, one line
    assert show_value("a\nb") == "'a\\nb'"  # escaped once: the operator sees a\nb


@pytest.mark.parametrize("name", ["balloon-pv-1g", "balloon-legacy-4.19", "pv-guest", "laptop",
                                  "two-socket", "hvm-2vnode"])
def test_meminfo_as_the_kernel_prints_it_takes_one_pattern_and_reads_the_same(name: str) -> None:
    """The balloon job's fast path (one pattern over the whole text) is taken for a kernel's
    ``/proc/meminfo`` and gives exactly what the line-by-line parse gives."""
    from guestagent.hostfs import _MEMINFO_PLAIN, _meminfo_lines
    from tests.fixtures.loader import tree

    text = (tree(name) / "proc/meminfo").read_text()
    assert _MEMINFO_PLAIN.fullmatch(text), "the fixture no longer takes the fast path"
    assert parse_meminfo(text, "/proc/meminfo") == _meminfo_lines(text, "/proc/meminfo")


def test_meminfo_of_this_machine_reads_the_same_both_ways() -> None:
    from guestagent.hostfs import _meminfo_lines

    text = Path("/proc/meminfo").read_text()
    assert parse_meminfo(text, "/proc/meminfo") == _meminfo_lines(text, "/proc/meminfo")


@pytest.mark.parametrize(
    "text",
    [
        "HugePages_Total:       3 kB\n",  # a count with a unit: the line-by-line parse's rule
        "MemTotal:       12 kB\nMemFree:\n",
        "MemTotal:       12 kB",  # no final newline
        "MemTotal:\t12 kB\n",
    ],
)
def test_meminfo_not_as_the_kernel_prints_it_is_read_line_by_line(text: str) -> None:
    from guestagent.hostfs import _MEMINFO_PLAIN, _meminfo_lines

    assert not _MEMINFO_PLAIN.fullmatch(text)
    try:
        expected: object = _meminfo_lines(text, "m")
    except InputError as e:
        expected = str(e)
    try:
        got: object = parse_meminfo(text, "m")
    except InputError as e:
        got = str(e)
    assert got == expected
