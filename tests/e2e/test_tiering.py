"""Remote-node cold memory (issue 5) in real Xen 4.17 guests.

* tmem: ``guestagent tiering status --json`` in a PV guest says the tmem backend is unavailable
  because Xen 4.17 answers -ENOSYS to ``tmem_op`` (tmem left Xen in 4.13), and DAMON is unavailable
  on Debian's 6.1 kernel (built without DAMON; ``migrate_cold`` needs Linux 6.11 anyway).
* DAMON: in an HVM guest with 2 vnodes on Debian's 6.12 kernel, the agent's ``tiering run`` moves a
  cold buffer from node 0 to node 1 (the scenario of :mod:`tests.e2e.tiering_scenario`), and
  removes its kdamonds on SIGTERM.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import tiering_scenario as sc
from tests.e2e.bed import GuestSpec, XenBed

# Cold caches build everything inside the first test's setup (debootstrap, pip): generous bounds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

MIB = 1 << 20


def backend_row(status: dict[str, Any], name: str) -> dict[str, Any]:
    rows = [r for r in status["backends"] if r["name"] == name]
    assert len(rows) == 1, status
    return rows[0]  # type: ignore[no-any-return]


def check_tmem_enosys(status: dict[str, Any]) -> None:
    tmem = backend_row(status, "tmem")
    assert tmem["ok"] is False, tmem
    assert not tmem["serving"], tmem
    assert tmem["reason"] == (
        "Xen 4.17 answered ENOSYS to tmem_op: tmem was removed in Xen 4.13"
    ), tmem
    assert any("cannot choose a node" in limit for limit in tmem["limits"]), tmem


def test_tmem_probe_answers_enosys_on_xen_417(bed: XenBed) -> None:
    with bed.guest(GuestSpec.pv(memory=512, vcpus=2)) as g:
        out, rc = g.run("guestagent tiering status --json", timeout=180)
        assert rc == 0, out
        status = sc.first_json(out)
        check_tmem_enosys(status)
        # Debian's 6.1 guest kernel is built without DAMON (CONFIG_DAMON unset), so nothing serves.
        damon = backend_row(status, "damon")
        assert damon["ok"] is False, damon
        assert damon["reason"].startswith("/sys/kernel/mm/damon/admin missing"), damon
        assert status["serving"] is None, status
        # The human-readable form says the same.
        text = g.run_ok("guestagent tiering status", timeout=180)
        assert "tmem   unavailable  Xen 4.17 answered ENOSYS to tmem_op" in text, text


@pytest.mark.hvm
def test_damon_moves_cold_pages_to_the_remote_vnode(bed: XenBed) -> None:
    with bed.guest(sc.spec()) as g:
        rec = sc.run_scenario(g, bed.run_dir)

    # The guest runs the 6.12 kernel, and its DAMON takes migrate_cold with a target node.
    assert rec.facts.splitlines()[0].startswith("6.12."), rec.facts
    assert "action migrate_cold" in rec.migrate_cold_probe, rec.migrate_cold_probe
    assert "target_nid" in rec.migrate_cold_probe, rec.migrate_cold_probe
    assert "paddr" in rec.migrate_cold_probe, rec.migrate_cold_probe

    # tiering status: DAMON serves, tmem answers ENOSYS (privcmd works on 6.12 too); the kernel
    # runs the multi-generational LRU; after the fill the plan is 0 -> 1.
    assert rec.status_before["serving"] == "damon", rec.status_before
    check_tmem_enosys(rec.status_before)
    assert rec.status_before["lru_gen"] is True, rec.status_before
    plan = rec.status_after_fill["plan"]
    assert [(p["source"], p["target"]) for p in plan] == [(0, 1)], rec.status_after_fill

    # The cold buffer sat on node 0 and went (in large part) to node 1.
    before, last = rec.after_fill, rec.last
    assert rec.cold_bytes(before, 1) < 4 * MIB, before.cold_pages
    moved_buffer = rec.cold_bytes(last, 1) - rec.cold_bytes(before, 1)
    assert moved_buffer >= 64 * MIB, (before.cold_pages, last.cold_pages)
    # Node 0 regained free memory, node 1 gave it.
    regained = (rec.free_kb(last, 0) - rec.free_kb(before, 0)) * 1024
    assert regained >= 48 * MIB, (before.meminfo, last.meminfo)
    assert rec.free_kb(last, 1) < rec.free_kb(before, 1), (before.meminfo, last.meminfo)

    # The scheme's own statistics, read from DAMON sysfs while the agent ran.
    applied = [int(s.damon[0].get("sz_applied", "0")) for s in rec.samples if 0 in s.damon]
    assert max(applied, default=0) > 0, [s.damon for s in rec.samples]
    assert any(s.damon.get(0, {}).get("target_nid") == "1" for s in rec.samples)

    # The agent's summary agrees, and it stopped cleanly: no kdamond left.
    assert rec.run_rc == 0, rec.agent_log[-3000:]
    assert rec.summary["backend"] == "damon", rec.summary
    assert rec.summary["bytes_moved"] >= 0.9 * moved_buffer, json.dumps(rec.summary)
    assert rec.summary["bytes_tried"] >= rec.summary["bytes_moved"], rec.summary
    assert rec.nr_kdamonds_after == 0, rec.after_stop
    assert rec.kdamond_threads_after == 0, rec.after_stop
