"""Synthetic, recorded-style traces for tests and the replay benchmark (not measurements).

They model a 1 GiB PV guest (static-max = memory/target = 1048576 KiB, MemTotal 998576 kB as a
guest of that size shows after kernel reservations) recorded under the ``none`` policy, i.e. at
full size, once per second, with the same fields ``guestagent balloon record`` writes. The
workload follows the phases of the issue's benchmark: grow an anonymous working set, read files
into the page cache, go idle, spike, shrink. PSI averages are derived from a per-second stall with
the kernel's exponential decay; refaults spike when the spike forces the page cache out.

``python -m guestagent.balloon.synthetic DIR`` writes the trace files kept in ``tests/traces``.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from guestagent.balloon.signals import MemorySignals
from guestagent.balloon.trace import Trace, trace_header, write_trace
from guestagent.units import GIB_KB, MIB_KB

STATIC_MAX_KB = GIB_KB
#: A 1 GiB PV guest's MemTotal (its balloon current_kb minus kernel reservations).
MEM_TOTAL_KB = 998_576
#: Unreclaimable kernel memory (slab, page tables, stacks) outside anon and page cache.
KERNEL_KB = 48 * MIB_KB
#: Committed_AS above anon: mappings reserved but never touched.
OVERCOMMIT_KB = 250 * MIB_KB
TOTALRESERVE_KB = 9_820


def _decay(avg: float, sample: float, window_s: float) -> float:
    factor = math.exp(-1.0 / window_s)
    return avg * factor + sample * (1.0 - factor)


class _Guest:
    """Per-second bookkeeping that turns anon/cache sizes and stalls into snapshots."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = 0
        self.anon = 110 * MIB_KB
        self.cache = 175 * MIB_KB
        self.some = [0.0, 0.0, 0.0]
        self.full = [0.0, 0.0, 0.0]
        self.some_total = 1_843_201
        self.full_total = 912_040
        self.refaults = 48_331
        self.balloon_kb = STATIC_MAX_KB
        self.xs_target_kb = STATIC_MAX_KB

    @property
    def mem_total(self) -> int:
        return MEM_TOTAL_KB - (STATIC_MAX_KB - self.balloon_kb)

    def fit_cache(self) -> int:
        """Evict page cache that no longer fits; returns how much was evicted (KiB)."""
        room = self.mem_total - KERNEL_KB - self.anon - 8 * MIB_KB
        evicted = max(0, self.cache - max(0, room))
        self.cache -= evicted
        return evicted

    def snapshot(self, stall_pct: float, refaults_per_s: int, fired: bool) -> MemorySignals:
        stall_pct = min(100.0, max(0.0, stall_pct))
        for i, window in enumerate((10.0, 60.0, 300.0)):
            self.some[i] = _decay(self.some[i], stall_pct, window)
            self.full[i] = _decay(self.full[i], stall_pct * 0.4, window)
        self.some_total += int(stall_pct / 100 * 1_000_000)
        self.full_total += int(stall_pct * 0.4 / 100 * 1_000_000)
        self.refaults += refaults_per_s
        free = max(4 * MIB_KB, self.mem_total - KERNEL_KB - self.anon - self.cache)
        snap = MemorySignals(
            timestamp=float(self.t),
            mem_total_kb=self.mem_total,
            mem_free_kb=free,
            mem_available_kb=max(0, free + int(self.cache * 0.95) - 5 * MIB_KB),
            cached_kb=self.cache,
            committed_as_kb=self.anon + OVERCOMMIT_KB,
            swap_total_kb=524_284,
            swap_free_kb=524_284,
            some_avg10=round(self.some[0], 2),
            some_avg60=round(self.some[1], 2),
            some_avg300=round(self.some[2], 2),
            some_total_us=self.some_total,
            full_avg10=round(self.full[0], 2),
            full_avg60=round(self.full[1], 2),
            full_avg300=round(self.full[2], 2),
            full_total_us=self.full_total,
            refaults=self.refaults,
            refault_anon=0,
            refault_file=self.refaults,
            pswpin=0,
            oom_kill=0,
            balloon_target_kb=self.balloon_kb,
            balloon_current_kb=self.balloon_kb,
            totalreserve_kb=TOTALRESERVE_KB,
            xs_target_kb=self.xs_target_kb,
            xs_static_max_kb=STATIC_MAX_KB,
            psi_trigger_fired=fired,
        )
        self.t += 1
        return snap

    def noise(self, active: bool) -> float:
        return self.rng.uniform(0.0, 0.05) if active else self.rng.uniform(0.0, 0.005)


def phases_trace(seed: int = 1) -> Trace:
    """600 s: idle 60 s, grow anon to 560 MiB, stream files into the cache, idle, spike, shrink."""
    g = _Guest(seed)
    snaps = []
    for t in range(601):
        refaults = g.rng.randint(0, 5)
        stall = g.noise(active=False)
        fired = False
        if 60 <= t < 180:  # grow an anonymous working set
            g.anon = 110 * MIB_KB + (t - 60) * (450 * MIB_KB) // 120
            stall = g.noise(active=True)
        elif 180 <= t < 300:  # read 480 MiB of files into the page cache
            g.cache += 4 * MIB_KB
            refaults += g.rng.randint(5, 20)
            stall = g.noise(active=True)
        elif t == 300:  # the big process exits
            g.anon = 200 * MIB_KB
        elif 420 <= t < 425:  # spike: 450 MiB more anon within 5 s
            g.anon += 90 * MIB_KB
        elif t >= 450:  # shrink: back to a small working set
            g.anon = 150 * MIB_KB
        evicted = g.fit_cache()
        if evicted and 420 <= t < 430:
            # Part of what the spike pushed out was hot: it faults right back.
            refaults += 3000
            stall = 12.0 + g.rng.uniform(0.0, 6.0)
            fired = stall >= 15.0
        elif evicted:
            stall += 0.05
        snaps.append(g.snapshot(stall, refaults, fired))
    header = trace_header(
        source="synthetic: guestagent.balloon.synthetic.phases_trace (a model, not a recording)",
        interval_s=1.0,
        note="1 GiB PV guest under policy none: idle, grow anon, page cache, idle, spike, shrink",
    )
    return Trace(header=header, snapshots=snaps)


def override_trace(seed: int = 2) -> Trace:
    """300 s idle guest; the toolstack lowers memory/target to 768 MiB at 100 s, back at 200 s."""
    g = _Guest(seed)
    snaps = []
    for t in range(301):
        if t == 100:
            g.xs_target_kb = g.balloon_kb = 768 * MIB_KB
        elif t == 200:
            g.xs_target_kb = g.balloon_kb = STATIC_MAX_KB
        g.fit_cache()
        snaps.append(g.snapshot(g.noise(active=False), g.rng.randint(0, 5), False))
    header = trace_header(
        source="synthetic: guestagent.balloon.synthetic.override_trace (a model, not a recording)",
        interval_s=1.0,
        note="idle 1 GiB PV guest; xl mem-set 768 MiB at t=100 s, 1024 MiB at t=200 s",
    )
    return Trace(header=header, snapshots=snaps)


def two_spikes_trace(seed: int = 3) -> Trace:
    """240 s: the issue 12 incident. Idle 60 s; a spike allocates 675 MiB at 45 MiB/s, holds it
    10 s and frees it (t = 60-85); 35 s later (t = 120) the same spike again; then idle.

    On the Xen 4.17 testbed (``vm.overcommit_memory=1``) ``pressure`` answered the first spike (308
    -> 1024 MiB in 15 s), judged it over and gave back 660 MiB within 15 s; the second spike's grow
    came too late and the OOM killer killed the workload (peak avg10 30 %, 25,000 refaults).
    """
    g = _Guest(seed)
    snaps = []
    for t in range(241):
        refaults = g.rng.randint(0, 5)
        stall = g.noise(active=False)
        fired = False
        for start in (60, 120):
            if start <= t < start + 15:
                g.anon = 110 * MIB_KB + (t - start + 1) * 45 * MIB_KB
            elif t == start + 25:
                g.anon = 110 * MIB_KB
        evicted = g.fit_cache()
        if evicted:
            # The spike pushes the page cache out, and the system's hot file pages fault back.
            refaults += 2500
            stall = 12.0 + g.rng.uniform(0.0, 8.0)
            fired = stall >= 15.0
        snaps.append(g.snapshot(stall, refaults, fired))
    header = trace_header(
        source="synthetic: guestagent.balloon.synthetic.two_spikes_trace "
        "(a model, not a recording)",
        interval_s=1.0,
        note="1 GiB PV guest under policy none: idle, a 675 MiB spike for 25 s, the same 35 s "
        "later (issue 12's OOM kill)",
    )
    return Trace(header=header, snapshots=snaps)


TRACES = {
    "synthetic-phases-1g.jsonl": phases_trace,
    "synthetic-override-1g.jsonl": override_trace,
    "synthetic-two-spikes-1g.jsonl": two_spikes_trace,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m guestagent.balloon.synthetic DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    for name, make in TRACES.items():
        trace = make()
        with open(out_dir / name, "w", encoding="ascii") as f:
            write_trace(f, trace.header, trace.snapshots)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
