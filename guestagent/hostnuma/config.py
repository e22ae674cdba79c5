"""The ``[hostnuma]`` configuration keys (Dom0), each declared once (:mod:`guestagent.tunable`)."""

from __future__ import annotations

from guestagent.tunable import Key, section_keys, setting

SECTION = "hostnuma"

BAD_LOCALITY_PCT = setting(
    "bad_locality_pct", 80.0,
    "A guest whose vCPUs spent less than this percentage of their time on the pnodes "
    "holding their vnodes' memory is reported as bad, with a reason.",
    minimum=0, maximum=100)

DECLARED = (
    setting(
        "enabled", False,
        "In Dom0: sample where every guest's vCPUs run (XEN_DOMCTL_getvcpuinfo) every "
        "`sample_seconds` and export, per guest and vnode, the share of vCPU time spent on "
        "the pnode holding the vnode's memory over the last `window_seconds` as metrics "
        "(docs/NUMA-HEALTH.md, part 2). Off by default: each sample costs one hypercall "
        "per guest vCPU and a wakeup of its own."),
    setting(
        "sample_seconds", 10,
        "Seconds between two samples of every guest's vCPUs.",
        minimum=1, maximum=60),
    setting(
        "window_seconds", 600,
        "The figures and reasons cover the samples of this many last seconds.",
        minimum=60, maximum=86400),
    BAD_LOCALITY_PCT,
)


def config_keys() -> tuple[Key, ...]:
    """The ``[hostnuma]`` keys for :data:`guestagent.config.KEYS`."""
    return section_keys(SECTION, DECLARED)
