#!/usr/bin/env python3
"""Install a wheel into an RPM build root where pyproject-rpm-macros are not available.

    install_wheel.py --destdir BUILDROOT --purelib DIR --platlib DIR --scripts DIR WHEEL

The spec's fallback for %pyproject_install (packaging/rpm/guestagent.spec): the wheel's files go
to the given directories below BUILDROOT and its console script gets a ``#!`` line naming the
interpreter that runs this, through pypa's ``installer`` (Debian: python3-installer), the library
pip and the pyproject macros' install step also use.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    from installer import install  # type: ignore[import-not-found, unused-ignore]
    from installer.destinations import (  # type: ignore[import-not-found, unused-ignore]
        SchemeDictionaryDestination,
    )
    from installer.sources import WheelFile  # type: ignore[import-not-found, unused-ignore]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--destdir", required=True)
    parser.add_argument("--purelib", required=True)
    parser.add_argument("--platlib", required=True)
    parser.add_argument("--scripts", required=True)
    parser.add_argument("wheel")
    args = parser.parse_args(argv)
    data = "/usr"
    destination = SchemeDictionaryDestination(
        {"purelib": args.purelib, "platlib": args.platlib, "scripts": args.scripts,
         "headers": f"{data}/include", "data": data},
        interpreter=sys.executable,
        script_kind="posix",
        destdir=args.destdir,
    )
    with WheelFile.open(args.wheel) as source:
        install(source, destination, {"INSTALLER": b"rpm\n"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
