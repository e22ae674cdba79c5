"""The remote-node cold memory scenario on the real-Xen testbed (issue 5), shared by
``tests/e2e/test_tiering.py`` (which asserts on it) and ``benchmarks/tiering_testbed.py`` (which
reports its numbers).

An HVM guest with 2 vnodes of 512 MiB (one vCPU each) on Debian's 6.12 kernel (DAMOS
``migrate_cold``, Linux 6.11+):

1. the guest's facts: kernel release, DAMON sysfs, the MGLRU switch, per-node meminfo; and a
   hand-made kdamond (no agent) that accepts action ``migrate_cold`` and has ``target_nid``;
2. ``guestagent tiering status --json`` before the agent runs;
3. ``guestagent run`` (the daemon, as the unit starts it, every job the defaults turn on) with a
   configuration file that turns ``[tiering]`` on (:data:`TIERING_KEYS`), started before the
   memory fills as a daemon started at boot is; once its tiering job has ticked, the daemon's CPU
   time so far (its start) and a sample (:class:`Sample`, with the daemon's CPU time);
4. node 0 filled with a cold buffer while the daemon runs: ``numactl --membind=0
   --cpunodebind=0`` a Python process that maps an anonymous buffer, writes every page once and
   sleeps; sized so node 0's free memory ends near :data:`FILL_LEAVE_PCT` of its MemTotal (under
   the policy's 10 % pressure watermark); every page of it is placed on node 0, so what is on
   node 1 later the agent moved;
5. ``guestagent tiering status --json`` after the fill (the plan: node 0 -> node 1);
6. every :data:`POLL_S` seconds a sample: per-node meminfo, the cold process's anonymous pages per
   node (``/proc/PID/numa_maps``, without its file mappings: the interpreter's libraries sit in
   the page cache wherever an earlier reader put them, and with a vCPU on node 1 that can be node
   1), the scheme's statistics and target in DAMON sysfs, the CPU time of the kdamond threads and
   of the daemon;
7. the tiering job's status from the daemon (``guestagent status --json``: bytes moved and tried,
   ticks and their CPU time), SIGTERM to the daemon, its log, and what is left of DAMON afterwards
   (``nr_kdamonds``, kdamond threads).

Everything the guest said is kept in :class:`Record` and written as JSON into the run directory.
Records from before the daemon drove the scenario (``guestagent tiering run`` started after the
fill, its own JSON summary) load too: they have no ``before_fill`` sample.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.bed import Guest, GuestSpec
from tests.e2e.util import BedError, log
from tests.e2e.vnuma import VNode, xl_vnuma

MIB = 1 << 20
PAGE = 4096
KERNEL = "6.12"
#: A vCPU on each vnode, as a 2-socket VM has (issue 13: realistic shapes). The cold buffer is bound
#: to node 0 (``numactl --membind=0 --cpunodebind=0``), so node 1's vCPU does not change where it
#: lands. (Before HVM guests were pinned off pCPU 0, the second vCPU triple-faulted twice in a row
#: on one CI run, and the guest was cut to one vCPU.)
NODES = [
    VNode(size_mb=512, vcpus=[0], distances=[10, 20]),
    VNode(size_mb=512, vcpus=[1], distances=[20, 10]),
]
ADMIN = "/sys/kernel/mm/damon/admin"
KDAMONDS = f"{ADMIN}/kdamonds"
#: Node 0's free memory after the fill, percent of its MemTotal (the policy's source_low_pct is 10).
FILL_LEAVE_PCT = 4.0
POLL_S = 10.0
#: Watermarks given to the tiering job: node 0 stays a source until this much of it is free, and
#: node 1 keeps at least this much free (the defaults, 15 % / 25 %, would stop after ~45 MiB).
SOURCE_HIGH_PCT = 45.0
TARGET_MIN_PCT = 45.0
INTERVAL_S = 2.0
#: The ``[tiering]`` keys of the scenario's daemon.
TIERING_KEYS: dict[str, float] = {
    "interval_seconds": INTERVAL_S,
    "source_high_pct": SOURCE_HIGH_PCT,
    "target_min_pct": TARGET_MIN_PCT,
}
#: How long the daemon may take to start and tick once (TCG, a cold page cache).
READY_S = 300.0

COLD_PY = r"""
import mmap, os, signal, sys
size = int(sys.argv[1]) << 20
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, size, 4096):
    buf[off] = 1
with open(sys.argv[2], "w") as f:
    f.write(f"{os.getpid()}\n")
signal.pause()
"""

#: The kdamond threads' CPU time, every half second, into the JSON file argv[1] (thread pid ->
#: the most seen): a kdamond the agent turns off exits, and a 10 s sample misses what it used
#: since the last one (run 20261207-105613-4207-pytest: 1.19 s seen). One process, no fork per
#: round; /proc is scanned for new kdamond threads every 2 s, DAMON sysfs is never read (its
#: lock would make the agent's writes answer EBUSY).
KDAMOND_CPU_PY = r"""
import json, os, sys, time
seen, rounds = {}, 0
while True:
    if rounds % 4 == 0:
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in seen:
                try:
                    with open(f"/proc/{name}/comm") as f:
                        if f.read().startswith("kdamond"):
                            seen[int(name)] = 0.0
                except OSError:
                    pass
    for pid in list(seen):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seen[pid] = max(seen[pid], (int(fields[11]) + int(fields[12])) / 100.0)
        except (OSError, ValueError, IndexError):
            pass
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(seen, f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    rounds += 1
    time.sleep(0.5)
"""


def spec() -> GuestSpec:
    return GuestSpec.hvm(
        memory=sum(v.size_mb for v in NODES),
        vcpus=sum(len(v.vcpus) for v in NODES),
        vnuma=xl_vnuma(NODES),
        kernel=KERNEL,
        name="tier",
    )


@dataclass
class Sample:
    t: float
    #: node -> meminfo field -> kB
    meminfo: dict[int, dict[str, int]]
    #: node -> anonymous pages of the cold process on it (numa_maps, file mappings left out)
    cold_pages: dict[int, int]
    #: kdamond index -> {state, target_nid, sz_tried, sz_applied, nr_applied, qt_exceeds}
    damon: dict[int, dict[str, str]]
    #: kdamond thread pid -> CPU seconds (utime + stime)
    kdamond_cpu: dict[int, float]
    #: the agent had exited when the sample was taken
    agent_exited: bool = False
    #: the guest's uptime (s), to line samples up with its console
    uptime: float = 0.0
    #: the daemon's CPU seconds (utime + stime) since it started; None: not running, or a record
    #: from before the daemon drove the scenario
    agent_cpu: float | None = None
    #: of which in the kernel (stime): the reads and writes of sysfs and procfs
    agent_sys_cpu: float | None = None


@dataclass
class Record:
    facts: str = ""
    migrate_cold_probe: str = ""
    status_before: dict[str, Any] = field(default_factory=dict)
    status_after_fill: dict[str, Any] = field(default_factory=dict)
    #: the command that ran the agent, and the ``[tiering]`` keys of its configuration file
    agent_command: str = ""
    tiering_keys: dict[str, float] = field(default_factory=dict)
    #: the daemon's CPU seconds when its tiering job had ticked once (interpreter, imports, every
    #: job's start, the first tick); None in records of ``tiering run``
    daemon_startup_cpu_s: float | None = None
    #: a sample with the daemon running, just before the fill; None in records of ``tiering run``
    before_fill: Sample | None = None
    #: records before 91ca721 only: the daemon's CPU seconds while ``tiering status`` ran after
    #: the fill, its ticks included (superseded by ``status_cpu_in_run_s``)
    status_query_cpu_s: float | None = None
    #: the daemon's CPU answering status requests between the sample before the fill and the
    #: last one (its own count, ``status_cpu_s``; None from a daemon without it): the
    #: ``tiering status`` answer, apart from any tick that ran beside it
    status_cpu_in_run_s: float | None = None
    fill_mib: int = 0
    fill_seconds: float = 0.0
    cold_pid: int = 0
    meminfo_before: dict[int, dict[str, int]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    run_rc: int | None = None
    #: the tiering job's status before SIGTERM (``tiering run``'s JSON summary in older records)
    summary: dict[str, Any] = field(default_factory=dict)
    agent_log: str = ""
    after_stop: str = ""
    nr_kdamonds_after: int | None = None
    kdamond_threads_after: int | None = None
    #: kdamond thread pid -> the most CPU seconds seen every half second (:data:`KDAMOND_CPU_PY`)
    kdamond_cpu_tracked: dict[int, float] = field(default_factory=dict)
    #: the daemon ran under cProfile (``run_scenario(profile=True)``): its CPU figures are the
    #: profiler's too, and the profile's text is kept next to the record
    profiled: bool = False

    def kdamond_cpu_s(self) -> float:
        """The kdamond threads' CPU over the run: the half-second tracker's, or the samples' most
        when that is more (records from before the tracker have only the samples)."""
        sampled = max((sum(s.kdamond_cpu.values()) for s in self.samples), default=0.0)
        return max(sampled, sum(self.kdamond_cpu_tracked.values()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Record:
        """A record written by :meth:`save` (JSON turned the node keys into strings)."""
        doc = json.loads(path.read_text())

        def ints(d: dict[str, Any]) -> dict[int, Any]:
            return {int(k): v for k, v in d.items()}

        def sample(s: dict[str, Any]) -> Sample:
            return Sample(
                t=s["t"],
                meminfo=ints(s["meminfo"]),
                cold_pages=ints(s["cold_pages"]),
                damon=ints(s["damon"]),
                kdamond_cpu=ints(s["kdamond_cpu"]),
                agent_exited=s.get("agent_exited", False),
                uptime=s.get("uptime", 0.0),
                agent_cpu=s.get("agent_cpu"),
                agent_sys_cpu=s.get("agent_sys_cpu"),
            )

        samples = [sample(s) for s in doc.pop("samples")]
        before = doc.pop("before_fill", None)
        doc["before_fill"] = None if before is None else sample(before)
        doc["meminfo_before"] = ints(doc.get("meminfo_before", {}))
        doc["kdamond_cpu_tracked"] = ints(doc.get("kdamond_cpu_tracked", {}))
        return cls(samples=samples, **doc)

    # -- derived numbers ---------------------------------------------------------------------
    @property
    def after_fill(self) -> Sample:
        return self.samples[0]

    @property
    def start(self) -> Sample:
        """Where the agent's work is counted from: the sample before the fill (the daemon already
        running), else (``tiering run`` records) the one after it."""
        return self.before_fill if self.before_fill is not None else self.after_fill

    @property
    def last(self) -> Sample:
        return self.samples[-1]

    @property
    def last_running(self) -> Sample:
        """The last sample that saw the daemon's CPU time (before SIGTERM); ``last`` in records
        of ``tiering run``."""
        seen = [s for s in self.samples if s.agent_cpu is not None]
        return seen[-1] if seen else self.last

    def node0_least_free_kb(self) -> int:
        """Node 0's least MemFree over the samples: where the fill left it, before the agent
        (which runs during the fill) gave any back."""
        return min(self.free_kb(s, 0) for s in self.samples)

    def free_kb(self, s: Sample, node: int) -> int:
        return s.meminfo[node]["MemFree"]

    def cold_bytes(self, s: Sample, node: int) -> int:
        return s.cold_pages.get(node, 0) * PAGE

    def damon_most(self, counter: str, kdamond: int = 0) -> int:
        """The largest value of a scheme counter (``sz_applied``, ...) DAMON sysfs showed for
        ``kdamond`` in the samples; 0 when none showed it."""
        return max((int(s.damon[kdamond].get(counter, "0")) for s in self.samples
                    if kdamond in s.damon), default=0)


def parse_meminfo(text: str) -> dict[int, dict[str, int]]:
    """``Node 0 MemFree:  123 kB`` lines of every nodeN/meminfo -> node -> field -> kB."""
    out: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r"^Node (\d+) (\S+):\s+(\d+)(?: kB)?$", line.strip())
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = int(m.group(3))
    return out


def parse_numa_maps(text: str) -> dict[int, int]:
    """Pages per node over every mapping of ``/proc/PID/numa_maps`` (``N0=12 N1=3``)."""
    pages: dict[int, int] = {}
    for m in re.finditer(r"\bN(\d+)=(\d+)\b", text):
        pages[int(m.group(1))] = pages.get(int(m.group(1)), 0) + int(m.group(2))
    return pages


def first_json(out: str) -> dict[str, Any]:
    start = out.find("{")
    if start < 0:
        raise AssertionError(f"no JSON in:\n{out}")
    return json.loads(out[start:])  # type: ignore[no-any-return]


#: ``r FILE``: a DAMON sysfs read tried again while it fails. A kdamond's ``state`` answers
#: EBUSY while anyone holds DAMON sysfs's lock (a trylock since the fix for a use-after-free in
#: ``state_show``, in the guest's 6.12.117), as the agent's own reads do (``tiering/sysfs.py``).
READ_RETRY = """r() { n=0; until v=$(cat "$1" 2>/dev/null); do n=$((n+1));
       [ $n -ge 25 ] && { echo "unreadable"; return 1; }; sleep 0.2; done; echo "$v"; }"""

#: ``utime stime`` (clock ticks) of the process in ``$p``, after its ``comm`` (which may hold
#: spaces); nothing when it is gone.
PROC_CPU_SH = "sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f12,13"


def parse_proc_cpu(text: str) -> tuple[float, float] | None:
    """:data:`PROC_CPU_SH`'s answer as (user + system, system) seconds; None when empty."""
    m = re.match(r"^(\d+) (\d+)$", text.strip())
    return ((int(m.group(1)) + int(m.group(2))) / 100.0, int(m.group(2)) / 100.0) if m else None


#: One sample, kept short: every answer crosses the guest's console.
SAMPLE_SH = f"""
{READ_RETRY}
echo '=== meminfo'
grep -hE ' (MemTotal|MemFree|Active|Inactive|Active.anon.|Inactive.anon.|Active.file.|\
Inactive.file.|AnonPages|FilePages):' /sys/devices/system/node/node*/meminfo
echo '=== numa_maps'
awk '!/ file=/ {{for (i = 1; i <= NF; i++) if ($i ~ /^N[0-9]+=/) {{split(substr($i, 2), a, "="); \
s[a[1]] += a[2]}}}} END {{for (n in s) printf "N%s=%d\\n", n, s[n]}}' \
    /proc/$(cat /tmp/cold.pid 2>/dev/null || echo 0)/numa_maps 2>/dev/null
echo '=== damon'
nr=$(cat {KDAMONDS}/nr_kdamonds)
i=0
while [ $i -lt $nr ]; do
    s={KDAMONDS}/$i/contexts/0/schemes/0
    echo "kd $i state $(r {KDAMONDS}/$i/state)"
    for f in target_nid stats/sz_tried stats/sz_applied stats/nr_applied stats/qt_exceeds; do
        [ -e $s/$f ] && echo "kd $i ${{f#stats/}} $(cat $s/$f)"
    done
    i=$((i + 1))
done
echo '=== kdamond'
for p in $(pgrep kdamond); do echo "cpu $p $(cut -d' ' -f14,15 /proc/$p/stat)"; done
echo '=== agent'; cat /tmp/run.rc 2>/dev/null
echo '=== agentcpu'
p=$(cat /tmp/run.pid 2>/dev/null) && [ -z "$(cat /tmp/run.rc 2>/dev/null)" ] && {PROC_CPU_SH}
echo '=== uptime'; cut -d' ' -f1 /proc/uptime
true
"""


def parse_sample(t: float, out: str) -> Sample:
    parts = dict(re.findall(r"^=== (\w+)\n(.*?)(?=^=== |\Z)", out, re.M | re.S))
    damon: dict[int, dict[str, str]] = {}
    for m in re.finditer(r"^kd (\d+) (\S+) (\S+)$", parts.get("damon", ""), re.M):
        damon.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3)
    cpu = {
        int(m.group(1)): (int(m.group(2)) + int(m.group(3))) / 100.0
        for m in re.finditer(r"^cpu (\d+) (\d+) (\d+)$", parts.get("kdamond", ""), re.M)
    }
    agent = parse_proc_cpu(parts.get("agentcpu", ""))
    return Sample(
        t=t,
        meminfo=parse_meminfo(parts.get("meminfo", "")),
        cold_pages=parse_numa_maps(parts.get("numa_maps", "")),
        damon=damon,
        kdamond_cpu=cpu,
        agent_exited=bool(parts.get("agent", "").strip()),
        uptime=float(parts.get("uptime", "0").strip() or 0),
        agent_cpu=agent[0] if agent else None,
        agent_sys_cpu=agent[1] if agent else None,
    )


def daemon_config(keys: dict[str, float]) -> str:
    """The daemon's configuration file: ``[tiering]`` on with ``keys``; everything else the
    defaults (the jobs they turn on run too, as under the unit)."""
    lines = ["[tiering]", "enabled = true"]
    lines += [f"{k} = {v:g}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def start_daemon(g: Guest, name: str, keys: dict[str, float], profile: bool = False) -> str:
    """``guestagent run --config /tmp/NAME.toml`` in the background, as the unit runs it but with
    this main file (the drop-in directory the unit's, /etc/guestagent/conf.d): its PID in
    /tmp/NAME.pid, its exit status in /tmp/NAME.rc (the wrapper reaps it), its log in
    /tmp/NAME.log. ``profile``: under cProfile, its statistics in /tmp/NAME.prof when it exits
    (the daemon's loop is one thread, so the profile has every job). Returns the command."""
    command = f"guestagent run --config /tmp/{name}.toml"
    if profile:
        command = (f"python3 -m cProfile -o /tmp/{name}.prof $(command -v guestagent) run "
                   f"--config /tmp/{name}.toml")
    g.run_ok(
        f"rm -f /tmp/{name}.pid /tmp/{name}.rc\n"
        f"cat > /tmp/{name}.toml <<'EOF'\n{daemon_config(keys)}EOF\n"
        f"setsid sh -c '{command} >/tmp/{name}.out 2>/tmp/{name}.log & "
        f"echo $! > /tmp/{name}.pid; wait $!; echo $? > /tmp/{name}.rc' "
        "</dev/null >/dev/null 2>&1 &\n"
        f"sleep 1; cat /tmp/{name}.pid"
    )
    return command


def daemon_status(g: Guest, name: str) -> dict[str, Any]:
    """The daemon's ``guestagent status --json`` ({} while it does not answer); AssertionError
    with its log when the daemon exited."""
    if g.run(f"test -s /tmp/{name}.rc")[1] == 0:
        raise AssertionError(f"the daemon {name} exited with status "
                             f"{g.run_ok(f'cat /tmp/{name}.rc').strip()}:\n"
                             + g.run_ok(f"tail -n 30 /tmp/{name}.log"))
    out, rc = g.run("guestagent status --json 2>/dev/null", timeout=180)
    if rc != 0 or "{" not in out:
        return {}
    status: dict[str, Any] = first_json(out)
    return status


def tiering_entry(status: dict[str, Any]) -> dict[str, Any]:
    """The tiering job's entry of a daemon status ({} when it has none)."""
    job: dict[str, Any] = status.get("jobs", {}).get("tiering", {})
    return job


def tiering_job_status(g: Guest, name: str) -> dict[str, Any]:
    """The tiering job's entry of the daemon's status ({} while it does not answer, or has no
    tiering job yet)."""
    return tiering_entry(daemon_status(g, name))


def status_cpu_between(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """The daemon's CPU answering status requests after the answer ``before`` and before the
    answer ``after`` (its own count: ``status_cpu_s`` includes the answer it is in); None when
    either answer lacks it (an older daemon)."""
    try:
        return round(float(after["status_cpu_s"]) - float(after["status_cpu_this_s"])
                     - float(before["status_cpu_s"]), 4)
    except (KeyError, TypeError, ValueError):
        return None


def wait_until_ticked(g: Guest, name: str) -> dict[str, Any]:
    """The daemon's status once its tiering job has ticked (the daemon's start is over)."""
    deadline = time.monotonic() + READY_S
    while not tiering_entry(status := daemon_status(g, name)).get("ticks"):
        assert time.monotonic() < deadline, (status, g.run_ok(f"tail -n 30 /tmp/{name}.log"))
        time.sleep(2)
    return status


def describe(s: Sample, t0: float) -> str:
    free = " ".join(f"n{n} free {m['MemFree'] // 1024} MiB" for n, m in sorted(s.meminfo.items()))
    cold = " ".join(f"n{n} {p * PAGE // MIB} MiB" for n, p in sorted(s.cold_pages.items()))
    kd = " ".join(
        f"kd{i} {d.get('state')} applied {int(d.get('sz_applied', '0')) // MIB} MiB"
        for i, d in sorted(s.damon.items())
    )
    agent = "" if s.agent_cpu is None else f" | daemon CPU {s.agent_cpu:.2f}s"
    return (f"t+{s.t - t0:5.0f}s (up {s.uptime:.0f}s) {free} | cold buffer: {cold} | {kd}"
            + agent)


def run_scenario(g: Guest, run_dir: Path, max_run_s: float = 420.0,
                 keys: dict[str, float] | None = None, profile: bool = False) -> Record:
    """Drive the scenario in a booted guest of :func:`spec`; the record is saved as it grows.
    ``keys``: the daemon's ``[tiering]`` keys (default :data:`TIERING_KEYS`). ``profile``: the
    daemon under cProfile, the statistics' text in ``<guest>-profile.txt`` (its CPU figures
    then include the profiler's own cost: a breakdown, not a measurement)."""
    rec = Record(profiled=profile)
    out_file = run_dir / f"{g.name}-tiering.json"
    try:
        _scenario(g, rec, max_run_s, TIERING_KEYS if keys is None else keys)
    finally:
        rec.save(out_file)
        log(f"tiering scenario record: {out_file}")
        if profile:
            keep_profile(g, "run", run_dir / f"{g.name}-profile.txt")
        # The guest's whole console (kernel messages included), kept next to the record.
        try:
            text, _ = g.bed.dom0(f"e2e-guest log {g.domid} 1000000", timeout=120)
            (run_dir / f"{g.name}.console").write_text(text)
        except BedError as e:
            log(f"could not keep {g.name}'s console: {e}")
    return rec


#: The daemon's profile, printed in the guest: by own time, then by cumulative time.
PROFILE_PY = """
import pstats, sys
stats = pstats.Stats(sys.argv[1])
stats.sort_stats("tottime").print_stats(45)
stats.sort_stats("cumulative").print_stats(70)
"""


def keep_profile(g: Guest, name: str, path: Path) -> None:
    """The text of the cProfile statistics of the daemon NAME (/tmp/NAME.prof, written when it
    exited: :func:`start_daemon`) in ``path``; a line in the log when there is none."""
    out, rc = g.run(f"cat > /tmp/profile.py <<'EOF'\n{PROFILE_PY}\nEOF\n"
                    f"python3 /tmp/profile.py /tmp/{name}.prof", timeout=300)
    if rc != 0:
        log(f"no profile of the daemon (exit {rc}): {out[-300:]!r}")
        return
    path.write_text(out)
    log(f"the daemon's profile: {path}")


def _scenario(g: Guest, rec: Record, max_run_s: float, keys: dict[str, float]) -> None:
    rec.facts = g.run_ok(
        "uname -r; cat /proc/cmdline; "
        f"ls {KDAMONDS}; cat {KDAMONDS}/nr_kdamonds; "
        "echo lru_gen $(cat /sys/kernel/mm/lru_gen/enabled 2>/dev/null); "
        "echo numa_balancing $(cat /proc/sys/kernel/numa_balancing); "
        "grep -E '^(xen_privcmd|xen_evtchn) ' /proc/modules; "
        "cat /sys/devices/system/node/online; cat /sys/devices/system/node/node*/distance; "
        "cat /sys/devices/system/memory/block_size_bytes; "
        "ls -d /sys/devices/system/node/node*/memory* | tr '\\n' ' '; echo; "
        "cat /sys/devices/system/node/node*/meminfo"
    )
    log("guest facts:\n" + rec.facts)
    # Without the agent: a kdamond accepts migrate_cold and has target_nid (Linux 6.11+).
    rec.migrate_cold_probe = g.run_ok(
        f"""set -e
A={KDAMONDS}
echo 1 > $A/nr_kdamonds
echo 1 > $A/0/contexts/nr_contexts
echo "avail_operations $(cat $A/0/contexts/0/avail_operations)"
echo 1 > $A/0/contexts/0/schemes/nr_schemes
S=$A/0/contexts/0/schemes/0
echo migrate_cold > $S/action
echo "action $(cat $S/action)"
echo "target_nid $(cat $S/target_nid)"
echo 0 > $A/0/contexts/nr_contexts
echo 0 > $A/nr_kdamonds
echo "nr_kdamonds $(cat $A/nr_kdamonds)"
"""
    )
    log("migrate_cold by hand:\n" + rec.migrate_cold_probe)
    rec.status_before = first_json(g.run_ok("guestagent tiering status --json", timeout=180))

    # The kdamond threads' CPU, every half second, until the end.
    g.run_ok(f"cat > /tmp/kdcpu.py <<'EOF'\n{KDAMOND_CPU_PY}\nEOF\n"
             "setsid python3 /tmp/kdcpu.py /tmp/kdamond-cpu.json </dev/null >/dev/null 2>&1 & "
             "echo $! > /tmp/kdcpu.pid")
    # The daemon, as started at boot: before the memory fills.
    rec.tiering_keys = dict(keys)
    rec.agent_command = start_daemon(g, "run", keys, profile=rec.profiled)
    ready = wait_until_ticked(g, "run")
    rec.before_fill = parse_sample(time.monotonic(), g.run_ok(SAMPLE_SH))
    rec.daemon_startup_cpu_s = rec.before_fill.agent_cpu
    log(f"daemon up: tiering job {json.dumps(tiering_entry(ready))}; "
        f"CPU {rec.daemon_startup_cpu_s} s")

    # The cold buffer on node 0.
    meminfo = rec.before_fill.meminfo
    rec.meminfo_before = meminfo
    free0, total0 = meminfo[0]["MemFree"], meminfo[0]["MemTotal"]
    # ~8 MiB for the Python interpreter itself, also on node 0 (seen: a 399 MiB fill took node 0
    # from 441 to 50 MiB free, the kernel reclaiming some page cache on the way).
    rec.fill_mib = int((free0 - total0 * FILL_LEAVE_PCT / 100) // 1024) - 8
    assert rec.fill_mib > 64, f"node 0 has too little free memory to fill: {meminfo[0]}"
    g.run_ok(f"cat > /tmp/cold.py <<'EOF'\n{COLD_PY}\nEOF\nrm -f /tmp/cold.pid")
    t_fill = time.monotonic()
    g.run_ok(
        "setsid numactl --membind=0 --cpunodebind=0 python3 /tmp/cold.py "
        f"{rec.fill_mib} /tmp/cold.pid </dev/null >/tmp/cold.log 2>&1 &"
    )
    out = g.run_ok(
        "i=0; while [ ! -s /tmp/cold.pid ] && [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done; "
        "cat /tmp/cold.pid; cat /tmp/cold.log",
        timeout=660,
    )
    rec.fill_seconds = time.monotonic() - t_fill
    pid = re.search(r"^(\d+)$", out, re.M)
    assert pid, f"the cold buffer process did not come up:\n{out}"
    rec.cold_pid = int(pid.group(1))
    log(f"cold buffer: {rec.fill_mib} MiB on node 0 (pid {rec.cold_pid}) in "
        f"{rec.fill_seconds:.0f}s")
    t0 = time.monotonic()
    rec.samples.append(parse_sample(t0, g.run_ok(SAMPLE_SH)))
    log(describe(rec.samples[0], t0))
    rec.status_after_fill = first_json(g.run_ok("guestagent tiering status --json", timeout=180))
    log("plan after the fill: " + json.dumps(rec.status_after_fill.get("plan")) + " "
        + json.dumps(rec.status_after_fill.get("reasons")))

    stalled = 0
    while time.monotonic() - t0 < max_run_s:
        time.sleep(POLL_S)
        s = parse_sample(time.monotonic(), g.run_ok(SAMPLE_SH))
        rec.samples.append(s)
        log(describe(s, t0))
        # Done when node 0's share of the buffer stopped shrinking for 4 samples after a move.
        prev = rec.samples[-2]
        if s.cold_pages.get(1, 0) > 0 and s.cold_pages.get(1, 0) <= prev.cold_pages.get(1, 0):
            stalled += 1
        else:
            stalled = 0
        if stalled >= 4 or s.agent_exited:
            break

    # What the daemon says it did, then the stop systemd gives it; what it left behind.
    final = daemon_status(g, "run")
    rec.summary = tiering_entry(final)
    rec.status_cpu_in_run_s = status_cpu_between(ready, final)
    out = g.run_ok(
        "kill -TERM $(cat /tmp/run.pid); i=0; "
        "while [ ! -s /tmp/run.rc ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; "
        "echo rc $(cat /tmp/run.rc)",
        timeout=180,
    )
    m = re.search(r"^rc (\d+)$", out, re.M)
    rec.run_rc = int(m.group(1)) if m else None
    rec.agent_log = g.run_ok("cat /tmp/run.log")
    rec.samples.append(parse_sample(time.monotonic(), g.run_ok(SAMPLE_SH)))
    rec.after_stop = g.run_ok(
        f"echo nr_kdamonds $(cat {KDAMONDS}/nr_kdamonds); "
        "echo kdamond_threads $(pgrep -c kdamond); true"
    )
    tracked = g.run_ok("sleep 1; kill $(cat /tmp/kdcpu.pid); cat /tmp/kdamond-cpu.json; echo")
    try:
        rec.kdamond_cpu_tracked = {int(k): float(v) for k, v in first_json(tracked).items()}
    except (AssertionError, ValueError, AttributeError) as e:
        log(f"the kdamond CPU tracker left nothing readable ({e}): {tracked[:200]!r}")
    for key in ("nr_kdamonds", "kdamond_threads"):
        mm = re.search(rf"^{key} (\d+)$", rec.after_stop, re.M)
        value = int(mm.group(1)) if mm else None
        if key == "nr_kdamonds":
            rec.nr_kdamonds_after = value
        else:
            rec.kdamond_threads_after = value
    log(f"daemon rc {rec.run_rc}, tiering job {json.dumps(rec.summary)}, after stop: "
        + " ".join(rec.after_stop.split()))
