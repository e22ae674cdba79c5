"""The agent's xenstore client against Xen's C library and pyxs, in a guest (issue 18, item 2).

Run in a guest on the testbed (the guest image has ``xenstore-utils``, gcc, the agent installed
and its sources in ``/usr/src/guestagent``)::

    python -m tests.e2e run --pv --memory 512 --vcpus 2 --timeout 900 -- \\
        'python3 /usr/src/guestagent/benchmarks/xenstore_ops.py --json'

and with pyxs (``--pyxs-dir``: benchmarks/README.md gives the command that brings its sources
into the guest), or anywhere with a xenstore (``$XENSTORED_PATH`` is honoured by every side). All
sides talk to the same xenstored over the same transport (``/dev/xen/xenbus`` in a guest), on the
guest's own ``data/xsbench`` subtree, removed at the end.

* The agent: ``XenstoreClient`` (the C doorway's framing, Python's wire code), N operations in a
  row inside one transaction, timed together: seconds per operation.
* The C library: ``xenstore-read``, ``xenstore-write`` and ``xenstore-list`` (libxenstore). Each
  is a process that opens the connection, starts a transaction, does one operation per argument
  and ends the transaction. Its start-up is subtracted by running it twice, with 1 argument and
  with 1 + K arguments: (t(1+K) - t(1)) / K is one operation, start-up, connection and
  transaction cancelled out. The agent's figures are taken inside a transaction for that reason
  (the same requests on the wire); outside one they are printed too.
* A 100-key transaction: the agent's ``run_transaction`` writing 100 keys, start and commit
  included; for the C library 100 of its writes (in a transaction, as measured) plus two of its
  reads for the transaction's start and end (each one request and one reply, as a read).
* Watch-event latency: one connection watches ``data/xsbench/w``, writes a new value to it and
  waits for the event, N times; the time from the write to the event, per event. The agent's
  client against ``xenstore_watch.c`` (libxenstore's ``xs_watch``/``xs_write``/
  ``xs_read_watch``, compiled here with gcc, timed inside the process: its start-up is out).
* pyxs (``--pyxs-dir DIR``, a pyxs source tree: pure Python, imported from DIR and nowhere
  else): its ``Client`` over the same transport (its xenbus transport on ``/dev/xen/xenbus``),
  read, write and directory N in a row inside one of its transactions, and the 100-key
  transaction. pyxs refuses watches over xenbus (``Client.monitor``: "XenBus does not obey
  XenStore protocol specification"), so it has no watch row.

Before the rounds every side reads the same keys and lists the same directory as the agent, and
what one side writes the agent reads back; after each C watch run the agent reads the value the
C program wrote last. A side that disagrees is reported as ``DISAGREE: ...`` (exit 1).

Each timing is the best of ``--repeat`` (3) runs, against the load of a shared machine. Every
round runs each operation on every side, one after the other (agent, C, pyxs, agent, ...); the
ratios are taken within the round, the other side's seconds per operation over the agent's (= the
agent's operations per second over the other's: above 1, the agent is faster); the median and the
min-max over rounds are printed. Targets (issue 18): at least 0.8 against C, at least 2 against
pyxs.

Standard library and guestagent only: it runs from a file path in the guest.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

BASE = "data/xsbench"
WATCHED = f"{BASE}/w"
TOKEN = "xsbench"
KEYS = 10
TARGET = 0.8
PYXS_TARGET = 2.0
C_WATCH_SOURCE = Path(__file__).resolve().with_name("xenstore_watch.c")
C_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-list")
XENBUS = "/dev/xen/xenbus"
EVENT_TIMEOUT = 30.0
FIRST_CONTACT_TIMEOUT = 60.0

T = TypeVar("T")


class Disagreement(Exception):
    """A side did not do what the agent did: the figures would not compare like with like."""


class BadPyxsDir(ValueError):
    """``--pyxs-dir`` names no pyxs source tree (exit 2)."""


def open_client() -> Any:
    from guestagent.host import real_xenstore
    from guestagent.hostfs import HostFS

    return real_xenstore(HostFS("/"))


def key(i: int) -> str:
    return f"{BASE}/k{i % KEYS}"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process's, every thread's: pyxs's reader thread
    included) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


def best_pair(repeat: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """The lowest wall-clock time and the lowest CPU time of ``repeat`` runs."""
    runs = [fn() for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


@dataclass(frozen=True)
class WatchRun:
    """One side's watch run: seconds from a write to its event, per event; the path of the last
    event; the last value written."""

    seconds: float
    path: str
    last_value: str


# --- the agent --------------------------------------------------------------------------------


def agent_op(client: Any, op: str, n: int, in_tx: bool) -> tuple[float, float]:
    """Wall-clock and CPU seconds per operation for ``n`` operations (inside one transaction
    when ``in_tx``: the transaction's start and commit are timed apart and left out)."""
    def body(ops: Any) -> None:
        if op == "read":
            for i in range(n):
                ops.read(key(i))
        elif op == "write":
            for i in range(n):
                ops.write(key(i), f"v{i}")
        elif op == "directory":
            for _ in range(n):
                ops.directory(BASE)
        else:
            raise ValueError(op)

    if not in_tx:
        wall, cpu = timed_cpu(lambda: body(client))
        return wall / n, cpu / n
    took: list[tuple[float, float]] = []

    def inside(tx: Any) -> None:
        took.append(timed_cpu(lambda: body(tx)))

    client.run_transaction(inside)
    return took[-1][0] / n, took[-1][1] / n


def agent_tx100(client: Any) -> float:
    """Seconds for one transaction writing 100 keys, start and commit included."""
    def write(tx: Any) -> None:
        for i in range(100):
            tx.write(f"{BASE}/t/{i}", f"v{i}")

    return timed(lambda: client.run_transaction(write))


def is_watched(path: str) -> bool:
    """An event for :data:`WATCHED`: as watched, or as the absolute path ending in it."""
    return path == WATCHED or path.endswith("/" + WATCHED)


def agent_wait_event(client: Any, timeout: float = EVENT_TIMEOUT) -> str:
    """The path of the next event for :data:`WATCHED` with :data:`TOKEN` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        for event in client.read_events(timeout=max(deadline - time.monotonic(), 0.0)):
            if event.token == TOKEN and is_watched(event.path):
                return str(event.path)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"xenstore_ops: no watch event for {WATCHED} in {timeout:.0f} s")


def agent_watch(client: Any, n: int) -> WatchRun:
    """``n`` times: write a new value to :data:`WATCHED` and wait for its event, on the client
    that watches it; the first event (fired by the watch itself) is read before the clock runs."""
    client.watch(WATCHED, TOKEN)
    try:
        path = agent_wait_event(client)
        total, value = 0.0, ""
        for i in range(n):
            value = f"a{i}"
            start = time.perf_counter()
            client.write(WATCHED, value)
            path = agent_wait_event(client)
            total += time.perf_counter() - start
    finally:
        client.unwatch(WATCHED, TOKEN)
    return WatchRun(total / n, path, value)


# --- the C library ----------------------------------------------------------------------------


def run_tool(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def tool_args(op: str, count: int) -> list[str]:
    if op == "read":
        return ["xenstore-read", *(key(i) for i in range(count))]
    if op == "write":
        return ["xenstore-write", *(w for i in range(count) for w in (key(i), f"c{i}"))]
    if op == "directory":
        return ["xenstore-list", *([BASE] * count)]
    raise ValueError(op)


def c_op(op: str, extra: int, repeat: int) -> float:
    """Seconds per operation: (t(1 + extra arguments) - t(1)) / extra, each the best of
    ``repeat`` runs."""
    one = best(repeat, lambda: run_tool(tool_args(op, 1)))
    many = best(repeat, lambda: run_tool(tool_args(op, 1 + extra)))
    return (many - one) / extra


def c_tx100(c_s: dict[str, float]) -> float:
    """The C 100-key transaction: 100 of its writes, plus two of its reads for the start and the
    commit (one request and one reply each)."""
    return 100 * c_s["write"] + 2 * c_s["read"]


def tool_output(argv: list[str]) -> list[str]:
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return done.stdout.splitlines()


def compile_c_watch(workdir: Path, source: Path = C_WATCH_SOURCE) -> Path:
    """``xenstore_watch.c`` linked with the installed libxenstore; RuntimeError with the reason
    when there is no compiler or no library."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH")
    exe = workdir / "xenstore_watch"
    done = subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(source),
                           "-l:libxenstore.so.4"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cc} failed on {source.name}: {done.stderr.strip()[-300:]}")
    return exe


def parse_watch_output(text: str) -> WatchRun:
    """``key value`` lines from xenstore_watch.c -> its run."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name:
            fields[name] = value.strip()
    try:
        return WatchRun(float(fields["seconds_per_event"]), fields["path"],
                        fields["last_value"])
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"xenstore_watch: the C program's output lacks or garbles {e}: "
                           f"{text.strip()!r}") from None


def c_watch(exe: Path, n: int) -> WatchRun:
    done = subprocess.run([str(exe), "-n", str(n), WATCHED], capture_output=True, text=True,
                          check=False, timeout=EVENT_TIMEOUT + n)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"{exe} exited {done.returncode}")
    return parse_watch_output(done.stdout)


# --- pyxs -------------------------------------------------------------------------------------


def load_pyxs(directory: str) -> Any:
    """The ``pyxs`` package of the source tree ``directory``, imported from there and nowhere
    else; BadPyxsDir with one line naming the directory otherwise."""
    root = Path(directory).resolve()
    if not (root / "pyxs" / "__init__.py").is_file():
        raise BadPyxsDir(f"xenstore_ops: --pyxs-dir {directory}: no pyxs/__init__.py in it "
                         "(an unpacked pyxs source tree, e.g. pyxs-0.4.1/)")
    if "pyxs" in sys.modules:
        del sys.modules["pyxs"]
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("pyxs")
    finally:
        sys.path.remove(str(root))
    where = Path(module.__file__ or "").resolve()
    if root not in where.parents:
        raise BadPyxsDir(f"xenstore_ops: --pyxs-dir {directory}: pyxs was imported from {where}")
    return module


def pyxs_transport(env: dict[str, str], xenbus_exists: bool) -> dict[str, str]:
    """pyxs's ``Client`` arguments for the transport the agent's client takes: the socket of
    ``$XENSTORED_PATH`` when set, else the xenbus device when there is one, else the socket."""
    if env.get("XENSTORED_PATH"):
        return {"unix_socket_path": env["XENSTORED_PATH"]}
    if xenbus_exists:
        return {"xen_bus_path": XENBUS}
    return {"unix_socket_path": "/var/run/xenstored/socket"}


def pyxs_op(client: Any, op: str, n: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds per operation for ``n`` operations inside one pyxs
    transaction (its start and commit left out), the keys encoded beforehand."""
    keys = [key(i).encode() for i in range(n)]
    values = [f"p{i}".encode() for i in range(n)]
    base = BASE.encode()

    def body() -> None:
        if op == "read":
            for k in keys:
                client.read(k)
        elif op == "write":
            for k, v in zip(keys, values):
                client.write(k, v)
        elif op == "directory":
            for _ in range(n):
                client.list(base)
        else:
            raise ValueError(op)

    client.transaction()
    try:
        wall, cpu = timed_cpu(body)
    finally:
        client.commit()
    return wall / n, cpu / n


def pyxs_tx100(client: Any, retries: int = 5) -> float:
    """Seconds for one pyxs transaction writing 100 keys, start and commit included (retried on
    EAGAIN as the agent's ``run_transaction`` is)."""
    pairs = [(f"{BASE}/t/{i}".encode(), f"p{i}".encode()) for i in range(100)]

    def once() -> bool:
        client.transaction()
        for k, v in pairs:
            client.write(k, v)
        return bool(client.commit())

    start = time.perf_counter()
    for _ in range(retries):
        if once():
            return time.perf_counter() - start
    raise RuntimeError(f"xenstore_ops: pyxs's 100-key transaction failed {retries} times")


# --- agreement --------------------------------------------------------------------------------


def observe_agent(client: Any) -> dict[str, list[str]]:
    return {"read": [client.read_str(key(i)) for i in range(KEYS)],
            "directory": sorted(client.directory(BASE))}


def observe_c() -> dict[str, list[str]]:
    return {"read": tool_output(["xenstore-read", *(key(i) for i in range(KEYS))]),
            "directory": sorted(tool_output(["xenstore-list", BASE]))}


def observe_pyxs(client: Any) -> dict[str, list[str]]:
    return {"read": [client.read(key(i).encode()).decode() for i in range(KEYS)],
            "directory": sorted(n.decode() for n in client.list(BASE.encode()))}


def disagreements(agent: dict[str, list[str]], others: dict[str, dict[str, list[str]]],
                  written: dict[str, tuple[str, str]]) -> list[str]:
    """What each other side read or listed differently from the agent, and each write
    (``side: (value written, value the agent read back)``) the agent did not read back."""
    out = []
    for side, seen in others.items():
        for what, mine in agent.items():
            if seen.get(what) != mine:
                out.append(f"{side} {what} of {BASE}: {seen.get(what)!r}, the agent: {mine!r}")
    for side, (wrote, read_back) in written.items():
        if wrote != read_back:
            out.append(f"{side} wrote {wrote!r} to {key(0)}, the agent read back {read_back!r}")
    return out


def watch_disagreements(run: WatchRun, read_back: str) -> list[str]:
    """A C watch run whose event was for another path, or whose last write the agent did not
    read back."""
    out = []
    if not is_watched(run.path):
        out.append(f"C watch: event path {run.path!r}, watched {WATCHED!r}")
    if run.last_value != read_back:
        out.append(f"C watch: wrote {run.last_value!r} last, the agent read {read_back!r}")
    return out


def c_write_key0(value: str) -> None:
    tool_output(["xenstore-write", key(0), value])


def with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` in a daemon thread: its result, its exception, or TimeoutError after
    ``seconds`` (pyxs waits for a reply without a timeout; a reply that never comes must not
    hang the run)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except Exception as e:  # handed to the caller
            box.append((False, e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        raise TimeoutError(f"no answer in {seconds:.0f} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def write_back(client: Any, side: str, write: Callable[[str], None]) -> tuple[str, str]:
    marker = f"{side}-wrote"
    write(marker)
    return marker, client.read_str(key(0))


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Sides:
    """What is measured against the agent, and why what is not, is not."""

    client: Any
    c_tools: bool
    watch_exe: Path | None = None
    pyxs: Any = None
    missing: dict[str, str] = field(default_factory=dict)


def prepare(client: Any) -> None:
    for i in range(KEYS):
        client.write(key(i), "initial")


def clean(client: Any) -> None:
    from guestagent.xen.xenstore import XenstoreError

    with contextlib.suppress(XenstoreError):
        client.rm(BASE)


def check_agreement(sides: Sides) -> list[str]:
    """Each side reads and lists what the agent does, then the agent reads back what each side
    writes; the keys are laid out anew afterwards."""
    client = sides.client
    prepare(client)
    mine = observe_agent(client)
    others: dict[str, dict[str, list[str]]] = {}
    if sides.c_tools:
        others["C"] = observe_c()
    if sides.pyxs is not None:
        pyxs = sides.pyxs
        try:
            others["pyxs"] = with_deadline(lambda: observe_pyxs(pyxs), FIRST_CONTACT_TIMEOUT)
        except Exception as e:  # its first contact: say why, measure the others
            sides.missing["pyxs"] = f"its first read failed: {type(e).__name__}: {e}"
            sides.pyxs = None
            with contextlib.suppress(Exception):
                with_deadline(pyxs.close, 10)
    written: dict[str, tuple[str, str]] = {}
    if sides.c_tools:
        written["C"] = write_back(client, "C", c_write_key0)
    if sides.pyxs is not None:
        py = sides.pyxs
        written["pyxs"] = write_back(client, "pyxs", lambda v: py.write(key(0).encode(),
                                                                        v.encode()))
    prepare(client)
    return disagreements(mine, others, written)


def run_round(sides: Sides, n: int, extra: int, repeat: int,
              watch_events: int) -> dict[str, dict[str, float]]:
    """One round: every operation on every side, the agent first."""
    client, rows, c_s = sides.client, {}, {}
    for op in ("read", "write", "directory"):
        wall, cpu = best_pair(repeat, partial(agent_op, client, op, n, True))
        row = {"agent_s": wall, "agent_cpu_s": cpu,
               "agent_plain_s": best_pair(repeat, partial(agent_op, client, op, n, False))[0]}
        if sides.c_tools:
            row["c_s"] = c_s[op] = c_op(op, extra, repeat)
        if sides.pyxs is not None:
            row["pyxs_s"], row["pyxs_cpu_s"] = best_pair(repeat,
                                                         partial(pyxs_op, sides.pyxs, op, n))
        rows[op] = row
    row = {"agent_s": best(repeat, lambda: agent_tx100(client))}
    if sides.c_tools:
        row["c_s"] = c_tx100(c_s)
    if sides.pyxs is not None:
        row["pyxs_s"] = best(repeat, lambda: pyxs_tx100(sides.pyxs))
    rows["tx100"] = row
    rows["watch"] = watch_round(sides, watch_events, repeat)
    return rows


def watch_round(sides: Sides, n: int, repeat: int) -> dict[str, float]:
    row = {"agent_s": best(repeat, lambda: agent_watch(sides.client, n).seconds)}
    if sides.watch_exe is not None:
        exe = sides.watch_exe
        runs = [c_watch(exe, n) for _ in range(repeat)]
        wrong = watch_disagreements(runs[-1], sides.client.read_str(WATCHED))
        if wrong:
            raise Disagreement("; ".join(wrong))
        row["c_s"] = min(r.seconds for r in runs)
    return row


def open_sides(workdir: Path, pyxs_dir: str | None) -> Sides:
    sides = Sides(open_client(), all(shutil.which(t) for t in C_TOOLS))
    if not sides.c_tools:
        sides.missing["C tools"] = "no xenstore-utils (" + ", ".join(C_TOOLS) + ")"
    try:
        sides.watch_exe = compile_c_watch(workdir)
    except RuntimeError as e:
        sides.missing["C watch"] = str(e)
    if pyxs_dir is None:
        sides.missing["pyxs"] = "no --pyxs-dir"
    else:
        transport = pyxs_transport(dict(os.environ), os.path.exists(XENBUS))
        client = load_pyxs(pyxs_dir).Client(**transport)
        try:
            client.connect()
        except Exception as e:  # pyxs's ConnectionError and what its transport raises
            sides.missing["pyxs"] = f"it did not connect ({transport}): {type(e).__name__}: {e}"
        else:
            sides.pyxs = client
            sides.missing["pyxs watch"] = "pyxs refuses watches over xenbus (Client.monitor)"
    return sides


def close_sides(sides: Sides) -> None:
    clean(sides.client)
    if sides.pyxs is not None:
        sides.pyxs.close()
    sides.client.close()


def measure(rounds: int, n: int, extra: int, repeat: int, watch_events: int = 50,
            pyxs_dir: str | None = None) -> dict[str, Any]:
    per: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="xsbench") as workdir:
        sides = open_sides(Path(workdir), pyxs_dir)
        try:
            clean(sides.client)
            wrong = check_agreement(sides)
            if wrong:
                raise Disagreement("; ".join(wrong))
            for _ in range(rounds):
                for op, row in run_round(sides, n, extra, repeat, watch_events).items():
                    per.setdefault(op, []).append(row)
        finally:
            close_sides(sides)
    return {"rounds": rounds, "n": n, "extra": extra, "repeat": repeat,
            "watch_events": watch_events, "c_tools": sides.c_tools,
            "pyxs": pyxs_info(sides, pyxs_dir), "not_measured": sides.missing,
            "host": platform.node(), "kernel": platform.release(),
            "python": platform.python_version(), "xenbus": os.path.exists(XENBUS),
            "ops": {op: summarize(rows) for op, rows in per.items()}, "raw": per}


def pyxs_info(sides: Sides, pyxs_dir: str | None) -> dict[str, str] | None:
    if sides.pyxs is None or pyxs_dir is None:
        return None
    root = Path(pyxs_dir).resolve()
    return {"dir": str(root), "version": sdist_version(root),
            "transport": repr(sides.pyxs.router.connection)}


def sdist_version(root: Path) -> str:
    """The ``Version:`` of the source tree's PKG-INFO (pyxs has no ``__version__``)."""
    with contextlib.suppress(OSError):
        for line in (root / "PKG-INFO").read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.partition(":")[2].strip()
    return "unknown"


def ratios(rows: list[dict[str, float]], other: str, agent: str = "agent_s") -> dict[str, float]:
    """The other side's seconds per operation over the agent's, per round: median, min, max."""
    values = [r[other] / r[agent] for r in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"agent_us": statistics.median(r["agent_s"] for r in rows) * 1e6}
    if "agent_plain_s" in rows[0]:
        out["agent_plain_us"] = statistics.median(r["agent_plain_s"] for r in rows) * 1e6
    if "c_s" in rows[0]:
        r = ratios(rows, "c_s")
        out.update(c_us=statistics.median(x["c_s"] for x in rows) * 1e6, ratio=r["median"],
                   ratio_min=r["min"], ratio_max=r["max"])
    if "pyxs_s" in rows[0]:
        r = ratios(rows, "pyxs_s")
        out.update(pyxs_us=statistics.median(x["pyxs_s"] for x in rows) * 1e6,
                   pyxs_ratio=r["median"], pyxs_ratio_min=r["min"], pyxs_ratio_max=r["max"])
    if "agent_cpu_s" in rows[0]:
        out["agent_cpu_us"] = statistics.median(r["agent_cpu_s"] for r in rows) * 1e6
    if "pyxs_cpu_s" in rows[0]:
        out.update(pyxs_cpu_us=statistics.median(r["pyxs_cpu_s"] for r in rows) * 1e6,
                   pyxs_cpu_ratio=ratios(rows, "pyxs_cpu_s", "agent_cpu_s")["median"])
    return out


def cpu_line(result: dict[str, Any]) -> str | None:
    """The client's CPU per operation (in a transaction), the agent's and pyxs's."""
    parts = []
    for op, s in result["ops"].items():
        if "agent_cpu_us" not in s:
            continue
        part = f"{op} agent {s['agent_cpu_us']:.0f}"
        if "pyxs_cpu_us" in s:
            part += f", pyxs {s['pyxs_cpu_us']:.0f} (x{s['pyxs_cpu_ratio']:.2f} the agent's)"
        parts.append(part)
    if not parts:
        return None
    return ("client CPU us/op in a transaction (the process's, threads included; median): "
            + "; ".join(parts))


def cell(s: dict[str, Any], us: str, ratio: str) -> tuple[str, str]:
    if us not in s:
        return "-", "-"
    return (f"{s[us]:.0f}",
            f"x{s[ratio]:.2f} ({s[ratio + '_min']:.2f}-{s[ratio + '_max']:.2f})")


def target_line(result: dict[str, Any], ratio: str, target: float, against: str) -> str | None:
    measured = {op: s[ratio] for op, s in result["ops"].items() if ratio in s}
    if not measured:
        return None
    worst = min(measured, key=lambda op: measured[op])
    verdict = "met" if measured[worst] >= target else "MISSED"
    return (f"target: agent/{against} >= {target} on every median: {verdict} (lowest x"
            f"{measured[worst]:.2f}, {worst})")


def report(result: dict[str, Any]) -> str:
    lines = [f"xenstore operations, {result['rounds']} rounds (agent and pyxs: {result['n']} in "
             f"a row; C: 1 vs 1+{result['extra']} arguments; watch: {result['watch_events']} "
             f"events; best of {result['repeat']}); {result['host']}, kernel "
             f"{result['kernel']}, Python {result['python']}, /dev/xen/xenbus "
             f"{'yes' if result['xenbus'] else 'no'}"]
    if result.get("pyxs"):
        p = result["pyxs"]
        lines.append(f"pyxs {p['version']} from {p['dir']}, {p['transport']}")
    lines += ["| operation | agent us/op (in tx) | agent us/op (no tx) | C us/op | "
              "agent ops/s / C ops/s (min-max) | pyxs us/op | agent ops/s / pyxs ops/s "
              "(min-max) |", "|---|---|---|---|---|---|---|"]
    for op, s in result["ops"].items():
        plain = f"{s['agent_plain_us']:.0f}" if "agent_plain_us" in s else "-"
        c, c_ratio = cell(s, "c_us", "ratio")
        py, py_ratio = cell(s, "pyxs_us", "pyxs_ratio")
        lines.append(f"| {op} | {s['agent_us']:.0f} | {plain} | {c} | {c_ratio} | {py} | "
                     f"{py_ratio} |")
    for line in (cpu_line(result), target_line(result, "ratio", TARGET, "C"),
                 target_line(result, "pyxs_ratio", PYXS_TARGET, "pyxs")):
        if line:
            lines.append(line)
    lines += [f"not measured: {what}: {why}" for what, why in result["not_measured"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=200, help="agent operations per timing")
    parser.add_argument("--extra", type=int, default=100,
                        help="C: arguments beyond the first in the long run")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--watch-events", type=int, default=50,
                        help="watch events per watch timing")
    parser.add_argument("--pyxs-dir", metavar="DIR",
                        help="an unpacked pyxs source tree (pyxs-0.4.1/): measure pyxs too")
    parser.add_argument("--json", action="store_true", help="the table, then the JSON")
    args = parser.parse_args(argv)
    try:
        result = measure(args.rounds, args.n, args.extra, args.repeat, args.watch_events,
                         args.pyxs_dir)
    except BadPyxsDir as e:
        print(str(e), file=sys.stderr)
        return 2
    except Disagreement as e:
        print(f"DISAGREE: {e}")
        return 1
    print(report(result))
    if args.json:
        print("JSON " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
