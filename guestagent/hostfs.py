"""The host root prefix and validated readers for sysfs and procfs text.

Every path under /sys, /proc, /dev and /run that guestagent touches goes through a :class:`HostFS`,
so the whole agent runs unchanged on a fixture tree (``--root DIR`` or ``GUESTAGENT_ROOT``).
Readers return typed values or raise :class:`~guestagent.errors.InputError` naming the file and
the offending text.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path

from guestagent.errors import InputError, MissingInputError, ReadFailedError
from guestagent.units import KIB, MEMINFO_UNITS

ROOT_ENV = "GUESTAGENT_ROOT"

#: No sysfs or procfs file the agent reads is anywhere near this size; a bigger one is garbage.
MAX_READ_BYTES = 1 << 20
#: A read asks for this much at a time (every sysfs/procfs file the agent reads fits in one):
#: ``read(n)`` allocates ``n`` bytes up front, and 1 MiB is an mmap and munmap per read, 3x the
#: CPU of a small read (issue 18: 24 us against 8 us per file on the development host).
FIRST_READ_BYTES = 1 << 16
#: Largest CPU number accepted from text (Linux NR_CPUS tops out at 8192).
MAX_CPU_ID = 8191
#: Largest NUMA node number accepted from text (Linux NODES_SHIFT tops out at 10).
MAX_NODE_ID = 1023


def read_whole(path: str, sysfs: bool) -> bytes:
    """The bytes of ``path``, at most :data:`MAX_READ_BYTES` + 1 (more is the caller's error),
    through ``open``/``read``/``close`` on a file descriptor: a buffered ``open()`` adds an
    ``fstat``, an ``ioctl`` and Python's buffer objects, which cost the testbed's HVM guest
    3-6 ms a file against 1.5-2 ms (issue 18: a tiering tick reads six).

    Read until end of file (procfs ``seq_file`` files such as ``/proc/vmstat`` come a page
    at a time); a ``sysfs`` file (``sysfs`` true) that filled less than the first read is whole
    (kernfs prints an attribute in one go, at most a page), so the read that would return
    nothing is saved."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, FIRST_READ_BYTES)
        if sysfs and len(chunk) < FIRST_READ_BYTES:
            return chunk
        chunks, total = [chunk], len(chunk)
        while chunk and total <= MAX_READ_BYTES:
            chunk = os.read(fd, min(FIRST_READ_BYTES, MAX_READ_BYTES + 1 - total))
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_MEMINFO_LINE = re.compile(
    r"^(?:Node\s+(\d+)\s+)?([A-Za-z0-9_()]+):\s+(\d+)(?:\s+([kKmMgG]?B))?\s*$"
)


class HostFS:
    """A view of the host's pseudo file systems below one root directory."""

    def __init__(self, root: str = "/") -> None:
        self.root = Path(root)
        #: The root's text ("" for ``/``), joined as a string by :meth:`located` (pathlib's
        #: joining was a tenth of a balloon tick at a decision a second).
        self._prefix = "" if self.root == Path("/") else str(self.root)

    @classmethod
    def from_env(cls, root: str | None = None, environ: Mapping[str, str] | None = None) -> HostFS:
        """The root given on the command line, else ``GUESTAGENT_ROOT``, else ``/``."""
        env = os.environ if environ is None else environ
        return cls(root or env.get(ROOT_ENV) or "/")

    @property
    def is_real_host(self) -> bool:
        return self.root == Path("/")

    def located(self, host_path: str) -> str:
        """The real location of an absolute host path such as ``/sys/devices/system/node``, as
        text (what :meth:`read_text` opens)."""
        if not host_path.startswith("/"):
            raise ValueError(f"host paths are absolute, got {host_path!r}")
        return f"{self._prefix}/{host_path.lstrip('/')}"

    def path(self, host_path: str) -> Path:
        """:meth:`located` as a Path."""
        return Path(self.located(host_path))

    def shown(self, host_path: str) -> str:
        """A host path as an error that finding or opening it names it: the path actually tried,
        so with ``--root DIR`` it starts with DIR (``DIR/sys/...``); on the real host the host
        path itself. An error about a file's content names the host path (``/sys/...``)."""
        return host_path if self.is_real_host else str(self.path(host_path))

    def exists(self, host_path: str) -> bool:
        return self.path(host_path).exists()

    def listdir(self, host_path: str) -> list[str]:
        """Entry names of a directory, sorted; an absent directory raises MissingInputError."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except FileNotFoundError:
            raise MissingInputError(self.shown(host_path)) from None
        except NotADirectoryError:
            raise InputError(self.shown(host_path), "is not a directory") from None
        except PermissionError:
            raise InputError(self.shown(host_path), "permission denied") from None
        except OSError as e:  # ELOOP (a symlink loop), EIO...
            where = self.shown(host_path)
            raise InputError(where, f"cannot be listed: {e.strerror or e}") from None

    def read_text(self, host_path: str) -> str:
        """The whole file as ASCII text; a missing, unreadable, oversized or binary file raises."""
        try:
            data = read_whole(self.located(host_path), host_path.startswith("/sys/"))
        except FileNotFoundError:
            raise MissingInputError(self.shown(host_path)) from None
        except IsADirectoryError:
            raise InputError(self.shown(host_path), "is a directory, expected a file") from None
        except PermissionError:
            raise InputError(self.shown(host_path), "permission denied") from None
        except OSError as e:
            where = self.shown(host_path)
            raise ReadFailedError(where, e.errno or errno.EIO, str(e.strerror or e)) from None
        if len(data) > MAX_READ_BYTES:
            raise InputError(host_path, f"larger than {MAX_READ_BYTES} bytes")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(host_path, "not ASCII text", data[:40]) from None
        if "\0" in text:
            raise InputError(host_path, "contains a NUL byte", data[:40])
        return text

    def read_int(
        self, host_path: str, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        return parse_int(self.read_text(host_path), host_path, minimum, maximum)

    def read_cpulist(self, host_path: str, maximum: int = MAX_CPU_ID) -> list[int]:
        """A cpulist file; the kernel always writes at least a newline, so a 0-byte file is a
        truncated one (an empty list is ``"\\n"``)."""
        text = self.read_text(host_path)
        if text == "":
            raise InputError(host_path, "is empty (truncated?)")
        return parse_cpulist(text, host_path, maximum)

    def read_meminfo(self, host_path: str) -> dict[str, int]:
        return parse_meminfo(self.read_text(host_path), host_path)

    def write_text(self, host_path: str, value: str) -> None:
        """Write one value to a sysfs or procfs file (no create, no truncate semantics needed)."""
        with open(self.path(host_path), "w") as f:
            f.write(value)


def parse_int(
    text: str, source: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """A single decimal integer, optionally bounded."""
    stripped = text.strip()
    if not re.fullmatch(r"-?\d{1,20}", stripped):
        raise InputError(source, "expected an integer", text)
    value = int(stripped)
    if minimum is not None and value < minimum:
        raise InputError(source, f"below the minimum {minimum}", text)
    if maximum is not None and value > maximum:
        raise InputError(source, f"above the maximum {maximum}", text)
    return value


def parse_cpulist(text: str, source: str, maximum: int = MAX_CPU_ID) -> list[int]:
    """A Linux cpulist such as ``0-3,8,10-11`` (also used for node lists); empty means none."""
    stripped = text.strip()
    if not stripped:
        return []
    ids: set[int] = set()
    for part in stripped.split(","):
        m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", part)
        if m is None:
            raise InputError(source, "expected a CPU list like 0-3,8", text)
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise InputError(source, f"range {part} runs backwards", text)
        if last > maximum:
            raise InputError(source, f"id {last} exceeds {maximum}", text)
        ids.update(range(first, last + 1))
    return sorted(ids)


def format_cpulist(ids: list[int]) -> str:
    """The inverse of :func:`parse_cpulist`: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


#: ``/proc/meminfo`` as the kernel prints it: ``Key:`` and spaces, a number, `` kB`` except for
#: the ``HugePages_*`` counts, a newline each.
_MEMINFO_PLAIN = re.compile(
    r"(?:(?!HugePages_)[A-Za-z0-9_()]+: +[0-9]{1,20} kB\n|HugePages_[A-Za-z]+: +[0-9]{1,20}\n)+"
)
_MEMINFO_PLAIN_LINE = re.compile(r"([^:\n]+): +([0-9]+)( kB)?\n")


def parse_meminfo(text: str, source: str) -> dict[str, int]:
    """``/proc/meminfo`` or a node's ``meminfo``: key -> value, sizes converted to bytes.

    Only the ``HugePages_*`` counts come without a unit (kept as plain counts); any other key
    without one is a truncated line. A file with no valid line, or a malformed line, raises.
    A file printed exactly as the kernel prints ``/proc/meminfo`` is checked by one pattern over
    the whole text (the balloon job reads it every second); anything else line by line.
    """
    if _MEMINFO_PLAIN.fullmatch(text):
        return {key: int(number) * (KIB if unit else 1)
                for key, number, unit in _MEMINFO_PLAIN_LINE.findall(text)}
    return _meminfo_lines(text, source)


def _meminfo_lines(text: str, source: str) -> dict[str, int]:
    """:func:`parse_meminfo` line by line: node prefixes, other units and spacing, blank lines;
    a bad line raises, naming it."""
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MEMINFO_LINE.match(line)
        if m is None:
            raise InputError(f"{source} line {lineno}", "expected 'Key: number [kB]'", line)
        unit = (m.group(4) or "").upper()
        if not unit and not m.group(2).startswith("HugePages_"):
            where = f"{source} line {lineno}"
            raise InputError(where, f"{m.group(2)} has no unit (truncated?)", line)
        values[m.group(2)] = int(m.group(3)) * MEMINFO_UNITS[unit]
    if not values:
        raise InputError(source, "no meminfo lines", text)
    return values
