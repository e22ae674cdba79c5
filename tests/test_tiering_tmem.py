"""The tmem backend through the real C doorway and hypercall buffers, against the simulator."""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.tiering import tmem
from guestagent.tiering.model import BackendUnavailable, Move, Plan
from guestagent.tiering.tmem import PagemapFrames, TmemBackend, TmemClient, TmemError, pool_flags
from guestagent.xen.privcmd import TMEM_OP, ffi
from tests.tmem_simulator import SimulatedTmemXen

OID = (7, 0, 0)


def client(sim: SimulatedTmemXen) -> TmemClient:
    return TmemClient(sim, sim.frame_of)


def page(tag: int) -> bytes:
    return bytes([tag]) * 4096


def hvm_root(tmp_path: Path, guest: str = "HVM") -> HostFS:
    (tmp_path / "sys/hypervisor").mkdir(parents=True)
    (tmp_path / "sys/hypervisor/guest_type").write_text(guest + "\n")
    return HostFS(str(tmp_path))


def backend(sim: SimulatedTmemXen, hostfs: HostFS, persistent: bool = True) -> TmemBackend:
    return TmemBackend(hostfs, opener=lambda _h: sim, frame_of=sim.frame_of,
                       persistent=persistent)


def test_pool_flags_encode_type_page_size_and_spec_version() -> None:
    assert pool_flags(persistent=False) == 0x01000000
    assert pool_flags(persistent=True) == 0x01000001
    assert pool_flags(persistent=False, shared=True) == 0x01000002
    assert pool_flags(persistent=False, page_size=8192) == 0x01000010
    with pytest.raises(ValueError, match="power of two"):
        pool_flags(False, page_size=3000)


def test_the_bytes_of_a_put_are_the_xen_4_12_layout() -> None:
    seen: list[bytes] = []

    class Recording(SimulatedTmemXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            if op == TMEM_OP:
                seen.append(bytes(ffi.buffer(ffi.cast("uint8_t *", args[0]), 56)))
            return super()._invoke(op, args)

    sim = Recording()
    c = client(sim)
    pool = c.new_pool(persistent=True, uuid=(0x1122, 0x3344))
    c.put_page(pool, (1, 2, 3), 9, page(5))
    cmd, pool_id, uuid_lo, uuid_hi, flags, arg1 = struct.unpack_from("<IiQQII", seen[0])
    assert (cmd, uuid_lo, uuid_hi, flags, arg1) == (1, 0x1122, 0x3344, 0x01000001, 0)
    cmd, pool_id, o0, o1, o2, index, t_off, p_off, length, cmfn = struct.unpack(
        "<Ii3QIIIIQ", seen[1]
    )
    assert (cmd, pool_id, o0, o1, o2, index) == (4, pool, 1, 2, 3, 9)
    assert (t_off, p_off, length) == (0, 0, 0)
    assert sim.gfn_table[cmfn] == c.bounce_address
    assert c.bounce_address == c.buffer.address + 4096
    c.close()


def test_pool_ids_are_the_first_free_slot_of_sixteen() -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    ids = [c.new_pool(persistent=False) for _ in range(16)]
    assert ids == list(range(16))
    with pytest.raises(TmemError, match="NEW_POOL failed: -EPERM"):
        c.new_pool(persistent=False)
    assert c.destroy_pool(5)
    assert c.new_pool(persistent=True) == 5
    c.close()


@pytest.mark.parametrize("bad", [-1, 16, 1000, 3])
def test_bad_pool_ids(bad: int) -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    c.new_pool(persistent=False)  # slot 0 only
    with pytest.raises(TmemError, match="-ENODEV") as caught:
        c.put_page(bad, OID, 0, page(1))
    assert caught.value.err == errno.ENODEV
    with pytest.raises(TmemError, match="GET_PAGE failed: -ENODEV"):
        c.get_page(bad, OID, 0)
    with pytest.raises(TmemError, match="FLUSH_OBJECT failed: -ENODEV"):
        c.flush_object(bad, OID)
    assert c.destroy_pool(bad) is False  # DESTROY_POOL answers 0 for an invalid slot
    c.close()


@pytest.mark.parametrize(
    "flags",
    [
        0x00000000,  # spec version 0
        0x02000000,  # spec version 2
        0x01000003,  # shared and persistent
        0x01000010,  # 8 KiB pages on x86
        0x01000004,  # precompressed
        0x01000100,  # reserved bit 8
        0x01800000,  # reserved bit 23
    ],
)
def test_new_pool_refuses_bad_flags(flags: int) -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    with pytest.raises(TmemError, match="-EPERM"):
        c.new_pool(persistent=False, flags=flags)
    assert sim.live_pools() == []
    c.close()


def test_persistent_pool_keeps_a_page_after_get_and_dup_put_replaces() -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    pool = c.new_pool(persistent=True)
    assert c.get_page(pool, OID, 0) is None  # empty pool: -EEMPTY, read as a miss
    assert sim.calls[-1][2] == -tmem.EEMPTY
    c.put_page(pool, OID, 0, page(1))
    c.put_page(pool, OID, 0, b"\x02" * 100)  # dup put, zero-padded
    assert c.get_page(pool, OID, 1) is None  # miss: 0
    assert sim.calls[-1][2] == 0
    got = c.get_page(pool, OID, 0)
    assert got == b"\x02" * 100 + b"\0" * 3996
    assert c.get_page(pool, OID, 0) == got  # still there
    c.flush_page(pool, OID, 0)
    assert c.get_page(pool, OID, 0) is None
    c.close()


def test_ephemeral_private_get_is_exclusive() -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    pool = c.new_pool(persistent=False)
    c.put_page(pool, OID, 3, page(9))
    c.put_page(pool, OID, 4, page(8))
    assert c.get_page(pool, OID, 3) == page(9)
    assert c.get_page(pool, OID, 3) is None
    c.flush_object(pool, OID)
    assert c.get_page(pool, OID, 4) is None
    c.close()


def test_unauthorised_shared_pool_is_silently_private() -> None:
    sim = SimulatedTmemXen()
    c = client(sim)
    pool = c.new_pool(persistent=False, shared=True, uuid=(1, 2))
    p = sim.pools[pool]
    assert p is not None and not p.shared
    sim2 = SimulatedTmemXen(shared_auth=True)
    c2 = client(sim2)
    p2 = sim2.pools[c2.new_pool(persistent=False, shared=True, uuid=(1, 2))]
    assert p2 is not None and p2.shared
    c.close()
    c2.close()


def test_ephemeral_pages_are_evicted_least_recently_used_first() -> None:
    sim = SimulatedTmemXen(capacity_pages=12)
    c = client(sim)
    eph = c.new_pool(persistent=False)
    for i in range(12):
        c.put_page(eph, OID, i, page(i))
    c.put_page(eph, OID, 12, page(12))
    assert [k[2] for k in sim.evicted] == list(range(10))
    assert c.get_page(eph, OID, 0) is None
    assert c.get_page(eph, OID, 11) == page(11)
    c.close()


def test_persistent_pages_are_never_evicted_and_run_out() -> None:
    sim = SimulatedTmemXen(capacity_pages=4)
    c = client(sim)
    pers = c.new_pool(persistent=True)
    for i in range(4):
        c.put_page(pers, OID, i, page(i))
    with pytest.raises(TmemError, match="PUT_PAGE failed: -ENOMEM"):
        c.put_page(pers, OID, 4, page(4))
    assert sim.evicted == []
    sim2 = SimulatedTmemXen(max_pages=1)
    c2 = client(sim2)
    pers2 = c2.new_pool(persistent=True)
    c2.put_page(pers2, OID, 0, page(0))
    with pytest.raises(TmemError, match="-ENOMEM"):
        c2.put_page(pers2, OID, 1, page(1))
    c.close()
    c2.close()


def test_frozen_client_and_unknown_commands_and_bad_frames() -> None:
    sim = SimulatedTmemXen(frozen=True)
    c = client(sim)
    pool = c.new_pool(persistent=True)
    with pytest.raises(TmemError, match="-EFROZEN"):
        c.put_page(pool, OID, 0, page(0))
    with pytest.raises(TmemError, match="-EFROZEN"):
        c.flush_page(pool, OID, 0)
    with pytest.raises(TmemError, match="-ENOSYS"):
        c._call(3, pool)  # TMEM_NEW_PAGE: gone since interface 0x00040400
    with pytest.raises(TmemError, match="-EOPNOTSUPP"):
        c._call(101, pool)  # TMEM_AUTH is a sysctl now
    c.close()
    sim2 = SimulatedTmemXen()
    c2 = TmemClient(sim2, lambda _addr: 0xDEAD)  # a frame Xen does not know
    pool2 = c2.new_pool(persistent=True)
    with pytest.raises(TmemError, match="-EFAULT"):
        c2.put_page(pool2, OID, 0, page(0))
    c2.close()


# ---- the backend ----


@pytest.mark.parametrize(
    ("sim", "text"),
    [
        (SimulatedTmemXen(removed=True, version=(4, 17)),
         "Xen 4.17 answered ENOSYS to tmem_op: tmem was removed in Xen 4.13"),
        (SimulatedTmemXen(removed=True, version=(4, 11)), "built without CONFIG_TMEM"),
        (SimulatedTmemXen(enabled=False), "tmem disabled (Xen booted without tmem=1)"),
        (SimulatedTmemXen(restricted=True), "unrestricted=1"),
        (SimulatedTmemXen(xsm_deny=True), "XSM policy denies tmem"),
    ],
)
def test_probe_says_why_tmem_is_unavailable(
    tmp_path: Path, sim: SimulatedTmemXen, text: str
) -> None:
    buffers: list[Any] = []
    allocate = sim.buffer

    def recording(nbytes: int) -> Any:
        buffers.append(allocate(nbytes))
        return buffers[-1]

    sim.buffer = recording  # type: ignore[method-assign]
    a = backend(sim, hvm_root(tmp_path)).probe()
    assert not a.ok
    assert text in a.reason
    assert any("cannot choose a node" in line for line in a.limits)
    assert sim.closed
    assert all(b._ptr is None for b in buffers)  # the hypercall buffer was freed


def test_probe_creates_and_destroys_an_ephemeral_pool(tmp_path: Path) -> None:
    sim = SimulatedTmemXen()
    a = backend(sim, hvm_root(tmp_path)).probe()
    assert a.ok, a.reason
    assert "Xen 4.12 answered tmem_op" in a.reason
    assert [(c[0], c[2]) for c in sim.calls] == [(1, 0), (2, 1)]
    assert sim.live_pools() == []


def test_probe_in_a_pv_guest_refuses_the_data_path(tmp_path: Path) -> None:
    a = backend(SimulatedTmemXen(), hvm_root(tmp_path, "PV")).probe()
    assert not a.ok
    assert "PV guest" in a.reason and "MFN" in a.reason


def test_probe_without_pfns(tmp_path: Path) -> None:
    sim = SimulatedTmemXen()

    def hidden(_addr: int) -> int:
        raise InputError("/proc/self/pagemap", "shows PFN 0: page frame numbers are hidden "
                         "without CAP_SYS_ADMIN")

    b = TmemBackend(hvm_root(tmp_path), opener=lambda _h: sim, frame_of=hidden)
    a = b.probe()
    assert not a.ok and "CAP_SYS_ADMIN" in a.reason


def test_start_put_get_stats_stop(tmp_path: Path) -> None:
    sim = SimulatedTmemXen()
    b = backend(sim, hvm_root(tmp_path))
    b.start(Plan((Move(0, 1, 1 << 20),)))  # the target cannot be honoured; logged, not faked
    assert sim.live_pools() == [0]
    assert sim.pools[0] is not None and sim.pools[0].persistent
    assert b.put(OID, 0, page(3))
    assert b.get(OID, 0) == page(3)
    assert b.get(OID, 1) is None
    b.flush(OID, 0)
    b.flush(OID)
    s = b.stats()
    assert (s.pages_moved_or_put, s.pages_returned, s.failures) == (1, 1, 0)
    b.stop()
    assert sim.live_pools() == []
    b.stop()  # idempotent
    with pytest.raises(BackendUnavailable, match="not started"):
        b.put(OID, 0, page(1))


def test_refused_puts_count_as_failures(tmp_path: Path) -> None:
    sim = SimulatedTmemXen(capacity_pages=1)
    b = backend(sim, hvm_root(tmp_path))
    b.start(Plan())
    assert b.put(OID, 0, page(1))
    assert not b.put(OID, 1, page(2))  # persistent pool full: -ENOMEM
    assert b.stats().failures == 1
    b.stop()


@pytest.mark.parametrize(
    ("sim", "text"),
    [
        (SimulatedTmemXen(removed=True, version=(4, 17)), "removed in Xen 4.13"),
        (SimulatedTmemXen(enabled=False), "tmem=1"),
    ],
)
def test_start_fails_cleanly(tmp_path: Path, sim: SimulatedTmemXen, text: str) -> None:
    b = backend(sim, hvm_root(tmp_path))
    with pytest.raises(BackendUnavailable, match=text):
        b.start(Plan())
    assert b.client is None and b.pool is None and sim.closed


def test_backend_never_claims_to_target_a_node() -> None:
    assert TmemBackend.targets_node is False


# ---- pagemap ----


def pagemap_root(tmp_path: Path, entries: dict[int, int]) -> HostFS:
    path = tmp_path / "proc/self/pagemap"
    path.parent.mkdir(parents=True)
    data = bytearray(8 * (max(entries) + 1))
    for vpn, entry in entries.items():
        struct.pack_into("<Q", data, 8 * vpn, entry)
    path.write_bytes(bytes(data))
    return HostFS(str(tmp_path))


def test_pagemap_gives_the_pfn_of_a_present_page(tmp_path: Path) -> None:
    h = pagemap_root(tmp_path, {3: (1 << 63) | (1 << 61) | 0x12345, 4: 0, 5: 1 << 63})
    frames = PagemapFrames(h)
    assert frames(3 * 4096 + 17) == 0x12345
    with pytest.raises(InputError, match="not present"):
        frames(4 * 4096)
    with pytest.raises(InputError, match="CAP_SYS_ADMIN"):
        frames(5 * 4096)
    with pytest.raises(InputError, match="short read"):
        frames(50 * 4096)


def test_the_real_pagemap_names_the_bounce_page_or_says_why_not() -> None:
    """On the test machine itself: root sees a PFN, others get the CAP_SYS_ADMIN line."""
    sim = SimulatedTmemXen()
    c = TmemClient(sim, PagemapFrames(HostFS("/")))
    try:
        gfn: Any = c.bounce_gfn()
        assert gfn > 0
    except InputError as e:
        assert "CAP_SYS_ADMIN" in str(e) or "pagemap" in str(e)
    finally:
        c.close()
