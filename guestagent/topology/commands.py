"""``guestagent topology [--json]``: the vNUMA topology from Xen and from Linux, side by side.

Exit status: 0 when at least one source answered (sysfs, or the hypercall when sysfs could not be
read); 1 with one line on stderr when nothing could be read. Unreadable single inputs that did not
stop the answer (a node's garbage ``distance`` file, a garbage ``has_cpu``, ...) are listed under
"errors" (table), in the ``errors`` key and on stderr (``--json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from guestagent.cli import add_json_option, print_json
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.nodesysfs import NODE_DIR
from guestagent.topology.reader import read_topology
from guestagent.topology.render import render_table

#: Both views were read and they disagree (the output lists every mismatch): a check's "found a
#: problem", distinct from 1 ("could not be read"), for scripts and monitoring.
EXIT_DISAGREE = 4

def run(args: argparse.Namespace, ctx: Any) -> int:
    hostfs: HostFS = ctx.hostfs
    topology = read_topology(hostfs, ctx.host.vnuma_call())
    if not topology.answered:
        # Nothing to show: the one line that says why sysfs failed (and the hypercall's status).
        reason = topology.errors[-1] if topology.errors else f"{NODE_DIR}: unreadable"
        raise InputError("topology", f"cannot be read: {reason}; hypercall: "
                         f"{topology.hypercall_status}")
    if args.json:
        print_json(topology.to_json())
        for line in topology.errors:
            print(f"guestagent: warning: {line}", file=sys.stderr)
    else:
        sys.stdout.write(render_table(topology))
    return EXIT_DISAGREE if topology.mismatches else 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "topology",
        help="show the NUMA topology from Xen and from Linux, and where they disagree",
        description=(
            "Show the virtual NUMA topology: nodes, CPUs, memory and distances as Linux sees them "
            "(sysfs) and as Xen reports them (XENMEM_get_vnumainfo), and every disagreement."
        ),
    )
    add_json_option(parser)
    parser.set_defaults(func=run)
