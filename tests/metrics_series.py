"""The series the agent exports, derived from the code: each guest job and the Dom0 job is started
in-process on a fixture host (with the test xenstored, the simulated DAMON kernel and Xen's
sysctls where it needs them), its own ``status()`` is taken after it has worked, and
``guestagent.daemon.metrics.render`` turns those statuses into the exposition text the daemon
serves. The names in that text are what a dashboard panel or an alerting rule may query
(tests/test_prometheus.py); no list of names is kept by hand.

A figure a job reports only in a state the harness does not reach (None here) is missing from
the set, so a query on it fails the check rather than passing unseen.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from guestagent.config import defaults, load
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.metrics import render
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).parent / "fixtures"


def _guest_root(tmp: Path) -> Path:
    """hvm-3vnode with the balloon driver of balloon-pv-1g (as tests/test_prometheus.py)."""
    root = tmp / "guest"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    balloon = FIXTURES / "balloon-pv-1g"
    shutil.copytree(balloon / "proc", root / "proc", dirs_exist_ok=True)
    shutil.copytree(balloon / "sys/devices/system/xen_memory",
                    root / "sys/devices/system/xen_memory")
    (root / "sys/devices/system/xen_memory/xen_memory0/target_kb").write_text("1048576\n")
    return root


def _topology_and_balloon(tmp: Path, connect: Callable[[], Any]) -> dict[str, Any]:
    from guestagent.balloon.job import BalloonJob
    from guestagent.topology.job import TopologyJob

    cfg = defaults()
    cfg.values["balloon"].update(enabled=True, policy="classic")
    loop = EventLoop()
    ctx = JobContext(loop, HostFS(str(_guest_root(tmp))), cfg, XenstoreHub(loop, connect),
                     "guest")
    topology, balloon = TopologyJob(), BalloonJob()
    try:
        topology.start(ctx)
        balloon.start(ctx)
        return {"topology": topology.status(), "balloon": balloon.status()}
    finally:
        balloon.stop()
        topology.stop()
        loop.close()


def _devices(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from guestagent.devices.hotplug import HotplugUnavailableError
    from guestagent.devices.job import DevicesJob
    from guestagent.host import Host

    root = tmp / "devices"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)

    def no_udev(hostfs: HostFS) -> None:
        raise HotplugUnavailableError("no udev in this test")

    loop = EventLoop()
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)),
                          config=load(str(tmp / "none.toml"), str(tmp / "conf.d")),
                          xenstore=SimpleNamespace(client=lambda: None,
                                                   watch=lambda path, cb: False),
                          role="guest", host=Host(HostFS(str(root)), open_udev=no_udev))
    job = DevicesJob()
    try:
        job.start(ctx)  # type: ignore[arg-type]
        return job.status()
    finally:
        job.stop()
        loop.close()


def _numa(tmp: Path, connect: Callable[[], Any]) -> dict[str, Any]:
    from tests.test_numa import FIXTURE, advance, make_job, run_for

    root = tmp / "numa"
    shutil.copytree(FIXTURE, root)
    job, loop, clock, ctx = make_job(root, connect)
    try:
        job.start(ctx)
        advance(root)
        run_for(loop, clock, 60)
        return job.status()
    finally:
        job.stop()
        loop.close()


def _tiering(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from guestagent.host import Host
    from guestagent.tiering.damon import DamonBackend
    from guestagent.tiering.job import TieringJob
    from tests.test_tiering_damon import FakeDamonKernel, make_tree

    (tmp / "tiering").mkdir()
    root = make_tree(tmp / "tiering")
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    host = Host(hostfs, tiering_backends=[
        ("damon", lambda h: DamonBackend(h, writer=kernel.write))])
    loop = EventLoop()
    ctx = JobContext(loop, hostfs, defaults(), XenstoreHub(loop, lambda: None), "guest",
                     host=host)
    job = TieringJob()
    try:
        job.start(ctx)
        job._tick()  # node 0 is short: a move starts
        return job.status()
    finally:
        job.stop()
        loop.close()


def dom0_status(xs_server: Any, connect: Callable[[], Any]) -> dict[str, Any]:
    from dataclasses import replace

    from guestagent.dom0.job import Dom0Job
    from guestagent.host import Host
    from guestagent.xen.sysctl import Sysctl
    from tests.hostnuma_support import HOST
    from tests.test_dom0_job import Closable
    from tests.test_dom0_job import context as dom0_context
    from tests.test_dom0_publish import add_backend
    from tests.test_dom0_support import FIXTURE as DOM0_SUPPORT_FIXTURE
    from tests.test_dom0_support import PCI_NODES
    from tests.test_sysctl import SysctlXen

    # 3b:00.0 sits on node 1, where domain 5 has vnode 1; 5e:00.0 on node 2, where it has none.
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None), ("0000:5e:00.0", "30", None)])
    loop = EventLoop()
    xen_host = replace(HOST, pci=dict(PCI_NODES))  # three nodes online, the devices on 1 and 2

    @contextmanager
    def open_sysctl(hostfs: Any) -> Iterator[Sysctl]:
        with closing(Closable()):
            yield Sysctl(SysctlXen(host=xen_host))

    host = Host(HostFS(str(DOM0_SUPPORT_FIXTURE)), open_sysctl=open_sysctl)
    job = Dom0Job()
    try:
        job.start(dom0_context(loop, connect, host))
        return job.status()
    finally:
        job.stop()
        loop.close()


def hostnuma_status(xs_server: Any, connect: Callable[[], Any],
                    free_gib: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The Dom0 hostnuma job on the three-node fixture host and its simulated Xen, after two
    samples 10 s apart, with one guest's own published figures (tests/test_hostnuma.py);
    ``free_gib``: the nodes' free memory instead of the fixture's 12, 15 and 3 GiB (of 16)."""
    from dataclasses import replace

    from guestagent.host import Host
    from guestagent.hostnuma.job import HostNumaJob
    from guestagent.xen.domctl import Domctl
    from guestagent.xen.sysctl import Sysctl
    from tests.hostnuma_support import FIXTURE as DOM0_FIXTURE
    from tests.test_hostnuma import (
        GUEST5_FIGURES,
        Closable,
        FakeClock,
        fake_host,
        guests,
        publish_guest_figures,
        spin,
    )

    guests(xs_server)
    publish_guest_figures(xs_server, 5, GUEST5_FIGURES)
    xen = fake_host()
    if free_gib is not None:
        xen.host = replace(xen.host, memory=[(16 << 30, f << 30) for f in free_gib])
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    cfg = defaults()
    cfg.values["hostnuma"]["sample_seconds"] = 10

    @contextmanager
    def open_xen_controls(hostfs: Any) -> Iterator[tuple[Sysctl, Domctl]]:
        with closing(Closable()):
            yield Sysctl(xen), Domctl(xen)

    host = Host(HostFS(str(DOM0_FIXTURE)), open_xen_controls=open_xen_controls)
    ctx = JobContext(loop, host.fs, cfg, XenstoreHub(loop, connect), "dom0", host=host)
    job = HostNumaJob()
    try:
        job.start(ctx)
        spin(xen, 10.0)
        clock.now += 10.0
        loop.run_once(0)
        return job.status()
    finally:
        job.stop()
        loop.close()


def job_statuses(tmp: Path, xs_server: Any, xs_connect: Callable[[int], Any],
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Every job's own status() after it has worked on its fixture host."""
    statuses = _topology_and_balloon(tmp, lambda: xs_connect(5))
    statuses["devices"] = _devices(tmp, monkeypatch)
    statuses["numa"] = _numa(tmp, lambda: xs_connect(5))
    statuses["tiering"] = _tiering(tmp, monkeypatch)
    statuses["dom0"] = dom0_status(xs_server, lambda: xs_connect(0))
    statuses["hostnuma"] = hostnuma_status(xs_server, lambda: xs_connect(0))
    return statuses


def exported_series(statuses: dict[str, dict[str, Any]]) -> set[str]:
    """The series names ``render`` writes for those statuses (the daemon's core series too)."""
    text = render({"jobs": {name: {"running": True, **status}
                            for name, status in statuses.items()}})
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}
