"""Backend ``tmem``: Xen transcendent memory through ``tmem_op`` (hypercall 38), reference 6.

What it is, honestly:

* **Only Xen 4.0 ... 4.12 booted with ``tmem=1``.** Xen 4.13 removed tmem: every call answers
  -ENOSYS (so on every Xen this project tests, 4.17, the backend is unavailable and says why).
  -ENODEV means the hypervisor has tmem but was booted without ``tmem=1``.
* **It cannot choose a node** (reference 6.4): ephemeral pages are allocated on the node of the
  physical CPU running the caller (the *local* node), persistent pages round-robin over the domain's
  node affinity. There is no argument for a node. So this backend never serves a tiering plan
  (``targets_node`` is False); ``tiering status`` reports it with these limits.
* **It cannot move the kernel's cold pages.** The kernel hooks that fed tmem (cleancache and
  frontswap, through ``drivers/xen/tmem.c``) were removed from Linux in 5.3 (the driver) and
  later (the hooks). What user space can do is copy data *it owns* into hypervisor memory and get
  it back: :meth:`TmemClient.put_page` / :meth:`TmemClient.get_page`.

How the agent names page frames (``cmfn``): Xen copies a whole page from or to the guest frame
``cmfn``, which for HVM/PVH guests is a guest frame number (GFN = the guest's PFN; Xen 4.12
``cli_get_page`` does ``get_page_from_gfn`` and needs ``p2m_ram_rw``). The agent uses one **bounce
page**: the second page of its hypercall buffer (from ``/dev/xen/hypercall``: kernel pages, never
moved; without that device: locked anonymous pages). Its PFN comes from ``/proc/self/pagemap``
(bits 0-54 of the entry, bit 63 = present), which shows PFNs only to CAP_SYS_ADMIN (Linux 4.2+ shows
0 otherwise). A put copies the caller's bytes into the bounce page and passes its GFN; a get passes
the same GFN and copies the page out. Limits of this: one page per call; a locked anonymous page
could still be moved by compaction between the pagemap read and the hypercall (the PFN is re-read
before every call, which narrows but does not close that window; with ``/dev/xen/hypercall`` the
pages are unmovable); in a **PV** guest ``cmfn`` is a machine frame and user space has no PFN->MFN
map, so the data path is refused there.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import contextlib
import errno
import struct
from typing import Any, Callable

from guestagent.errors import GuestAgentError, InputError, MissingInputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.tiering.model import Availability, BackendUnavailable, Plan, TieringStats
from guestagent.units import PAGE_SIZE

# ---- ABI constants (public/tmem.h, Xen 4.12; reference section 6.2) ----
TMEM_NEW_POOL = 1
TMEM_DESTROY_POOL = 2
TMEM_PUT_PAGE = 4
TMEM_GET_PAGE = 5
TMEM_FLUSH_PAGE = 6
TMEM_FLUSH_OBJECT = 7

TMEM_POOL_PERSIST = 1
TMEM_POOL_SHARED = 2
TMEM_POOL_PRECOMPRESSED = 4
TMEM_POOL_PAGESIZE_SHIFT = 4
TMEM_POOL_PAGESIZE_MASK = 0xF
TMEM_POOL_VERSION_SHIFT = 24
TMEM_POOL_VERSION_MASK = 0xFF
TMEM_POOL_RESERVED_BITS = 0x00FFFF00
TMEM_SPEC_VERSION = 1

EFROZEN = 1000
EEMPTY = 1001
MAX_POOLS_PER_DOMAIN = 16

OP_NAMES = {
    TMEM_NEW_POOL: "NEW_POOL",
    TMEM_DESTROY_POOL: "DESTROY_POOL",
    TMEM_PUT_PAGE: "PUT_PAGE",
    TMEM_GET_PAGE: "GET_PAGE",
    TMEM_FLUSH_PAGE: "FLUSH_PAGE",
    TMEM_FLUSH_OBJECT: "FLUSH_OBJECT",
}

PAGEMAP = "/proc/self/pagemap"
GUEST_TYPE = "/sys/hypervisor/guest_type"
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63

#: What tmem cannot do, shown by ``tiering status`` whether or not tmem answers.
LIMITS = (
    "cannot choose a node: ephemeral pages land on the node of the pCPU running the caller, "
    "persistent pages on the domain's node affinity (Xen 4.12 tmem_alloc_page, no MEMF_node)",
    "cannot move the kernel's cold pages: cleancache/frontswap and drivers/xen/tmem.c are gone "
    "from Linux (5.3+); only data the agent copies through its bounce page is stored",
)

Oid = tuple[int, int, int]


def pool_flags(persistent: bool, shared: bool = False, page_size: int = PAGE_SIZE) -> int:
    """NEW_POOL flags: type bits, ``(log2(pagesize) - 12) << 4``, spec version ``1 << 24``."""
    if page_size < 4096 or page_size & (page_size - 1):
        raise ValueError(f"page size {page_size} is not a power of two >= 4096")
    shift = page_size.bit_length() - 1 - 12
    flags = (TMEM_POOL_PERSIST if persistent else 0) | (TMEM_POOL_SHARED if shared else 0)
    version = TMEM_SPEC_VERSION << TMEM_POOL_VERSION_SHIFT
    return flags | (shift << TMEM_POOL_PAGESIZE_SHIFT) | version


class TmemError(GuestAgentError):
    """A tmem_op answered an error; ``err`` is the positive Xen errno (EEMPTY = 1001)."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        special = {EFROZEN: "EFROZEN", EEMPTY: "EEMPTY", errno.EOPNOTSUPP: "EOPNOTSUPP"}
        name = special.get(err) or errno.errorcode.get(err, f"errno {err}")
        super().__init__(f"tmem_op {op} failed: -{name}{detail}")
        self.op = op
        self.err = err


class PagemapFrames:
    """Virtual address -> PFN (= GFN in an HVM/PVH guest) through ``/proc/self/pagemap``."""

    def __init__(self, hostfs: HostFS) -> None:
        self.hostfs = hostfs

    def __call__(self, address: int) -> int:
        offset = (address // PAGE_SIZE) * 8
        try:
            with open(self.hostfs.path(PAGEMAP), "rb") as f:
                f.seek(offset)
                raw = f.read(8)
        except FileNotFoundError:
            raise MissingInputError(PAGEMAP) from None
        except OSError as e:
            raise InputError(PAGEMAP, f"read failed: {e.strerror or e}") from None
        if len(raw) != 8:
            raise InputError(PAGEMAP, f"short read at offset {offset}", raw)
        entry = int(struct.unpack("<Q", raw)[0])
        if not entry & _PRESENT:
            raise InputError(PAGEMAP, f"page at {address:#x} is not present", hex(entry))
        pfn = entry & _PFN_MASK
        if pfn == 0:
            raise InputError(
                PAGEMAP,
                "shows PFN 0: page frame numbers are hidden without CAP_SYS_ADMIN",
                hex(entry),
            )
        return pfn


def guest_type(hostfs: HostFS) -> str | None:
    try:
        return hostfs.read_text(GUEST_TYPE).strip()
    except GuestAgentError:
        return None


class TmemClient:
    """The tmem_op calls, over one privcmd and one 2-page hypercall buffer.

    Page 0 of the buffer holds ``struct ga_tmem_op`` (the hypercall's only argument), page 1 is the
    bounce page whose GFN goes into ``cmfn``.
    """

    def __init__(self, privcmd: Any, frame_of: Callable[[int], int] | None = None) -> None:
        self.privcmd = privcmd
        self.frame_of = frame_of
        self.buffer: Any = privcmd.buffer(2 * PAGE_SIZE)
        from guestagent.xen.privcmd import ffi

        self._ffi: Any = ffi

    @property
    def bounce_address(self) -> int:
        return int(self.buffer.address_of(PAGE_SIZE))

    def bounce_gfn(self) -> int:
        if self.frame_of is None:
            raise InputError("tmem", "no way to name page frames was given", None)
        return self.frame_of(self.bounce_address)

    def close(self) -> None:
        self.buffer.free()

    def _call(self, cmd: int, pool_id: int, fill: Callable[[Any], None] | None = None) -> int:
        """Lay out the op, issue the hypercall; the result (>= 0) or raise TmemError."""
        from guestagent.xen.errors import HypercallError
        from guestagent.xen.privcmd import TMEM_OP

        op = self.buffer.struct("struct ga_tmem_op")
        size = int(self._ffi.sizeof("struct ga_tmem_op"))
        self._ffi.memmove(op, b"\0" * size, size)
        op.cmd = cmd
        op.pool_id = pool_id
        if fill is not None:
            fill(op)
        name = OP_NAMES.get(cmd, str(cmd))
        try:
            return int(self.privcmd.hypercall(TMEM_OP, self.buffer.address, name=f"tmem_op {name}"))
        except HypercallError as e:
            raise TmemError(name, int(e.errno or 0)) from None

    def new_pool(
        self,
        persistent: bool,
        shared: bool = False,
        uuid: tuple[int, int] = (0, 0),
        flags: int | None = None,
    ) -> int:
        """A new pool's id (0..15). ``flags`` overrides the computed flags (tests only)."""

        def fill(op: Any) -> None:
            op.u.creat.uuid[0], op.u.creat.uuid[1] = uuid
            op.u.creat.flags = pool_flags(persistent, shared) if flags is None else flags
            op.u.creat.arg1 = 0

        pool = self._call(TMEM_NEW_POOL, 0, fill)
        if not 0 <= pool < MAX_POOLS_PER_DOMAIN:
            raise InputError("tmem_op NEW_POOL", "pool id out of range 0..15", pool)
        return pool

    def destroy_pool(self, pool_id: int) -> bool:
        return self._call(TMEM_DESTROY_POOL, pool_id) == 1

    def _gen(self, oid: Oid, index: int, cmfn: int = 0) -> Callable[[Any], None]:
        def fill(op: Any) -> None:
            op.u.gen.oid[0], op.u.gen.oid[1], op.u.gen.oid[2] = oid
            op.u.gen.index = index
            op.u.gen.tmem_offset = op.u.gen.pfn_offset = op.u.gen.len = 0
            op.u.gen.cmfn = cmfn

        return fill

    def put_page(self, pool_id: int, oid: Oid, index: int, data: bytes) -> None:
        """Store one page (shorter data is zero-padded) under (oid, index); a dup put replaces."""
        if len(data) > PAGE_SIZE:
            raise ValueError(f"a tmem page holds {PAGE_SIZE} bytes, got {len(data)}")
        page = data + b"\0" * (PAGE_SIZE - len(data))
        self._ffi.memmove(self.buffer.array("uint8_t", PAGE_SIZE, PAGE_SIZE), page, PAGE_SIZE)
        rc = self._call(TMEM_PUT_PAGE, pool_id, self._gen(oid, index, self.bounce_gfn()))
        if rc != 1:
            raise InputError("tmem_op PUT_PAGE", "expected 1 for a stored page", rc)

    def get_page(self, pool_id: int, oid: Oid, index: int) -> bytes | None:
        """The page, or None on a miss (0) or an empty pool (-EEMPTY)."""
        try:
            rc = self._call(TMEM_GET_PAGE, pool_id, self._gen(oid, index, self.bounce_gfn()))
        except TmemError as e:
            if e.err == EEMPTY:
                return None
            raise
        if rc == 0:
            return None
        if rc != 1:
            raise InputError("tmem_op GET_PAGE", "expected 1 (hit) or 0 (miss)", rc)
        return bytes(self.buffer.read(PAGE_SIZE, PAGE_SIZE))

    def flush_page(self, pool_id: int, oid: Oid, index: int) -> None:
        self._call(TMEM_FLUSH_PAGE, pool_id, self._gen(oid, index))

    def flush_object(self, pool_id: int, oid: Oid) -> None:
        self._call(TMEM_FLUSH_OBJECT, pool_id, self._gen(oid, 0))


def _default_open(hostfs: HostFS) -> Any:
    from guestagent.xen.privcmd import open_privcmd

    return open_privcmd(hostfs)


def explain(err: TmemError, xen_version: tuple[int, int] | None) -> str:
    """One line for a failed probe."""
    if err.err == errno.ENOSYS:
        if xen_version is not None and xen_version >= (4, 13):
            return (
                f"Xen {xen_version[0]}.{xen_version[1]} answered ENOSYS to tmem_op: tmem was "
                "removed in Xen 4.13"
            )
        return (
            "Xen answered ENOSYS to tmem_op: tmem was removed in Xen 4.13 (or this Xen was built "
            "without CONFIG_TMEM)"
        )
    if err.err == errno.ENODEV:
        return "Xen answered ENODEV to tmem_op: tmem disabled (Xen booted without tmem=1)"
    if err.err == errno.EPERM:
        return "Xen answered EPERM to tmem_op: the XSM policy denies tmem to this domain"
    return str(err)


class TmemBackend:
    """The :class:`~guestagent.tiering.model.Backend` over tmem (see the module docstring)."""

    name = "tmem"
    targets_node = False

    def __init__(
        self,
        hostfs: HostFS,
        opener: Callable[[HostFS], Any] = _default_open,
        frame_of: Callable[[int], int] | None = None,
        persistent: bool = True,
    ) -> None:
        self.hostfs = hostfs
        self.opener = opener
        self.frame_of = frame_of if frame_of is not None else PagemapFrames(hostfs)
        self.persistent = persistent
        self.client: TmemClient | None = None
        self.pool: int | None = None
        self._privcmd: Any = None
        self._stats = TieringStats()
        self._log = get_logger("tiering.tmem")

    # ---- probe ----
    def probe(self) -> Availability:
        from guestagent.xen.errors import XenUnavailable

        try:
            privcmd = self.opener(self.hostfs)
        except XenUnavailable as e:
            return Availability(False, e.reason, LIMITS)
        try:
            version: tuple[int, int] | None = None
            try:
                version = privcmd.xen_version()
            except XenUnavailable as e:
                return Availability(False, e.reason, LIMITS)
            except GuestAgentError:
                version = None
            client = TmemClient(privcmd, self.frame_of)
            try:
                pool = client.new_pool(persistent=False)
                client.destroy_pool(pool)
                self._check_frames(client)
            except TmemError as e:
                return Availability(False, explain(e, version), LIMITS)
            except (XenUnavailable, BackendUnavailable) as e:
                return Availability(False, e.reason, LIMITS)
            finally:
                client.close()
            where = f"Xen {version[0]}.{version[1]}" if version else "Xen"
            return Availability(
                True,
                f"{where} answered tmem_op (an ephemeral pool was created and destroyed)",
                LIMITS,
            )
        finally:
            privcmd.close()

    def _check_frames(self, client: TmemClient) -> None:
        kind = guest_type(self.hostfs)
        if kind == "PV":
            raise BackendUnavailable(
                self.name,
                "tmem answers, but in a PV guest cmfn is a machine frame and user space cannot "
                "translate its PFNs to MFNs",
            )
        try:
            client.bounce_gfn()
        except InputError as e:
            raise BackendUnavailable(
                self.name, f"tmem answers, but the agent cannot name its own page frames: {e}"
            ) from None

    # ---- lifecycle ----
    def start(self, plan: Plan) -> None:
        """Create one private pool for the agent's own pages (persistent by default).

        The plan's targets cannot be honoured (tmem has no node argument) and nothing of the
        kernel's moves: the pool holds only what :meth:`put` stores.
        """
        from guestagent.xen.errors import XenUnavailable

        if self.pool is not None:
            return
        try:
            self._privcmd = self.opener(self.hostfs)
            self.client = TmemClient(self._privcmd, self.frame_of)
            self._check_frames(self.client)
            self.pool = self.client.new_pool(persistent=self.persistent)
        except TmemError as e:
            self.stop()
            raise BackendUnavailable(self.name, explain(e, None)) from None
        except XenUnavailable as e:
            self.stop()
            raise BackendUnavailable(self.name, e.reason) from None
        except BaseException:
            self.stop()
            raise
        if plan.moves:
            self._log.warning(
                "tmem_cannot_target",
                moves=len(plan.moves),
                reason="tmem has no node argument; the plan's targets are not honoured",
            )
        self._log.info("tmem_pool_created", pool=self.pool, persistent=self.persistent)

    def update(self, plan: Plan) -> None:
        """Nothing to apply: tmem has no rate or node to set (see :meth:`start`)."""

    def put(self, oid: Oid, index: int, data: bytes) -> bool:
        """Store one page; False (and a failure counted) when Xen refuses it (e.g. -ENOMEM)."""
        client, pool = self._ready()
        try:
            client.put_page(pool, oid, index, data)
        except TmemError as e:
            self._count(failures=1)
            self._log.info("tmem_put_refused", oid=oid, index=index, error=str(e))
            return False
        self._count(put=1)
        return True

    def get(self, oid: Oid, index: int) -> bytes | None:
        client, pool = self._ready()
        page = client.get_page(pool, oid, index)
        if page is not None:
            self._count(returned=1)
        return page

    def flush(self, oid: Oid, index: int | None = None) -> None:
        client, pool = self._ready()
        if index is None:
            client.flush_object(pool, oid)
        else:
            client.flush_page(pool, oid, index)

    def stats(self) -> TieringStats:
        return self._stats

    def moved_by_source(self) -> dict[int, int]:
        return dict(self._stats.moved_by_source)

    def stop(self) -> None:
        """Destroy the pool (Xen frees its pages), free the buffer, close privcmd. Idempotent."""
        if self.client is not None and self.pool is not None:
            try:
                self.client.destroy_pool(self.pool)
                self._log.info("tmem_pool_destroyed", pool=self.pool)
            except GuestAgentError as e:
                self._log.warning("tmem_pool_destroy_failed", pool=self.pool, error=str(e))
        self.pool = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._privcmd is not None:
            with contextlib.suppress(OSError):
                self._privcmd.close()
            self._privcmd = None

    def _ready(self) -> tuple[TmemClient, int]:
        if self.client is None or self.pool is None:
            raise BackendUnavailable(self.name, "not started")
        return self.client, self.pool

    def _count(self, put: int = 0, returned: int = 0, failures: int = 0) -> None:
        s = self._stats
        self._stats = TieringStats(
            pages_moved_or_put=s.pages_moved_or_put + put,
            pages_returned=s.pages_returned + returned,
            failures=s.failures + failures,
        )
