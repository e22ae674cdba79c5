"""guestagent: makes Linux guests on Xen NUMA hosts NUMA-aware."""

from guestagent.lazyimport import import_stdlib_lean

__version__ = "0.1.0"

# dataclasses without inspect, pathlib without ipaddress, before anything imports them: they load
# on first use (guestagent.lazyimport; benchmarks/README.md, "What each MiB is").
import_stdlib_lean()
