"""Remote-node cold memory (issue 5) in real Xen 4.17 guests.

* tmem: ``guestagent tiering status --json`` in a PV guest says the tmem backend is unavailable
  because Xen 4.17 answers -ENOSYS to ``tmem_op`` (tmem left Xen in 4.13), and DAMON is unavailable
  on Debian's 6.1 kernel (built without DAMON; ``migrate_cold`` needs Linux 6.11 anyway).
* DAMON: in an HVM guest with 2 vnodes on Debian's 6.12 kernel, ``guestagent run`` (the daemon,
  as the unit starts it, with ``[tiering]`` turned on), started before node 0 fills with a cold
  buffer, moves the buffer from node 0 to node 1 (the scenario of
  :mod:`tests.e2e.tiering_scenario`), and removes its kdamonds on SIGTERM. Then, in the same guest
  (issue 15), ``kill -9`` of the daemon while its kdamond migrates, next to a kdamond of another
  DAMON user's, and the unit's stop command by hand (:func:`check_kill_9_mid_tiering`).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.e2e import tiering_scenario as sc
from tests.e2e.bed import Guest, GuestSpec, XenBed
from tests.e2e.util import UNIT_STOP_POST, log

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
        check_scenario(rec)
        print(check_kill_9_mid_tiering(g))


def check_scenario(rec: sc.Record) -> None:
    """What the scenario of :mod:`tests.e2e.tiering_scenario` must have shown."""
    # The guest runs the 6.12 kernel, and its DAMON takes migrate_cold with a target node.
    assert rec.facts.splitlines()[0].startswith("6.12."), rec.facts
    assert "action migrate_cold" in rec.migrate_cold_probe, rec.migrate_cold_probe
    assert "target_nid" in rec.migrate_cold_probe, rec.migrate_cold_probe
    assert "paddr" in rec.migrate_cold_probe, rec.migrate_cold_probe

    # tiering status: DAMON serves, tmem answers ENOSYS (privcmd works on 6.12 too); the kernel
    # runs the multi-generational LRU.
    assert rec.status_before["serving"] == "damon", rec.status_before
    check_tmem_enosys(rec.status_before)
    assert rec.status_before["lru_gen"] is True, rec.status_before
    check_status_beside_the_daemon(rec)

    # The daemon, up before the fill, had created nothing while no node was short (an idle
    # guest gets no kdamond).
    assert rec.before_fill is not None and rec.daemon_startup_cpu_s is not None, rec.agent_command
    assert rec.before_fill.damon == {} and not rec.before_fill.kdamond_cpu, rec.before_fill

    # The cold buffer went (in large part) to node 1: numactl placed all of it on node 0, so what
    # is on node 1 the agent moved.
    moved_buffer = rec.cold_bytes(rec.last, 1)
    assert moved_buffer >= 64 * MIB, (rec.after_fill.cold_pages, rec.last.cold_pages)
    # Node 0 regained free memory from its lowest, node 1 gave it.
    regained = (rec.free_kb(rec.last, 0) - rec.node0_least_free_kb()) * 1024
    assert regained >= 48 * MIB, (rec.after_fill.meminfo, rec.last.meminfo)
    assert rec.free_kb(rec.last, 1) < rec.free_kb(rec.before_fill, 1), (
        rec.before_fill.meminfo, rec.last.meminfo)

    # The scheme's own statistics, read from DAMON sysfs while the agent ran.
    assert rec.damon_most("sz_applied") > 0, [s.damon for s in rec.samples]
    assert any(s.damon.get(0, {}).get("target_nid") == "1" for s in rec.samples)

    check_daemon_counters(rec, moved_buffer)


def check_status_beside_the_daemon(rec: sc.Record) -> None:
    """After the fill, with the daemon moving: ``tiering status`` says the daemon serves (its
    kdamonds are not "another DAMON user's") and shows the daemon's plan, 0 -> 1 unless the move
    was already over; the daemon's first decision, in its log, was node 0 -> node 1."""
    after = rec.status_after_fill
    assert after["serving"] == "damon" and after["daemon_pid"], after
    damon = next(b for b in after["backends"] if b["name"] == "damon")
    assert damon["serving"] and damon["reason"].startswith("serving in the running daemon"), damon
    assert [(p["source"], p["target"]) for p in after["plan"]] in ([(0, 1)], []), after
    first = re.search(r"event=tiering_reason\b.*\breason=\"([^\"]*)\"", rec.agent_log)
    assert first and re.match(r"node 0: under pressure .*-> node 1 ", first.group(1)), (
        rec.agent_log[:3000])
    assert re.search(r"event=damon_move\b.*\bnode=0 target=1\b", rec.agent_log), (
        rec.agent_log[:3000])


def check_daemon_counters(rec: sc.Record, moved_buffer: int) -> None:
    """The tiering job's status agrees with the kernel's counters and with what moved, and the
    daemon stopped cleanly on SIGTERM: no kdamond left."""
    assert rec.run_rc == 0, rec.agent_log[-3000:]
    assert rec.summary["backend"] == "damon" and rec.summary["active"], rec.summary
    assert rec.summary["bytes_moved"] >= 0.9 * moved_buffer, json.dumps(rec.summary)
    # Its counters add up the kernel's over the run: never below what DAMON sysfs showed while
    # it ran. (Not tried >= moved: paddr counts whole large folios, so moved can exceed tried.)
    for key, counter in (("bytes_moved", "sz_applied"), ("bytes_tried", "sz_tried")):
        shown = rec.damon_most(counter)
        assert 0 < shown <= rec.summary[key], (key, shown, rec.summary)
    # The job's own CPU time in its ticks is part of the daemon's.
    daemon_cpu = rec.last_running.agent_cpu
    assert daemon_cpu is not None and 0 < rec.summary["tick_cpu_s"] <= daemon_cpu, (
        rec.summary, rec.last_running)
    assert rec.nr_kdamonds_after == 0, rec.after_stop
    assert rec.kdamond_threads_after == 0, rec.after_stop


# --- kill -9 while pages move (issue 15) ---------------------------------------------------------

KD = sc.KDAMONDS
JOURNAL = "/run/guestagent/tiering.json"
#: The killed daemon's ``[tiering]``: the scenario's watermarks and a rate bound low enough that
#: the move lasts about a minute, so the kill lands while pages move.
CRASH_KEYS = {**sc.TIERING_KEYS, "max_rate_mb": 4}
#: The fresh daemon's, started on node 0 refilled (``refill_node0``): node 0 is a source up to
#: 44 % free, so it has a move to make and adds kdamonds of its own.
FRESH_KEYS = {**CRASH_KEYS, "source_low_pct": 44}

#: ``w FILE VALUE``: a DAMON sysfs write tried again while it fails (EBUSY: the sysfs lock is
#: taken with a trylock, and every running kdamond holds it for a moment now and then).
RETRY_WRITE = """w() { n=0; until echo "$2" > "$1" 2>/dev/null; do n=$((n+1));
       [ $n -ge 25 ] && { echo "writing $2 to $1 failed"; return 1; }; sleep 0.2; done; }"""

#: In the guest, with the killed agent's kdamonds at 1 (node 0) and 2 (node 1) after another
#: DAMON user's idle kdamond 0: wait until the agent's node-0 kdamond is on; then the other user
#: configures its kdamond 0 (vaddr, monitoring the process in /tmp/foreign.pid) and turns it on
#: (each write retried: DAMON sysfs answers EBUSY while another write holds its lock); then
#: ``kill -9`` of the agent as soon as its scheme's sz_applied rose twice (pages are moving).
KILL_MID_MOVE = f"""
A={KD}
{RETRY_WRITE}
{sc.READ_RETRY}
t=0
until [ "$(cat $A/nr_kdamonds)" = 3 ] && [ "$(r $A/1/state)" = on ]; do
    t=$((t+1))
    [ -s /tmp/crash.rc ] && {{ echo "the agent exited: $(cat /tmp/crash.rc)"; exit 1; }}
    [ $t -ge 300 ] && {{ echo "the agent's kdamond 1 never came on"; exit 1; }}
    sleep 1
done
echo "agent kdamond 1 on after ${{t}}s"
w $A/0/contexts/nr_contexts 1 && w $A/0/contexts/0/operations vaddr &&
w $A/0/contexts/0/targets/nr_targets 1 &&
w $A/0/contexts/0/targets/0/pid_target "$(cat /tmp/foreign.pid)" && w $A/0/state on || exit 1
echo "foreign kdamond 0 $(r $A/0/state) pid $(cat $A/0/pid)"
S=$A/1/contexts/0/schemes/0/stats/sz_applied
prev=0; rises=0
while [ $rises -lt 2 ]; do
    t=$((t+1))
    [ -s /tmp/crash.rc ] && {{ echo "the agent exited: $(cat /tmp/crash.rc)"; exit 1; }}
    [ $t -ge 600 ] && {{ echo "sz_applied did not rise twice: $prev"; exit 1; }}
    now=$(cat $S)
    [ "$now" -gt "$prev" ] && {{ rises=$((rises+1)); echo "sz_applied $now"; }}
    prev=$now
    sleep 1
done
kill -KILL "$(cat /tmp/crash.pid)"
n=0; while [ ! -s /tmp/crash.rc ] && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done
echo "killed: rc $(cat /tmp/crash.rc)"
"""

#: What is left of DAMON: one ``kd I STATE NR_CONTEXTS PID`` line per kdamond, kdamond 0's
#: operations and target, the kdamond threads, whether the journal is there.
DAMON_LEFT = f"""
A={KD}
{sc.READ_RETRY}
nr=$(cat $A/nr_kdamonds); echo "nr $nr"
i=0; while [ $i -lt $nr ]; do
    echo "kd $i $(r $A/$i/state) $(cat $A/$i/contexts/nr_contexts) $(cat $A/$i/pid)"
    i=$((i + 1))
done
[ $nr -gt 0 ] && [ "$(cat $A/0/contexts/nr_contexts)" = 1 ] &&
    echo "kd0 $(cat $A/0/contexts/0/operations) $(cat $A/0/contexts/0/targets/0/pid_target)"
echo "threads $(pgrep -c kdamond)"
echo "journal $(test -e {JOURNAL} && echo present || echo absent)"
true
"""


def damon_left(g: Guest) -> tuple[dict[int, tuple[str, int, int]], dict[str, str]]:
    """:data:`DAMON_LEFT`: kdamond index -> (state, nr_contexts, pid), and the other lines."""
    out = g.run_ok(DAMON_LEFT)
    kds = {int(m[0]): (m[1], int(m[2]), int(m[3]))
           for m in re.findall(r"^kd (\d+) (\S+) (\d+) (-?\d+)$", out, re.M)}
    rest = {k: v.strip() for k, v in re.findall(r"^(nr|kd0|threads|journal) (.*)$", out, re.M)}
    return kds, rest


def refill_node0(g: Guest) -> int:
    """The scenario's cold process ended (its pages on both nodes freed) and a new one fills node
    0 as the scenario's did; its size in MiB."""
    g.run_ok("p=$(cat /tmp/cold.pid); kill -KILL $p; i=0; "
             "while grep -qs VmRSS /proc/$p/status && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; "
             "! grep -qs VmRSS /proc/$p/status", timeout=90)
    meminfo = sc.parse_meminfo(g.run_ok("cat /sys/devices/system/node/node*/meminfo"))
    free0, total0 = meminfo[0]["MemFree"], meminfo[0]["MemTotal"]
    fill = int((free0 - total0 * sc.FILL_LEAVE_PCT / 100) // 1024) - 8
    assert fill > 64, f"node 0 has too little free memory to fill: {meminfo[0]}"
    g.run_ok("rm -f /tmp/cold.pid; setsid numactl --membind=0 --cpunodebind=0 python3 "
             f"/tmp/cold.py {fill} /tmp/cold.pid </dev/null >/tmp/cold.log 2>&1 &")
    g.run_ok("i=0; while [ ! -s /tmp/cold.pid ] && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); "
             "done; test -s /tmp/cold.pid || { cat /tmp/cold.log; exit 1; }", timeout=660)
    return fill


def stop_post(g: Guest) -> str:
    """The unit's ExecStopPost commands by hand (``UNIT_STOP_POST``), each with exit status 0;
    their standard output (the log goes to /tmp/stop-post.log)."""
    g.run_ok("rm -f /tmp/stop-post.out")
    for args in UNIT_STOP_POST:
        out, rc = g.run(f"guestagent --log-level info {args} >> /tmp/stop-post.out "
                        "2>> /tmp/stop-post.log; rc=$?; cat /tmp/stop-post.out; exit $rc",
                        timeout=300)
        assert rc == 0, (f"guestagent {args}: exit status {rc}:\n{out}\n"
                         + g.run_ok("tail -n 30 /tmp/stop-post.log"))
    return g.run_ok("cat /tmp/stop-post.out")


def check_kill_9_mid_tiering(g: Guest) -> str:
    """``kill -9`` of ``guestagent run`` (``[tiering]`` on) while its kdamond migrates, next to
    another DAMON user's running kdamond; then the unit's ExecStopPost (``guestagent reset``) by
    hand.

    Seen before issue 15: the orphaned kdamond kept migrating, and a restarted agent called it
    "another DAMON user" and refused to serve. Asserted: the crash left the agent's kdamond on
    and its journal in place; the reset turns off and empties exactly the agent's kdamonds (1 and
    2), leaves the other user's kdamond 0 running (same thread) and nr_kdamonds at 3 (shrinking it
    would recreate every kdamond), and empties the journal; once the other user stopped its
    kdamond, a fresh agent serves (adds kdamonds 3 and 4, migrates), and after its SIGTERM and
    the stop command again no kdamond runs and the journal is gone. Returns a summary line."""
    started = time.monotonic()  # reported, not asserted
    fill, applied, foreign_pid, after_kill = kill_mid_move(g)
    before_reset = sc.parse_sample(time.monotonic(), g.run_ok(sc.SAMPLE_SH))
    check_reset_spares_the_other_user(g, foreign_pid)
    # The other user stops its kdamond (off and empty; nr_kdamonds stays 3), then a fresh agent.
    g.run_ok(f"{RETRY_WRITE}\nw {KD}/0/state off && w {KD}/0/contexts/nr_contexts 0 && "
             "kill $(cat /tmp/foreign.pid)")
    # A known start for the fresh agent: how much the orphan moved before the reset varies from
    # run to run, and so did what was left to do (run 20261205-042344-16086-pytest: node 1 the
    # source; run 20261205-044506-24067-pytest: node 0 at 44 % free and node 1 under its 45 %
    # watermark, nothing to move, the agent never active). A new buffer on node 0 alone.
    refill_node0(g)
    check_fresh_agent_serves_then_stops(g)
    moved_after_kill = (before_reset.cold_pages.get(1, 0)
                        - after_kill.cold_pages.get(1, 0)) * sc.PAGE // MIB
    return (f"tiering kill -9: {fill} MiB cold on node 0, killed at sz_applied "
            f"{[a // MIB for a in applied]} MiB; the orphaned kdamond moved {moved_after_kill} "
            f"MiB more before {'; '.join(UNIT_STOP_POST)}, which turned off and emptied kdamonds "
            f"1 and 2 and left the other user's kdamond 0 running (pid {foreign_pid}); a fresh "
            f"agent served (kdamonds 3-4 added); {time.monotonic() - started:.0f} s in all")


def kill_mid_move(g: Guest) -> tuple[int, list[int], int, sc.Sample]:
    """A new cold buffer on node 0, another user's idle kdamond 0, the agent, the other user's
    kdamond started, ``kill -9`` of the agent while pages move (:data:`KILL_MID_MOVE`); checked:
    the crash undid nothing. Returns the buffer's MiB, the sz_applied values seen rising, the
    other user's kdamond thread and a sample taken after the kill."""
    fill = refill_node0(g)
    # Another DAMON user's kdamond 0, idle (off, no context) when the agent starts: the agent
    # adds its own after it; the other user configures and starts it only then, to monitor a
    # process of its own (vaddr): a sleep, its PID from itself.
    g.run_ok(f"echo 1 > {KD}/nr_kdamonds; rm -f /tmp/foreign.pid; "
             "setsid sh -c 'echo $$ > /tmp/foreign.pid; exec sleep 100000' "
             "</dev/null >/dev/null 2>&1 & "
             "i=0; while [ ! -s /tmp/foreign.pid ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); "
             "done; cat /tmp/foreign.pid")
    sc.start_daemon(g, "crash", CRASH_KEYS)
    out, rc = g.run(KILL_MID_MOVE, timeout=700)
    # On a failure, what the daemon saw too: its status (plan, reasons) and the nodes' memory.
    assert rc == 0 and "killed: rc 137" in out, (
        out, g.run_ok("tail -n 30 /tmp/crash.log"),
        g.run("guestagent status --json; grep -h MemFree /sys/devices/system/node/node*/meminfo",
              timeout=180)[0])
    applied = [int(v) for v in re.findall(r"^sz_applied (\d+)$", out, re.M)]
    log(f"kill -9 mid-move: {' '.join(out.split())}")
    after_kill = sc.parse_sample(time.monotonic(), g.run_ok(sc.SAMPLE_SH))
    # The crash undid nothing: the agent's kdamond migrates on, the journal names its kdamonds.
    kds, rest = damon_left(g)
    foreign = g.run_ok("cat /tmp/foreign.pid").strip()
    assert kds[0][0] == "on" and rest.get("kd0") == f"vaddr {foreign}", (kds, rest)
    assert kds[1][0] == "on" and rest["nr"] == "3", (kds, rest)
    journal = json.loads(g.run_ok(f"cat {JOURNAL}"))
    paths = {c["path"] for c in journal["changes"]}
    assert {f"{KD}/nr_kdamonds", f"{KD}/1", f"{KD}/2"} <= paths, journal
    return fill, applied, kds[0][2], after_kill


def check_reset_spares_the_other_user(g: Guest, foreign_pid: int) -> None:
    """The unit's stop command after the kill: the agent's kdamonds 1 and 2 off and empty (2,
    node 1's, never a source, was never configured: already so), the other user's kdamond 0
    untouched (on, the same thread, its vaddr setup), nr_kdamonds left at 3, the journal gone,
    no error line."""
    undone = stop_post(g)
    kds, rest = damon_left(g)
    stop_log = g.run_ok("cat /tmp/stop-post.log")
    assert re.search(r"^tiering: kdamond 1: turned off \(was on\) and emptied", undone, re.M), (
        undone, stop_log)
    assert re.search(r"^tiering: kdamond 2: already off and empty$", undone, re.M), (
        undone, stop_log)
    assert re.search(r"^tiering: nr_kdamonds: left at 3: kdamonds \[0\] are in use", undone,
                     re.M), (undone, stop_log)
    assert not re.search(r"^tiering: kdamond 0\b", undone, re.M), undone
    assert kds[0] == ("on", 1, foreign_pid), (kds, undone)
    assert rest["kd0"].startswith("vaddr "), rest
    assert kds[1][:2] == ("off", 0) and kds[2][:2] == ("off", 0), (kds, undone)
    assert rest["nr"] == "3" and rest["threads"] == "1", (rest, undone)
    assert rest["journal"] == "absent", (rest, undone)
    assert "level=error" not in stop_log, stop_log


def fresh_move_kdamond(fresh_log: str) -> int:
    """The index of the kdamond that made the fresh agent's first move: the agent adds one
    kdamond per node (``damon_kdamonds_added first=3 nodes=0,1``), and its first ``damon_move``
    names the source node.

    The agent starts on node 0 refilled, so node 0 is expected; with ``--source-low-pct 44``
    node 1 can be under pressure too (run 20261205-042344-16086-pytest, before the refill: node
    1 at 34 % free, moved to node 0), and either node's move shows the agent serving."""
    added = re.search(r"event=damon_kdamonds_added\b.*\bfirst=(\d+)\b.*\bnodes=([\d,]+)",
                      fresh_log)
    assert added, fresh_log
    move = re.search(r"event=damon_move\b.*\bnode=(\d+)\b", fresh_log)
    assert move, fresh_log
    nodes = [int(n) for n in added.group(2).split(",")]
    return int(added.group(1)) + nodes.index(int(move.group(1)))


def check_fresh_agent_serves_then_stops(g: Guest) -> None:
    """A fresh ``guestagent run`` on what the crash and the reset left serves (no "another DAMON
    user", no leftover, its kdamonds added after the three idle ones); SIGTERM and the stop
    command then leave no kdamond running and no journal."""
    sc.start_daemon(g, "fresh", FRESH_KEYS)
    deadline = time.monotonic() + 300
    while not (job := sc.tiering_job_status(g, "fresh")).get("active"):
        assert time.monotonic() < deadline, g.run_ok("tail -n 30 /tmp/fresh.log")
        time.sleep(3)
    assert job["running"] and job["backend"] == "damon", job
    fresh_log = g.run_ok("cat /tmp/fresh.log")
    assert "another DAMON user" not in fresh_log, fresh_log
    assert "tiering_leftover_found" not in fresh_log, fresh_log
    assert re.search(r"event=damon_kdamonds_added\b.*\bfirst=3\b", fresh_log), fresh_log
    # Its first move logged, then DAMON read (the move's context is written before its log line).
    while not re.search(r"event=damon_move\b", fresh_log):
        assert time.monotonic() < deadline, g.run_ok("tail -n 30 /tmp/fresh.log")
        time.sleep(3)
        fresh_log = g.run_ok("cat /tmp/fresh.log")
    moved_kd = fresh_move_kdamond(fresh_log)
    kds, rest = damon_left(g)
    fresh_log = g.run_ok("cat /tmp/fresh.log")
    # The moving node's kdamond holds the agent's context; it is on while it moves, and the job
    # turns it off (context kept) once that node's pressure is over, which can be seconds after
    # its first move when the orphan moved much before the reset (run
    # 20261205-015742-16518-pytest, with a vCPU on each vnode: paused 2 s after the move, off
    # when read).
    assert rest["nr"] == "5" and kds[moved_kd][1] == 1, (moved_kd, kds, rest)
    assert kds[moved_kd][0] == "on" or "event=damon_paused" in fresh_log, (moved_kd, kds, rest)
    # Stopped as systemd stops it: SIGTERM, then the stop command (nothing of tiering's left).
    out = g.run_ok("kill -TERM $(cat /tmp/fresh.pid); i=0; "
                   "while [ ! -s /tmp/fresh.rc ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; "
                   "echo rc $(cat /tmp/fresh.rc)", timeout=180)
    assert re.search(r"^rc 0$", out, re.M), (out, g.run_ok("tail -n 30 /tmp/fresh.log"))
    again = stop_post(g)
    assert not re.search(r"^tiering:", again, re.M), again
    kds, rest = damon_left(g)
    assert all(k[:2] == ("off", 0) for k in kds.values()), kds
    assert rest["threads"] == "0" and rest["journal"] == "absent", rest
