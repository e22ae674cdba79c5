"""The Xen 4.12 hypervisor side of ``tmem_op`` (hypercall 38), for tests.

:class:`SimulatedTmemXen` replaces only :meth:`Privcmd._invoke`: it reads ``struct ga_tmem_op`` at
the address the C doorway would hand to the ioctl, and copies whole pages from and to the guest
frame named by ``cmfn`` through a GFN -> address table the test controls (``gfn_table``), so the
bytes the agent lays out are the bytes under test. Semantics follow reference section 6.3
(``do_tmem_op`` in Xen 4.12):

* -ENOSYS for every call when ``removed`` (Xen >= 4.13, or CONFIG_TMEM=n);
* -ENODEV when tmem is not enabled (booted without ``tmem=1``); -EPERM when XSM denies;
* -EPERM for every hypercall, ``xen_version`` included, when ``restricted`` (a privcmd that blocks
  hypercalls, which the agent reports as such);
* NEW_POOL: -EPERM for a bad spec version, shared+persistent, a page size other than 4 KiB,
  PRECOMPRESSED, any reserved bit (0x00ffff00) or no free slot; else the first free id of 16.
  A shared pool with uuid {-1,-1} or without authorisation silently becomes private;
* DESTROY_POOL: 1 when a pool was destroyed, 0 for an invalid or empty slot;
* any other op on ``pool_id`` < 0, >= 16 or an unused slot: -ENODEV;
* PUT_PAGE: 1; a dup put replaces the data; when ``capacity_pages`` is reached, up to 10 ephemeral
  pages are evicted (least recently used over every pool) first, and -ENOMEM if that frees none;
  a persistent put also fails with -ENOMEM at the domain's ``max_pages``; a frozen client gets
  -EFROZEN; a cmfn outside the table gets -EFAULT;
* GET_PAGE: 1 on a hit (an ephemeral private pool drops the page: exclusive cache), 0 on a miss,
  -EEMPTY when the pool holds no page at all;
* FLUSH_PAGE / FLUSH_OBJECT: 1 (-EFROZEN when frozen);
* an unknown command: -ENOSYS; TMEM_CONTROL / AUTH / RESTORE_NEW from a guest: -EOPNOTSUPP.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import errno
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from guestagent.hostfs import HostFS
from guestagent.tiering import tmem
from guestagent.xen.privcmd import TMEM_OP, XEN_VERSION, Privcmd, ffi

PAGE = 4096
MAX_POOLS = 16
EVICT_BATCH = 10

Key = tuple[int, tuple[int, int, int], int]  # pool, oid, index


@dataclass
class Pool:
    persistent: bool
    shared: bool
    uuid: tuple[int, int]
    objects: dict[tuple[int, int, int], dict[int, bytes]] = field(default_factory=dict)

    def pages(self) -> int:
        return sum(len(o) for o in self.objects.values())


class SimulatedTmemXen(Privcmd):
    """A privcmd whose hypervisor is Xen 4.12 with (or without) tmem."""

    def __init__(
        self,
        *,
        removed: bool = False,
        enabled: bool = True,
        xsm_deny: bool = False,
        restricted: bool = False,
        frozen: bool = False,
        capacity_pages: int = 1 << 20,
        max_pages: int = 1 << 20,
        shared_auth: bool = False,
        version: tuple[int, int] = (4, 12),
    ) -> None:
        super().__init__(-1, -1, "/dev/xen/privcmd", HostFS("/nonexistent"))
        self.removed = removed
        self.enabled = enabled
        self.xsm_deny = xsm_deny
        self.restricted = restricted
        self.frozen = frozen
        self.capacity_pages = capacity_pages
        self.max_pages = max_pages
        self.shared_auth = shared_auth
        self.version = version
        self.pools: list[Pool | None] = [None] * MAX_POOLS
        self.gfn_table: dict[int, int] = {}
        self.lru: OrderedDict[Key, None] = OrderedDict()
        self.calls: list[tuple[int, int, int]] = []  # cmd, pool_id, result
        self.evicted: list[Key] = []
        self.closed = False

    # ---- the hypercall ----
    def _invoke(self, op: int, args: list[int]) -> int:
        if self.restricted:
            return -errno.EPERM
        if op == XEN_VERSION:
            return (self.version[0] << 16) | self.version[1]
        assert op == TMEM_OP, op
        if self.removed:
            return -errno.ENOSYS
        if not self.enabled:
            return -errno.ENODEV
        if self.xsm_deny:
            return -errno.EPERM
        if args[0] == 0:
            return -errno.EFAULT
        raw: Any = ffi.cast("struct ga_tmem_op *", args[0])
        rc = self._dispatch(raw)
        self.calls.append((int(raw.cmd), int(raw.pool_id), rc))
        return rc

    def _dispatch(self, op: Any) -> int:
        cmd = int(op.cmd)
        if cmd == tmem.TMEM_NEW_POOL:
            return self._new_pool(op)
        if cmd == tmem.TMEM_DESTROY_POOL:
            return self._destroy(int(op.pool_id))
        if cmd in (0, 101, 102):
            return -errno.EOPNOTSUPP
        if cmd not in (
            tmem.TMEM_PUT_PAGE,
            tmem.TMEM_GET_PAGE,
            tmem.TMEM_FLUSH_PAGE,
            tmem.TMEM_FLUSH_OBJECT,
        ):
            return -errno.ENOSYS
        pool_id = int(op.pool_id)
        if not 0 <= pool_id < MAX_POOLS or self.pools[pool_id] is None:
            return -errno.ENODEV
        pool = self.pools[pool_id]
        assert pool is not None
        oid = (int(op.u.gen.oid[0]), int(op.u.gen.oid[1]), int(op.u.gen.oid[2]))
        index = int(op.u.gen.index)
        if cmd == tmem.TMEM_PUT_PAGE:
            return self._put(pool_id, pool, oid, index, int(op.u.gen.cmfn))
        if cmd == tmem.TMEM_GET_PAGE:
            return self._get(pool_id, pool, oid, index, int(op.u.gen.cmfn))
        if self.frozen:
            return -tmem.EFROZEN
        if cmd == tmem.TMEM_FLUSH_PAGE:
            obj = pool.objects.get(oid)
            if obj is not None and obj.pop(index, None) is not None:
                self.lru.pop((pool_id, oid, index), None)
                if not obj:
                    del pool.objects[oid]
            return 1
        for i in pool.objects.pop(oid, {}):
            self.lru.pop((pool_id, oid, i), None)
        return 1

    def _new_pool(self, op: Any) -> int:
        flags = int(op.u.creat.flags)
        persistent = bool(flags & tmem.TMEM_POOL_PERSIST)
        shared = bool(flags & tmem.TMEM_POOL_SHARED)
        if (flags >> tmem.TMEM_POOL_VERSION_SHIFT) & 0xFF != tmem.TMEM_SPEC_VERSION:
            return -errno.EPERM
        if shared and persistent:
            return -errno.EPERM
        if (flags >> tmem.TMEM_POOL_PAGESIZE_SHIFT) & 0xF != 0:
            return -errno.EPERM
        if flags & tmem.TMEM_POOL_PRECOMPRESSED or flags & tmem.TMEM_POOL_RESERVED_BITS:
            return -errno.EPERM
        uuid = (int(op.u.creat.uuid[0]), int(op.u.creat.uuid[1]))
        if shared and (uuid == (2**64 - 1, 2**64 - 1) or not self.shared_auth):
            shared = False  # silently private, as Xen 4.12 does
        for i, slot in enumerate(self.pools):
            if slot is None:
                self.pools[i] = Pool(persistent, shared, uuid)
                return i
        return -errno.EPERM

    def _destroy(self, pool_id: int) -> int:
        if not 0 <= pool_id < MAX_POOLS or self.pools[pool_id] is None:
            return 0
        for key in [k for k in self.lru if k[0] == pool_id]:
            del self.lru[key]
        self.pools[pool_id] = None
        return 1

    def _used(self) -> int:
        return sum(p.pages() for p in self.pools if p is not None)

    def _evict(self) -> int:
        freed = 0
        for key in list(self.lru):
            if freed == EVICT_BATCH:
                break
            pool_id, oid, index = key
            pool = self.pools[pool_id]
            assert pool is not None
            if pool.persistent:
                continue
            del pool.objects[oid][index]
            if not pool.objects[oid]:
                del pool.objects[oid]
            del self.lru[key]
            self.evicted.append(key)
            freed += 1
        return freed

    def _put(
        self, pool_id: int, pool: Pool, oid: tuple[int, int, int], index: int, cmfn: int
    ) -> int:
        if self.frozen:
            return -tmem.EFROZEN
        address = self.gfn_table.get(cmfn)
        if address is None:
            return -errno.EFAULT
        dup = index in pool.objects.get(oid, {})
        if not dup:
            if self._used() >= self.capacity_pages and self._evict() == 0:
                return -errno.ENOMEM
            if pool.persistent and self._persistent_pages() >= self.max_pages:
                return -errno.ENOMEM
        data = bytes(ffi.buffer(ffi.cast("uint8_t *", address), PAGE))
        pool.objects.setdefault(oid, {})[index] = data
        key = (pool_id, oid, index)
        self.lru.pop(key, None)
        self.lru[key] = None
        return 1

    def _persistent_pages(self) -> int:
        return sum(p.pages() for p in self.pools if p is not None and p.persistent)

    def _get(
        self, pool_id: int, pool: Pool, oid: tuple[int, int, int], index: int, cmfn: int
    ) -> int:
        if pool.pages() == 0:
            return -tmem.EEMPTY
        data = pool.objects.get(oid, {}).get(index)
        if data is None:
            return 0
        address = self.gfn_table.get(cmfn)
        if address is None:
            return -errno.EFAULT
        ffi.memmove(ffi.cast("uint8_t *", address), data, PAGE)
        key = (pool_id, oid, index)
        if not pool.persistent and not pool.shared:
            del pool.objects[oid][index]
            if not pool.objects[oid]:
                del pool.objects[oid]
            self.lru.pop(key, None)
        elif key in self.lru:
            self.lru.move_to_end(key)
        return 1

    # ---- the test's view ----
    def frame_of(self, address: int) -> int:
        """A resolver for the backend: hands out fake GFNs and remembers their addresses."""
        for gfn, addr in self.gfn_table.items():
            if addr == address:
                return gfn
        gfn = 0x1000 + len(self.gfn_table)
        self.gfn_table[gfn] = address
        return gfn

    def live_pools(self) -> list[int]:
        return [i for i, p in enumerate(self.pools) if p is not None]

    def close(self) -> None:
        self.closed = True
