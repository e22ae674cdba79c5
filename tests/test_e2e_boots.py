"""``python -m tests.e2e boots`` (tests/e2e/boots.py): the death count and where each died,
checked without a bed."""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.e2e import boots
from tests.e2e.__main__ import _boots_setup
from tests.e2e.util import REPO

DIED = (
    "guest hvm7 (domid 9) died while running 'guestagent topology --json'; "
    "d9v3 RIP ffffffff8107ee05 = pvclock_clocksource_read+0x45 (Dom0's kallsyms, kernel "
    "6.1.0-56-amd64); Xen: ...\n==== guest hvm7 (domid 9) ====\n"
    "dead vCPU: d9v3 RIP ffffffff8107ee05 = pvclock_clocksource_read+0x45 (Dom0's kallsyms)\n"
)


def test_the_rips_of_a_failure_are_taken_once_each() -> None:
    assert boots.rips_in(DIED) == ["d9v3 RIP ffffffff8107ee05 = pvclock_clocksource_read+0x45"]
    assert boots.rips_in("guest hvm2 did not boot: domain hvm2 died during boot") == []


def test_the_summary_counts_deaths_apart_from_other_errors() -> None:
    results = [
        boots.Boot(1, "hvm1", "ok", 150.0),
        boots.Boot(2, "hvm2", "no boot", 40.0, "guest hvm2 did not boot: domain died during boot",
                   ["d2v0 RIP ffffffff819d32b5 = read_pci_config+0x15"]),
        boots.Boot(3, "hvm3", "ok", 170.0),
        boots.Boot(4, "hvm4", "died", 200.0, DIED, boots.rips_in(DIED)),
        boots.Boot(5, "hvm5", "error", 90.0, "guest command failed (1): guestagent topology"),
    ]
    lines = boots.summary(results, "hvm 4 vCPUs 1024 MiB", "stress-ng --cpu 2")
    assert lines[0] == (
        "boots: 5 of hvm 4 vCPUs 1024 MiB, load: stress-ng --cpu 2; deaths: 2 (no boot 1, "
        "under the command 1), other errors: 1, ok boots 150-170 s"
    )
    assert lines[1].startswith("  #2 hvm2: no boot after 40 s: d2v0 RIP ffffffff819d32b5 = "
                               "read_pci_config+0x15 (guest hvm2 did not boot")
    assert lines[2].startswith("  #4 hvm4: died after 200 s: d9v3 RIP ffffffff8107ee05")
    assert lines[3].startswith("  #5 hvm5: error after 90 s: no vCPU dump (guest command failed")
    assert len(lines) == 4


def test_no_death_is_one_line() -> None:
    assert boots.summary([boots.Boot(1, "pv1", "ok", 60.0)], "pv", "") == [
        "boots: 1 of pv, load: none; deaths: 0 (no boot 0, under the command 0), ok boots 60-60 s"
    ]


def test_a_missing_load_tool_is_one_line_before_any_bed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e", "boots", "1", "--pv", "--load",
         "no-such-stress-tool --cpu 2"],
        cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "e2e: --load: no-such-stress-tool is not installed (stress-ng: apt-get install stress-ng)"
    ]


def test_the_measured_shape_carries_every_candidate_setting() -> None:
    args = argparse.Namespace(
        pv=False, vnuma='[ ["pnode=0","size=512","vcpus=0-1","vdistances=10"] ]', memory=512,
        vcpus=2, kernel="", host_numa2=False, no_pin_hvm=False, smp=4,
        xl=['tsc_mode="native"'], cmdline="pci=noearly", outer_cpu="qemu64,+svm,+npt,+invtsc")
    spec, config, shape = _boots_setup(args)
    assert 'tsc_mode="native"' in spec.xl_config().splitlines()
    assert " pci=noearly" in spec.xl_config()
    assert config.qemu_args()[config.qemu_args().index("-cpu") + 1] == "qemu64,+svm,+npt,+invtsc"
    assert shape.startswith("hvm 2 vCPUs 512 MiB vnuma")
    assert shape.endswith('(pinned off pCPU 0); tsc_mode="native"; cmdline +pci=noearly; '
                          "outer -cpu qemu64,+svm,+npt,+invtsc")
