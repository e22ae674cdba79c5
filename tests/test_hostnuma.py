"""``host numa`` (issue 19 part 2): the pure figures and reasons, the guest's published figures
as hostile input, the getvcpuinfo domctl through the real C doorway against a simulated Xen, the
collector on the Dom0 fixture tree with the xenstore test server, the command, the Dom0 job and
its metrics."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent import cli
from guestagent.config import defaults
from guestagent.daemon import metrics
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.errors import InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.hostnuma.collect import Collector, Monitor, Window, guest_layout
from guestagent.hostnuma.figures import (
    MIN_CPU_SECONDS,
    NS,
    compute,
    format_window,
    interval_node_time,
    sum_node_time,
)
from guestagent.hostnuma.job import HostNumaJob
from guestagent.hostnuma.model import (
    UNKNOWN_NODE,
    GuestLayout,
    GuestReported,
    Snapshot,
    VcpuSample,
    VnodeLayout,
)
from guestagent.hostnuma.present import render_table, status, to_json
from guestagent.hostnuma.reported import parse_nr_vnodes, parse_reported
from guestagent.xen.domctl import Domctl, candidate_versions
from guestagent.xen.errors import XenUnavailable
from guestagent.xen.sysctl import Sysctl
from tests.hostnuma_support import FIXTURE, UUID5, UUID9, NumaXen, Vcpu
from tests.xenstore_server import XenstoreServer

MakeHost = Callable[[HostFS], Host]

CPU_NODE = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
TWO_VNODES = GuestLayout(5, "web", "hvm", (VnodeLayout(0, 0, (0, 1)), VnodeLayout(1, 1, (2, 3))))


def snap(at: float, **domains: list[tuple[int, int]]) -> Snapshot:
    """``snap(10.0, d5=[(cpu, ns), ...])``: vCPU i of each domain on that pCPU at that time."""
    return Snapshot(at, {
        int(name[1:]): tuple(VcpuSample(i, cpu, ns) for i, (cpu, ns) in enumerate(vcpus))
        for name, vcpus in domains.items()
    })


# --- the law --------------------------------------------------------------------------------------


def test_interval_charges_the_node_of_both_samples_or_half_each() -> None:
    a = snap(0.0, d5=[(0, 0), (2, 0), (2, 5 * NS), (3, 0)])
    b = snap(10.0, d5=[(1, 4 * NS), (0, 2 * NS), (2, 4 * NS), (3, 50 * NS)])
    got = interval_node_time(a, b, CPU_NODE)
    assert got[(5, 0)] == {0: 4 * NS}  # stayed on node 0 (pCPU 0 -> 1)
    assert got[(5, 1)] == {1: NS, 0: NS}  # moved node 1 -> node 0: half each
    assert (5, 2) not in got  # counter went backwards: a new domain with that id
    assert got[(5, 3)] == {1: 10 * NS}  # more than the wall clock: capped


def test_unknown_pcpu_and_missing_vcpus() -> None:
    a = snap(0.0, d5=[(0, 0)], d6=[(0, 0)])
    b = snap(2.0, d5=[(9, NS), (0, NS)], d7=[(0, NS)])
    got = interval_node_time(a, b, CPU_NODE)
    assert got == {(5, 0): {0: NS // 2, UNKNOWN_NODE: NS // 2}}


def test_brief_example_reason() -> None:
    """The issue's example, to the word: 78 % of vnode 1's time on pnode 0 over 10 min."""
    totals = {(5, 0): {0: 100 * NS}, (5, 1): {0: 100 * NS},
              (5, 2): {0: 78 * NS, 1: 22 * NS}, (5, 3): {0: 78 * NS, 1: 22 * NS}}
    report = compute([TWO_VNODES], totals, 600.0, 80.0)
    (guest,) = report.guests
    assert guest.bad and guest.locality_pct == 61.0
    assert guest.reason == ("vnode 1's vCPUs ran on pnode 0 for 78 % of the last 10 min while "
                            "its memory is on pnode 1")
    assert [v.local_pct for v in guest.vnodes] == [100.0, 22.0]
    assert guest.vnodes[1].seconds_by_pnode == {0: 156.0, 1: 44.0}


def test_worst_first_and_notes() -> None:
    good = GuestLayout(6, "db", "hvm", (VnodeLayout(0, 1, (0,)),))
    idle = GuestLayout(7, "idle", "hvm", (VnodeLayout(0, 0, (0,)),))
    flat = GuestLayout(8, "pv", "pv", ())
    totals = {(5, 0): {0: NS}, (5, 2): {0: NS},
              (6, 0): {1: 9 * NS, 0: NS},
              (7, 0): {1: int(MIN_CPU_SECONDS * NS) - 1}}
    report = compute([flat, idle, good, TWO_VNODES], totals, 30.0, 80.0)
    assert [g.name for g in report.guests] == ["web", "db", "idle", "pv"]
    web, db, idle_g, pv = report.guests
    assert web.bad and web.locality_pct == 50.0
    assert web.reason is not None and "pnode 0 for 100 % of the last 30 s" in web.reason
    assert not db.bad and db.locality_pct == 90.0 and db.reason is None
    assert idle_g.locality_pct is None and not idle_g.bad and "ran less than" in str(idle_g.note)
    assert pv.locality_pct is None and not pv.vnuma and "no vNUMA" in str(pv.note)


def test_threshold_is_strict_and_zero_means_never_bad() -> None:
    totals = {(5, 0): {0: 8 * NS, 1: 2 * NS}}
    layout = GuestLayout(5, "w", "hvm", (VnodeLayout(0, 0, (0,)),))
    assert not compute([layout], totals, 10, 80.0).guests[0].bad
    assert compute([layout], totals, 10, 80.1).guests[0].bad
    assert not compute([layout], totals, 10, 0.0).guests[0].bad


def test_format_window() -> None:
    assert [format_window(s) for s in (10, 119, 600, 7199, 7200)] == [
        "10 s", "119 s", "10 min", "120 min", "2 h"]


def test_window_keeps_only_its_seconds() -> None:
    w = Window(20.0)
    for i in range(6):
        w.add(snap(i * 10.0, d5=[(0 if i < 4 else 2, i * NS)]), CPU_NODE)
    # intervals 30-40 (node 0 -> node 1: half each) and 40-50 (node 1) are the last 20 s
    assert w.covered == 20.0
    assert w.totals() == {(5, 0): {0: NS // 2, 1: NS + NS - NS // 2}}
    assert sum_node_time([w.totals(), {(5, 0): {0: 1}}])[(5, 0)][0] == NS // 2 + 1
    w.restart()
    assert w.covered == 0.0 and w.totals() == {}


# --- the guest's figures: hostile input ---------------------------------------------------------

BASE = "/local/domain/5/data/guestagent/numa"


def good_values() -> dict[str, bytes | None]:
    return {"updated": b"1764870000", "vnodes/0/local-pct": b"97.5",
            "vnodes/0/cpu-busy-pct": b"12.5", "vnodes/1/local-pct": b"",
            "vnodes/1/cpu-busy-pct": b"100"}


def test_reported_figures_parse() -> None:
    got = parse_reported(good_values(), 2, BASE)
    assert got == GuestReported({0: 97.5, 1: None}, {0: 12.5, 1: 100.0}, 1764870000)


@pytest.mark.parametrize("key,value,why", [
    ("vnodes/0/local-pct", b"-1", "expected 0..100"),
    ("vnodes/0/local-pct", b"100.1", "expected 0..100"),
    ("vnodes/0/cpu-busy-pct", b"1e308", "expected 0..100"),
    ("vnodes/0/cpu-busy-pct", b"nan", "expected 0..100"),
    ("vnodes/0/cpu-busy-pct", b"inf", "expected 0..100"),
    ("vnodes/1/local-pct", b"ninety", "not a number"),
    ("vnodes/1/local-pct", b"9" * 4096, "longer than 24 bytes"),
    ("vnodes/1/local-pct", b"5\x00", "not printable ASCII"),
    ("vnodes/1/local-pct", b"5 0", "not printable ASCII"),
    ("updated", b"-5", "not a whole number"),
    ("updated", b"9" * 20, "expected 0.."),
])
def test_reported_hostile_values_refuse_the_whole_report(key: str, value: bytes, why: str) -> None:
    values = good_values()
    values[key] = value
    with pytest.raises(InputError) as caught:
        parse_reported(values, 2, BASE)
    assert why in str(caught.value) and f"{BASE}/{key}" in str(caught.value)


@pytest.mark.parametrize("raw,why", [
    (b"3", "the toolstack configured 2 vnodes"),
    (b"0", "expected 1..32"),
    (b"100000", "expected 1..32"),
    (b"-2", "not a whole number"),
    (b"2.0", "not a whole number"),
])
def test_nr_vnodes_must_match_the_toolstack(raw: bytes, why: str) -> None:
    with pytest.raises(InputError, match=why):
        parse_nr_vnodes(raw, BASE, 2)
    assert parse_nr_vnodes(None, BASE, 2) is None
    assert parse_nr_vnodes(b"2", BASE, 2) == 2


# --- the domctl through the C doorway -----------------------------------------------------------


def test_domctl_lists_vcpus_until_einval_and_finds_the_version() -> None:
    xen = NumaXen(domctl_accepts=0x16, release=(4, 18))
    xen.domains[5] = [Vcpu(cpu=1, time_ns=7), Vcpu(cpu=3, time_ns=9, running=0)]
    domctl = Domctl(xen)
    got = domctl.vcpus(5, 6)
    assert got is not None and [(v.vcpu, v.cpu, v.cpu_time_ns, v.running) for v in got] == [
        (0, 1, 7, True), (1, 3, 9, False)]
    assert domctl.interface_version == 0x16 and xen.domctl_versions_seen[0] == 0x16
    assert domctl.vcpus(6, 6) is None  # no such domain


def test_domctl_unknown_release_tries_neighbours_bounded() -> None:
    xen = NumaXen(domctl_accepts=0x13, release=(4, 15))
    xen.domains[5] = [Vcpu(cpu=0)]
    domctl = Domctl(xen)
    assert domctl.vcpus(5, 6) is not None
    assert xen.domctl_versions_seen[:3] == [0x15, 0x16, 0x14] and domctl.interface_version == 0x13
    assert candidate_versions((4, 30))[0] == 0x18
    never = NumaXen(domctl_accepts=0x99)
    never.domains[5] = [Vcpu(cpu=0)]
    with pytest.raises(XenUnavailable, match="refused every known domctl interface version"):
        Domctl(never).vcpus(5, 6)
    assert len(never.domctl_versions_seen) == len(candidate_versions(None)) == 10


def test_domctl_hostile_answers() -> None:
    xen = NumaXen()
    xen.domains[5] = [Vcpu(cpu=0), Vcpu(cpu=0)]
    xen.lie_vcpu[(5, 1)] = (1, 0, 1, 4096, 0)
    with pytest.raises(InputError, match=r"vcpu 1: cpu: expected 0\.\.5"):
        Domctl(xen).vcpus(5, 6)
    xen.lie_vcpu[(5, 1)] = (7, 0, 1, 0, 0)
    with pytest.raises(InputError, match="online/running not 0 or 1"):
        Domctl(xen).vcpus(5, 6)
    xen.lie_vcpu[(5, 1)] = (1, 0, 1, 0, 1 << 63)
    with pytest.raises(InputError, match="cpu_time"):
        Domctl(xen).vcpus(5, 6)
    with pytest.raises(InputError, match="domid"):
        Domctl(xen).vcpus(0x7FF0, 6)


def test_domctl_eperm_is_not_dom0() -> None:
    class Refusing(NumaXen):
        def _invoke(self, op: int, args: list[int]) -> int:
            return -errno.EPERM if op == 36 else super()._invoke(op, args)

    xen = Refusing()
    xen.domains[5] = [Vcpu(cpu=0)]
    xen.release = (4, 17)
    with pytest.raises(XenUnavailable, match="only the control domain"):
        Domctl(xen, versions=[0x15]).vcpus(5, 6)


# --- the layout from libxl's configuration -------------------------------------------------------


def test_layout_from_libxl_json() -> None:
    raw = (FIXTURE / f"var/lib/xen/userdata-d.5.{UUID5}.libxl-json").read_bytes()
    from guestagent.dom0.toolstack import load_domain_config

    doc = load_domain_config(raw, 5, "f")
    layout = guest_layout(doc, 5, "f", "dom5")
    assert layout == GuestLayout(5, "hvm-two-vnodes", "hvm", (
        VnodeLayout(0, 0, (0, 1), 524288), VnodeLayout(1, 1, (2, 3), 524288)))
    doc["c_info"]["name"] = "x" * 65
    doc["b_info"]["vnuma_nodes"][0]["memkb"] = "big"
    layout = guest_layout(doc, 5, "f", "dom5")
    assert layout.name == "dom5" and layout.vnodes[0].memkb is None
    doc["b_info"]["vnuma_nodes"][1]["vcpus"] = [2, -1]
    with pytest.raises(InputError, match=r"vnuma_nodes\[1\].vcpus: expected 0..4095"):
        guest_layout(doc, 5, "f", "dom5")
    doc["b_info"]["vnuma_nodes"][1]["vcpus"] = list(range(5000))
    with pytest.raises(InputError, match="at most 4096"):
        guest_layout(doc, 5, "f", "dom5")


# --- the collector and the monitor on the fixture host --------------------------------------------


def guests(server: XenstoreServer) -> None:
    """Domains 5 and 9 (fixture libxl-json) and 7 (no configuration anywhere)."""
    for domid, uuid in ((5, UUID5), (9, UUID9), (7, None)):
        server.populate_guest(domid)
        if uuid is not None:
            server.set_node(f"/local/domain/{domid}/vm", f"/vm/{uuid}".encode())
        server.set_node(f"/local/domain/{domid}/name", f"xs-{domid}".encode())


def publish_guest_figures(server: XenstoreServer, domid: int, values: dict[str, bytes]) -> None:
    for key, value in values.items():
        server.set_node(f"/local/domain/{domid}/data/guestagent/numa/{key}", value,
                        [("n", domid)])



#: Domain 5's own published figures: vnode 0 local, vnode 1 40 % local.
GUEST5_FIGURES = {"nr-vnodes": b"2", "updated": b"1764870000",
                  "vnodes/0/local-pct": b"99.0", "vnodes/0/cpu-busy-pct": b"100.0",
                  "vnodes/1/local-pct": b"40.0", "vnodes/1/cpu-busy-pct": b"100.0"}

def fake_host() -> NumaXen:
    xen = NumaXen()
    # Domain 5's vnode 1 (vCPUs 2-3, memory on pnode 1) sits on node 0's pCPUs 0-1.
    xen.domains = {5: [Vcpu(0), Vcpu(1), Vcpu(0), Vcpu(1)],
                   9: [Vcpu(0), Vcpu(1), Vcpu(4), Vcpu(5)],
                   7: [Vcpu(0)]}
    return xen


def spin(xen: NumaXen, seconds: float) -> None:
    """Every vCPU runs all the time, where it is."""
    for domid, vcpus in xen.domains.items():
        for i in range(len(vcpus)):
            xen.run(domid, i, int(seconds * NS))


def test_monitor_reports_and_logs_a_forged_report_once(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any], log_events: Any
) -> None:
    guests(xs_server)
    publish_guest_figures(xs_server, 5, GUEST5_FIGURES)
    # A flood of keys the reader never asks for, and a forged report in domain 9.
    for i in range(300):
        xs_server.set_node(f"/local/domain/9/data/guestagent/numa/junk{i}", b"x" * 1000,
                           [("n", 9)])
    publish_guest_figures(xs_server, 9, {"nr-vnodes": b"2", "vnodes/1/local-pct": b"-3"})
    xen = fake_host()
    client = xs_connect(0)
    monitor = Monitor(Collector(client, HostFS(str(FIXTURE)), Sysctl(xen), Domctl(xen)), 60.0)
    monitor.tick(0.0)
    spin(xen, 5.0)
    monitor.tick(5.0)
    before = len(xs_server.requests)
    report = monitor.report(80.0)
    reads = len(xs_server.requests) - before
    assert reads <= 3 * 2 + 2 * (1 + 1 + 2 * 2)  # vm + name... bounded, not the flood

    names = [g.name for g in report.guests]
    assert names == ["hvm-two-vnodes", "hvm-far-vnodes", "xs-7"]
    web, far, seven = report.guests
    assert web.bad and web.locality_pct == 50.0
    assert web.reason == ("vnode 1's vCPUs ran on pnode 0 for 100 % of the last 5 s while its "
                          "memory is on pnode 1")
    assert [v.guest_local_pct for v in web.vnodes] == [99.0, 40.0]
    # Domain 9's vnode 1 runs on node 2's pCPUs, where its memory is: local; its own
    # figures are forged, so none of them is used.
    assert far.locality_pct == 100.0 and not far.bad
    assert all(v.guest_local_pct is None and v.guest_cpu_busy_pct is None for v in far.vnodes)
    assert seven.locality_pct is None and not seven.vnuma
    assert [(n.node, n.free_bytes) for n in report.nodes] == [
        (0, 12 << 30), (1, 15 << 30), (2, 3 << 30)]
    forged = [e for e in log_events if e.get("event") == "hostnuma_input_ignored"]
    assert len(forged) == 1 and "vnodes/1/local-pct" in forged[0]["problem"], forged
    monitor.report(80.0)
    assert len([e for e in log_events if e.get("event") == "hostnuma_input_ignored"]) == 1


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def fake_env(xs_server: XenstoreServer, xs_connect: Callable[[int], Any]) -> MakeHost:
    """The host the command gets: the fake Xen's sysctls and domctls, the test xenstored."""
    guests(xs_server)
    xen = fake_host()
    now = [100.0]

    @contextmanager
    def xen_controls(hostfs: HostFS) -> Iterator[tuple[Any, Any]]:
        yield Sysctl(xen), Domctl(xen)

    def sleep(seconds: float) -> None:
        spin(xen, seconds)
        now[0] += seconds

    def make_host(hostfs: HostFS) -> Host:
        return Host(hostfs, open_xenstore=lambda _fs: xs_connect(0),
                    open_xen_controls=xen_controls, clock=lambda: now[0], sleep=sleep)

    return make_host


def test_host_numa_json(fake_env: MakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--root", str(FIXTURE), "host", "numa", "--json", "--window", "4"],
                    make_host=fake_env)
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["window_seconds"] == 4.0 and doc["threshold_pct"] == 80.0
    first = doc["guests"][0]
    assert first["name"] == "hvm-two-vnodes" and first["bad"], first
    assert first["reason"].endswith("for 100 % of the last 4 s while its memory is on pnode 1")
    assert first["vnodes"][1]["seconds_by_pnode"] == {"0": 8.0}
    assert first["vnodes"][0]["local_pct"] == 100.0
    assert doc["nodes"][2] == {"node": 2, "size_bytes": 16 << 30, "free_bytes": 3 << 30}
    assert doc["problems"] == []


def test_host_numa_table(fake_env: MakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--root", str(FIXTURE), "host", "numa", "--window", "2",
                     "--threshold", "40"], make_host=fake_env)
    out, err = capsys.readouterr()
    assert code == 0 and "sampling every guest's vCPUs for 2 s" in err
    lines = out.splitlines()
    assert lines[0] == ("host numa: 3 guests, 0 under 40 % locality, vCPU time over the last "
                        "2 s")
    assert lines[2].split()[:4] == ["hvm-two-vnodes", "5", "50.0", "%"]
    assert "0@p0 100.0 %  1@p1 0.0 %" in lines[2]
    assert "BAD" not in out  # 50 % is above a threshold of 40
    assert "   2     16384      3072" in out


@pytest.mark.parametrize("argv,why", [
    (["--window", "1"], "--window: expected 2..600 seconds"),
    (["--window", "601"], "--window"),
    (["--threshold", "101"], "--threshold: expected 0..100"),
])
def test_host_numa_refuses_bad_options(
    fake_env: MakeHost, capsys: pytest.CaptureFixture[str], argv: list[str], why: str
) -> None:
    code = cli.main(["--root", str(FIXTURE), "host", "numa", *argv], make_host=fake_env)
    _, err = capsys.readouterr()
    assert code == 1 and why in err


# --- the job and its metrics --------------------------------------------------------------------


class Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_job_samples_on_its_timer_and_exports_labelled_metrics(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    guests(xs_server)
    xen = fake_host()
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    cfg = defaults()
    cfg.values["hostnuma"]["sample_seconds"] = 10
    closer = Closable()

    @contextmanager
    def xen_controls(hostfs: HostFS) -> Iterator[tuple[Sysctl, Domctl]]:
        try:
            yield Sysctl(xen), Domctl(xen)
        finally:
            closer.close()

    host = Host(HostFS(str(FIXTURE)), open_xen_controls=xen_controls)
    ctx = JobContext(loop, host.fs, cfg, XenstoreHub(loop, lambda: xs_connect(0)), "dom0",
                     host=host)
    job = HostNumaJob()
    job.start(ctx)
    assert job.status()["samples"] == 1
    for _ in range(3):
        spin(xen, 10.0)
        clock.now += 10.0
        loop.run_once(0)
    st = job.status()
    assert st["samples"] == 4 and st["window_seconds"] == 30.0 and st["bad_guests"] == 1
    text = metrics.render({"jobs": {"hostnuma": {"running": True, **st}}})
    assert 'guestagent_hostnuma_guest_vnode_local_pct{guest="hvm-two-vnodes",vnode="1"} 0' in text
    assert 'guestagent_hostnuma_guest_locality_pct{guest="hvm-two-vnodes"} 50' in text
    assert 'guestagent_hostnuma_guest_domid{guest="hvm-two-vnodes"} 5' in text
    assert 'guestagent_hostnuma_guest_bad{guest="hvm-two-vnodes"} 1' in text
    assert 'guestagent_hostnuma_node_free_bytes{node="2"} 3221225472' in text
    assert "guestagent_hostnuma_bad_guests 1" in text
    job.republish("xenstore reconnected")
    job.stop()
    assert closer.closed


def test_series_label_values_are_escaped() -> None:
    status_ = {"jobs": {"hostnuma": {"series_guest": [
        {"labels": {"guest": 'a"b\\c\nd', "domid": "5"}, "locality_pct": 12.5},
        {"labels": {"guest": "x"}, "locality_pct": "not a number"},
        "not a row",
    ]}}}
    text = metrics.render(status_)
    assert 'guestagent_hostnuma_guest_locality_pct{guest="a\\"b\\\\c\\nd",domid="5"} 12.5' in text
    assert text.count("guestagent_hostnuma_guest_locality_pct{") == 1


def test_status_and_json_of_an_empty_host() -> None:
    report = compute([], {}, 0.0, 80.0)
    assert status(report)["guests"] == 0 and status(report)["series_guest_vnode"] == []
    assert to_json(report)["guests"] == [] and "no guest" in render_table(report)


def test_a_broken_libxl_file_is_a_problem_and_the_rest_is_served(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any], tmp_path: Any,
    log_events: Any,
) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    (root / f"var/lib/xen/userdata-d.9.{UUID9}.libxl-json").write_bytes(b'{"b_info": [1]}\0')
    guests(xs_server)
    xen = fake_host()
    monitor = Monitor(Collector(xs_connect(0), HostFS(str(root)), Sysctl(xen), Domctl(xen)), 60)
    monitor.tick(0.0)
    spin(xen, 2.0)
    monitor.tick(2.0)
    report = monitor.report(80.0)
    assert [g.domid for g in report.guests] == [5, 7]
    (problem,) = report.problems
    assert problem.startswith("dom9: ") and "c_info or b_info is not an object" in problem
    assert "problem: dom9: " in render_table(report) and status(report)["problems"] == 1
    logged = [e for e in log_events if e.get("event") == "hostnuma_input_ignored"]
    assert [e["scope"] for e in logged] == ["guests"]


def test_command_logs_a_forged_report_as_one_logfmt_line(
    fake_env: MakeHost, xs_server: XenstoreServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_guest_figures(xs_server, 5, {"nr-vnodes": b"9" * 4000})
    code = cli.main(["--root", str(FIXTURE), "host", "numa", "--json", "--window", "2"],
                    make_host=fake_env)
    out, err = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in err.splitlines() if "event=hostnuma_input_ignored" in ln]
    assert len(lines) == 1 and "longer than 24 bytes" in lines[0], err
    assert "component=hostnuma" in lines[0]
    first = json.loads(out)["guests"][0]
    assert first["domid"] == 5 and first["vnodes"][0]["guest_local_pct"] is None


def test_vcpus_from_xen_when_libxl_names_none(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any], tmp_path: Any
) -> None:
    """A libxl-json whose vnodes list no vCPUs: Xen's vCPU -> vnode map of that domain (asked
    with its domid) fills them in; vnode ids Xen invents are refused."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    path = root / f"var/lib/xen/userdata-d.5.{UUID5}.libxl-json"
    doc = json.loads(path.read_bytes().rstrip(b"\0"))
    for vnode in doc["b_info"]["vnuma_nodes"]:
        del vnode["vcpus"]
    path.write_text(json.dumps(doc))
    guests(xs_server)
    xen = fake_host()
    asked: list[int] = []
    answer = [1, 1, 0, 0]

    def vcpu_to_vnode(domid: int) -> list[int] | None:
        asked.append(domid)
        return list(answer)

    collector = Collector(xs_connect(0), HostFS(str(root)), Sysctl(xen), Domctl(xen),
                          vcpu_to_vnode=vcpu_to_vnode)
    layout = collector.layout(5)
    assert [v.vcpus for v in layout.vnodes] == [(2, 3), (0, 1)] and asked == [5]
    assert collector.layout(9).vnodes[1].vcpus == (2, 3) and asked == [5]  # libxl named them
    answer[0] = 2
    collector.forget_except([])
    with pytest.raises(InputError, match="vnode ids beyond the 2 configured"):
        collector.layout(5)


def test_get_vnumainfo_asks_about_the_given_domain() -> None:
    from guestagent.xen.vnuma import get_vnumainfo
    from tests.test_vnuma_hypercall import THREE_VNODES, SimulatedXen

    seen: list[int] = []

    class Foreign(SimulatedXen):
        """Answers for domain 5 as the simulation answers for DOMID_SELF."""

        def _invoke(self, op: int, args: list[int]) -> int:
            from guestagent.xen.privcmd import ffi

            info: Any = ffi.cast("struct ga_xen_vnuma_topology_info *", args[1])
            seen.append(int(info.domid))
            if info.domid != 5:
                return -errno.ESRCH
            info.domid = 0x7FF0
            return super()._invoke(op, args)

    got = get_vnumainfo(Foreign(domain=THREE_VNODES), domid=5)
    assert got.vcpu_to_vnode == [0, 0, 1, 2] and set(seen) == {5}


def test_window_is_bounded_in_buckets() -> None:
    """A day's window sampled every second keeps at most MAX_BUCKETS buckets, and no time is
    lost when intervals are added into one."""
    w = Window(86400.0)
    for i in range(3000):
        w.add(snap(float(i), d5=[(0, i * NS)]), CPU_NODE)
    assert len(w._parts) <= Window.MAX_BUCKETS
    assert w.totals() == {(5, 0): {0: 2999 * NS}} and w.covered == 2999.0


def test_a_late_last_sample_keeps_the_first_interval() -> None:
    """Incident (real Xen, run 20261204-223509-6792-pytest-numa2): ``host numa --window 10``
    said "of the last 9 s": its last sample came 0.4 s late, and the window dropped the first
    interval, which started 10.4 s before it. An interval that straddles the window's start
    stays."""
    w = Window(10.0)
    for at in (0.0, *[float(i) for i in range(1, 10)], 10.4):
        w.add(snap(at, d5=[(0, int(at * NS))]), CPU_NODE)
    assert w.covered == 10.4 and w.totals() == {(5, 0): {0: int(10.4 * NS)}}
    assert format_window(w.covered) == "10 s"


def test_a_guest_without_vnuma_shows_where_its_vcpus_ran_and_no_locality() -> None:
    """No vnode -> pnode map: the vCPU side is measured and shown, the memory side is not known,
    so no locality is made up (docs/NUMA-HEALTH.md, "Guests without vNUMA")."""
    flat = GuestLayout(8, "pv", "pv", ())
    idle = GuestLayout(9, "idle-pv", "pv", ())
    totals = {(8, 0): {0: 6 * NS, 1: NS}, (8, 1): {0: NS, UNKNOWN_NODE: 2 * NS},
              (5, 0): {1: 50 * NS},  # another guest's time is not counted
              (9, 0): {0: int(MIN_CPU_SECONDS * NS) - 1}}
    report = compute([flat, idle, TWO_VNODES], totals, 60.0, 80.0)
    pv = next(g for g in report.guests if g.name == "pv")
    assert pv.seconds_by_pnode == {UNKNOWN_NODE: 2.0, 0: 7.0, 1: 1.0}
    assert pv.locality_pct is None and not pv.bad and pv.reason is None
    assert pv.note == ("no vNUMA: no vnode -> pnode map, Dom0 cannot tell which nodes hold its "
                       "memory; its vCPUs ran 70 % on pnode 0, 20 % on pCPUs of no known node, "
                       "10 % on pnode 1")
    idle_pv = next(g for g in report.guests if g.name == "idle-pv")
    assert str(idle_pv.note).endswith("its vCPUs ran less than 0.1 s in the window")
    web = next(g for g in report.guests if g.name == "web")
    assert web.seconds_by_pnode == {1: 50.0} and web.note is None
    assert to_json(report)["guests"][-1]["seconds_by_pnode"] == {"-1": 2.0, "0": 7.0, "1": 1.0}
    assert "    (no vNUMA: no vnode -> pnode map" in render_table(report)
    text = metrics.render({"jobs": {"hostnuma": {"running": True, **status(report)}}})
    assert 'guestagent_hostnuma_guest_node_cpu_seconds{guest="pv",node="0"} 7' in text
    assert 'guestagent_hostnuma_guest_node_cpu_seconds{guest="pv",node="-1"} 2' in text
    assert 'guestagent_hostnuma_guest_locality_pct{guest="pv"}' not in text
