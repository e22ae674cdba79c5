"""The e2e testbed's xl ``vnuma=`` rendering (tests/e2e/vnuma.py), checked without a bed."""

from __future__ import annotations

from tests.e2e.vnuma import VNode, cpus_text, xl_vnuma


def test_vnodes_render_as_xl_lists_with_cpu_ranges() -> None:
    nodes = [VNode(512, [0, 1], [10, 20]), VNode(512, [2], [20, 10], pnode=1)]
    assert xl_vnuma(nodes) == (
        '[ ["pnode=0","size=512","vcpus=0-1","vdistances=10,20"], '
        '["pnode=1","size=512","vcpus=2","vdistances=20,10"] ]'
    )
    assert cpus_text([0, 2, 3]) == "0,2,3"


def test_a_memory_only_vnode_has_no_vcpus_key() -> None:
    # xl 4.17 takes a vnode without "vcpus=" (run 20261128-175830-29959-pytest); libxl checks
    # only that every vCPU is in some vnode.
    text = xl_vnuma([VNode(512, [0], [10, 20]), VNode(512, [], [20, 10])])
    assert text.endswith('["pnode=0","size=512","vdistances=20,10"] ]')
    assert text.count("vcpus=") == 1
