"""Does a guest survive balloon moves with no agent? The HVM guest loss, hunted without the agent.

    python -m benchmarks.balloon_stress [--type hvm|pv] [--seconds 600] [--zram none|kept|cycled]

On 2026-12-06 HVM guests on the testbed were lost in 3 of 16 runs of the ``pressure`` policy, each
a guest kernel panic (``ENTRY_TRAMPOLINE stack guard page was hit``) while the driver gave memory
back. This takes the agent out: one fresh guest (1 GiB, 2 vCPUs; HVM by default) where, for
``--seconds``, a shell loop writes the driver's ``target_kb`` (45 % of the ceiling for 10 s, the
ceiling for 5 s) while another reads every shared library and ``/usr/bin`` into the page cache,
touches 120 MiB in a fresh Python process and drops the caches, over and over. ``--zram`` adds a
zram swap shaped like the allocation guard's (768 MiB, priority 100, ``vm.overcommit_memory=1``):
``kept``, made once; ``cycled``, swapped off, reset and its module unloaded every 52 s, then made
again (as the benchmark's resets did between runs).

It prints whether the guest survived, how many rounds the reader made, the driver's size at the
end and ``/proc/swaps``; a guest that stops answering is lost, and its console (Dom0's
``e2e-guest log``) is kept in the run directory as ``stress.console``. Exit 0: survived; 1: lost.
"""

from __future__ import annotations

import argparse
import sys
import time

from guestagent.balloon.signals import BALLOON_DIR

ZRAM_MODES = ("none", "kept", "cycled")
#: The guard's zram swap (``guestagent/balloon/guard.py``) for a 1 GiB guest, by hand.
ZRAM_MAKE = (
    "modprobe zram num_devices=1 && echo lzo-rle > /sys/block/zram0/comp_algorithm\n"
    "echo $((768*1024*1024)) > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null "
    "&& swapon -p 100 /dev/zram0\n"
    "echo 1 > /proc/sys/vm/overcommit_memory\n"
)
ZRAM_TEAR_DOWN = (
    "swapoff /dev/zram0; echo 1 > /sys/block/zram0/reset; rmmod zram; rmmod zsmalloc 2>/dev/null\n"
    "echo 0 > /proc/sys/vm/overcommit_memory\n"
)
#: Seconds a cycled zram swap is kept before it is torn down.
ZRAM_CYCLE_S = 50


def zram_part(mode: str) -> str:
    """The script's zram lines for ``mode`` (``ZRAM_MODES``)."""
    if mode == "none":
        return ""
    if mode == "kept":
        return ZRAM_MAKE
    if mode == "cycled":
        return ("(while [ $(date +%s) -lt $end ]; do\n" + ZRAM_MAKE + f"sleep {ZRAM_CYCLE_S}\n"
                + ZRAM_TEAR_DOWN + "sleep 2\ndone) &\n")
    raise ValueError(f"zram mode {mode!r}: choose from {', '.join(ZRAM_MODES)}")


#: What the reader reads into the page cache each round.
READS = "/usr/lib/x86_64-linux-gnu/*.so* /usr/bin/*"
DROP_CACHES = "/proc/sys/vm/drop_caches"


def stress_script(seconds: int, zram: str, low_pct: int = 45, balloon: str = BALLOON_DIR,
                  reads: str = READS, drop_caches: str = DROP_CACHES, low_s: int = 10,
                  high_s: int = 5) -> str:
    """The guest's shell script: moves, reads and allocations for ``seconds``, then a summary."""
    return (
        f"B={balloon}\n"
        "full=$(cat $B/target_kb)\n"
        f"end=$(( $(date +%s) + {int(seconds)} ))\n"
        + zram_part(zram)
        + "(while [ $(date +%s) -lt $end ]; do "
        f"echo $((full*{int(low_pct)}/100)) > $B/target_kb; sleep {int(low_s)}; "
        f"echo $full > $B/target_kb; sleep {int(high_s)}; done; echo $full > $B/target_kb) &\n"
        "n=0\n"
        "while [ $(date +%s) -lt $end ]; do\n"
        f"  cat {reads} > /dev/null 2>&1\n"
        "  python3 -c 'b = bytearray(120 << 20)\nfor j in range(0, len(b), 4096): b[j] = 1'\n"
        f"  echo 1 > {drop_caches}\n"
        "  n=$((n+1))\n"
        "done\n"
        "wait\n"
        "echo \"survived $n rounds; $(cat $B/info/current_kb) KiB; "
        "swap: $(tail -n +2 /proc/swaps | tr -s ' ')\"\n"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.balloon_stress",
                                description=__doc__.splitlines()[0])
    p.add_argument("--type", choices=("pv", "hvm"), default="hvm", help="the guest's type")
    p.add_argument("--seconds", type=int, default=600, help="how long the moves go on")
    p.add_argument("--zram", choices=ZRAM_MODES, default="none",
                   help="a zram swap like the guard's: none, kept (made once), cycled (torn "
                   "down and made again every 52 s)")
    args = p.parse_args(argv)
    if not 60 <= args.seconds <= 6 * 3600:
        p.error(f"--seconds must be 60-21600, not {args.seconds}")
    return args


def main(argv: list[str] | None = None) -> int:
    from tests.e2e.bed import BedConfig, GuestSpec, XenBed
    from tests.e2e.util import BedError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    make = GuestSpec.hvm if args.type == "hvm" else GuestSpec.pv
    spec = make(memory=1024, vcpus=2, name="stress")
    with XenBed(BedConfig(run_name="balloon-stress")) as bed, bed.guest(spec) as g:
        t0 = time.monotonic()
        try:
            out, rc = g.run(stress_script(args.seconds, args.zram), timeout=args.seconds + 300)
            lost = rc != 0
            print(f"{args.type} guest, zram {args.zram}: rc={rc} after "
                  f"{time.monotonic() - t0:.0f} s: {out.strip()[-300:]}")
        except BedError as e:
            lost = True
            print(f"{args.type} guest, zram {args.zram}: LOST after "
                  f"{time.monotonic() - t0:.0f} s: {e}"[:400])
        if lost:
            console = bed.dom0(f"e2e-guest log {g.domid} 200000", timeout=60)[0]
            (bed.run_dir / "stress.console").write_text(console)
            print(f"the guest's console: {bed.run_dir / 'stress.console'}")
        print(f"run {bed.run_dir.name}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
