"""I/O NUMA on real Xen: the Dom0 agent's host topology and device hints, and a guest binding a
passthrough device to the vnode on the device's host node.

The host is the 2-node layout (``bed_numa2``): an e1000e behind a ``pxb-pcie`` with
``numa_node=1``. Dom0 runs the real agent from the guest root image in a chroot
(``tests/e2e/dom0/e2e-agent``). The passthrough test gives the e1000e to an HVM guest whose vnode
0 sits on host node 0 and vnode 1 on host node 1, so the hint must say vnode 1 and the device's
interrupts must end up on vnode 1's vCPU.

The PV passthrough test also runs the Dom0 daemon (``guestagent run --role dom0``, what
guestagent-dom0.service starts) and cuts its xenstore connection under it (issue 15): see
:func:`check_daemon_survives_xenstore_loss` for what is real there and what is not.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.e2e.bed import Guest, GuestSpec, XenBed
from tests.e2e.passthrough import E1000E, PNODE_MAPPED, assignable_script, pci_by_id, xl_pci
from tests.e2e.util import UNIT_STOP_POST
from tests.e2e.vnuma import xl_vnuma

# Cold caches build everything inside the first test's setup (debootstrap, pip): generous bounds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

BDF = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
TAINT_FIRMWARE_WORKAROUND = 1 << 11  # flag I: written numa_node


def json_of(out: str) -> Any:
    """The JSON document in a command's output (log lines go to stderr, kept apart by callers)."""
    starts = [i for i in (out.find("{"), out.find("[")) if i >= 0]
    assert starts, f"no JSON in:\n{out}"
    return json.loads(out[min(starts) :])


XlNuma = tuple[dict[str, tuple[int, list[int]]], dict[int, int], dict[str, int]]


def xl_info_numa(out: str) -> XlNuma:
    """``xl info -n``: nodes {id: (memsize MiB, distances)}, cpus {cpu: node}, devices {bdf:
    node} (libxl's answers from the same sysctls; sections cpu_topology, device topology,
    numa_info in that order, reference 7.4)."""
    cpu_part = out[out.index("cpu_topology") : out.index("device topology")]
    dev_part = out[out.index("device topology") : out.index("numa_info")]
    numa_part = out[out.index("numa_info") :]
    nodes = {
        m[0]: (int(m[1]), [int(d) for d in m[3].split(",")])
        for m in re.findall(r"^\s+(\d+):\s+(\d+)\s+(\d+)\s+([\d,]+)$", numa_part, re.M)
    }
    cpus = {int(m[0]): int(m[1])
            for m in re.findall(r"^\s*(\d+):\s+\d+\s+\d+\s+(\d+)$", cpu_part, re.M)}
    devices = {m[0]: int(m[1]) for m in re.findall(rf"^({BDF})\s+(\d+)$", dev_part, re.M)}
    return nodes, cpus, devices


def agent_json(bed: XenBed, args: str, timeout: float = 300) -> Any:
    """``guestagent ARGS`` in Dom0's chroot; stdout parsed as JSON, stderr kept for the message."""
    out, rc = bed.dom0(f"mkdir -p /run/e2e; e2e-agent {args} 2>/run/e2e/agent.err; rc=$?; "
                       "echo; echo __STDERR__; cat /run/e2e/agent.err; exit $rc", timeout)
    stdout = out.rpartition("__STDERR__")[0]
    assert rc == 0, f"guestagent {args} failed ({rc}):\n{out}"
    return json_of(stdout)


def test_dom0_host_topology_from_sysctl(bed_numa2: XenBed) -> None:
    """The real agent in Dom0 reads both nodes, their distances and the e1000e on node 1 from
    Xen's sysctls, and agrees with libxl's ``xl info -n`` on every node, CPU and device."""
    bed = bed_numa2
    bed.dom0_ok("e2e-agent setup", timeout=300)
    (e1000e,) = pci_by_id(bed.dom0_ok, E1000E)
    # Dom0's own kernel has no NUMA view (PV): only Xen knows the device's node.
    assert bed.dom0_ok(f"cat /sys/bus/pci/devices/{e1000e}/numa_node").strip() == "-1"

    j = agent_json(bed, "host topology --json")
    assert j["xen"] == "4.17", j
    assert j["sysctl_interface_version"] == 0x15, j
    assert j["problems"] == [], j["problems"]
    assert [n["id"] for n in j["nodes"]] == [0, 1], j["nodes"]
    assert [n["distances"] for n in j["nodes"]] == [[10, 20], [20, 10]], j["nodes"]
    assert all(n["online"] for n in j["nodes"]), j["nodes"]
    assert j["physinfo"]["nr_nodes"] == 2 and j["physinfo"]["nr_cpus"] == 4, j["physinfo"]
    devices = {d["bdf"]: d for d in j["devices"]}
    assert devices[e1000e] == {"bdf": e1000e, "known_to_xen": True, "node": 1}, devices

    xl_nodes, xl_cpus, xl_devices = xl_info_numa(bed.dom0_ok("xl info -n"))
    mine = {str(n["id"]): (n["memsize_bytes"] >> 20, n["distances"]) for n in j["nodes"]}
    assert mine == xl_nodes, (j["nodes"], xl_nodes)
    assert {c["id"]: c["node"] for c in j["cpus"]} == xl_cpus, (j["cpus"], xl_cpus)
    assert set(xl_cpus.values()) == {0, 1}, xl_cpus
    placed = {bdf: d["node"] for bdf, d in devices.items() if d["node"] is not None}
    assert placed == xl_devices, (placed, xl_devices)
    assert xl_devices.get(e1000e) == 1, xl_devices


# --- passthrough ------------------------------------------------------------------------------


def irq_affinities(g: Guest, irqs: list[int]) -> dict[int, str]:
    out = g.run_ok(" ; ".join(f"echo {i} $(cat /proc/irq/{i}/smp_affinity_list)" for i in irqs))
    return {int(a): b for a, b in (ln.split() for ln in out.splitlines() if ln.strip())}


def guest_device(g: Guest, bdf: str) -> dict[str, str]:
    """numa_node, driver, MSI vectors and network interface of one PCI function in the guest."""
    out = g.run_ok(
        f"d=/sys/bus/pci/devices/{bdf}; echo node $(cat $d/numa_node); "
        'echo driver $(basename "$(readlink $d/driver)"); '
        'echo msi $(ls $d/msi_irqs 2>/dev/null | tr "\\n" ,); '
        "echo net $(ls $d/net 2>/dev/null)"
    )
    return {k: v for k, _, v in (ln.partition(" ") for ln in out.splitlines() if ln.strip())}


def wait_for(what: str, probe: Any, timeout: float, step: float = 5) -> Any:
    """Call ``probe()`` until it returns something true; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f}s")
        time.sleep(step)


def start_dom0_job(bed: XenBed) -> None:
    """The Dom0 agent's job (``guestagent dom0 run``): publish, then follow @introduceDomain,
    @releaseDomain and the PCI backends. e2e-agent execs the agent, so $! is its PID."""
    bed.dom0_ok(
        "mkdir -p /run/e2e; "
        "[ -f /run/e2e/dom0-run.pid ] && kill $(cat /run/e2e/dom0-run.pid) 2>/dev/null; "
        "e2e-agent --log-level info dom0 run --resync 30 "
        ">/run/e2e/dom0-run.log 2>&1 </dev/null & echo $! >/run/e2e/dom0-run.pid",
        timeout=300,
    )


def stop_dom0_job(bed: XenBed) -> str:
    out, _ = bed.dom0(
        "kill $(cat /run/e2e/dom0-run.pid) 2>/dev/null; sleep 3; rm -f /run/e2e/dom0-run.pid; "
        "cat /run/e2e/dom0-run.log"
    )
    return out


@pytest.mark.hvm
def test_hvm_passthrough_hint_binds_irqs_to_device_node(bed_numa2: XenBed) -> None:
    """The node-1 e1000e passed through to an HVM guest with vnode 1 on host node 1: the Dom0 job
    publishes vnode 1 read-only into the guest's tree; the guest agent takes the node from that
    hint, pins the device's MSI-X vectors on vnode 1's vCPU and writes numa_node; the guest
    cannot change the hint; ``devices --reset`` and stopping the daemon put everything back, and
    so does ``guestagent reset`` after a ``kill -9`` of the daemon (issue 15). Last, in the same
    guest, Debian's irqbalance runs beside the daemon with the packaged policy script and leaves
    the pinned vectors alone, and the daemon's hugepages go on the device's vnode and come back
    on stop (issue 16: :func:`_check_irqbalance_and_hugepages`)."""
    bed = bed_numa2
    bed.dom0_ok("e2e-agent setup", timeout=300)
    (host_bdf,) = pci_by_id(bed.dom0_ok, E1000E)
    bed.dom0_ok(assignable_script(host_bdf))
    start_dom0_job(bed)
    spec = GuestSpec.hvm(memory=1024, vcpus=2, vnuma=xl_vnuma(list(PNODE_MAPPED)), name="pt")
    spec.extra.append(xl_pci(host_bdf))
    try:
        with bed.guest(spec) as g:
            assert g.domid is not None
            check_hint_published(bed, g, g.domid, host_bdf)
            check_binding(g)
    finally:
        log = stop_dom0_job(bed)
    assert "dom0_hints_published" in log, log
    assert "level=error" not in log, log


def check_hint_published(bed: XenBed, g: Guest, domid: int, host_bdf: str) -> None:
    (bdf,) = pci_by_id(g.run_ok, E1000E)
    # The premise: Xen's guest ACPI has no device proximity, the guest kernel knows no node.
    assert guest_device(g, bdf)["node"] == "-1"
    assert g.run_ok("cat /sys/devices/system/node/node1/cpulist").strip() == "1"

    # The Dom0 job published the hint by itself; read it in Dom0 with its permissions.
    base = f"/local/domain/{domid}/guestagent-dom0"
    key = host_bdf.replace(":", "-").replace(".", "-")

    def tree() -> str:
        out, rc = bed.dom0(f"xenstore-ls -p {base} 2>&1")
        return out if rc == 0 and "vnode-source" in out else ""

    published = wait_for(f"the Dom0 job's hint under {base}", tree, 120)
    for line in published.splitlines():
        if "=" in line:
            assert line.rstrip().endswith(f"(n0,r{domid})"), published
    for name, value in (("host-bdf", host_bdf), ("guest-bdf", bdf), ("host-node", "1"),
                        ("vnode", "1"), ("vnode-source", "pnode")):
        got = bed.dom0_ok(f"xenstore-read {base}/devices/{key}/{name}")
        assert got.strip() == value, (name, got, published)
    assert bed.dom0_ok(f"xenstore-read {base}/version").strip() == "1"
    # One pass of the command agrees (and has nothing to change).
    results = agent_json(bed, "dom0 publish --json")
    mine = [r for r in results if r["domid"] == domid]
    assert mine and mine[0]["error"] is None and not mine[0]["changed"], results
    assert mine[0]["devices"] == [{"host_bdf": host_bdf, "guest_bdf": bdf, "host_node": 1,
                                   "vnode": 1, "vnode_source": "pnode"}], results

    # The guest can read the hint but cannot change, add or remove anything there.
    for script in (f"xenstore-write {base}/devices/{key}/vnode 0",
                   f"xenstore-write {base}/devices/0000-00-1f-0/vnode 0",
                   f"xenstore-write {base}/version 2",
                   f"xenstore-rm {base}"):
        out, rc = g.run(script)
        assert rc != 0, (script, out)
    assert g.run_ok(f"xenstore-read {base}/devices/{key}/vnode").strip() == "1"
    assert bed.dom0_ok(f"xenstore-ls -p {base}") == published


def load_driver(g: Guest, bdf: str) -> str:
    """Load e1000e (the e2e guest runs no udev); its network interface's name."""
    g.run_ok("modprobe e1000e")

    def bound() -> dict[str, str] | None:
        d = guest_device(g, bdf)
        return d if d.get("net") else None

    dev: dict[str, str] = wait_for("e1000e bound with a network interface", bound, 60, 2)
    assert dev["driver"] == "e1000e", dev
    return dev["net"]


def bring_up(g: Guest, bdf: str) -> list[int]:
    """Driver loaded and interface up, so that it requests its MSI(-X) vectors (their /proc/irq
    entries appear only then). Returns the MSI vectors (none when it fell back to INTx)."""
    g.run_ok(f"ip link set {load_driver(g, bdf)} up")
    return [int(i) for i in guest_device(g, bdf)["msi"].split(",") if i]


def daemon_stopped(g: Guest) -> str:
    """SIGTERM to the guest's ``guestagent run``; its log once it has exited."""
    g.run_ok("kill -TERM $(cat /tmp/daemon.pid)")
    # Exited: gone, or a zombie (the guest's init is a shell that reaps only now and then).
    gone = ("s=$(cut -d' ' -f3 /proc/$(cat /tmp/daemon.pid)/stat 2>/dev/null); "
            '[ -z "$s" ] || [ "$s" = Z ]')
    wait_for("the daemon's exit", lambda: g.run(gone)[1] == 0, 60)
    return g.run_ok("cat /tmp/daemon.log")


def _check_report_before_up(g: Guest, bdf: str, irqs: list[int]) -> None:
    """Interface still down: the vectors are allocated but not requested (no /proc/irq/N yet)."""
    shown = json_of(g.run_ok("guestagent devices --json 2>/dev/null", timeout=180))
    (report,) = [d for d in shown["devices"] if d["bdf"] == bdf]
    assert report["source"] == "dom0" and report["node"] == 1, report
    assert report["kernel_node"] == -1 and report["failed"] == [], report
    # Host node 1 holds vnode 1: the device is local to the guest (issue 16 item 6).
    assert report["host_node"] == 1 and report["remote"] is False, report
    assert sorted(report["irqs"]) == sorted(irqs), (report, irqs)
    assert any(p.startswith("write numa_node = 1") for p in report["planned"]), report
    waiting = [f"IRQ {i}: not requested by the driver yet" for i in irqs]
    assert all(any(s.startswith(w) for s in report["skipped"]) for w in waiting), report


def _check_daemon_binds_then_undoes(
    g: Guest, bdf: str, net: str, irqs: list[int], online: str
) -> None:
    """The daemon (its devices job) starts with the interface down: numa_node now, the vectors
    on its repeated pass once the interface is up; SIGTERM undoes both."""
    g.run_ok("guestagent run >/tmp/daemon.log 2>&1 </dev/null & echo $! >/tmp/daemon.pid")
    wait_for("the daemon's numa_node write", lambda: guest_device(g, bdf)["node"] == "1", 180)
    wait_for("the daemon noting the vectors not requested yet",
             lambda: "devices_pending_vectors" in g.run_ok("cat /tmp/daemon.log"), 60)
    g.run_ok(f"ip link set {net} up")
    wait_for("the daemon's IRQ pinning",
             lambda: irq_affinities(g, irqs) == {i: "1" for i in irqs}, 300)
    log = daemon_stopped(g)
    assert "vectors not requested by their driver yet" in log, log
    assert "devices_undo" in log, log
    assert irq_affinities(g, irqs) == {i: online for i in irqs}, log
    assert guest_device(g, bdf)["node"] == "-1", log


def _check_apply_then_reset(g: Guest, bdf: str, irqs: list[int]) -> None:
    """The commands: apply, then --reset."""
    before = irq_affinities(g, irqs)
    applied = json_of(g.run_ok("guestagent devices apply --json 2>/dev/null", timeout=180))
    (report,) = [d for d in applied["devices"] if d["bdf"] == bdf]
    assert report["failed"] == [], report
    assert report["source"] == "dom0" and report["node"] == 1, report
    assert irq_affinities(g, irqs) == {i: "1" for i in irqs}, (report, before)
    assert guest_device(g, bdf)["node"] == "1"
    assert int(g.run_ok("cat /proc/sys/kernel/tainted")) & TAINT_FIRMWARE_WORKAROUND
    undone = json_of(g.run_ok("guestagent devices --reset --json 2>/dev/null", timeout=180))
    assert len(undone["undone"]) == 1 + len(irqs), undone
    assert irq_affinities(g, irqs) == before, undone
    assert guest_device(g, bdf)["node"] == "-1", undone


#: Exit status 0 once the process in /tmp/daemon.pid is gone or a zombie (the e2e guest's init
#: is a shell that reaps only now and then).
DAEMON_GONE = ("s=$(cut -d' ' -f3 /proc/$(cat /tmp/daemon.pid)/stat 2>/dev/null); "
               '[ -z "$s" ] || [ "$s" = Z ]')


def _devices_journal(g: Guest) -> list[str]:
    """The paths devices.json records (none when the file is gone: an empty journal)."""
    out = g.run_ok("cat /run/guestagent/devices.json 2>/dev/null || echo '{\"changes\": []}'")
    return sorted(c["path"] for c in json_of(out)["changes"])


def _stop_post(g: Guest) -> tuple[str, str]:
    """The unit's ExecStopPost commands by hand (``UNIT_STOP_POST``), each with exit status 0:
    their standard output and their log."""
    g.run_ok("rm -f /tmp/stop-post.out /tmp/stop-post.log")
    for args in UNIT_STOP_POST:
        out, rc = g.run(f"guestagent --log-level info {args} >>/tmp/stop-post.out "
                        "2>>/tmp/stop-post.log; rc=$?; cat /tmp/stop-post.out; exit $rc", 300)
        assert rc == 0, (f"guestagent {args}: exit status {rc}:\n{out}\n"
                         + g.run_ok("tail -n 30 /tmp/stop-post.log"))
    return g.run_ok("cat /tmp/stop-post.out"), g.run_ok("cat /tmp/stop-post.log")


def _daemon_status(g: Guest) -> Any:
    """``guestagent status --json`` of the guest's daemon; None while it does not answer."""
    out, rc = g.run("guestagent status --json 2>/dev/null")
    return json_of(out) if rc == 0 and out.strip() else None


def _check_kill_9_then_stop_post(g: Guest, bdf: str, irqs: list[int]) -> str:
    """``kill -9`` of the daemon (issue 15: a crash, an OOM or a watchdog kill) after it pinned
    the device's vectors and wrote numa_node, then the unit's ExecStopPost (``guestagent
    reset``) by hand: the affinities and numa_node are back as before the agent, devices.json is
    gone; a fresh daemon answers ``status`` and binds again; SIGTERM and the stop command again
    leave nothing of the devices'. Returns a summary line."""
    before = irq_affinities(g, irqs)
    assert guest_device(g, bdf)["node"] == "-1", before
    bound = {i: "1" for i in irqs}

    def binding() -> bool:
        return guest_device(g, bdf)["node"] == "1" and irq_affinities(g, irqs) == bound

    g.run_ok("guestagent run >/tmp/daemon.log 2>&1 </dev/null & echo $! >/tmp/daemon.pid")
    wait_for("the daemon's numa_node write and IRQ pinning", binding, 300)
    journalled = _devices_journal(g)
    assert f"/sys/bus/pci/devices/{bdf}/numa_node" in journalled, journalled
    assert all(f"/proc/irq/{i}/smp_affinity_list" in journalled for i in irqs), journalled

    g.run_ok("kill -KILL $(cat /tmp/daemon.pid)")
    wait_for("the killed daemon gone", lambda: g.run(DAEMON_GONE)[1] == 0, 60, 2)
    assert binding(), "kill -9 must leave the binding in force (nothing runs the undo)"
    g.run_ok("mv /tmp/daemon.log /tmp/daemon-killed.log")
    undone, stop_log = _stop_post(g)
    assert irq_affinities(g, irqs) == before, (undone, stop_log)
    assert guest_device(g, bdf)["node"] == "-1", (undone, stop_log)
    assert len([ln for ln in undone.splitlines() if ln.startswith("devices: ")]) == (
        1 + len(irqs)), undone
    assert _devices_journal(g) == [], (undone, stop_log)
    assert "level=error" not in stop_log, stop_log

    # A fresh daemon starts on what the crash and the reset left, and serves.
    g.run_ok("guestagent run >/tmp/daemon.log 2>&1 </dev/null & echo $! >/tmp/daemon.pid")
    status = wait_for("guestagent status of the fresh daemon", lambda: _daemon_status(g), 180, 3)
    assert status["jobs"]["devices"]["running"], status
    wait_for("the fresh daemon binding again", binding, 300)
    log = daemon_stopped(g)
    assert irq_affinities(g, irqs) == before and guest_device(g, bdf)["node"] == "-1", log
    again, _ = _stop_post(g)
    assert not [ln for ln in again.splitlines() if ln.startswith("devices: ")], again
    assert _devices_journal(g) == [], log
    return (f"devices kill -9: {len(irqs)} vectors on vnode 1's vCPU and numa_node 1 left by the "
            f"crash; {'; '.join(UNIT_STOP_POST)} put back {before} and numa_node -1; a fresh "
            "daemon answered status and bound again; its SIGTERM undid it")


def check_binding(g: Guest) -> None:
    (bdf,) = pci_by_id(g.run_ok, E1000E)
    net = load_driver(g, bdf)
    irqs = [int(i) for i in guest_device(g, bdf)["msi"].split(",") if i]
    assert irqs, guest_device(g, bdf)  # MSI-X: three vectors were seen
    online = g.run_ok("cat /sys/devices/system/cpu/online").strip()
    assert online == "0-1", online
    _check_report_before_up(g, bdf, irqs)
    _check_daemon_binds_then_undoes(g, bdf, net, irqs, online)
    _check_apply_then_reset(g, bdf, irqs)
    print(_check_kill_9_then_stop_post(g, bdf, irqs))
    print(_check_irqbalance_and_hugepages(g, bdf, irqs))


#: irqbalance's rebalancing interval in the test (``--interval``; Debian's default is 10 s).
IRQBALANCE_INTERVAL = 2
#: The packaged policy script, from the agent's sources in the guest image (the pip install ships
#: no packaging files; the .deb puts it in /usr/libexec/guestagent/).
POLICY_SCRIPT = "/usr/src/guestagent/packaging/irqbalance/irqbalance-policy"
HUGEPAGES_CONF = "/etc/guestagent/conf.d/50-e2e-hugepages.toml"
#: 2 MiB pages asked on the device's node: 16 MiB of vnode 1's 512 MiB.
HUGEPAGES_WANTED = 8
#: irqbalance --debug prints this line at the start of every rebalancing interval.
IRQBALANCE_CYCLE = "-" * 77


def hugepage_pools(g: Guest) -> dict[int, int]:
    """``nr_hugepages`` of the 2 MiB pool of vnodes 0 and 1."""
    path = "/sys/devices/system/node/node{}/hugepages/hugepages-2048kB/nr_hugepages"
    return {n: int(g.run_ok(f"cat {path.format(n)}").strip()) for n in (0, 1)}


def irqbalance_log(g: Guest) -> str:
    return g.run_ok("cat /tmp/irqbalance.log")


def bans(log: str, irq: int) -> int:
    """How often irqbalance took the policy script's ``ban=true`` for the IRQ (each IRQ database
    build asks the script again)."""
    return len(re.findall(rf"^IRQ {irq}: Override ban to true\s*$", log, re.M))


def _check_irqbalance_and_hugepages(g: Guest, bdf: str, irqs: list[int]) -> str:
    """Debian's irqbalance (1.9.2) beside ``guestagent run`` with hugepages configured (issue 16,
    items 4 and 5). The daemon pins the vectors on vnode 1's vCPU and raises vnode 1's 2 MiB pool;
    irqbalance then starts with the packaged policy script, a 2 s interval and --debug (its log:
    each IRQ database build, each interval, its placement tree). Shown: irqbalance takes ban=true
    for every pinned vector at its start and again after a SIGHUP (a rescan, which rebalances
    every IRQ it has not banned), never places one in its tree, and over at least three intervals
    after that rescan the vectors stay where the agent put them. SIGTERM to the daemon: the pool
    is back, the undo of each vector is logged and the daemon asked irqbalance to rescan."""
    before = irq_affinities(g, irqs)
    pools = hugepage_pools(g)
    g.run_ok(f"mkdir -p /etc/guestagent/conf.d; printf '[devices]\\nhugepages_2m_per_node = "
             f"{HUGEPAGES_WANTED}\\n' >{HUGEPAGES_CONF}")
    pinned = {i: "1" for i in irqs}

    def bound() -> bool:
        return (guest_device(g, bdf)["node"] == "1" and irq_affinities(g, irqs) == pinned
                and hugepage_pools(g)[1] != pools[1])

    g.run_ok("guestagent run >/tmp/daemon.log 2>&1 </dev/null & echo $! >/tmp/daemon.pid")
    try:
        wait_for("the daemon's numa_node, IRQ pinning and hugepages", bound, 300)
        reserved = hugepage_pools(g)
        assert reserved == {0: pools[0], 1: HUGEPAGES_WANTED}, (pools, reserved)
        hugepages_path = ("/sys/devices/system/node/node1/hugepages/hugepages-2048kB/"
                          "nr_hugepages")
        assert hugepages_path in _devices_journal(g)
        # stdbuf: irqbalance's log is printf to a file, line-buffered so it can be followed.
        g.run_ok(f"stdbuf -oL irqbalance --debug --interval={IRQBALANCE_INTERVAL} "
                 f"--policyscript={POLICY_SCRIPT} >/tmp/irqbalance.log 2>&1 </dev/null & "
                 "echo $! >/tmp/irqbalance.pid")
        wait_for("irqbalance banning every pinned vector (its policy script)",
                 lambda: all(bans(irqbalance_log(g), i) for i in irqs), 180, 3)
        wait_for("two irqbalance intervals",
                 lambda: irqbalance_log(g).count(IRQBALANCE_CYCLE) >= 2, 120, 2)
        # SIGHUP: irqbalance rebuilds its IRQ database (the script is asked again) and rebalances
        # every IRQ it has not banned (irqbalance.c force_rebalance_irq).
        g.run_ok("kill -HUP $(cat /tmp/irqbalance.pid)")
        wait_for("irqbalance's rescan banning the vectors again",
                 lambda: all(bans(irqbalance_log(g), i) >= 2 for i in irqs), 120, 2)
        after_rescan = irqbalance_log(g).count(IRQBALANCE_CYCLE)
        wait_for("three more irqbalance intervals", lambda: irqbalance_log(
            g).count(IRQBALANCE_CYCLE) >= after_rescan + 3, 120, 2)
        assert irq_affinities(g, irqs) == pinned, irqbalance_log(g)[-3000:]
        log = irqbalance_log(g)
        assert "CPU number" in log, log[-3000:]  # its placement tree was dumped
        placed = [i for i in irqs if re.search(rf"Interrupt {i} node_num", log)]
        assert placed == [], (placed, log[-3000:])
        assert irqbalance_running(g), log[-3000:]
        cycles = log.count(IRQBALANCE_CYCLE)

        stop_log = daemon_stopped(g)
        assert hugepage_pools(g) == pools, stop_log
        assert "irqbalance_rescan" in stop_log and "no longer bans" in stop_log, stop_log
        for i in irqs:
            assert (f"/proc/irq/{i}/smp_affinity_list: restored '{before[i]}'" in stop_log), (
                stop_log)
        assert guest_device(g, bdf)["node"] == "-1", stop_log
        assert _devices_journal(g) == [], stop_log
    finally:
        g.run("rm -f " + HUGEPAGES_CONF)
        g.run("kill -TERM $(cat /tmp/irqbalance.pid) 2>/dev/null; kill -TERM "
              "$(cat /tmp/daemon.pid) 2>/dev/null")
    return (f"irqbalance: {cycles} intervals of {IRQBALANCE_INTERVAL} s (3 after a SIGHUP rescan) "
            f"beside guestagent run; vectors {irqs} banned by the policy script at start and at "
            f"the rescan, never in its tree, still on vnode 1's vCPU; hugepages: vnode 1's pool "
            f"{pools[1]} -> {reserved[1]} (vnode 0 {pools[0]}), {pools[1]} again after SIGTERM")


def irqbalance_running(g: Guest) -> bool:
    """irqbalance still there (not gone, not a zombie): it did not stop by itself."""
    return g.run("s=$(cut -d' ' -f3 /proc/$(cat /tmp/irqbalance.pid)/stat 2>/dev/null); "
                 '[ -n "$s" ] && [ "$s" != Z ]')[1] == 0


def test_pv_passthrough_hint_from_pciback_address(bed_numa2: XenBed) -> None:
    """The same device passed through to a PV guest (pcifront). Xen has no PV vNUMA, so the guest
    has one node, and its kernel puts the device on it (numa_node 0, seen): the Dom0 job
    publishes the address pciback gives the device on the guest's virtual bus, host node 1 and
    vnode 0 ("single"); the guest agent trusts the kernel's node first, so it writes no
    numa_node (no taint) and puts the vectors on node 0's CPUs."""
    bed = bed_numa2
    bed.dom0_ok("e2e-agent setup", timeout=300)
    (host_bdf,) = pci_by_id(bed.dom0_ok, E1000E)
    bed.dom0_ok(assignable_script(host_bdf))
    start_dom0_job(bed)
    spec = GuestSpec.pv(memory=512, vcpus=2, name="ptpv")
    spec.extra.append(xl_pci(host_bdf))
    try:
        with bed.guest(spec) as g:
            assert g.domid is not None
            domid = g.domid
            # No udev in the e2e guest: load the PCI frontend by hand; pciback then writes the
            # device's address on the guest's virtual bus (vdev-0), which the job picks up.
            g.run_ok("modprobe xen-pcifront")
            (bdf,) = wait_for("the e1000e on pcifront's bus", lambda: pci_by_id(g.run_ok, E1000E),
                              60, 2)
            base = f"/local/domain/{domid}/guestagent-dom0"
            key = host_bdf.replace(":", "-").replace(".", "-")

            def guest_bdf() -> str:
                out, rc = bed.dom0(f"xenstore-read {base}/devices/{key}/guest-bdf 2>&1")
                return out.strip() if rc == 0 else ""

            assert wait_for(f"the Dom0 job's guest-bdf under {base}", guest_bdf, 120) == bdf
            for name, value in (("host-node", "1"), ("vnode", "0"), ("vnode-source", "single")):
                got = bed.dom0_ok(f"xenstore-read {base}/devices/{key}/{name}")
                assert got.strip() == value, (name, got)
            out, rc = g.run(f"xenstore-write {base}/devices/{key}/vnode 1")
            assert rc != 0, out

            bring_up(g, bdf)
            node0 = g.run_ok("cat /sys/devices/system/node/node0/cpulist").strip()
            assert g.run_ok("cat /sys/devices/system/node/online").strip() == "0"
            assert guest_device(g, bdf)["node"] == "0"
            applied = json_of(g.run_ok("guestagent devices apply --json 2>/dev/null",
                                       timeout=180))
            (report,) = [d for d in applied["devices"] if d["bdf"] == bdf]
            assert report["source"] == "kernel" and report["node"] == 0, report
            assert report["failed"] == [], report
            assert not any("numa_node" in a for a in report["applied"]), report
            assert not int(g.run_ok("cat /proc/sys/kernel/tainted")) & TAINT_FIRMWARE_WORKAROUND
            irqs = report["irqs"]  # MSI-X through pcifront, or INTx
            assert irqs, report
            assert irq_affinities(g, irqs) == {i: node0 for i in irqs}, report
            g.run_ok("guestagent devices --reset")

            # The Dom0 daemon instead of the command, and its xenstore connection cut.
            stop_dom0_job(bed)  # its log stays for the checks below
            print(check_daemon_survives_xenstore_loss(bed, domid, f"{base}/devices/{key}"))
            assert g.run_ok("echo alive").strip() == "alive"
    finally:
        log = stop_dom0_job(bed)
    assert "dom0_hints_published" in log, log
    assert "level=error" not in log, log


# --- xenstore connection loss under the Dom0 daemon ----------------------------------------------

#: xenstored's socket in Dom0 (bound into the agent's chroot: /run).
XS_SOCKET = "/run/xenstored/socket"
#: The agent's chroot as Dom0 sees it (tests/e2e/dom0/e2e-agent).
AGENT_ROOT = "/run/e2e-agent/root"

#: Run in the agent's chroot. ``PID``: xenstored's socket path is moved aside (xenstored keeps
#: serving on it: ``XENSTORED_PATH=...live``), a socket file nobody listens on takes its place (a
#: connect() is refused, as while xenstored restarts), then the daemon's connection to xenstored is
#: shut down: each socket of the daemon is duplicated (pidfd_getfd(2), Linux 5.6) and the one
#: whose peer is xenstored's socket gets shutdown(SHUT_RDWR), so both ends read end-of-file, as
#: when xenstored closes it. ``restore``: the live socket back at its path. Prints what it did.
XS_CUT = f"""\
import ctypes, os, socket, sys
SOCK = "{XS_SOCKET}"
if sys.argv[1] == "restore":
    if os.path.exists(SOCK + ".live"):
        if os.path.lexists(SOCK):
            os.unlink(SOCK)
        os.rename(SOCK + ".live", SOCK)
        print("restored", SOCK)
    sys.exit(0)
pid = int(sys.argv[1])
os.rename(SOCK, SOCK + ".live")
socket.socket(socket.AF_UNIX).bind(SOCK)
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
cut = []
for name in os.listdir(f"/proc/{{pid}}/fd"):
    try:
        if not os.readlink(f"/proc/{{pid}}/fd/{{name}}").startswith("socket:"):
            continue
    except OSError:
        continue
    fd = libc.syscall(438, pidfd, int(name), 0)  # SYS_pidfd_getfd on x86_64
    if fd < 0:
        sys.exit(f"pidfd_getfd({{pid}}, {{name}}): {{os.strerror(ctypes.get_errno())}}")
    s = socket.socket(fileno=fd)
    try:
        peer = s.getpeername() if s.family == socket.AF_UNIX else ""
    except OSError:
        peer = ""
    if isinstance(peer, str) and peer.endswith("xenstored/socket"):
        s.shutdown(socket.SHUT_RDWR)
        cut.append(f"fd {{name}} -> {{peer}}")
    s.close()
print("cut:", "; ".join(cut) or "nothing")
sys.exit(0 if cut else 1)
"""


def daemon_status(bed: XenBed) -> dict[str, Any]:
    """``guestagent status --json`` of the Dom0 daemon; {} while it does not answer."""
    out, rc = bed.dom0("e2e-agent status --json 2>/dev/null")
    return json_of(out) if rc == 0 else {}


def cpu_ticks(bed: XenBed, pid: int) -> tuple[int, int]:
    """(utime + stime of ``pid``, Dom0's uptime), both in clock ticks (USER_HZ, 100)."""
    out = bed.dom0_ok(f"cat /proc/{pid}/stat; cat /proc/uptime")
    stat, uptime = out.strip().splitlines()[-2:]
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 (state) on: utime is 14, stime 15
    return int(fields[11]) + int(fields[12]), round(float(uptime.split()[0]) * 100)


def check_daemon_survives_xenstore_loss(bed: XenBed, domid: int, device: str) -> str:
    """The Dom0 daemon loses its xenstore connection and gets it back (issue 15).

    What is real: Xen's C xenstored, its Unix socket, the daemon as the unit starts it, and the
    connection's end: shutdown(2) on the daemon's own socket (duplicated with pidfd_getfd), so
    the daemon reads end-of-file and xenstored drops the connection and its watches, as when
    xenstored closes it. What is not: xenstored itself keeps running. Restarting it would lose
    the Dom0 kernel's own xenstore watches (the backends': no guest could start afterwards), and
    a live update keeps every socket connection open (docs/FAULTS.md). So while the connection is
    down, xenstored's socket path answers connect() with ECONNREFUSED (a socket file nobody
    listens on; the live one moved aside), as during a restart, for about 10 s; one hint key is
    removed meanwhile (through the live socket). Asserted: the loss logged, ``status`` saying
    reconnecting, the daemon's CPU time over the outage small (ticks from /proc/PID/stat against
    Dom0's uptime: a spinning loop uses all of them), then the reconnect, the key written again by
    the republish, status connected, and ``xl list`` still working. Returns a summary line."""
    key = f"{device}/host-node"
    assert bed.dom0_ok(f"xenstore-read {key}").strip() == "1"
    bed.dom0_ok(f"cat > {AGENT_ROOT}/tmp/xs-cut.py <<'E2E_XS_CUT'\n{XS_CUT}E2E_XS_CUT")
    bed.dom0_ok(
        "e2e-agent --log-level info run --role dom0 >/run/e2e/daemon.log 2>&1 </dev/null & "
        "echo $! >/run/e2e/daemon.pid",
        timeout=300,
    )
    pid = int(bed.dom0_ok("cat /run/e2e/daemon.pid").strip())
    try:
        wait_for("the Dom0 daemon answering status, xenstore connected",
                 lambda: daemon_status(bed).get("xenstore") == "connected", 180)
        used, elapsed = cut_for_a_while(bed, pid, key)
        wait_for(f"{key} written again",
                 lambda: (r := bed.dom0(f"xenstore-read {key}"))[1] == 0 and r[0].strip() == "1",
                 120, 2)
        status = wait_for("status connected again", lambda: (
            s if (s := daemon_status(bed)).get("xenstore") == "connected" else None), 60, 2)
    finally:
        log, _ = bed.dom0(f"kill {pid}; sleep 3; cat /run/e2e/daemon.log")
        print(f"the Dom0 daemon's log:\n{log}")
    assert status["xenstore_reconnects"] == 1, status
    assert used * 4 < elapsed, (
        f"the daemon used {used} of {elapsed} CPU ticks while xenstore was away:\n{log}")
    lost = log.index("event=xenstore_lost")
    back = log.index("event=xenstore_reconnected", lost)
    assert re.search(r"event=dom0_hints_published\b.*writes=1\b", log[back:]), log
    assert "Traceback" not in log, log
    bed.dom0_ok("xl list")
    return (f"Dom0 daemon: xenstore connection cut, {status['xenstore_reconnects']} reconnect, "
            f"{used} CPU ticks in {elapsed} while away; {key} written again")


def cut_for_a_while(bed: XenBed, pid: int, key: str) -> tuple[int, int]:
    """The daemon's xenstore connection cut (``XS_CUT``), checked lost in its log and status,
    ``key`` removed meanwhile, about 10 s more, then xenstored's socket back at its path. Returns
    the daemon's CPU ticks over the outage and the outage's length in ticks."""
    before = cpu_ticks(bed, pid)
    try:
        out = bed.dom0_ok(f"e2e-agent sh 'python3 /tmp/xs-cut.py {pid}'")
        assert "cut: fd" in out, out
        wait_for("the loss in the daemon's log", lambda: "event=xenstore_lost" in bed.dom0_ok(
            "cat /run/e2e/daemon.log"), 60, 2)
        status = wait_for("status saying reconnecting", lambda: (
            s if (s := daemon_status(bed)).get("xenstore", "").startswith("disconnected (")
            else None), 60, 2)
        assert "reconnecting since" in status["xenstore"], status
        assert status["xenstore_connected"] is False, status
        bed.dom0_ok(f"XENSTORED_PATH={XS_SOCKET}.live xenstore-rm {key}; sleep 10")
        after = cpu_ticks(bed, pid)
    finally:
        bed.dom0_ok("e2e-agent sh 'python3 /tmp/xs-cut.py restore'")
    return after[0] - before[0], after[1] - before[1]
