"""``guestagent publish`` against the wire-protocol xenstore server, as guest domid 5."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from guestagent import cli
from guestagent.host import Host, real_xenstore
from guestagent.hostfs import HostFS
from guestagent.xen.vnuma import VnumaInfo, validate_vnuma
from tests.xenstore_server import XenstoreServer

FIXTURES = Path(__file__).parent / "fixtures"
MIB = 1 << 20
HOME = "/local/domain/5"


def three_vnodes() -> VnumaInfo:
    return validate_vnuma(
        3,
        [0, 0, 1, 2],
        [10, 21, 31, 21, 10, 17, 31, 17, 10],
        [(0, 512 * MIB, 0, 0), (512 * MIB, 768 * MIB, 0, 1), (768 * MIB, 1024 * MIB, 0, 2)],
    )


@pytest.fixture
def as_guest(xs_connect: Callable[[int], Any]) -> Callable[[HostFS], Host]:
    """The host of guest domid 5: the test xenstored, a hypercall answering three vnodes."""
    return lambda hostfs: Host(hostfs, open_vnuma=lambda _fs: three_vnodes,
                               open_xenstore=lambda _fs: xs_connect(5))


def values_under(server: XenstoreServer, prefix: str) -> dict[str, bytes]:
    return {
        path[len(prefix) + 1 :]: node.value
        for path, node in server.nodes.items()
        if path.startswith(prefix + "/")
    }


def test_publish_writes_the_schema_and_replaces_stale_keys(
    xs_server: XenstoreServer, capsys: pytest.CaptureFixture[str],
    as_guest: Callable[[HostFS], Host],
) -> None:
    xs_server.set_node(f"{HOME}/data/guestagent/vnuma/nodes/7/cpus", b"9")
    before = {p for p in xs_server.nodes if not p.startswith(f"{HOME}/data/guestagent")}

    assert cli.main(["--root", str(FIXTURES / "hvm-3vnode"), "publish"], make_host=as_guest) == 0

    tree = values_under(xs_server, f"{HOME}/data/guestagent")
    assert tree["version"] == b"1"
    assert tree["vnuma/sources"] == b"hypercall,sysfs"
    assert tree["vnuma/hypercall-status"] == b"ok"
    assert tree["vnuma/nr-nodes"] == b"3"
    assert tree["vnuma/nodes/0/cpus"] == b"0-1"
    assert tree["vnuma/nodes/2/distances"] == b"0:31,1:17,2:10"
    assert tree["vnuma/nodes/1/memory-kb"] == b"257624"
    assert tree["vnuma/vcpu-to-vnode"] == b"0,0,1,2"
    assert "vnuma/nodes/7/cpus" not in tree and "vnuma/nodes/7" not in tree
    after = {p for p in xs_server.nodes if not p.startswith(f"{HOME}/data/guestagent")}
    assert after == before, "publish wrote outside data/guestagent"
    assert "stale removed" in capsys.readouterr().out


def test_publish_without_xenstore_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--root", str(FIXTURES / "laptop"), "publish"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no xenstore" in err[0]


def test_the_real_xenstore_opener_needs_a_device(tmp_path: Path) -> None:
    from guestagent.xen.errors import NotOnXen

    with pytest.raises(NotOnXen):
        real_xenstore(HostFS(str(tmp_path)))


def test_schema_bounds_free_text() -> None:
    from guestagent.schema import MAX_MISMATCHES, printable

    assert printable("vCPU 3 is offline\n\x00é") == "vCPU 3 is offline???"
    assert len(printable("x" * 1000)) == 256
    assert MAX_MISMATCHES == 16
