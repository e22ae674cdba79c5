"""NUMA health inside the guest: how local each vnode's allocations are, its memory and vCPU
time, automatic NUMA balancing's activity and memory pressure, sampled off the hot path and
published in xenstore and as metrics (docs/NUMA-HEALTH.md)."""
