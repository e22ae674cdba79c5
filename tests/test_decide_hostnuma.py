"""The hostnuma job's decide step on plain data: a HostModel into the report."""

from __future__ import annotations

from guestagent.hostnuma.figures import NS, decide
from guestagent.hostnuma.model import (
    GuestLayout,
    GuestReported,
    HostModel,
    HostNode,
    VnodeLayout,
)

# dom1: 2 vnodes, vnode 0 (vCPUs 0-1) on pnode 0, vnode 1 (vCPUs 2-3) on pnode 1.
VNUMA = GuestLayout(1, "db", "hvm", (VnodeLayout(0, 0, (0, 1), 1 << 20),
                                    VnodeLayout(1, 1, (2, 3), 1 << 20)))
PLAIN = GuestLayout(2, "web", "pv", ())


def _model(away_s: float, problems: tuple[str, ...] = ()) -> HostModel:
    """dom1's vnode 1 ran ``away_s`` of its 10 s on pnode 0; everything else ran at home."""
    totals = {
        (1, 0): {0: 10 * NS}, (1, 1): {0: 10 * NS},
        (1, 2): {1: int((10 - away_s) * NS), 0: int(away_s * NS)}, (1, 3): {1: 10 * NS},
        (2, 0): {0: 3 * NS, 1: 1 * NS},
    }
    return HostModel((VNUMA, PLAIN), totals, 60.0,
                     reported={1: GuestReported({0: 99.0, 1: 80.0}, {0: 10.0, 1: 20.0})},
                     nodes=(HostNode(0, 8 << 30, 2 << 30), HostNode(1, 8 << 30, 4 << 30)),
                     problems=problems)


def test_a_guest_running_away_from_its_memory_is_bad_with_the_reason() -> None:
    report = decide(_model(away_s=9.0), threshold_pct=80.0)
    db = next(g for g in report.guests if g.domid == 1)
    assert db.locality_pct == 77.5  # (10 + 10 + 1 + 10) of 40 s at home
    assert db.bad
    assert db.reason is not None
    assert "vnode 1's vCPUs ran on pnode 0 for 45 %" in db.reason
    assert "of the last 60 s while its memory is on pnode 1" in db.reason
    assert db.vnodes[1].guest_local_pct == 80.0
    assert db.vnodes[1].local_pct == 55.0


def test_the_threshold_is_the_configured_one() -> None:
    report = decide(_model(away_s=9.0), threshold_pct=75.0)
    assert not next(g for g in report.guests if g.domid == 1).bad
    assert report.threshold_pct == 75.0


def test_a_guest_without_vnuma_has_a_note_and_comes_last() -> None:
    report = decide(_model(away_s=0.0), threshold_pct=80.0)
    assert [g.domid for g in report.guests] == [1, 2]
    web = report.guests[1]
    assert web.locality_pct is None and not web.bad
    assert web.note is not None and "its vCPUs ran 75 % on pnode 0, 25 % on pnode 1" in web.note


def test_the_model_s_nodes_window_and_problems_are_reported() -> None:
    report = decide(_model(away_s=0.0, problems=("dom7: gone",)), threshold_pct=80.0)
    assert report.window_seconds == 60.0
    assert [n.node for n in report.nodes] == [0, 1]
    assert report.problems == ("dom7: gone",)
