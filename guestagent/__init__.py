"""guestagent: makes Linux guests on Xen NUMA hosts NUMA-aware."""

from guestagent.lazyimport import import_stdlib_lean

__version__ = "0.1.0"

# dataclasses without inspect, pathlib without urllib.parse, before anything imports them: those
# load on first use (guestagent.lazyimport; benchmarks/README.md, "What each MiB is").
import_stdlib_lean()
