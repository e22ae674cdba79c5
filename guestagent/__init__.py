"""guestagent: makes Linux guests on Xen NUMA hosts NUMA-aware."""

__version__ = "0.1.0"
