"""NUMA health of every guest seen from Dom0 (issue 19 part 2, docs/NUMA-HEALTH.md)."""
