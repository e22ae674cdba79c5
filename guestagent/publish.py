"""``guestagent publish``: write this guest's topology into its own xenstore tree.

The tree under ``data/guestagent`` is made to match the schema (:mod:`guestagent.schema`) in one
transaction: stale keys from an earlier run go, unchanged keys are not rewritten. The daemon's numa
job's section (``numa/``) is left as it is. The tree and the sections left alone are the topology
job's decide step's (:func:`guestagent.topology.reconcile.decide`): one place for both.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from guestagent.cli import add_json_option, print_json
from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.schema import BASE
from guestagent.topology.reader import read_topology
from guestagent.topology.reconcile import decide


def run(args: argparse.Namespace, ctx: Any) -> int:
    from guestagent.xen.xs_sync import sync_tree

    hostfs: HostFS = ctx.hostfs
    plan = decide(read_topology(hostfs, ctx.host.vnuma_call()))
    if plan.tree is None:
        raise InputError("topology", "nothing could be read, nothing to publish")
    desired = plan.tree
    keys = {f"{BASE}/{k}": v for k, v in sorted(desired.items())}
    if args.dry_run:
        if args.json:
            print_json({"base": BASE, "dry_run": True, "keys": keys, "written": None,
                        "removed": None})
        else:
            sys.stdout.write("".join(f"{path} = {value}\n" for path, value in keys.items()))
        return 0
    client = ctx.host.xenstore()
    try:
        changes = sync_tree(client, BASE, desired, leave=plan.leave)
    except OSError as e:  # xenstored refused (EACCES...) or never answered (TimeoutError)
        raise GuestAgentError(f"publishing under {BASE} failed: {e}") from None
    finally:
        client.close()
    get_logger("publish").info(
        "xenstore_published",
        base=BASE,
        keys=len(desired),
        written=sorted(changes.writes),
        removed=changes.removes,
    )
    if args.json:
        print_json({"base": BASE, "dry_run": False, "keys": keys,
                    "written": sorted(changes.writes), "removed": sorted(changes.removes)})
        return 0
    print(
        f"published {len(desired)} keys under {BASE}: "
        f"{len(changes.writes)} written, {len(changes.removes)} stale removed"
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish the topology in this guest's xenstore tree (data/guestagent)",
        description="Write the vNUMA topology under data/guestagent in the guest's own xenstore "
        "tree, replacing stale keys; nothing is written outside data/.",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the keys (path = value) instead of writing them")
    add_json_option(parser, "print what was published (or, with --dry-run, what would be) as "
                    "one JSON object: base, keys, written, removed")
    parser.set_defaults(func=run)
