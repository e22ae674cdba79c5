"""The balloon benchmark's workload: one scripted run with phases, inside the guest.

Standard library only (it runs in the e2e guest as ``python3 balloon_workload.py ...``, without
the agent's package). Phases, in order:

1. ``grow``: reserve an anonymous arena of ``--arena-mib`` (as a runtime reserves its heap:
   ``mmap`` of private writable memory, which Linux counts in Committed_AS at once) and touch the
   first ``--anon-mib`` of it, page by page; then touch that working set once more.
2. ``cache``: read a fixed set of files (``--cache-mib`` in total, the first files by path under
   ``--files``) into the page cache, twice: the second pass is the "use" of that cache.
3. ``idle``: sleep ``--idle-s`` (a balloon policy gives memory back now).
4. ``spike``: allocate and touch ``--spike-mib`` more anonymous memory as fast as the guest can,
   touch the working set, read the file set once more, hold ``--spike-hold-s``, then free the
   spike.
5. ``shrink``: free the working set and sleep ``--tail-s`` (the policy should give it back).

Every phase change is printed as one JSON line on stdout (``{"t": seconds since start, "phase":
..., "busy_s": ...}``) and, with ``--xenstore-key``, written to that xenstore key with
``xenstore-write`` so Dom0 can align its own samples with the phases. The last line is the summary:
``{"done": true, "run_time_s": ..., "busy_s": ..., "phases": {...}}``. ``run_time_s`` is the whole
run including the deliberate sleeps; ``busy_s`` leaves them out (only the work: touching memory and
reading files), so a slowdown from a squeezed cache or a lagging balloon is not diluted by them.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time
from typing import Any

MIB = 1 << 20
PAGE = 4096
READ_CHUNK = 1 << 20


class Workload:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.sleeping = 0.0
        self.phases: dict[str, float] = {}
        self.phase: str | None = None
        self.phase_t = self.t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, phase: str, **extra: Any) -> None:
        t = time.monotonic()
        if self.phase is not None:
            self.phases[self.phase] = round(t - self.phase_t, 3)
        self.phase, self.phase_t = phase, t
        line = {"t": round(t - self.t0, 3), "phase": phase,
                "busy_s": round(t - self.t0 - self.sleeping, 3), **extra}
        print(json.dumps(line, sort_keys=True), flush=True)
        if self.args.xenstore_key:
            subprocess.run(["xenstore-write", self.args.xenstore_key, phase], check=False)

    def sleep(self, seconds: float) -> None:
        t = time.monotonic()
        time.sleep(seconds)
        self.sleeping += time.monotonic() - t


def touch(m: mmap.mmap, size: int, value: int) -> None:
    """Write one byte in every page of the first ``size`` bytes (faults them in if new)."""
    for off in range(0, size, PAGE):
        m[off] = value


def file_set(roots: list[str], limit: int) -> list[str]:
    """The first regular files by path under ``roots`` until their sizes reach ``limit`` bytes."""
    chosen: list[str] = []
    total = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path) or st.st_size == 0:
                    continue
                chosen.append(path)
                total += st.st_size
                if total >= limit:
                    return chosen
    return chosen


def read_files(paths: list[str]) -> int:
    total = 0
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    chunk = f.read(READ_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
        except OSError:
            continue
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = file_set(args.files, args.cache_mib * MIB)
    w = Workload(args)
    w.mark("grow")
    arena = mmap.mmap(-1, args.arena_mib * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(arena, args.anon_mib * MIB, 1)
    touch(arena, args.anon_mib * MIB, 2)

    w.mark("cache", files=len(files))
    read_files(files)
    read = read_files(files)

    w.mark("idle", cache_bytes=read)
    w.sleep(args.idle_s)

    w.mark("spike")
    spike = mmap.mmap(-1, args.spike_mib * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(spike, args.spike_mib * MIB, 3)
    touch(arena, args.anon_mib * MIB, 4)
    read_files(files)
    w.sleep(args.spike_hold_s)
    spike.close()

    w.mark("shrink")
    arena.close()
    w.sleep(args.tail_s)

    w.mark("end")
    return {
        "done": True,
        "run_time_s": round(w.now(), 3),
        "busy_s": round(w.now() - w.sleeping, 3),
        "phases": w.phases,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arena-mib", type=int, default=512)
    p.add_argument("--anon-mib", type=int, default=320)
    p.add_argument("--cache-mib", type=int, default=192)
    p.add_argument("--files", nargs="+", default=["/usr/lib", "/usr/share"])
    p.add_argument("--idle-s", type=float, default=45.0)
    p.add_argument("--spike-mib", type=int, default=192)
    p.add_argument("--spike-hold-s", type=float, default=10.0)
    p.add_argument("--tail-s", type=float, default=30.0)
    p.add_argument("--xenstore-key", default="", help="write each phase's name to this key")
    args = p.parse_args(argv)
    if not 0 < args.anon_mib <= args.arena_mib:
        p.error("need 0 < --anon-mib <= --arena-mib")
    for name in ("cache_mib", "spike_mib"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.spike_mib == 0:
        args.spike_mib = 1
    return args


def main(argv: list[str]) -> int:
    summary = run(parse_args(argv))
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
