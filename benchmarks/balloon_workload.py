"""The balloon benchmark's workloads: scripted runs inside the guest, each reporting its failures.

    python3 balloon_workload.py WORKLOAD [--ceiling-mib N] [--time-scale X] [--xenstore-key KEY]
    python3 balloon_workload.py --list

Standard library only: it runs in the e2e guest as ``python3 balloon_workload.py ...`` without the
agent's package. Sizes are written for a 1 GiB guest and scaled by ``--ceiling-mib / 1024``; every
deliberate sleep is multiplied by ``--time-scale`` (0 in the unit tests).

The suite (issue 12, item 2). Half of it is held out: the policies are never tuned on it
(``HELD_OUT``; ``benchmarks/README.md`` says the same).

=====================  =========================================================================
tuned
anon-grow-shrink       anonymous memory grown in 4 steps of 96 MiB, held, freed in 4 steps
cache-scan-twice       128 MiB of files read into the page cache, read again 5 s later
big-alloc-after-idle   45 s idle, then ONE mmap of half the ceiling (512 MiB), touched at once
sharp-spikes           3 spikes of 256 MiB (mmap + touch as fast as the guest can), 10 s apart
held out
long-idle              a small working set, 100 s of idle, then the working set used again
slow-leak              4 MiB leaked per second with malloc (``bytearray``), 256 MiB in all
jvm-heap               a 640 MiB heap committed at start, 64 MiB touched; after 20 s of idle the
                       rest is touched in 64 MiB steps up to 512 MiB, then all of it once more
fork-heavy             a 128 MiB parent forking 4 rounds of 6 children, each touching 24 MiB of
                       its own and dirtying 8 MiB of the parent's (copy on write)
other
phased                 the session-4 benchmark's workload (grow, cache, idle, spike, shrink)
=====================  =========================================================================

Output on stdout, one JSON object a line:

* a phase line at every phase change: ``{"t": s since start, "mono": CLOCK_MONOTONIC, "phase":
  name, "busy_s": run time without the deliberate sleeps, "pid": the body's process}``, plus
  ``"spike": true`` on a phase that asks for much memory at once (the benchmark times the
  balloon's answer from it) and ``"cache": true`` on a phase whose page cache is in use (the
  bound keeps it);
* the last line, the summary: ``{"summary": true, "workload": ..., "done": all phases ran,
  "ok": done and no failure, "run_time_s", "busy_s", "phases": {name: seconds},
  "failures": [{"kind", "phase", "t", "detail"}]}``.

Failures are detected and reported, never a traceback: ``enomem`` (``mmap`` or ``malloc`` refused,
``MemoryError``), ``fork`` (``os.fork`` raised ``OSError``), ``child-killed`` (a child process died
of a signal: the OOM killer's SIGKILL), ``child-failed`` (a child exited non-zero), ``killed``
(the workload itself died of a signal) and ``error`` (anything else). The workload body runs in a
child of a small supervisor, so even an OOM kill of the body is reported. An allocation that
fails ends the run, as it ends a real program: the rest of its phases never happen. Exit status:
0 ok, 1 a failure was reported, 2 bad usage, 3 an internal error.

With ``--xenstore-key``, each phase's name is also written to that key (``xenstore-write``) so
Dom0 can align its samples with the phases; a failed write is reported as a failure (``fork``
when the process could not start) but does not end the run.
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

MIB = 1 << 20
PAGE = 4096
READ_CHUNK = 1 << 20

#: The half the policies may be tuned on, and the half they must never be tuned on.
TUNED = ("anon-grow-shrink", "cache-scan-twice", "big-alloc-after-idle", "sharp-spikes")
HELD_OUT = ("long-idle", "slow-leak", "jvm-heap", "fork-heavy")
#: Exit status of a fork-heavy child whose own allocation failed.
CHILD_ENOMEM = 12


class Failure(Exception):
    """A failure the workload detected; ends the run (the summary reports it)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Run:
    """One workload run: phase marks, deliberate sleeps, failures."""

    def __init__(self, args: argparse.Namespace, out: Any = None) -> None:
        self.args = args
        self.out = out if out is not None else sys.stdout
        self.t0 = time.monotonic()
        self.sleeping = 0.0
        self.phases: dict[str, float] = {}
        self.phase: str | None = None
        self.phase_t = self.t0
        self.failures: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mib(self, n: float) -> int:
        """``n`` MiB of a 1 GiB guest, scaled to the ceiling (at least one page)."""
        return max(PAGE, int(n * self.args.ceiling_mib / 1024 * MIB) // PAGE * PAGE)

    def emit(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()

    def mark(self, phase: str, spike: bool = False, cache: bool = False, **extra: Any) -> None:
        t = time.monotonic()
        if self.phase is not None:
            self.phases[self.phase] = round(t - self.phase_t, 3)
        self.phase, self.phase_t = phase, t
        line: dict[str, Any] = {"t": round(t - self.t0, 3), "mono": round(t, 3), "phase": phase,
                                "busy_s": round(t - self.t0 - self.sleeping, 3),
                                "pid": os.getpid(), **extra}
        if spike:
            line["spike"] = True
        if cache:
            line["cache"] = True
        self.emit(line)
        if self.args.xenstore_key:
            self.xenstore_write(phase)

    def xenstore_write(self, value: str) -> None:
        try:
            rc = subprocess.run(["xenstore-write", self.args.xenstore_key, value],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                check=False).returncode
        except OSError as e:
            self.fail("fork", f"xenstore-write: {e}", fatal=False)
            return
        if rc != 0:
            self.fail("error", f"xenstore-write exited {rc}", fatal=False)

    def fail(self, kind: str, detail: str, fatal: bool = True) -> None:
        self.failures.append({"kind": kind, "phase": self.phase, "t": round(self.now(), 3),
                              "detail": detail})
        if fatal:
            raise Failure(kind, detail)

    def sleep(self, seconds: float) -> None:
        seconds *= self.args.time_scale
        if seconds <= 0:
            return
        t = time.monotonic()
        time.sleep(seconds)
        self.sleeping += time.monotonic() - t

    def alloc(self, size: int, what: str = "mmap") -> mmap.mmap:
        """Private anonymous memory (counted in Committed_AS at once); ENOMEM is a failure."""
        try:
            return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except MemoryError:
            self.fail("enomem", f"{what} {size // MIB} MiB: MemoryError")
        except OSError as e:
            kind = "enomem" if e.errno == errno.ENOMEM else "error"
            self.fail(kind, f"{what} {size // MIB} MiB: {e}")
        raise AssertionError("unreachable")  # pragma: no cover

    def malloc(self, size: int) -> bytearray:
        """``size`` bytes from malloc, zeroed (so touched); MemoryError is a failure."""
        try:
            return bytearray(size)
        except MemoryError:
            self.fail("enomem", f"malloc {size // MIB} MiB: MemoryError")
        raise AssertionError("unreachable")  # pragma: no cover

    def summary(self, done: bool) -> dict[str, Any]:
        last = self.phase
        if last is not None and last not in self.phases and last not in ("end", "failed"):
            self.phases[last] = round(time.monotonic() - self.phase_t, 3)
        return {
            "summary": True,
            "workload": self.args.workload,
            "done": done,
            "ok": done and not self.failures,
            "run_time_s": round(self.now(), 3),
            "busy_s": round(self.now() - self.sleeping, 3),
            "phases": self.phases,
            "failures": self.failures,
        }


def touch(m: mmap.mmap | bytearray, size: int, value: int, start: int = 0) -> None:
    """Write one byte in every page of ``[start, start + size)`` (faults them in if new)."""
    for off in range(start, min(start + size, len(m)), PAGE):
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


# --------------------------------------------------------------------------------------------
# The workloads. Each takes a Run, marks its phases and raises Failure (via Run.fail) on one.


def anon_grow_shrink(r: Run) -> None:
    """A batch job's heap: grows in steps, is used, is given back in steps."""
    step = r.mib(96)
    chunks: list[mmap.mmap] = []
    r.mark("grow")
    for i in range(4):
        m = r.alloc(step)
        touch(m, step, 1)
        chunks.append(m)
        if i < 3:
            r.sleep(2)
    r.mark("hold")
    for m in chunks:
        touch(m, step, 2)
    r.sleep(5)
    r.mark("shrink")
    while chunks:
        chunks.pop().close()
        r.sleep(3)
    r.mark("tail")
    r.sleep(8)


def cache_scan_twice(r: Run) -> None:
    """A scan over files that fit in the page cache, read again soon after: the cache is in use."""
    files = file_set(r.args.files, r.mib(128))
    anon = r.mib(64)
    r.mark("anon", files=len(files))
    m = r.alloc(anon)
    touch(m, anon, 1)
    r.mark("scan-1", cache=True)
    read = read_files(files)
    r.mark("pause", cache=True, cache_bytes=read)
    r.sleep(5)
    r.mark("scan-2", cache=True)
    read_files(files)
    touch(m, anon, 2)
    r.mark("tail")
    m.close()
    r.sleep(8)


def big_alloc_after_idle(r: Run) -> None:
    """After an idle (the balloon has shrunk the guest), one allocation of half the ceiling."""
    small = r.mib(32)
    r.mark("warm")
    m = r.alloc(small)
    touch(m, small, 1)
    r.mark("idle")
    r.sleep(45)
    big = r.mib(512)
    r.mark("alloc", spike=True, mib=big // MIB)
    b = r.alloc(big)
    touch(b, big, 2)
    r.mark("hold")
    touch(m, small, 3)
    r.sleep(3)
    r.mark("tail")
    b.close()
    m.close()
    r.sleep(3)


def sharp_spikes(r: Run) -> None:
    """Short spikes of anonymous memory, each freed before the next (a bursty service)."""
    base = r.mib(64)
    spike = r.mib(256)
    r.mark("base")
    m = r.alloc(base)
    touch(m, base, 1)
    r.sleep(3)
    for i in range(1, 4):
        r.mark(f"spike-{i}", spike=True, mib=spike // MIB)
        s = r.alloc(spike)
        touch(s, spike, 2)
        touch(m, base, 3)
        r.sleep(3)
        r.mark(f"calm-{i}")
        s.close()
        r.sleep(10)


def long_idle(r: Run) -> None:
    """A small working set and its files, a long idle, then the same work again."""
    files = file_set(r.args.files, r.mib(48))
    ws = r.mib(96)
    r.mark("warm", cache=True, files=len(files))
    m = r.alloc(ws)
    touch(m, ws, 1)
    read_files(files)
    r.mark("idle")
    r.sleep(100)
    r.mark("wake", cache=True)
    touch(m, ws, 2)
    read_files(files)
    r.mark("tail")
    m.close()
    r.sleep(5)


def slow_leak(r: Run) -> None:
    """4 MiB a second leaked with malloc and kept live (re-touched every 8 s), then freed."""
    step = r.mib(4)
    leaked: list[bytearray] = []
    r.mark("leak")
    for i in range(64):
        leaked.append(r.malloc(step))
        if i % 8 == 7:
            for b in leaked:
                touch(b, step, 1)
        r.sleep(1)
    r.mark("free", mib=sum(len(b) for b in leaked) // MIB)
    leaked.clear()
    r.mark("tail")
    r.sleep(10)


def jvm_heap(r: Run) -> None:
    """A heap committed at start (as -Xms does) and touched only later, as the program warms up."""
    heap_size = r.mib(640)
    first = r.mib(64)
    step = r.mib(64)
    used = r.mib(512)
    r.mark("reserve", mib=heap_size // MIB)
    heap = r.alloc(heap_size, "heap mmap")
    touch(heap, first, 1)
    r.mark("warm-idle")
    r.sleep(20)
    r.mark("ramp", spike=True)
    off = first
    while off < used:
        touch(heap, step, 2, start=off)
        off += step
        r.sleep(1)
    r.mark("gc")
    touch(heap, used, 3)
    r.sleep(5)
    r.mark("exit")
    heap.close()
    r.sleep(3)


def fork_heavy(r: Run) -> None:
    """A parent with a heap forking rounds of children (a pre-fork server, a build)."""
    heap_size = r.mib(128)
    own = r.mib(24)
    dirty = r.mib(8)
    r.mark("heap")
    heap = r.alloc(heap_size)
    touch(heap, heap_size, 1)
    r.mark("forks", spike=True)
    for round_ in range(4):
        pids = [spawn_child(r, heap, own, dirty, round_) for _ in range(6)]
        reap_children(r, pids)
        r.sleep(2)
    r.mark("tail")
    heap.close()
    r.sleep(8)


def spawn_child(r: Run, heap: mmap.mmap, own: int, dirty: int, round_: int) -> int:
    """Fork one child that touches ``own`` new bytes and dirties ``dirty`` of the parent's heap."""
    r.out.flush()
    try:
        pid = os.fork()
    except OSError as e:
        r.fail("fork", f"os.fork in round {round_ + 1}: {e}")
        raise AssertionError("unreachable") from e  # pragma: no cover
    if pid == 0:  # pragma: no cover - the child (its exit status is the test's evidence)
        code = 0
        try:
            m = mmap.mmap(-1, own, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            touch(m, own, 5)
            touch(heap, dirty, 6)
            time.sleep(0.5 * r.args.time_scale)
        except (MemoryError, OSError):
            code = CHILD_ENOMEM
        os._exit(code)
    return pid


def reap_children(r: Run, pids: list[int]) -> None:
    """Wait for every child; a child killed or failed is a failure (after all are reaped)."""
    problems: list[tuple[str, str]] = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        problem = child_problem(status)
        if problem is not None:
            problems.append(problem)
    for kind, detail in problems[:-1]:
        r.fail(kind, detail, fatal=False)
    if problems:
        r.fail(*problems[-1])


def child_problem(status: int) -> tuple[str, str] | None:
    """``(kind, detail)`` for a child's wait status that is not a clean exit, else None."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "child-killed", f"child killed by {signal_name(sig)}"
    code = os.WEXITSTATUS(status)
    if code == CHILD_ENOMEM:
        return "enomem", "child's mmap failed (ENOMEM)"
    if code != 0:
        return "child-failed", f"child exited {code}"
    return None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def phased(r: Run) -> None:
    """The session-4 benchmark's workload (see benchmarks/README.md); kept for comparison."""
    a = r.args
    files = file_set(a.files, a.cache_mib * MIB)
    r.mark("grow")
    arena = r.alloc(a.arena_mib * MIB)
    touch(arena, a.anon_mib * MIB, 1)
    touch(arena, a.anon_mib * MIB, 2)
    r.mark("cache", cache=True, files=len(files))
    read_files(files)
    read = read_files(files)
    r.mark("idle", cache_bytes=read)
    r.sleep(a.idle_s)
    r.mark("spike", spike=True, cache=True)
    spike = r.alloc(max(1, a.spike_mib) * MIB)
    touch(spike, a.spike_mib * MIB, 3)
    touch(arena, a.anon_mib * MIB, 4)
    read_files(files)
    r.sleep(a.spike_hold_s)
    spike.close()
    r.mark("shrink")
    arena.close()
    r.sleep(a.tail_s)


WORKLOADS: dict[str, Callable[[Run], None]] = {
    "anon-grow-shrink": anon_grow_shrink,
    "cache-scan-twice": cache_scan_twice,
    "big-alloc-after-idle": big_alloc_after_idle,
    "sharp-spikes": sharp_spikes,
    "long-idle": long_idle,
    "slow-leak": slow_leak,
    "jvm-heap": jvm_heap,
    "fork-heavy": fork_heavy,
    "phased": phased,
}


# --------------------------------------------------------------------------------------------
# Running one: the body in a child, a supervisor that reports even an OOM kill of it


def run_body(args: argparse.Namespace, out: Any = None) -> int:
    """Run the workload in this process; print the phase lines and the summary; exit status."""
    r = Run(args, out)
    code = 0
    try:
        WORKLOADS[args.workload](r)
        r.mark("end")
        done = True
    except Failure:
        r.mark("failed")
        done, code = False, 1
    except MemoryError:
        r.fail("enomem", "MemoryError", fatal=False)
        done, code = False, 1
    except Exception as e:  # the summary must still be printed, never a traceback
        r.fail("error", f"{type(e).__name__}: {e}", fatal=False)
        done, code = False, 3
    if r.failures and code == 0:
        code = 1  # a failure that did not end the run (a failed xenstore-write)
    r.emit(r.summary(done))
    return code


def supervise(args: argparse.Namespace, out: Any = None) -> int:
    """Fork the body, forward its lines; if it dies of a signal, print the summary for it."""
    out = out if out is not None else sys.stdout
    t0 = time.monotonic()
    rfd, wfd = os.pipe()
    out.flush()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        return report_unstarted(args, out, f"os.fork of the workload: {e}")
    if pid == 0:  # pragma: no cover - the child; its output is what the tests check
        os.close(rfd)
        code = 3
        try:
            with os.fdopen(wfd, "w") as pipe:
                code = run_body(args, pipe)
        finally:
            os._exit(code)
    os.close(wfd)
    state = forward(rfd, out)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return report_killed(args, out, state, os.WTERMSIG(status), time.monotonic() - t0)
    code = os.WEXITSTATUS(status)
    if state.get("summary") is None:
        return report_killed(args, out, state, None, time.monotonic() - t0, code)
    return code


def forward(fd: int, out: Any) -> dict[str, Any]:
    """Copy the body's lines to ``out``; remember its phases, last phase and summary."""
    state: dict[str, Any] = {"phases": {}, "phase": None, "phase_t": 0.0, "busy_s": 0.0,
                             "summary": None}
    with os.fdopen(fd, "r") as pipe:
        for line in pipe:
            out.write(line)
            out.flush()
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("summary"):
                state["summary"] = obj
            elif "phase" in obj:
                if state["phase"] is not None:
                    state["phases"][state["phase"]] = round(obj["t"] - state["phase_t"], 3)
                state["phase"], state["phase_t"] = obj["phase"], float(obj["t"])
                state["busy_s"] = float(obj.get("busy_s", 0.0))
    return state


def report_killed(args: argparse.Namespace, out: Any, state: dict[str, Any], sig: int | None,
                  run_s: float, code: int | None = None) -> int:
    detail = (f"the workload was killed by {signal_name(sig)}" if sig is not None
              else f"the workload exited {code} without a summary")
    failure = {"kind": "killed" if sig is not None else "error", "phase": state["phase"],
               "t": round(run_s, 3), "detail": detail}
    if state["phase"] is not None:
        state["phases"][state["phase"]] = round(run_s - state["phase_t"], 3)
    out.write(json.dumps({
        "summary": True, "workload": args.workload, "done": False, "ok": False,
        "run_time_s": round(run_s, 3), "busy_s": state["busy_s"], "phases": state["phases"],
        "failures": [failure],
    }, sort_keys=True) + "\n")
    out.flush()
    return 1


def report_unstarted(args: argparse.Namespace, out: Any, detail: str) -> int:
    out.write(json.dumps({
        "summary": True, "workload": args.workload, "done": False, "ok": False,
        "run_time_s": 0.0, "busy_s": 0.0, "phases": {},
        "failures": [{"kind": "fork", "phase": None, "t": 0.0, "detail": detail}],
    }, sort_keys=True) + "\n")
    out.flush()
    return 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", nargs="?", default="phased", choices=sorted(WORKLOADS),
                   help="which workload (default: phased)")
    p.add_argument("--list", action="store_true", help="print the workloads, tuned and held out")
    p.add_argument("--ceiling-mib", type=int, default=1024,
                   help="the guest's ceiling; sizes are for 1024 and scale with it")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every deliberate sleep (0: none)")
    p.add_argument("--files", nargs="+", default=["/usr/lib", "/usr/share"],
                   help="where the page-cache workloads read files from")
    p.add_argument("--xenstore-key", default="", help="write each phase's name to this key")
    p.add_argument("--no-supervisor", action="store_true",
                   help="run the body in this process (an OOM kill then goes unreported)")
    ph = p.add_argument_group("phased")
    ph.add_argument("--arena-mib", type=int, default=512)
    ph.add_argument("--anon-mib", type=int, default=320)
    ph.add_argument("--cache-mib", type=int, default=192)
    ph.add_argument("--idle-s", type=float, default=45.0)
    ph.add_argument("--spike-mib", type=int, default=192)
    ph.add_argument("--spike-hold-s", type=float, default=10.0)
    ph.add_argument("--tail-s", type=float, default=30.0)
    args = p.parse_args(argv)
    if not 0 < args.anon_mib <= args.arena_mib:
        p.error("need 0 < --anon-mib <= --arena-mib")
    for name in ("cache_mib", "spike_mib"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.ceiling_mib <= 0 or args.time_scale < 0:
        p.error("need --ceiling-mib > 0 and --time-scale >= 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        print(json.dumps({"tuned": list(TUNED), "held_out": list(HELD_OUT),
                          "all": sorted(WORKLOADS)}, sort_keys=True))
        return 0
    if args.no_supervisor:
        return run_body(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
