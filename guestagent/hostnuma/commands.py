"""``guestagent host numa [--json] [--window SECONDS] [--threshold PCT]``: sample every guest's
vCPUs once a second for ``--window`` seconds (default 10), then print each guest's locality,
worst first, with a reason for each bad one, and the host's free memory per node.

Registered under ``host`` by :mod:`guestagent.dom0.commands`. Exit status 0; 1 with one line
outside Dom0 or when Xen or xenstore cannot answer.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.hostnuma.config import BAD_LOCALITY_PCT

#: Seconds between two samples of the one-shot command.
SAMPLE_SECONDS = 1.0
WINDOW_RANGE = (2.0, 600.0)


def _checked(args: argparse.Namespace) -> tuple[float, float]:
    low, high = WINDOW_RANGE
    if not low <= args.window <= high:
        raise InputError("--window", f"expected {low:g}..{high:g} seconds", args.window)
    if not 0 <= args.threshold <= 100:
        raise InputError("--threshold", "expected 0..100", args.threshold)
    return args.window, args.threshold


def sample_window(monitor: Any, window: float, clock: Callable[[], float],
                  sleep: Callable[[float], None]) -> None:
    """A first sample now, then one every :data:`SAMPLE_SECONDS` until ``window`` has passed
    (by the host's ``clock`` and ``sleep``)."""
    start = clock()
    monitor.tick(start)
    for i in range(1, math.ceil(window / SAMPLE_SECONDS) + 1):
        due = start + min(i * SAMPLE_SECONDS, window)
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        monitor.tick(clock())


def host_numa(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent.cli import print_json
    from guestagent.dom0.role import require_dom0
    from guestagent.hostnuma.collect import Collector, Monitor
    from guestagent.hostnuma.present import render_table, to_json

    hostfs: HostFS = ctx.hostfs
    window, threshold = _checked(args)
    require_dom0(hostfs, args.role)
    client = ctx.host.xenstore()
    try:
        with ctx.host.xen_controls() as (sysctl, domctl):
            monitor = Monitor(Collector(client, hostfs, sysctl, domctl), window)
            if not args.json:
                print(f"sampling every guest's vCPUs for {window:g} s ...", file=sys.stderr)
            sample_window(monitor, window, ctx.host.clock, ctx.host.sleep)
            report = monitor.report(threshold)
    finally:
        client.close()
    if args.json:
        print_json(to_json(report))
    else:
        sys.stdout.write(render_table(report))
    return 0


def register_host(host_sub: Any, role_argument: Callable[[argparse.ArgumentParser], None]) -> None:
    """``host numa`` under the ``host`` command of :mod:`guestagent.dom0.commands`."""
    from guestagent.cli import add_json_option, finite_float

    numa = host_sub.add_parser(
        "numa",
        help="how local each guest runs: its vCPUs' time on its memory's pnode (sampled)",
        description=(
            "Sample every guest's vCPUs (where Xen ran them, XEN_DOMCTL_getvcpuinfo) once a "
            "second for --window seconds, and print each guest's locality: the share of its "
            "vCPUs' time on pCPUs of the pnode holding each vnode's memory (libxl's vnode -> "
            "pnode map), worst first, with a reason for each guest under --threshold; with the "
            "guest's own published figures (data/guestagent/numa, validated) and the host's "
            "free memory per node."
        ),
    )
    add_json_option(numa)
    numa.add_argument(
        "--window", type=finite_float, default=10.0, metavar="SECONDS",
        help="how long to sample, 2..600 (default 10)",
    )
    numa.add_argument(
        "--threshold", type=finite_float, default=BAD_LOCALITY_PCT.default, metavar="PCT",
        help="a guest under this locality is bad and gets a reason ([hostnuma] "
        f"bad_locality_pct, default {BAD_LOCALITY_PCT.default:g})",
    )
    role_argument(numa)
    numa.set_defaults(func=host_numa)
