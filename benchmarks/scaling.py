"""How ``topology``, ``publish`` and the Dom0 publisher grow with the size of the host (issue 18,
item 5), MEASURED on generated fixtures, in-process.

Cases (each a sweep of sizes):

* ``topology-vnodes``: ``guestagent topology`` (``cli.main``, table output to a buffer) on an HVM
  guest tree of 1, 4, 16, 64 vnodes with 8 vCPUs each (64 x 8 = 512 vCPUs), the hypercall
  answering the same layout;
* ``topology-vcpus``: the same with the vCPUs growing on 4 vnodes (64, 512, 4096), which
  separates the per-vCPU work from the node-by-node distance matrix;
* ``publish-vnodes``: ``guestagent publish`` on the vnode trees, as guest domid 5, against the
  in-process wire-protocol xenstored (``tests/xenstore_server.py``); the tree is removed between
  runs, so every run writes every key (the first publish, the most work). 1, 4, 16, 32 vnodes:
  64 x 8 is refused (``vnuma/vcpu-to-vnode`` would be 1,455 bytes, over
  ``xs_sync.MAX_VALUE_BYTES``);
* ``topology-sysfs``: ``guestagent topology`` on a sysfs-only tree (no hypervisor) of 16, 128,
  1024 nodes with 4 CPUs each; the distance files hold one entry per node, so the input itself
  grows as nodes^2 (1024 nodes: a million distances);
* ``publish-sysfs``: ``guestagent publish --dry-run`` on those trees (a real publish of more than
  about 130 nodes is refused: the tree would exceed ``xs_sync.MAX_TREE_NODES``, set under
  xenstored's per-domain quota);
* ``dom0-first`` / ``dom0-resync``: the Dom0 publisher's full pass (``Publisher.publish_all``)
  with 10, 50, 200 guests, one passed-through device each, against the in-process xenstored as
  domain 0: ``first`` writes every guest's tree (removed between runs), ``resync`` is the
  periodic pass that finds nothing to change.

Method: every round times each size once, in alternating order (small to large, then large to
small), so that a machine busy with other work weighs on all sizes alike; the figure per size is
the median over rounds and the ratio to the smallest size is taken within each round (its spread,
min-max over rounds, is printed). The growth exponent is the least-squares slope of log(time)
over log(size): 1.0 is linear. ``cpu`` is the calling thread's CPU time (``time.thread_time``):
the in-process xenstored runs in another thread, so ``cpu`` is the agent's own work (its socket
system calls included) and ``wall`` includes the server's. Where xenstore is used, the requests
of one run are counted: an exact figure, free of the machine's load.

    python -m benchmarks.scaling [--rounds 7] [--case NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
NODE = "sys/devices/system/node"
CPU = "sys/devices/system/cpu"
MIB = 1 << 20
GUEST_DOMID = 5
#: One passed-through device per guest in the Dom0 case (a function the fixture host has).
DOM0_DEVICE = ("0000:3b:00.0", "28", None)

#: A benchmark run: returns nothing, raises on failure (a failed run is no timing).
Run = Callable[[], None]


@dataclass
class Case:
    name: str
    unit: str
    sizes: list[int]
    #: size -> (setup before each run, untimed; the run)
    make: Callable[[int, Path], tuple[Run, Run]]
    #: size -> the xenstore requests served since the last call (None: no xenstore)
    requests: Callable[[int], int] | None = None
    results: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)


# --- fixture trees --------------------------------------------------------------------------


def _templates() -> tuple[str, str]:
    laptop = REPO / "tests" / "fixtures" / "laptop"
    return ((laptop / NODE / "node0" / "meminfo").read_text(encoding="ascii"),
            (laptop / "proc" / "meminfo").read_text(encoding="ascii"))


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="ascii")


def distance(i: int, j: int) -> int:
    """A SLIT-like matrix: 10 on the diagonal, growing with the distance between ids (<= 255)."""
    return 10 if i == j else min(255, 20 + abs(i - j) % 200)


def make_guest_tree(root: Path, nodes: int, cpus_per_node: int, xen: bool,
                    node_mib: int = 1024) -> None:
    """A guest's sysfs/procfs under ``root``: ``nodes`` nodes of ``cpus_per_node`` CPUs each
    (node n holds CPUs n*k .. n*k+k-1), the kernel's text formats (``tests/fixtures``'s
    templates with the numbers replaced)."""
    from guestagent.hostfs import format_cpulist
    from tests.fixtures.make_fixtures import _rescale

    node_template, proc_template = _templates()
    # What a guest's node sees of its vnode: a little less than configured.
    node_kb = node_mib * 1024 * 98 // 100
    for n in range(nodes):
        first = n * cpus_per_node
        _write(root, f"{NODE}/node{n}/cpulist",
               format_cpulist(list(range(first, first + cpus_per_node))) + "\n")
        _write(root, f"{NODE}/node{n}/distance",
               " ".join(str(distance(n, j)) for j in range(nodes)) + "\n")
        _write(root, f"{NODE}/node{n}/meminfo", _rescale(node_template, node_kb, n))
    every_node = f"0-{nodes - 1}\n" if nodes > 1 else "0\n"
    for name in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory"):
        _write(root, f"{NODE}/{name}", every_node)
    cpus = nodes * cpus_per_node
    every_cpu = f"0-{cpus - 1}\n" if cpus > 1 else "0\n"
    for name in ("online", "present", "possible"):
        _write(root, f"{CPU}/{name}", every_cpu)
    _write(root, "proc/meminfo", _rescale(proc_template, node_kb * nodes, None))
    if xen:
        _write(root, "sys/hypervisor/type", "xen\n")
        _write(root, "sys/hypervisor/guest_type", "HVM\n")
        _write(root, "proc/xen/capabilities", "")
        _write(root, "dev/xen/privcmd", "")


def vnuma_answer(nodes: int, cpus_per_node: int, node_mib: int = 1024) -> Any:
    """The hypercall's answer for the layout of :func:`make_guest_tree`."""
    from guestagent.xen.vnuma import validate_vnuma

    vcpus = [n for n in range(nodes) for _ in range(cpus_per_node)]
    flat = [distance(i, j) for i in range(nodes) for j in range(nodes)]
    size = node_mib * MIB
    ranges = [(n * size, (n + 1) * size, 0, n) for n in range(nodes)]
    return validate_vnuma(nodes, vcpus, flat, ranges)


# --- the in-process xenstored --------------------------------------------------------------


def cheap_transaction_snapshots() -> None:
    """Make the test xenstored start a transaction with a per-node copy of its store instead of
    ``copy.deepcopy``: the same snapshot (fresh value, perms and children per node), several
    times cheaper. Still a copy of the whole store per transaction, which no real xenstored makes
    (C xenstored tracks the nodes a transaction touches, reference section 3: at most 1,024), so
    the server's share of ``wall`` still grows with the store; ``cpu`` is the agent's alone."""
    import types

    import tests.xenstore_server as xs

    def snapshot(nodes: dict[str, Any]) -> dict[str, Any]:
        return {k: xs.Node(n.value, list(n.perms), list(n.children), n.gen)
                for k, n in nodes.items()}

    setattr(xs, "copy", types.SimpleNamespace(deepcopy=snapshot))  # noqa: B010


def requests_served(server: Any) -> int:
    """Requests the server answered since the last call (its list is emptied)."""
    with server.lock:
        count = len(server.requests)
        server.requests.clear()
    return count


@contextlib.contextmanager
def xenstored(workdir: Path) -> Iterator[Any]:
    """The tests' wire-protocol xenstored, with guest GUEST_DOMID laid out as libxl does."""
    from tests.xenstore_server import XenstoreServer

    server = XenstoreServer(str(workdir / "xenstored.sock"))
    server.populate_guest(GUEST_DOMID)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def remove_subtree(server: Any, path: str) -> None:
    """Drop ``path`` and everything under it from the server's store (no watch fires)."""
    with server.lock:
        for key in [k for k in server.nodes if k == path or k.startswith(path + "/")]:
            del server.nodes[key]
        parent, _, name = path.rpartition("/")
        if parent in server.nodes and name in server.nodes[parent].children:
            server.nodes[parent].children.remove(name)


# --- the guest-side commands ----------------------------------------------------------------


def cli_run(argv: list[str], make_host: Callable[[Any], Any] | None) -> None:
    from guestagent import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv, make_host=make_host)
    if code not in (0, 4):  # 4: the views disagree (topology's check result), still a full run
        raise RuntimeError(f"{' '.join(argv)}: exit {code}: {err.getvalue().strip()}")


def _noop() -> None:
    return None


class Guests:
    """The guest trees and the xenstored shared by the guest-side cases of one invocation."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self._server: Any = None
        self._trees: dict[tuple[int, int, bool], Path] = {}

    def tree(self, nodes: int, cpus_per_node: int, xen: bool) -> Path:
        key = (nodes, cpus_per_node, xen)
        if key not in self._trees:
            root = self.workdir / f"{'hvm' if xen else 'sysfs'}-{nodes}x{cpus_per_node}"
            make_guest_tree(root, nodes, cpus_per_node, xen)
            self._trees[key] = root
        return self._trees[key]

    def server(self) -> Any:
        if self._server is None:
            self._server = self.stack.enter_context(xenstored(self.workdir))
        return self._server

    def connect(self, domid: int) -> Any:
        from guestagent.xen.xenstore import XenstoreClient
        from guestagent.xen.xsconn import connect_unix

        server = self.server()
        server.next_domids.append(domid)
        return XenstoreClient(connect_unix(server.path), timeout=10.0)

    def host_maker(self, nodes: int, cpus_per_node: int) -> Callable[[Any], Any]:
        from guestagent.host import Host

        info = vnuma_answer(nodes, cpus_per_node)
        return lambda fs: Host(fs, open_vnuma=lambda _fs: lambda: info,
                               open_xenstore=lambda _fs: self.connect(GUEST_DOMID))


def topology_vnodes(guests: Guests) -> Case:
    def make(size: int, _work: Path) -> tuple[Run, Run]:
        root, host = guests.tree(size, 8, True), guests.host_maker(size, 8)
        return _noop, lambda: cli_run(["--root", str(root), "topology"], host)
    return Case("topology-vnodes", "vnodes x 8 vCPUs", [1, 4, 16, 64], make)


def topology_vcpus(guests: Guests) -> Case:
    """vCPUs grow at a fixed node count: the per-CPU work, apart from the node matrix."""
    def make(size: int, _work: Path) -> tuple[Run, Run]:
        root, host = guests.tree(4, size // 4, True), guests.host_maker(4, size // 4)
        return _noop, lambda: cli_run(["--root", str(root), "topology"], host)
    return Case("topology-vcpus", "vCPUs on 4 vnodes", [64, 512, 4096], make)


def publish_vnodes(guests: Guests) -> Case:
    from guestagent.schema import BASE

    def make(size: int, _work: Path) -> tuple[Run, Run]:
        root, host = guests.tree(size, 8, True), guests.host_maker(size, 8)
        server = guests.server()
        base = f"/local/domain/{GUEST_DOMID}/{BASE}"
        return (lambda: remove_subtree(server, base),
                lambda: cli_run(["--root", str(root), "publish"], host))
    # 64 x 8 is refused: vnuma/vcpu-to-vnode would be 1455 bytes, over xs_sync.MAX_VALUE_BYTES
    return Case("publish-vnodes", "vnodes x 8 vCPUs", [1, 4, 16, 32], make,
                lambda _size: requests_served(guests.server()))


def topology_sysfs(guests: Guests) -> Case:
    def make(size: int, _work: Path) -> tuple[Run, Run]:
        root = guests.tree(size, 4, False)
        return _noop, lambda: cli_run(["--root", str(root), "topology"], None)
    return Case("topology-sysfs", "sysfs nodes x 4 CPUs", [16, 128, 1024], make)


def publish_sysfs(guests: Guests) -> Case:
    def make(size: int, _work: Path) -> tuple[Run, Run]:
        root = guests.tree(size, 4, False)
        return _noop, lambda: cli_run(["--root", str(root), "publish", "--dry-run"], None)
    return Case("publish-sysfs", "sysfs nodes x 4 CPUs (--dry-run)", [16, 128, 1024], make)


# --- the Dom0 publisher ---------------------------------------------------------------------


class Dom0Host:
    """A xenstored holding ``guests`` guests, each with one PCI backend, and Dom0's publisher."""

    def __init__(self, guests: int, workdir: Path) -> None:
        from guestagent.dom0.publisher import Publisher
        from guestagent.dom0.toolstack import GuestConfig
        from guestagent.hostfs import HostFS
        from guestagent.xen.xenstore import XenstoreClient
        from guestagent.xen.xsconn import connect_unix
        from tests.test_dom0_support import FIXTURE, backend_nodes, fixture_topology
        from tests.xenstore_server import XenstoreServer

        self.domids = list(range(1, guests + 1))
        workdir.mkdir(parents=True, exist_ok=True)
        self.server = XenstoreServer(str(workdir / "xenstored.sock")).start()
        for domid in self.domids:
            self.server.populate_guest(domid)
            ro = [("n", 0), ("r", domid)]
            for path, value in backend_nodes(domid, [DOM0_DEVICE]).items():
                self.server.set_node(path, value, ro)
        self.server.next_domids.append(0)
        self.client = XenstoreClient(connect_unix(self.server.path), timeout=30.0)
        topology = fixture_topology()
        configs = {d: GuestConfig(d, "hvm", [0, 1], "bench") for d in self.domids}
        self.publisher = Publisher(self.client, HostFS(str(FIXTURE)), lambda _needed: topology,
                                   configs.get)

    def clear(self) -> None:
        from guestagent.dom0.schema import base_path

        for domid in self.domids:
            remove_subtree(self.server, base_path(domid))

    def publish_all(self) -> None:
        results = self.publisher.publish_all()
        bad = [r for r in results if r.error is not None or r.plan is None]
        if len(results) != len(self.domids) or bad:
            raise RuntimeError(f"dom0 pass: {len(results)} results, failures {bad[:3]}")

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def dom0_cases(stack: contextlib.ExitStack) -> list[Case]:
    hosts: dict[int, Dom0Host] = {}

    def host(size: int, work: Path) -> Dom0Host:
        if size not in hosts:
            hosts[size] = Dom0Host(size, work / f"dom0-{size}")
            stack.callback(hosts[size].close)
        return hosts[size]

    def first(size: int, work: Path) -> tuple[Run, Run]:
        h = host(size, work)
        return h.clear, h.publish_all

    def resync(size: int, work: Path) -> tuple[Run, Run]:
        h = host(size, work)
        h.publish_all()  # the trees are there: the timed pass finds nothing to change
        return _noop, h.publish_all

    def sent(size: int) -> int:
        return requests_served(hosts[size].server)

    sizes = [10, 50, 200]
    return [Case("dom0-first", "guests", sizes, first, sent),
            Case("dom0-resync", "guests", sizes, resync, sent)]


# --- measuring ------------------------------------------------------------------------------


def measure(case: Case, rounds: int, workdir: Path) -> None:
    runs = {size: case.make(size, workdir) for size in case.sizes}
    for setup, run in runs.values():  # warm-up: imports, caches, the first connection
        setup()
        run()
    for r in range(rounds):
        order = case.sizes if r % 2 == 0 else list(reversed(case.sizes))
        for size in order:
            setup, run = runs[size]
            setup()
            if case.requests is not None:
                case.requests(size)
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            run()
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            case.results.setdefault(size, []).append((wall, cpu))
            if case.requests is not None:
                case.sent[size] = case.requests(size)


def slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) over log(size)."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
            / sum((x - mx) ** 2 for x in xs))


def summarize(case: Case) -> dict[str, Any]:
    base = case.sizes[0]
    rows: list[dict[str, Any]] = []
    for size in case.sizes:
        walls = [w for w, _ in case.results[size]]
        cpus = [c for _, c in case.results[size]]
        # ratio to the smallest size within the same round
        ratios = [c / max(b, 1e-9) for (_, c), (_, b) in zip(case.results[size],
                                                             case.results[base])]
        rows.append({
            "size": size,
            "wall_ms": statistics.median(walls) * 1e3,
            "cpu_ms": statistics.median(cpus) * 1e3,
            "cpu_ratio": statistics.median(ratios),
            "cpu_ratio_min": min(ratios),
            "cpu_ratio_max": max(ratios),
            "requests": case.sent.get(size),
        })
    return {
        "case": case.name,
        "unit": case.unit,
        "rounds": len(case.results[base]),
        "rows": rows,
        "exponent_cpu": slope(case.sizes, [r["cpu_ms"] for r in rows]),
        "exponent_wall": slope(case.sizes, [r["wall_ms"] for r in rows]),
        # the last step alone: growth between the two largest sizes
        "exponent_cpu_top": slope(case.sizes[-2:], [r["cpu_ms"] for r in rows[-2:]]),
        "exponent_requests": (slope(case.sizes, [r["requests"] for r in rows])
                              if case.sent else None),
    }


def table(summary: dict[str, Any]) -> str:
    lines = [f"{summary['case']} ({summary['unit']}; {summary['rounds']} rounds, median)",
             "| size | cpu ms | wall ms | cpu x smallest (min-max) | xenstore requests |",
             "|---|---|---|---|---|"]
    for r in summary["rows"]:
        sent = "-" if r["requests"] is None else str(r["requests"])
        lines.append(f"| {r['size']} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | "
                     f"x{r['cpu_ratio']:.1f} ({r['cpu_ratio_min']:.1f}-{r['cpu_ratio_max']:.1f}) "
                     f"| {sent} |")
    requests = summary["exponent_requests"]
    lines.append(f"growth exponent: cpu {summary['exponent_cpu']:.2f} "
                 f"(last step {summary['exponent_cpu_top']:.2f}), "
                 f"wall {summary['exponent_wall']:.2f}"
                 + ("" if requests is None else f", requests {requests:.2f}"))
    return "\n".join(lines)


CASES = ("topology-vnodes", "topology-vcpus", "publish-vnodes", "topology-sysfs",
         "publish-sysfs", "dom0-first", "dom0-resync")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only these cases (default: all)")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    wanted = args.case or list(CASES)
    sys.path.insert(0, str(REPO))  # tests.xenstore_server, tests.fixtures
    from guestagent import log

    log.configure(level="warning")
    cheap_transaction_snapshots()
    summaries = []
    with tempfile.TemporaryDirectory(prefix="ga-scaling-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        guests = Guests(work, stack)
        makers = {"topology-vnodes": topology_vnodes, "topology-vcpus": topology_vcpus,
                  "publish-vnodes": publish_vnodes, "topology-sysfs": topology_sysfs,
                  "publish-sysfs": publish_sysfs}
        cases = [makers[name](guests) for name in wanted if name in makers]
        cases += [c for c in dom0_cases(stack) if c.name in wanted]
        for case in cases:
            measure(case, args.rounds, work)
            summary = summarize(case)
            summaries.append(summary)
            if not args.json:
                print(table(summary) + "\n", flush=True)
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
