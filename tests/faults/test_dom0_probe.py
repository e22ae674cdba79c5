"""The probe of tests/e2e/test_xenstored_restart.py, rehearsed without Xen.

On the bed, whether the Dom0 daemon still talks to xenstored after a live update is shown
without a guest: a stale hint tree under a domain with no PCI backend
(``/local/domain/77/guestagent-dom0``) is written by hand, the PCI backend root the job watches
is touched, and the pass the watch sets off removes the tree. Here the same steps run against
the Dom0 job on the event loop and the in-process xenstored (``tests/xenstore_server.py``), so
the bed run tests the live update and not the probe.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.config import defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.dom0.job import Dom0Job
from tests.e2e.test_xenstored_restart import BACKEND_ROOT, FAKE_DOMID, STALE
from tests.test_dom0_job import Closable, fake_host, pump
from tests.xenstore_server import XenstoreServer


def test_the_stale_tree_goes_with_the_pass_a_backend_root_write_sets_off(
    xs_server: XenstoreServer, xs_connect: Callable[[int], Any],
) -> None:
    cfg = defaults()
    cfg.values["dom0"]["resync_seconds"] = 3600.0  # as the e2e test: only the watch can do it
    loop = EventLoop()
    host = fake_host(Closable())
    ctx = JobContext(loop, host.fs, cfg, XenstoreHub(loop, lambda: xs_connect(0)), "dom0",
                     host=host)
    job = Dom0Job()
    try:
        job.start(ctx)
        for _ in range(2):  # as before and after the live update
            xs_server.set_node(f"{STALE}/devices/0000-81-00-0/host-node", b"1")
            loop.run_once(0.2)
            assert xs_server.get_node(STALE) is not None, "no pass without the watch"
            xs_server.set_node(BACKEND_ROOT, b"")
            pump(loop, lambda: xs_server.get_node(STALE) is None)
        assert xs_server.get_node(f"/local/domain/{FAKE_DOMID}") is not None  # only the tree
    finally:
        job.stop()
        loop.close()
