"""The ``[hostnuma]`` configuration keys (Dom0)."""

from __future__ import annotations

from typing import Any


def config_keys() -> tuple[Any, ...]:
    """The ``[hostnuma]`` keys for :data:`guestagent.config.KEYS`."""
    from guestagent.config import Key

    return (
        Key(
            "hostnuma",
            "enabled",
            False,
            "In Dom0: sample where every guest's vCPUs run (XEN_DOMCTL_getvcpuinfo) every "
            "`sample_seconds` and export, per guest and vnode, the share of vCPU time spent on "
            "the pnode holding the vnode's memory over the last `window_seconds` as metrics "
            "(docs/NUMA-HEALTH.md, part 2). Off by default: each sample costs one hypercall "
            "per guest vCPU and a wakeup of its own.",
        ),
        Key(
            "hostnuma",
            "sample_seconds",
            10,
            "Seconds between two samples of every guest's vCPUs.",
            minimum=1,
            maximum=60,
        ),
        Key(
            "hostnuma",
            "window_seconds",
            600,
            "The figures and reasons cover the samples of this many last seconds.",
            minimum=60,
            maximum=86400,
        ),
        Key(
            "hostnuma",
            "bad_locality_pct",
            80.0,
            "A guest whose vCPUs spent less than this percentage of their time on the pnodes "
            "holding their vnodes' memory is reported as bad, with a reason.",
            minimum=0,
            maximum=100,
        ),
    )
