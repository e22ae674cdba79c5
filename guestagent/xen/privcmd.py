"""Hypercalls from user space through /dev/xen/privcmd (reference section 1).

Arguments that a hypercall dereferences live in :class:`HypercallBuffer` memory (from
/dev/xen/hypercall, else locked anonymous pages), never in Python-managed memory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from functools import lru_cache
from types import TracebackType
from typing import Any

import guestagent.xen._xenc as _xenc
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.xen.errors import HypercallError, NotOnXen, PrivcmdRestricted, XenUnavailable

ffi: Any = _xenc.ffi
lib: Any = _xenc.lib

PRIVCMD_PATHS = ("/dev/xen/privcmd", "/proc/xen/privcmd")
HYPERCALL_BUFFER_PATH = "/dev/xen/hypercall"
UNRESTRICTED_PARAM = "/sys/module/xen_privcmd/parameters/unrestricted"
PAGE_SIZE = int(lib.GA_PAGE_SIZE)

MEMORY_OP = int(lib.GA_HYPERVISOR_memory_op)
XEN_VERSION = int(lib.GA_HYPERVISOR_xen_version)
SYSCTL = int(lib.GA_HYPERVISOR_sysctl)
TMEM_OP = int(lib.GA_HYPERVISOR_tmem_op)

_INT_P: Any = ffi.typeof("int *")
_LONG_P: Any = ffi.typeof("long *")
_UINTPTR: Any = ffi.typeof("uintptr_t")
#: Copied over a buffer page by page to zero it (no allocation per buffer).
_ZERO_PAGE = bytes(PAGE_SIZE)
#: Unused hypercall arguments.
_NO_ARGS = (0, 0, 0, 0, 0)
#: ctype name -> (its pointer type, its size): cffi's own lookups, done once per name.
_POINTER_TYPES: dict[str, tuple[Any, int]] = {}


def _pointer_type(ctype: str) -> tuple[Any, int]:
    known = _POINTER_TYPES.get(ctype)
    if known is None:
        known = _POINTER_TYPES[ctype] = (ffi.typeof(f"{ctype} *"), ffi.sizeof(ctype))
    return known


class HypercallBuffer:
    """Page-aligned memory that Xen may read and write during a hypercall."""

    __slots__ = ("_address", "_ptr", "from_device", "npages", "size")

    def __init__(self, ptr: Any, npages: int, from_device: bool) -> None:
        self._ptr: Any = ptr
        self._address: int = int(ffi.cast(_UINTPTR, ptr))
        self.npages = npages
        self.size = npages * PAGE_SIZE
        self.from_device = from_device

    @property
    def address(self) -> int:
        """The user-space address to put in a hypercall argument or a guest handle."""
        if self._ptr is None:
            raise ValueError("hypercall buffer used after free")
        return self._address

    def struct(self, ctype: str, offset: int = 0) -> Any:
        """A typed pointer into the buffer, e.g. ``struct("struct ga_tmem_op")``."""
        pointer, size = _pointer_type(ctype)
        if offset < 0 or offset + size > self.size:
            raise ValueError(f"{ctype} at offset {offset} does not fit a {self.size}-byte buffer")
        return ffi.cast(pointer, self.address + offset)

    def array(self, ctype: str, count: int, offset: int = 0) -> Any:
        pointer, size = _pointer_type(ctype)
        if offset < 0 or offset + size * count > self.size:
            raise ValueError(f"{count} x {ctype} at offset {offset} overflow the buffer")
        return ffi.cast(pointer, self.address + offset)

    def unpack(self, ctype: str, count: int, offset: int = 0) -> list[Any]:
        """``count`` items of ``ctype`` at ``offset`` as a list (ints for integer types)."""
        items: list[Any] = ffi.unpack(self.array(ctype, count, offset), count)
        return items

    def address_of(self, offset: int) -> int:
        return self.address + offset

    def zero(self) -> None:
        ptr = self._live()
        ffi.memmove(ptr, _ZERO_PAGE, PAGE_SIZE)
        if self.npages > 1:
            pages = ffi.cast("uint8_t *", ptr)
            for n in range(1, self.npages):
                ffi.memmove(pages + n * PAGE_SIZE, _ZERO_PAGE, PAGE_SIZE)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(ffi.buffer(ffi.cast("uint8_t *", self._live()) + offset, length))

    def free(self) -> None:
        ptr = self._ptr
        if ptr is not None:
            self._ptr = None
            lib.ga_buffer_free(ptr, self.npages, self.from_device)

    def _live(self) -> Any:
        if self._ptr is None:
            raise ValueError("hypercall buffer used after free")
        return self._ptr

    def __enter__(self) -> HypercallBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.free()


class Privcmd:
    """An open privcmd device: issue hypercalls, allocate their buffers."""

    #: The C function a doorway function that runs a whole protocol (``ga_vnuma_get``) issues
    #: its hypercalls through: NULL for the ioctl itself; a simulated hypervisor sets its own.
    hypercall_fn: Any = ffi.NULL

    def __init__(self, fd: int, buffer_fd: int, path: str, hostfs: HostFS) -> None:
        self.fd = fd
        self.buffer_fd = buffer_fd
        self.path = path
        self.hostfs = hostfs

    def buffer(self, nbytes: int) -> HypercallBuffer:
        """A new buffer of whole pages. It is all zeros without zero(): the kernel hands out
        zero-filled pages (anonymous memory always; privcmd-buf allocates them with
        ``__GFP_ZERO``, reference 1.4)."""
        npages = max(1, (nbytes + PAGE_SIZE - 1) // PAGE_SIZE)
        err = ffi.new(_INT_P)
        ptr = lib.ga_buffer_alloc(self.buffer_fd, npages, err)
        if ptr == ffi.NULL:
            raise HypercallError("hypercall buffer allocation", int(err[0]))
        return HypercallBuffer(ptr, npages, self.buffer_fd >= 0)

    def hypercall(
        self, op: int, *args: int, name: str, returned_errnos: Collection[int] = ()
    ) -> int:
        """Issue hypercall ``op``; returns its non-negative result or raises.

        An errno in ``returned_errnos`` (one the caller handles, e.g. -ENOBUFS of a size query)
        is returned negated instead of raised; any other raises :meth:`failure`'s exception.
        """
        if len(args) > 5:
            raise ValueError("a hypercall takes at most 5 arguments")
        rc = self._invoke(op, [*args, *_NO_ARGS[len(args):]])
        if rc >= 0:
            return rc
        if -rc in returned_errnos:
            return rc
        raise self.failure(name, -rc)

    def failure(self, name: str, err: int) -> XenUnavailable | HypercallError:
        """What hypercall ``name`` failing with ``err`` means. EPERM is told apart: when even
        ``xen_version`` (allowed for every guest) is refused, the guest kernel is blocking
        privcmd, and the error says how to lift that."""
        if err == errno.EPERM and self._privcmd_is_restricted():
            return PrivcmdRestricted(f" ({name} answered EPERM)")
        return HypercallError(name, err)

    def xen_version(self) -> tuple[int, int]:
        """(major, minor) of the running hypervisor."""
        rc = self._invoke(XEN_VERSION, [int(lib.GA_XENVER_version), 0, 0, 0, 0])
        if rc < 0:
            if -rc == errno.EPERM:
                raise PrivcmdRestricted(" (xen_version answered EPERM)")
            raise HypercallError("xen_version", -rc)
        return rc >> 16, rc & 0xFFFF

    def _invoke(self, op: int, args: list[int]) -> int:
        """The raw call: the hypercall's result, or a negative errno."""
        result = ffi.new(_LONG_P)
        rc: int = lib.ga_hypercall(self.fd, op, *args, result)
        return rc if rc < 0 else result[0]

    def _privcmd_is_restricted(self) -> bool:
        probe = self._invoke(XEN_VERSION, [int(lib.GA_XENVER_version), 0, 0, 0, 0])
        return probe == -errno.EPERM

    def close(self) -> None:
        for fd in (self.buffer_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.buffer_fd = -1

    def __enter__(self) -> Privcmd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def unrestricted_param(hostfs: HostFS) -> bool | None:
    """The xen-privcmd ``unrestricted`` module parameter, where the kernel has it."""
    try:
        return hostfs.read_text(UNRESTRICTED_PARAM).strip() in ("Y", "1")
    except GuestAgentError:
        return None


def open_privcmd(hostfs: HostFS) -> Privcmd:
    """Open privcmd (and the hypercall buffer device when present).

    Raises NotOnXen where neither privcmd path exists, XenUnavailable when it cannot be opened.
    """
    for path in PRIVCMD_PATHS:
        real = _real_path(hostfs, path)
        try:
            fd = os.open(real, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise XenUnavailable(
                f"cannot open {hostfs.shown(path)}: permission denied (run as root)") from None
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENODEV):
                continue
            raise XenUnavailable(
                f"cannot open {hostfs.shown(path)}: {os.strerror(e.errno or 0)}") from None
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            os.close(fd)
            raise XenUnavailable(f"{real} is not a character device (a fixture tree?)")
        try:
            buffer_fd = os.open(_real_path(hostfs, HYPERCALL_BUFFER_PATH), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            buffer_fd = -1
        if buffer_fd >= 0 and not stat.S_ISCHR(os.fstat(buffer_fd).st_mode):
            os.close(buffer_fd)
            buffer_fd = -1
        return Privcmd(fd, buffer_fd, path, hostfs)
    raise NotOnXen(f"no {hostfs.shown(PRIVCMD_PATHS[0])}: not running on Xen "
                   "(or xen-privcmd is not loaded)")


@lru_cache(maxsize=16)
def _real_path(hostfs: HostFS, host_path: str) -> str:
    """``hostfs.path(host_path)`` as a string, worked out once: the topology job opens privcmd
    for every call, and pathlib's joins cost more than the open itself."""
    return str(hostfs.path(host_path))
