"""Self-ballooning on real Xen: the agent's controller shrinks an idle guest, grows it back under a
workload that needs the memory (no OOM kill), and puts the target back to the ceiling on stop."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.e2e.bed import Guest, GuestSpec, XenBed

# Cold caches build everything inside the first test's setup (debootstrap, pip): generous bounds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

MIB_KB = 1024
BALLOON = "/sys/devices/system/xen_memory/xen_memory0"

#: Allocates N MiB of anonymous memory in 8 MiB pieces, touching every page, reports the balloon
#: driver's size while holding it, waits for /tmp/release (at most 120 s), then exits 0.
HOLD = (
    "import mmap, os, sys, time\n"
    "n = int(sys.argv[1]); ms = []\n"
    "for _ in range(n // 8):\n"
    "    m = mmap.mmap(-1, 8 << 20); ms.append(m)\n"
    "    for off in range(0, 8 << 20, 4096): m[off] = 1\n"
    "cur = open('" + BALLOON + "/info/current_kb').read().split()[0]\n"
    "print('held', n, 'MiB; balloon current_kb', cur, flush=True)\n"
    "t = time.monotonic()\n"
    "while not os.path.exists('/tmp/release') and time.monotonic() - t < 120: time.sleep(0.5)\n"
    "print('done', flush=True)\n"
)


def xl_list_mib(bed: XenBed, name: str) -> int:
    """The guest's actual memory in MiB as Dom0's toolstack sees it."""
    out = bed.dom0_ok(f"xl list {name}")
    return int(out.strip().splitlines()[-1].split()[2])


def meminfo_kb(g: Guest, key: str) -> int:
    out = g.run_ok(f"grep '^{key}:' /proc/meminfo")
    return int(out.split()[1])


def oom_kills(g: Guest) -> int:
    out = g.run_ok("grep '^oom_kill ' /proc/vmstat")
    return int(out.split()[1])


def hold_state(g: Guest) -> int:
    """1 when the workload holds its memory, 2 when it exited before that, else 0."""
    out = g.run_ok("cat /tmp/hold.out 2>/dev/null; test -e /tmp/hold.rc && echo EXITED; true")
    if "held" in out:
        return 1
    return 2 if "EXITED" in out else 0


def wait_for(what: str, probe: Callable[[], int], ok: Callable[[int], bool],
             timeout: float) -> int:
    """Poll ``probe`` every 3 s until ``ok`` holds; fail naming the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value} after {timeout:.0f}s"
        time.sleep(3)


def test_agent_shrinks_idle_guest_grows_it_under_load_and_resets_on_stop(bed: XenBed) -> None:
    with bed.guest(GuestSpec.pv(memory=1024, vcpus=2)) as g:
        full_mib = xl_list_mib(bed, g.name)
        assert full_mib == 1024, full_mib
        ceiling_kb = int(bed.dom0_ok(f"xenstore-read /local/domain/{g.domid}/memory/target"))
        avail_full_kb = meminfo_kb(g, "MemAvailable")
        oom_before = oom_kills(g)

        g.run_ok(
            "setsid guestagent --log-level info balloon run --policy pressure "
            "> /tmp/balloon.log 2>&1 < /dev/null & echo $! > /tmp/balloon.pid"
        )
        # Idle: the controller gives memory back to Xen, seen by Dom0.
        low_mib = wait_for(
            "guest memory in xl list while idle", lambda: xl_list_mib(bed, g.name),
            lambda mib: mib <= full_mib - 256, timeout=240,
        )
        # A workload that needs more than the shrunk guest has available, but fits at full size.
        avail_kb = meminfo_kb(g, "MemAvailable")
        need_mib = min(avail_kb + 128 * MIB_KB, avail_full_kb - 128 * MIB_KB) // MIB_KB // 8 * 8
        assert need_mib * MIB_KB > avail_kb, (need_mib, avail_kb, avail_full_kb)
        g.run_ok(f"cat > /tmp/hold.py <<'EOF'\n{HOLD}EOF")
        g.run_ok(
            f"setsid sh -c 'python3 /tmp/hold.py {need_mib} > /tmp/hold.out 2>&1; "
            "echo $? > /tmp/hold.rc' < /dev/null > /dev/null 2>&1 &"
        )
        state = wait_for("workload holding its memory", lambda: hold_state(g),
                         lambda v: v != 0, timeout=300)
        assert state == 1, g.run_ok("cat /tmp/hold.out /tmp/hold.rc /tmp/balloon.log; true")
        grown_mib = xl_list_mib(bed, g.name)
        assert grown_mib >= low_mib + 64, (low_mib, grown_mib)
        g.run_ok("touch /tmp/release")
        wait_for("workload exit", lambda: int(g.run_ok("cat /tmp/hold.rc 2>/dev/null || "
                                                       "echo -1").strip()),
                 lambda rc: rc >= 0, timeout=120)
        out = g.run_ok("cat /tmp/hold.out /tmp/hold.rc")
        assert re.search(r"^done$", out, re.M) and out.strip().endswith("0"), out
        assert oom_kills(g) == oom_before, g.run_ok("dmesg | tail -n 30; cat /tmp/balloon.log")

        # Stop: SIGTERM makes the controller put the target back to the toolstack's ceiling.
        g.run_ok(
            "kill -TERM $(cat /tmp/balloon.pid); for i in $(seq 60); do "
            "kill -0 $(cat /tmp/balloon.pid) 2>/dev/null || exit 0; sleep 1; done; exit 1",
            timeout=90,
        )
        assert int(g.run_ok(f"cat {BALLOON}/target_kb")) == ceiling_kb
        wait_for("guest memory in xl list after stop", lambda: xl_list_mib(bed, g.name),
                 lambda mib: mib == full_mib, timeout=120)
        log = g.run_ok("cat /tmp/balloon.log")
        assert "balloon_reset" in log and "shrink" in log and "grow" in log, log
        print(f"balloon e2e: xl list {full_mib} MiB at start, {low_mib} MiB idle, {grown_mib} MiB "
              f"holding {need_mib} MiB (MemAvailable was {avail_kb // MIB_KB} MiB), "
              f"{full_mib} MiB after stop; no OOM kill")
