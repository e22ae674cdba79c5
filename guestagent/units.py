"""Units, in one place: byte and KiB multiples and the page size the agent assumes.

Two scales are in use and their names say which:

* bytes: :data:`KIB`, :data:`MIB`, :data:`GIB` (sysfs byte counts, DAMON, Xen's sysctls);
* KiB: :data:`MIB_KB`, :data:`GIB_KB` (the balloon driver's ``target_kb``, ``/proc/meminfo``,
  xenstore ``memory/target``).

:data:`PAGE_SIZE` is the 4 KiB x86 page that DAMON rates and tmem pages are counted in; the
privcmd layer takes the page size from the C extension instead (``guestagent.xen.privcmd``).
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

MIB_KB = 1 << 10
GIB_KB = 1 << 20

PAGE_SIZE = 4096

#: The x86 2 MiB huge page the devices job reserves per node (``hugepages-2048kB``).
HUGE_PAGE_SIZE = 2 * MIB

#: The unit suffixes of ``/proc/meminfo`` and the node ``meminfo`` files, in bytes.
MEMINFO_UNITS = {"": 1, "B": 1, "KB": KIB, "MB": MIB, "GB": GIB}


def format_mib(nbytes: int) -> str:
    """Bytes as MiB for people: whole MiB without a decimal, else one decimal."""
    if nbytes % MIB == 0:
        return f"{nbytes // MIB} MiB"
    return f"{nbytes / MIB:.1f} MiB"
