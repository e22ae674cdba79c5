"""The daemon's Dom0 job on the real event loop and xenstore hub, against the xenstore server and
the simulated Xen: start publishes, backend changes and @releaseDomain are followed (coalesced),
stop leaves the hints in place, and no xenstore or no sysctl refuses the start with a reason (the
daemon keeps the job off with it; ``dom0 run`` exits 1 with it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.config import defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.dom0.job import Dom0Job
from guestagent.dom0.schema import base_path
from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.xen.errors import XenUnavailable
from guestagent.xen.sysctl import Sysctl
from tests.test_dom0_commands import FIXTURE_HOST
from tests.test_dom0_publish import add_backend, remove_node
from tests.test_dom0_support import FIXTURE
from tests.test_sysctl import SysctlXen
from tests.xenstore_server import WATCH_EVENT, XenstoreServer, frame


class Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def fake_host(privcmd: Closable) -> Host:
    """The fixture host whose sysctls are the simulated Xen's; ``privcmd`` closes with them."""

    @contextmanager
    def open_sysctl(hostfs: HostFS) -> Iterator[Sysctl]:
        try:
            yield Sysctl(SysctlXen(host=FIXTURE_HOST))
        finally:
            privcmd.close()

    return Host(HostFS(str(FIXTURE)), open_sysctl=open_sysctl)


def context(loop: EventLoop, connect: Callable[[], Any], host: Host | None = None) -> JobContext:
    host = host if host is not None else fake_host(Closable())
    return JobContext(loop, host.fs, defaults(), XenstoreHub(loop, connect), "dom0", host=host)


def pump(loop: EventLoop, check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(0.05)


def test_job_publishes_follows_and_keeps_hints_on_stop(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None)])
    loop = EventLoop()
    privcmd = Closable()
    ctx = context(loop, lambda: xs_connect(0), fake_host(privcmd))
    job = Dom0Job()
    job.start(ctx)
    base = base_path(5)
    assert xs_server.get_node(f"{base}/devices/0000-3b-00-0/host-node") is not None
    assert job.status() == {"guests": [{"domid": 5, "devices": 1, "remote_devices": 0,
                                        "error": None}]}
    # hot-plug a second device: one coalesced pass for domain 5
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None), ("0000:5e:00.0", "30", None)])
    pump(loop, lambda: xs_server.get_node(f"{base}/devices/0000-5e-00-0/vnode") is not None)
    # all devices gone: the backend watch removes the tree
    remove_node(xs_server, "/local/domain/0/backend/pci/5")
    pump(loop, lambda: xs_server.get_node(base) is None)
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None)])
    pump(loop, lambda: xs_server.get_node(base) is not None)
    # the backend vanishes without an event reaching us; @releaseDomain makes a full pass
    with xs_server.lock:
        for key in [k for k in xs_server.nodes if k.startswith("/local/domain/0/backend/pci/5")]:
            del xs_server.nodes[key]
        xs_server.nodes["/local/domain/0/backend/pci"].children.remove("5")
    release_token = next(
        w.token for c in xs_server.connections for w in c.watches if w.path == "@releaseDomain"
    )
    xs_server.inject(frame(WATCH_EVENT, 0, 0, f"@releaseDomain\0{release_token}\0".encode()))
    pump(loop, lambda: xs_server.get_node(base) is None)
    add_backend(xs_server, 5, [("0000:3b:00.0", "28", None)])
    pump(loop, lambda: xs_server.get_node(base) is not None)
    job.stop()
    assert privcmd.closed
    assert xs_server.get_node(base) is not None  # hints stay true across an agent restart
    ctx.xenstore.close()


def test_job_off_without_xenstore_or_sysctl(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any]
) -> None:
    loop = EventLoop()

    def no_xenstore() -> Any:
        raise XenUnavailable("no xenstore here")

    job = Dom0Job()
    with pytest.raises(GuestAgentError, match=r"^no xenstore: no xenstore here$"):
        job.start(context(loop, no_xenstore))  # the daemon keeps it off with this reason
    job.stop()

    def no_privcmd(hostfs: HostFS) -> Any:
        raise XenUnavailable("cannot open /dev/xen/privcmd: permission denied (run as root)")

    job = Dom0Job()
    ctx = context(loop, lambda: xs_connect(0), Host(HostFS(str(FIXTURE)), open_sysctl=no_privcmd))
    with pytest.raises(GuestAgentError, match=r"^no sysctl: cannot open /dev/xen/privcmd"):
        job.start(ctx)
    job.stop()
    ctx.xenstore.close()
