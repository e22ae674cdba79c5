"""Real-Xen check of the driver rebind (issue 16 item 1): the e1000e's DMA buffers on the
device's node, measured, against the same guest without the agent. Written on 2026-12-05 and
not run yet (the helper that wrote it had no bed time).

Not a ``test_`` file, so a plain ``pytest -m e2e`` does not collect it; pytest collects a file
named on its command line whatever its name, so the lead runs it with::

    export E2E_CACHE=/var/cache/guestagent-e2e
    python -m pytest -m e2e tests/e2e/io_rebind.py

The host is the 2-node layout (``bed_numa2``: the e1000e behind a ``pxb-pcie`` on host node 1).
The guest is test_dom0_devices.py's HVM passthrough guest (``PNODE_MAPPED``: vnode 0 on host
node 0, vnode 1 on host node 1, one vCPU and 512 MiB each) with the e1000e from its boot; Dom0
runs its job (``guestagent dom0 run``), which publishes the hint (vnode 1).

What is measured, and why it can be. e1000e allocates when its interface comes up and when its
rings are resized: its two descriptor rings with ``dma_alloc_coherent``, from the device's node
(``dev_to_node``; -1 means the running CPU's node), and one RX buffer per RX descriptor (a 2 KiB
``kmalloc`` and an ``sk_buff``), from the node of the CPU that runs the allocation. At the
default 256 descriptors that is about 0.6 MiB; with 4096 (the e1000e's maximum) about 9 MiB,
which shows in each node's memory (``/sys/devices/system/node/nodeN/meminfo``) above the
noise. The guest image has no ``ethtool``: ``RINGS_PY``, a few lines of Python doing the same
``SIOCETHTOOL`` requests (``ETHTOOL_GRINGPARAM``/``SRINGPARAM``), stands in for ``ethtool
-g``/``-G``.

Everything the test runs in the guest runs on vnode 0's CPU (the guest's command runner is
pinned there first, and its children inherit it): the device's wrong node. So without the agent
the buffers land on node 0, and the daemon, started from that shell, keeps its own memory (a
Python process, tens of MiB) on node 0 too, where it cannot be taken for the driver's on node 1.
Each measurement is ``SAMPLES`` samples one second apart, after ``drop_caches`` and one sample
thrown away; a sample is each node's memory held: ``MemUsed`` less the pages parked on its CPUs'
free lists (/proc/zoneinfo's pageset ``count``; ``MemUsed`` counts them as used, and on a 512 MiB
node they can hold a few MiB that come and go with any allocation), after ``vm.stat_refresh``
folds the per-CPU counters. A node's noise is the spread (largest minus smallest) of its
samples, and every margin below is derived from the measured noise and the measured footprint.
Both figures are printed.

Shown:

* baseline, no agent: ``numa_node`` -1; ``modprobe e1000e`` and the interface up (its delta
  printed), then its rings resized from the default to 4096/4096: the footprint (both nodes'
  growth) is at least half of what the added RX buffers take (2 KiB each) and more than
  ``SIGNAL_TO_NOISE`` times the noise, and node 1 (the device's) grows by no more than its margin
  (3 x its noise + a tenth of the footprint): the buffers are on node 0;
* with the agent, ``guestagent run`` with ``[devices] rebind = true``: ``numa_node`` 1 written,
  the driver rebound (journal entry ``driver_rebind``, log ``driver_rebound``), the interface
  back under its name, up, with its 4096/4096 rings (log ``interface_restored``, on the node's
  CPUs), carrier again when the baseline had it, the new MSI-X vectors on vnode 1's CPU; node 1
  grew by at least three quarters of the baseline's footprint minus 3 x its noise: the driver's
  memory is now on the device's node;
* SIGTERM: exit status 0, no error line, ``numa_node`` -1 again, ``devices.json`` empty, the
  rebind's undo line says the driver stays bound; the interface stays up with its rings;
* the protection: with the default route on the e1000e, ``guestagent devices apply --rebind``
  writes ``numa_node`` but refuses the rebind (``rebind refused: carries the default route
  (<if>)``) and the interface is the same one (its ``ifindex``); ``devices --reset`` after.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.bed import Guest, XenBed
from tests.e2e.io_hotplug import passthrough_guest_and_dom0_job, within
from tests.e2e.passthrough import (
    DAEMON_LOG,
    DAEMON_RC,
    DAEMON_START,
    E1000E,
    PNODE_MAPPED,
    error_lines,
    log_events,
    pci_by_id,
)
from tests.e2e.test_dom0_devices import (
    daemon_stopped,
    guest_device,
    irq_affinities,
    json_of,
    load_driver,
)
from tests.e2e.util import TIMEOUT_SCALE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000 * TIMEOUT_SCALE)]

#: Samples per measurement, one second apart.
SAMPLES = 5
#: The ring size asked for (e1000e's maximum, E1000_MAX_RXD and E1000_MAX_TXD).
RING = 4096
#: An RX buffer's smallest share of memory: its 2 KiB kmalloc (1522-byte frame + headroom +
#: skb_shared_info), the sk_buff head not counted.
RX_BUFFER_BYTES = 2048
#: The footprint must stand this many times above the two nodes' noise for the figures to mean
#: anything.
SIGNAL_TO_NOISE = 5
#: The daemon's configuration for this check.
REBIND_CONF = "/etc/guestagent/conf.d/50-e2e-rebind.toml"
#: Turns the rebind on for the daemon started next.
REBIND_ON = (f"mkdir -p {REBIND_CONF.rpartition('/')[0]}; "
             f"printf '[devices]\\nrebind = true\\n' >{REBIND_CONF}")
#: ``SIOCETHTOOL`` from Python (the image has no ethtool): ``rings.py IF`` prints ``rx tx rx_max
#: tx_max``; ``rings.py IF RX TX`` sets rx and tx first (``ethtool -G IF rx RX tx TX``).
RINGS_PY = """\
import array, fcntl, socket, struct, sys
name = sys.argv[1]
def call(cmd, words):
    buf = array.array("I", [cmd, *words])
    ifreq = struct.pack("16sP16x", name.encode(), buf.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), 0x8946, ifreq)  # SIOCETHTOOL
    return list(buf[1:])
words = call(0x10, [0] * 8)  # ETHTOOL_GRINGPARAM
if len(sys.argv) == 4:
    words[4], words[7] = int(sys.argv[2]), int(sys.argv[3])
    call(0x11, words)  # ETHTOOL_SRINGPARAM
    words = call(0x10, [0] * 8)
print(words[4], words[7], words[0], words[3])
"""
#: Pins the guest's command runner (every ancestor of the script's shell below PID 1) to the CPUs
#: in ``$CPUS``: every later command, the daemon too, starts there.
PIN_RUNNER = ('p=$$; while [ "$p" -gt 1 ]; do taskset -a -p -c "$CPUS" "$p" >/dev/null; '
              "p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2); done")
#: One sample: ``m <node> <kB>``, each node's MemUsed, and ``p <node> <pages>``, the pages on its
#: CPUs' free lists (``count:`` of /proc/zoneinfo's pagesets), after folding the per-CPU counters
#: (vm.stat_refresh).
ONE_SAMPLE = ("echo 1 >/proc/sys/vm/stat_refresh 2>/dev/null; "
              "for f in /sys/devices/system/node/node*/meminfo; do "
              "awk '/MemUsed/ {print \"m\", $2, $4}' $f; done; "
              "awk '/^Node/ {n = $2; sub(\",\", \"\", n)} /^ +count:/ {c[n] += $2} "
              "END {for (n in c) print \"p\", n, c[n]}' /proc/zoneinfo")
#: ``SAMPLES`` samples one second apart, after dropping the clean caches and one sample thrown
#: away (it reads the tools back into the page cache).
MEM_SAMPLES = ("sync; echo 3 >/proc/sys/vm/drop_caches; "
               f"{{ {ONE_SAMPLE}; seq 1; sleep 1; }} >/dev/null; "
               f"for i in $(seq {SAMPLES}); do {ONE_SAMPLE}; sleep 1; done")
#: A page of /proc/zoneinfo's counts, in KiB.
PAGE_KB = 4


@dataclass(frozen=True)
class Memory:
    """One measurement, each node's samples in KiB: ``samples``, the memory held (MemUsed less
    the pages parked on the per-CPU free lists, which MemUsed counts as used and which come and
    go with any allocation), and ``mem_used``, MemUsed as the node's meminfo says."""

    samples: dict[int, list[int]]
    mem_used: dict[int, list[int]]

    def level(self, node: int) -> float:
        return statistics.median(self.samples[node])

    def spread(self, node: int) -> int:
        return max(self.samples[node]) - min(self.samples[node])


def parse_samples(out: str) -> Memory:
    """``MEM_SAMPLES``'s output: per sample, an ``m <node> <kB>`` and a ``p <node> <pages>``
    line per node."""
    used: dict[int, list[int]] = {}
    parked: dict[int, list[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        numbers = len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit()
        if numbers and fields[0] in ("m", "p"):
            into = used if fields[0] == "m" else parked
            into.setdefault(int(fields[1]), []).append(int(fields[2]))
    for what in (used, parked):
        assert sorted(what) == [0, 1] and all(len(s) == SAMPLES for s in what.values()), out
    held = {n: [u - PAGE_KB * p for u, p in zip(used[n], parked[n])] for n in used}
    return Memory(held, used)


@dataclass(frozen=True)
class Delta:
    """From one measurement to the next: each node's change of the median and its noise (the
    larger spread of the two), in KiB."""

    change: dict[int, float]
    noise: dict[int, int]

    @classmethod
    def between(cls, before: Memory, after: Memory) -> Delta:
        return cls({n: after.level(n) - before.level(n) for n in (0, 1)},
                   {n: max(before.spread(n), after.spread(n)) for n in (0, 1)})

    def shown(self) -> str:
        return ", ".join(f"node {n} {self.change[n]:+.0f} kB (noise {self.noise[n]} kB)"
                         for n in (0, 1))


def io_rebind_buffers_on_device_node(bed_numa2: XenBed) -> None:
    """The baseline, then the daemon's rebind, its stop, and the protection (module text)."""
    with passthrough_guest_and_dom0_job(bed_numa2, "rb", PNODE_MAPPED, attached=True) as (
            g, _domid, _host):
        print(check_rebind(g))


def check_rebind(g: Guest) -> str:
    (bdf,) = pci_by_id(g.run_ok, E1000E)
    assert g.run_ok("cat /sys/devices/system/node/online").strip() == "0-1"
    cpus = {n: g.run_ok(f"cat /sys/devices/system/node/node{n}/cpulist").strip() for n in (0, 1)}
    g.run_ok(f"CPUS={cpus[0]}; {PIN_RUNNER}")
    pinned = g.run_ok("grep Cpus_allowed_list /proc/self/status").split()[-1]
    assert pinned == cpus[0], f"the runner's children run on {pinned}, not {cpus[0]}"
    g.run_ok(f"cat >/tmp/rings.py <<'E2E_RINGS'\n{RINGS_PY}E2E_RINGS")
    assert guest_device(g, bdf)["node"] == "-1"

    ifname, base, before, after, carrier = baseline(g, bdf)
    agent, vectors = with_agent(g, bdf, ifname, after, base, carrier, cpus[1])
    stopped(g, bdf, ifname)
    refused = protection(g, bdf, ifname)
    footprint = base.change[0] + base.change[1]
    return (f"rebind: baseline (no agent, rings {before} -> {RING}/{RING} on vnode 0's CPU): "
            f"{base.shown()}, footprint {footprint:.0f} kB; with guestagent run (rebind = "
            f"true): numa_node 1, driver_rebind journalled, {ifname} back up with {RING}/{RING} "
            f"rings{', carrier 1' if carrier else ''}, {len(vectors)} vectors on vnode 1's CPU: "
            f"{agent.shown()}, {agent.change[1] / footprint:.0%} of the footprint on node 1; "
            f"SIGTERM: exit 0, no error line; default route on {ifname}: {refused}")


def rings(g: Guest, ifname: str, *sizes: int) -> tuple[int, int, int, int]:
    """``rx tx rx_max tx_max`` of the interface, after setting ``rx tx`` when given."""
    rx, tx, rx_max, tx_max = (int(v) for v in g.run_ok(
        f"python3 /tmp/rings.py {ifname} {' '.join(map(str, sizes))}").split())
    return rx, tx, rx_max, tx_max


def carrier_within(ifname: str, seconds: int) -> str:
    """A guest script printing 1 once the interface has carrier, 0 when it has none after
    ``seconds`` (QEMU's e1000e has a link though no network is behind it; autonegotiation
    takes a moment after each bring-up)."""
    return (f"for i in $(seq {seconds}); do [ \"$(cat /sys/class/net/{ifname}/carrier "
            f"2>/dev/null)\" = 1 ] && {{ echo 1; exit 0; }}; sleep 1; done; echo 0")


def measure(g: Guest) -> Memory:
    return parse_samples(g.run_ok(MEM_SAMPLES, timeout=60 + 5 * SAMPLES))


def baseline(g: Guest, bdf: str) -> tuple[str, Delta, str, Memory, bool]:
    """No agent: the driver bound, the interface up, the rings resized, all on vnode 0's CPU;
    the footprint lands on node 0. Returns the interface, the resize's delta, the rings before
    it, the measurement after it and whether the interface has carrier."""
    unbound = measure(g)
    ifname = load_driver(g, bdf)
    g.run_ok(f"ip link set {ifname} up")
    rx, tx, rx_max, tx_max = rings(g, ifname)
    assert (rx_max, tx_max) == (RING, RING), (rx_max, tx_max)
    first = measure(g)
    # Recorded, not asserted: the module and its default rings are small beside the noise.
    print(f"baseline: modprobe e1000e and {ifname} up (rings {rx}/{tx}): "
          f"{Delta.between(unbound, first).shown()}")
    assert rings(g, ifname, RING, RING)[:2] == (RING, RING)
    then = measure(g)
    delta = Delta.between(first, then)
    print(f"baseline: rings {rx}/{tx} -> {RING}/{RING}: {delta.shown()}; held before "
          f"{first.samples}, after {then.samples}; MemUsed before {first.mem_used}, after "
          f"{then.mem_used}")
    footprint = delta.change[0] + delta.change[1]
    expected = (RING - rx) * RX_BUFFER_BYTES / 1024
    noise = delta.noise[0] + delta.noise[1]
    assert footprint >= expected / 2, (
        f"the resize took {footprint:.0f} kB, less than half of the {expected:.0f} kB its RX "
        f"buffers need: {delta.shown()}")
    assert footprint > SIGNAL_TO_NOISE * noise, (
        f"footprint {footprint:.0f} kB against noise {noise} kB: the method cannot tell")
    margin = 3 * delta.noise[1] + footprint / 10
    assert delta.change[1] <= margin, (
        f"without the agent node 1 grew by {delta.change[1]:.0f} kB (margin {margin:.0f}): "
        f"{delta.shown()}")
    carrier = g.run_ok(carrier_within(ifname, 30), timeout=60).strip() == "1"
    return ifname, delta, f"{rx}/{tx}", then, carrier


def with_agent(g: Guest, bdf: str, ifname: str, before: Memory, base: Delta, carrier: bool,
               node1_cpus: str) -> tuple[Delta, list[int]]:
    """``guestagent run`` with rebind on (started on vnode 0's CPU, as everything here): the
    driver rebound, the interface back as it was, and the driver's memory on node 1. Returns
    the delta from the baseline's last measurement, and the new vectors."""
    g.run_ok(REBIND_ON)
    g.run_ok(DAEMON_START)
    daemon_within(g, "the daemon's rebind in devices.json", lambda: [
        c for c in journal(g) if c["kind"] == "driver_rebind" and c["bdf"] == bdf], 300)
    daemon_within(g, "numa_node 1", lambda: guest_device(g, bdf)["node"] == "1", 60)
    restored = daemon_within(g, f"interface_restored for {ifname} in the daemon's log",
                             lambda: log_events(g.run_ok(DAEMON_LOG), "interface_restored",
                                                bdf=bdf, interface=ifname), 120)
    (event,) = restored
    assert event["restored"] == f"rings rx {RING} tx {RING},up", event
    assert event["placement"] == "on the node's CPUs", event
    assert log_events(g.run_ok(DAEMON_LOG), "driver_rebound", bdf=bdf, driver="e1000e")
    device = guest_device(g, bdf)
    assert device["driver"] == "e1000e" and device["net"] == ifname, device
    flags = int(g.run_ok(f"cat /sys/class/net/{ifname}/flags").strip(), 16)
    assert flags & 0x1, f"{ifname} is not up after the rebind: flags {flags:#x}"
    print(f"after the rebind: {g.run_ok(f'ip link show dev {ifname}').strip()}")
    assert rings(g, ifname)[:2] == (RING, RING)
    if carrier:
        assert g.run_ok(carrier_within(ifname, 60), timeout=90).strip() == "1", (
            f"{ifname} had carrier before the rebind, not within 60 s after it")
    vectors = [int(i) for i in guest_device(g, bdf)["msi"].split(",") if i]
    assert vectors, device
    daemon_within(g, "the new vectors on vnode 1's CPU", lambda: irq_affinities(g, vectors) == {
        i: node1_cpus for i in vectors}, 120)
    after = measure(g)
    delta = Delta.between(before, after)
    footprint = base.change[0] + base.change[1]
    print(f"with the agent: {delta.shown()}; held {after.samples}; MemUsed "
          f"{after.mem_used}")
    least = 0.75 * footprint - 3 * delta.noise[1]
    assert delta.change[1] >= least, (
        f"with the agent node 1 grew by {delta.change[1]:.0f} kB, less than {least:.0f} kB "
        f"(3/4 of the baseline's footprint {footprint:.0f} kB less 3 x its noise): "
        f"{delta.shown()}")
    return delta, vectors


def daemon_within(g: Guest, what: str, probe: Any, seconds: float) -> Any:
    """:func:`within`, with the daemon's log in the message when it is not seen."""
    try:
        return within(what, probe, seconds, 3)
    except AssertionError as e:
        raise AssertionError(f"{e}; the daemon's log:\n{g.run_ok(DAEMON_LOG)}") from None


def journal(g: Guest) -> list[dict[str, str]]:
    """devices.json's records (none when the file is gone)."""
    out = g.run_ok("cat /run/guestagent/devices.json 2>/dev/null || echo '{\"changes\": []}'")
    changes: list[dict[str, str]] = json.loads(out[out.index("{"):])["changes"]
    return changes


def stopped(g: Guest, bdf: str, ifname: str) -> None:
    """SIGTERM: everything undone but the rebind itself (the driver stays bound, the interface
    up with its rings), exit status 0, no error line."""
    log = daemon_stopped(g)
    g.run_ok(f"rm -f {REBIND_CONF}")
    assert g.run_ok(DAEMON_RC).strip() == "0", log
    assert error_lines(log) == [], log
    assert guest_device(g, bdf)["node"] == "-1", log
    assert journal(g) == [], log
    undone = [e.get("result", "") for e in log_events(log, "devices_undo")]
    assert [u for u in undone if u.startswith(f"{bdf}: driver e1000e was rebound; it stays "
                                              "bound")], undone
    assert int(g.run_ok(f"cat /sys/class/net/{ifname}/flags").strip(), 16) & 0x1, log
    assert rings(g, ifname)[:2] == (RING, RING)


def protection(g: Guest, bdf: str, ifname: str) -> str:
    """The default route on the e1000e: the rebind is refused, the interface is the same one;
    ``devices --reset`` after. A summary."""
    g.run_ok(f"ip route add default dev {ifname}")
    ifindex = g.run_ok(f"cat /sys/class/net/{ifname}/ifindex").strip()
    shown = json_of(g.run_ok("guestagent devices apply --rebind --json 2>/dev/null", timeout=180))
    (report,) = [d for d in shown["devices"] if d["bdf"] == bdf]
    refusal = f"rebind refused: carries the default route ({ifname})"
    assert refusal in report["skipped"], report
    assert not [a for a in report["applied"] if "rebound" in a], report
    assert [a for a in report["applied"] if a.startswith("numa_node = 1")], report
    assert g.run_ok(f"cat /sys/class/net/{ifname}/ifindex").strip() == ifindex
    g.run_ok("guestagent devices --reset", timeout=180)
    g.run_ok(f"ip route del default dev {ifname}")
    assert guest_device(g, bdf)["node"] == "-1"
    return f"'{refusal}', ifindex {ifindex} unchanged"


#: What pytest runs when this file is named on its command line (the file is not a ``test_``
#: one, so a plain ``pytest -m e2e`` leaves it out until the lead adopts it).
test_io_rebind_buffers_on_device_node = pytest.mark.hvm(io_rebind_buffers_on_device_node)
