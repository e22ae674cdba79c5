"""Remote-node cold memory (issue 5) in real Xen 4.17 guests.

* tmem: ``guestagent tiering status --json`` in a PV guest says the tmem backend is unavailable
  because Xen 4.17 answers -ENOSYS to ``tmem_op`` (tmem left Xen in 4.13), and DAMON is unavailable
  on Debian's 6.1 kernel (built without DAMON; ``migrate_cold`` needs Linux 6.11 anyway).
* DAMON: in an HVM guest with 2 vnodes on Debian's 6.12 kernel, the agent's ``tiering run`` moves a
  cold buffer from node 0 to node 1 (the scenario of :mod:`tests.e2e.tiering_scenario`), and
  removes its kdamonds on SIGTERM. Then, in the same guest, crash undo (issues 14 and 15): the
  daemon (``guestagent run`` with only the tiering job) is ``kill -9``ed with its kdamond on; the
  kdamond keeps running and its journal stays; ``guestagent tiering --reset`` (the unit's
  ``ExecStopPost`` command) removes it; a daemon killed the same way and started again undoes its
  predecessor's kdamonds first and serves (:func:`kill9_then_reset`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import tiering_scenario as sc
from tests.e2e.bed import Guest, GuestSpec, XenBed
from tests.e2e.util import BedError, log

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
        crash = kill9_then_reset(g, bed.run_dir)

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

    # Crash undo, in the same guest (kill9_then_reset): kill -9 leaves the kdamond running and
    # the journal in place; `tiering --reset` removes exactly it, and again finds nothing.
    assert "error" not in crash, crash
    assert crash["state_before_kill"] == "on", crash
    assert crash["journal_before_kill"] == "yes", crash
    assert crash["state_after_kill"] == "on" and crash["journal_after_kill"] == "yes", crash
    assert crash["reset_rc"] == "0", crash
    assert "kdamond 0: turned off (was on)" in crash["reset_out"], crash
    assert re.search(r"nr_kdamonds: \d+ -> 0", crash["reset_out"]), crash
    assert re.search(r"event=undone .*owner=tiering", crash["reset_log"]), crash
    assert (crash["nr_after_reset"], crash["threads_after_reset"]) == ("0", "0"), crash
    assert crash["journal_after_reset"] == "no", crash
    assert crash["reset_again_rc"] == "0", crash
    assert crash["reset_again_out"].strip() == "nothing to undo", crash
    # A daemon killed the same way, then started again: the restart undoes its predecessor's
    # kdamond (one event=undone line per step) and serves instead of refusing.
    assert crash["state_before_second_kill"] == "on", crash
    restarted = crash["restart_log"]
    assert "event=tiering_leftover_found" in restarted, restarted
    assert re.search(r"event=undone .*kdamond 0.*turned off \(was on\)", restarted), restarted
    assert re.search(r"event=job_started .*job=tiering", restarted), restarted
    assert "event=job_off" not in restarted, restarted
    assert (crash["nr_after_stop"], crash["threads_after_stop"]) == ("0", "0"), crash
    assert crash["journal_after_stop"] == "no", crash


KD = sc.KDAMONDS
JOURNAL = "/run/guestagent/tiering.json"
#: The daemon with the tiering job alone (policy defaults; the first tick comes at once).
CRASH_CONFIG = """[topology]
enabled = false
[devices]
enabled = false
[balloon]
enabled = false
[tiering]
enabled = true
interval_seconds = 2
"""
#: Shell: start daemon number $1 in the background (its pid in /tmp/dN.pid, its log /tmp/dN.log).
START = (
    "start() { setsid guestagent --log-level info run --config /tmp/crash.toml "
    "--conf-dir /tmp/crash.d --role guest >/tmp/d$1.log 2>&1 </dev/null & "
    "echo $! >/tmp/d$1.pid; }\n"
    # Exited: gone, or a zombie (the guest's init reaps only now and then).
    "alive() { s=$(cut -d' ' -f3 /proc/$(cat /tmp/d$1.pid)/stat 2>/dev/null); "
    '[ -n "$s" ] && [ "$s" != Z ]; }\n'
    f"on() {{ i=0; while [ \"$(cat {KD}/0/state 2>/dev/null)\" != on ] && [ $i -lt 600 ]; do "
    "alive $1 || break; sleep 0.5; i=$((i+1)); done; }\n"
    "gone() { i=0; while alive $1 && [ $i -lt 240 ]; do sleep 0.5; i=$((i+1)); done; }\n"
    f"left() {{ echo \"nr_$1 $(cat {KD}/nr_kdamonds)\"; echo \"threads_$1 $(pgrep -c kdamond)\"; "
    f"[ -e {JOURNAL} ] && echo journal_$1 yes || echo journal_$1 no; }}\n"
)


def kill9_then_reset(g: Guest, run_dir: Path) -> dict[str, str]:
    """Crash undo in the scenario's guest, once its agent has stopped (facts as ``key value``).

    Node 0 is filled again (as in the scenario) so that the policy moves from it at once. Then:
    daemon 1 is started, ``kill -9``ed as soon as its kdamond is on, and ``guestagent tiering
    --reset`` run (twice); daemon 2 is started and ``kill -9``ed the same way, daemon 3 started
    over its leftovers, given its first ticks and stopped with SIGTERM. Every step is a guest-side
    loop, so no kill waits for a round trip through Dom0."""
    facts: dict[str, str] = {}
    try:
        _crash(g, facts)
    except (BedError, AssertionError) as e:
        # Kept as a fact, asserted after the scenario's own assertions (which it must not hide).
        facts["error"] = f"{type(e).__name__}: {e}"
    finally:
        out = run_dir / f"{g.name}-tiering-kill9.json"
        out.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
        log(f"tiering kill -9 record: {out}")
    return facts


def _keys(out: str, facts: dict[str, str]) -> None:
    for line in out.splitlines():
        m = re.match(r"^([a-z_0-9]+) (.*)$", line.strip())
        if m:
            facts[m.group(1)] = m.group(2).strip()


def _crash(g: Guest, facts: dict[str, str]) -> None:
    meminfo = sc.parse_meminfo(g.run_ok("cat /sys/devices/system/node/node*/meminfo"))
    free0, total0 = meminfo[0]["MemFree"], meminfo[0]["MemTotal"]
    fill = int((free0 - total0 * sc.FILL_LEAVE_PCT / 100) // 1024) - 8
    facts["fill_mib"] = str(fill)
    assert fill > 16, f"node 0 has too little free memory to fill again: {meminfo[0]}"
    g.run_ok(f"cat > /tmp/cold2.py <<'EOF'\n{sc.COLD_PY}\nEOF\nrm -f /tmp/cold2.pid")
    g.run_ok(
        "setsid numactl --membind=0 --cpunodebind=0 python3 /tmp/cold2.py "
        f"{fill} /tmp/cold2.pid </dev/null >/tmp/cold2.log 2>&1 &"
    )
    g.run_ok("i=0; while [ ! -s /tmp/cold2.pid ] && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); "
             "done; cat /tmp/cold2.pid", timeout=660)
    g.run_ok(f"mkdir -p /tmp/crash.d && cat > /tmp/crash.toml <<'EOF'\n{CRASH_CONFIG}EOF")

    # Daemon 1: kill -9 with its kdamond on; then tiering --reset, twice.
    out = g.run_ok(
        START + "start 1; on 1\n"
        f"echo \"state_before_kill $(cat {KD}/0/state 2>/dev/null)\"\n"
        f"[ -e {JOURNAL} ] && echo journal_before_kill yes || echo journal_before_kill no\n"
        "kill -9 $(cat /tmp/d1.pid); gone 1\n"
        f"echo \"state_after_kill $(cat {KD}/0/state 2>/dev/null)\"\n"
        f"[ -e {JOURNAL} ] && echo journal_after_kill yes || echo journal_after_kill no\n",
        timeout=600,
    )
    _keys(out, facts)
    facts["daemon1_log"] = g.run_ok("tail -n 40 /tmp/d1.log")
    out, rc = g.run("guestagent --log-level info tiering --reset 2>/tmp/reset.log", timeout=180)
    facts["reset_rc"], facts["reset_out"] = str(rc), out
    facts["reset_log"] = g.run_ok("cat /tmp/reset.log")
    _keys(g.run_ok(START + "left after_reset"), facts)
    out, rc = g.run("guestagent tiering --reset 2>/dev/null", timeout=180)
    facts["reset_again_rc"], facts["reset_again_out"] = str(rc), out

    # Daemon 2 killed the same way; daemon 3 starts over its leftovers, serves, and stops.
    out = g.run_ok(
        START + "start 2; on 2\n"
        f"echo \"state_before_second_kill $(cat {KD}/0/state 2>/dev/null)\"\n"
        "kill -9 $(cat /tmp/d2.pid); gone 2\n"
        "start 3; i=0; while ! grep -q 'event=job_started\\|event=job_off' /tmp/d3.log && "
        "[ $i -lt 600 ]; do alive 3 || break; sleep 0.5; i=$((i+1)); done\n"
        "sleep 6; kill -TERM $(cat /tmp/d3.pid); gone 3\n"
        "left after_stop\n",
        timeout=900,
    )
    _keys(out, facts)
    facts["restart_log"] = g.run_ok("cat /tmp/d3.log")
