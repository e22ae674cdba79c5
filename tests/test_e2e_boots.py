"""``python -m tests.e2e boots`` (tests/e2e/boots.py): the death count and where each died,
checked without a bed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from unittest.mock import patch

import pytest

from tests.e2e import boots
from tests.e2e.__main__ import _boots_setup
from tests.e2e.util import REPO, BedError, Dom0Lost

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


def boots_args(**kw: object) -> argparse.Namespace:
    """``boots``'s options as argparse gives them, ``kw`` changed."""
    base: dict[str, object] = dict(
        shape=[], pv=False, vnuma=None, memory=None, vcpus=None, kernel="", host_numa2=False,
        no_pin_hvm=False, smp=4, xl=[], cmdline="", outer_cpu="", boot_timeout=0.0, hang_probe="",
        xen_cmdline="", xen_keys="")
    base.update(kw)
    return argparse.Namespace(**base)


def test_the_measured_shape_carries_every_candidate_setting() -> None:
    args = boots_args(
        vnuma='[ ["pnode=0","size=512","vcpus=0-1","vdistances=10"] ]', memory=512,
        vcpus=2, xl=['tsc_mode="native"'], cmdline="pci=noearly",
        outer_cpu="qemu64,+svm,+npt,+invtsc", xen_cmdline="sched=credit2",
        hang_probe="xl debug-keys q", xen_keys="q0r")
    [(label, spec, shape)], config, _settings = _boots_setup(args)
    assert label == "custom"
    assert 'tsc_mode="native"' in spec.xl_config().splitlines()
    assert " pci=noearly" in spec.xl_config()
    assert config.qemu_args()[config.qemu_args().index("-cpu") + 1] == "qemu64,+svm,+npt,+invtsc"
    assert shape.startswith("hvm 2 vCPUs 512 MiB vnuma")
    assert shape.endswith('(pinned off pCPU 0); tsc_mode="native"; cmdline +pci=noearly; '
                          "outer -cpu qemu64,+svm,+npt,+invtsc; Xen +sched=credit2")
    # the bed's own sched=credit first, the option after it: Xen takes the last one
    assert config.xen_cmdline().endswith("guest_loglvl=warning sched=credit sched=credit2")
    assert config.hang_probe == "xl debug-keys q"
    assert config.xen_keys == "q0r"


def test_each_named_shape_is_a_consistent_guest() -> None:
    from tests.e2e.bed import GuestSpec

    s = boots.SHAPES["hvm-2x2"]
    assert (s.type, s.vcpus, s.memory) == ("hvm", 4, 2048)
    assert s.vnuma() == ('[ ["pnode=0","size=1024","vcpus=0-1","vdistances=10,20"], '
                         '["pnode=0","size=1024","vcpus=2-3","vdistances=20,10"] ]')
    assert s.describe() == ("hvm 4 vCPUs 2048 MiB, 2 vnodes (1024 MiB vCPUs 0-1 | "
                            "1024 MiB vCPUs 2-3)")
    three = boots.SHAPES["hvm-3n4"]
    assert (three.vcpus, three.memory, len(three.nodes)) == (4, 1024, 3)
    pv = boots.SHAPES["pv-4"]
    assert (pv.type, pv.vcpus, pv.vnuma()) == ("pv", 4, None)
    assert boots.SHAPES["hvm-2x4"].vcpus == 8
    tsc = boots.SHAPES["hvm-3n4-tsc"]
    assert tsc.nodes == three.nodes and tsc.xl == ('tsc_mode = "native"',)
    assert tsc.describe() == three.describe()  # its xl line is named with the settings
    # every shape renders an xl config xl would take: vCPUs, memory and vnodes agree
    for shape in boots.SHAPES.values():
        spec = GuestSpec(shape.name, shape.type, shape.memory, shape.vcpus, shape.vnuma())
        cfg = spec.xl_config()
        assert f"vcpus = {shape.vcpus}\n" in cfg and f"maxmem = {shape.memory}\n" in cfg
        assert ("vnuma = " in cfg) == bool(shape.nodes)


def test_named_shapes_boot_in_turns_with_the_shared_settings() -> None:
    args = boots_args(shape=["hvm-2x2", "pv-4"], xl=['tsc_mode="native"'], boot_timeout=400.0)
    guests, config, settings = _boots_setup(args)
    assert [label for label, _s, _t in guests] == ["hvm-2x2", "pv-4"]
    hvm, pv = guests[0][1], guests[1][1]
    assert (hvm.type, hvm.vcpus, hvm.memory, hvm.name) == ("hvm", 4, 2048, "hvm-2x2-")
    assert hvm.vnuma == boots.SHAPES["hvm-2x2"].vnuma()
    assert (pv.type, pv.vcpus, pv.vnuma) == ("pv", 4, None)
    assert hvm.boot_timeout == pv.boot_timeout == 400.0
    assert 'tsc_mode="native"' in pv.xl_config().splitlines()
    [(_label, tsc, text)], _c, _s = _boots_setup(boots_args(shape=["hvm-3n4-tsc"]))
    assert 'tsc_mode = "native"' in tsc.xl_config().splitlines()
    assert text.endswith('vCPUs 3) (pinned off pCPU 0); tsc_mode = "native"')
    assert guests[0][2].endswith('(pinned off pCPU 0); tsc_mode="native"')
    assert guests[1][2] == 'pv 4 vCPUs 1024 MiB; tsc_mode="native"'
    assert settings == 'tsc_mode="native"' and config.run_name == "boots"
    assert boots.rounds(["hvm-2x2", "pv-4"], 2) == [
        (1, "hvm-2x2"), (1, "pv-4"), (2, "hvm-2x2"), (2, "pv-4")]


def test_a_shape_with_its_own_size_options_is_refused() -> None:
    import pytest

    from tests.e2e.util import BedError

    with pytest.raises(BedError, match="--shape names the whole guest"):
        _boots_setup(boots_args(shape=["pv-4"], vcpus=2))


def test_the_budget_starts_no_boot_that_would_not_end_inside_it() -> None:
    assert boots.fits(0.0, 0.0, "hvm", [9999.0])  # no budget
    assert boots.fits(1000.0, 1500.0, "hvm", [])  # first guess: 330 s
    assert not boots.fits(1200.0, 1500.0, "hvm", [])
    assert boots.fits(1300.0, 1500.0, "pv", [])  # 150 s
    assert not boots.fits(1000.0, 1500.0, "hvm", [280.0, 520.0])  # the longest seen


def test_the_table_has_one_row_per_shape_with_deaths_and_where() -> None:
    results = [
        boots.Boot(1, "hvm-2x2-1", "ok", 300.0, shape="hvm-2x2", boot_seconds=250.0),
        boots.Boot(1, "pv-4-2", "ok", 90.0, shape="pv-4", boot_seconds=70.0),
        boots.Boot(2, "hvm-2x2-3", "no boot", 60.0,
                   "guest hvm-2x2-3 did not boot: domain hvm-2x2-3 died during boot\n"
                   "(XEN) d3v0 Triple fault - invoking HVM shutdown action 0\n",
                   ["d3v0 RIP ffffffff819d32b5 = read_pci_config+0x15"], "hvm-2x2"),
        boots.Boot(2, "pv-4-4", "died", 200.0, DIED, boots.rips_in(DIED), "pv-4", 80.0),
        boots.Boot(3, "hvm-2x2-5", "ok", 310.0, shape="hvm-2x2", boot_seconds=270.0),
        boots.Boot(3, "pv-4-6", "timeout", 900.0, "no runner in pv-4-6 after 600s", [], "pv-4"),
        boots.Boot(4, "?", "interrupted", 30.0, shape="pv-4"),
    ]
    rows = boots.shape_table(results, ["hvm-2x2", "pv-4", "hvm-3n4"])
    assert rows[0].startswith("| shape | boots | reached a shell | median boot s | deaths |")
    assert rows[2] == ("| hvm-2x2 | 3 | 2 | 260 | 1 | #2 no boot: d3v0 RIP ffffffff819d32b5 = "
                       "read_pci_config+0x15 (Triple fault) |")
    assert rows[3] == ("| pv-4 | 3 | 2 | 75 | 1 | #2 died: d9v3 RIP ffffffff8107ee05 = "
                       "pvclock_clocksource_read+0x45; not deaths: #3 timeout |")
    assert rows[4] == "| hvm-3n4 | 0 | 0 | - | 0 | - |"


def test_a_boot_that_did_not_reach_its_shell_is_a_death_only_when_its_domain_died() -> None:
    assert boots.boot_failure("guest hvm1 did not boot: domain hvm1 died during boot") == "no boot"
    assert boots.boot_failure("guest hvm1 did not boot: no runner in hvm1 after 1200s") == (
        "timeout")
    assert boots.boot_failure("guest hvm1 did not boot: xl create failed (1):\n...") == "error"
    assert boots.cause_in("x\n(XEN) d2v3 Triple fault - invoking\nKernel panic - not syncing: "
                          "Fatal exception\n") == (
        "Triple fault; Kernel panic - not syncing: Fatal exception")


def test_rounds_boot_the_shapes_in_turns_and_stop_at_the_budget(tmp_path: Path) -> None:
    import time
    from types import SimpleNamespace

    from tests.e2e.__main__ import _boot_rounds
    from tests.e2e.util import GuestDied

    booted: list[str] = []

    class FakeGuest:
        def __init__(self, name: str) -> None:
            self.name, self.boot_seconds, self.domid = name, 12.0, len(booted) + 4

        def run_ok(self, script: str, timeout: float = 120) -> str:
            if self.name == "pv-4-2":
                raise GuestDied(DIED)
            return "{}"

    class FakeBed:
        run_dir = tmp_path

        def dom0(self, script: str, timeout: float = 120) -> tuple[str, int]:
            return f"ran: {script}\n", 0

        @contextmanager
        def guest(self, spec: object, retries: int = 1) -> Iterator[FakeGuest]:
            booted.append(f"{spec.name}{len(booted) + 1}")  # type: ignore[attr-defined]
            yield FakeGuest(booted[-1])

    guests, _config, _settings = _boots_setup(boots_args(shape=["hvm-3n4", "pv-4"]))
    args = SimpleNamespace(n=2, max_minutes=0, command="true", timeout=60,
                           dom0_probe="xl dmesg | grep dom{domid}:")
    results: list[boots.Boot] = []
    skipped = _boot_rounds(FakeBed(), guests, args, time.monotonic(), results)  # type: ignore[arg-type]
    assert booted == ["hvm-3n4-1", "pv-4-2", "hvm-3n4-3", "pv-4-4"] and skipped == []
    assert [(b.shape, b.n, b.outcome) for b in results] == [
        ("hvm-3n4", 1, "ok"), ("pv-4", 1, "died"), ("hvm-3n4", 2, "ok"), ("pv-4", 2, "ok")]
    assert results[1].boot_seconds == 12.0 and results[1].rips
    # the Dom0 probe ran after each command that ended (not after the death), for that domain
    assert (tmp_path / "hvm-3n4-1.probe").read_text() == "ran: xl dmesg | grep dom5:\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hvm-3n4-1.probe", "hvm-3n4-3.probe", "pv-4-4.probe"]

    # 20 of 25 minutes gone: an HVM boot (first guess 330 s) does not fit, a PV one (150 s) does
    booted.clear()
    args = SimpleNamespace(n=1, max_minutes=25, command="true", timeout=60)
    results = []
    skipped = _boot_rounds(FakeBed(), guests, args, time.monotonic() - 1200, results)  # type: ignore[arg-type]
    assert skipped == ["hvm-3n4 #1"] and [b.shape for b in results] == ["pv-4"]


def test_the_budget_ends_by_a_clock_time_as_well() -> None:
    t = 1796410800.0  # 2026-12-04 19:00:00 UTC
    assert boots.budget_seconds(0, "", t) == 0
    assert boots.budget_seconds(23, "", t) == 23 * 60
    assert boots.budget_seconds(23, "19:48", t) == 23 * 60
    assert boots.budget_seconds(23, "19:10", t) == 600
    assert boots.budget_seconds(0, "19:10", t) == 600
    assert boots.budget_seconds(23, "18:59", t) == 1.0  # already past: nothing starts
    assert boots.budget_seconds(0, "07:01", t) == 1.0  # 12 h ago, not tomorrow's


def test_the_clock_time_may_be_after_midnight_and_is_checked() -> None:
    t = 1796419800.0  # 2026-12-04 21:30:00 UTC
    assert boots.budget_seconds(0, "00:05", t) == 155 * 60  # tonight's, not this morning's
    assert boots.budget_seconds(200, "0:05", t) == 155 * 60
    assert boots.clock_time("00:05") == "00:05"
    assert boots.clock_time("") == ""  # the option's default: argparse passes it through too
    for bad in ("24:00", "12:60", "noon", "1205", "-1:30"):
        with pytest.raises(argparse.ArgumentTypeError, match="HH:MM"):
            boots.clock_time(bad)


# --- hvm-pt: the passthrough guest of test_dom0_devices.py (2-node layout) ----------------------

HOST_E1000E = "0000:81:00.0"  # behind the pxb-pcie (bus_nr 0x80) and its root port
DOM0_PCI = ("0000:00:00.0 0x8086:0x29c0\n0000:00:1f.0 0x8086:0x2918\n"
            f"0000:80:00.0 0x1b36:0x000c\n{HOST_E1000E} 0x8086:0x10d3\n")
GUEST_WITH = "0000:00:00.0 0x8086:0x1237\n0000:00:04.0 0x8086:0x10d3\n"
GUEST_WITHOUT = "0000:00:00.0 0x8086:0x1237\n0000:00:02.0 0x5853:0x0001\n"


def test_hvm_pt_is_the_passthrough_test_guest_on_its_own_pnodes() -> None:
    from tests.e2e import passthrough

    pt = boots.SHAPES["hvm-pt"]
    assert (pt.type, pt.memory, pt.vcpus) == ("hvm", 1024, 2)  # GuestSpec.hvm(1024, 2) there
    assert pt.nodes == passthrough.PNODE_MAPPED and pt.host_numa2
    assert pt.passthrough == passthrough.E1000E == "0x8086:0x10d3"
    # its pnodes are part of it: the same on any layout (a 1-node one refuses it)
    assert pt.vnuma(2) == pt.vnuma(1) == (
        '[ ["pnode=0","size=512","vcpus=0","vdistances=10,20"], '
        '["pnode=1","size=512","vcpus=1","vdistances=20,10"] ]')
    assert pt.describe(2) == ("hvm 2 vCPUs 1024 MiB, 2 vnodes (512 MiB vCPUs 0 on pnode 0 | "
                              "512 MiB vCPUs 1 on pnode 1), PCI 0x8086:0x10d3 passed through")
    [(label, spec, text)], config, _s = _boots_setup(
        boots_args(shape=["hvm-pt"], host_numa2=True))
    assert label == "hvm-pt" and config.host_numa2 and config.pin_hvm_off_cpu0
    assert (spec.type, spec.memory, spec.vcpus, spec.vnuma) == ("hvm", 1024, 2, pt.vnuma())
    assert not any(e.startswith("pci") for e in spec.extra)  # Dom0 names the BDF, at each boot
    assert text == pt.describe(2) + " (pinned off pCPU 0)"


def test_a_shape_needing_the_2_node_layout_is_refused_without_it_before_any_bed() -> None:
    import pytest

    from tests.e2e.util import BedError

    line = ("--shape hvm-pt needs the 2-node host layout (its vnodes' pnodes, its passthrough "
            "device): add --host-numa2")
    assert boots.host_numa2_missing(["hvm-2x4", "hvm-pt"], False) == line
    assert boots.host_numa2_missing(["hvm-2x4", "hvm-pt"], True) == ""
    assert boots.host_numa2_missing(["hvm-2x4", "pv-4"], False) == ""
    with pytest.raises(BedError, match="needs the 2-node host layout"):
        _boots_setup(boots_args(shape=["hvm-2x4", "hvm-pt"]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e", "boots", "1", "--shape", "hvm-pt"],
        cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"e2e: {line}"]


def test_on_the_2_node_layout_the_other_shapes_spread_their_vnodes_over_the_host_nodes() -> None:
    two = boots.SHAPES["hvm-2x4"]
    assert [v.pnode for v in two.placed(1)] == [0, 0]
    assert [v.pnode for v in two.placed(2)] == [0, 1]  # 1 GiB on each 2 GiB host node
    assert two.vnuma(2) == ('[ ["pnode=0","size=1024","vcpus=0-3","vdistances=10,20"], '
                            '["pnode=1","size=1024","vcpus=4-7","vdistances=20,10"] ]')
    assert two.describe(2).endswith("(1024 MiB vCPUs 0-3 on pnode 0 | 1024 MiB vCPUs 4-7 on "
                                    "pnode 1)")
    assert [v.pnode for v in boots.SHAPES["hvm-3n4"].placed(2)] == [0, 1, 0]
    assert boots.SHAPES["pv-4"].placed(2) == ()
    # the one-node layout is unchanged: every vnode on pnode 0, no pnode in the description
    assert "pnode=1" not in (two.vnuma() or "") and "pnode" not in two.describe()
    guests, _c, _s = _boots_setup(boots_args(shape=["hvm-2x4", "hvm-pt"], host_numa2=True))
    assert [spec.vnuma for _l, spec, _t in guests] == [two.vnuma(2),
                                                       boots.SHAPES["hvm-pt"].vnuma()]
    # and every shape keeps its sizes placed: memory and vCPUs unchanged on either layout
    for shape in boots.SHAPES.values():
        for nodes in (1, 2):
            placed = shape.placed(nodes)
            assert [(v.size_mb, v.vcpus) for v in placed] == [
                (v.size_mb, v.vcpus) for v in shape.nodes]


class PtGuest:
    """A guest that answers the command and the PCI listing (with or without the device)."""

    def __init__(self, name: str, listing: str) -> None:
        self.name, self.listing, self.boot_seconds, self.domid = name, listing, 80.0, 7
        self.scripts: list[str] = []

    def run_ok(self, script: str, timeout: float = 120) -> str:
        self.scripts.append(script)
        return self.listing if "/sys/bus/pci/devices" in script else "{}"


class PtBed:
    """Dom0 with the 2-node layout's e1000e; records every Dom0 script and guest config."""

    def __init__(self, guest_listing: str, dom0_listing: str = DOM0_PCI) -> None:
        self.guest_listing, self.dom0_listing = guest_listing, dom0_listing
        self.dom0_scripts: list[str] = []
        self.configs: list[str] = []
        self.run_dir = Path("/nonexistent")
        self.lost = False  # Dom0 silent after a failure (XenBed.dom0_lost)
        self.restarts = 0

    def dom0_lost(self, error: BaseException) -> Dom0Lost | None:
        if not self.lost:
            return None
        self.restarts += 1
        return Dom0Lost(f"Dom0 stopped answering (restart {self.restarts}): {error}")

    def dom0_ok(self, script: str, timeout: float = 120) -> str:
        self.dom0_scripts.append(script)
        return self.dom0_listing if "/sys/bus/pci/devices" in script else ""

    def guest(self, spec: object, retries: int = 1) -> AbstractContextManager[PtGuest]:
        @contextmanager
        def booted() -> Iterator[PtGuest]:
            self.configs.append(spec.xl_config("1-3"))  # type: ignore[attr-defined]
            yield PtGuest("hvm-pt-1", self.guest_listing)

        return booted()


def test_each_hvm_pt_boot_makes_the_device_assignable_and_passes_it_through() -> None:
    from tests.e2e import passthrough
    from tests.e2e.__main__ import _one_boot

    [(_label, spec, _t)], _c, _s = _boots_setup(boots_args(shape=["hvm-pt"], host_numa2=True))
    args = argparse.Namespace(command="guestagent topology --json", timeout=60, dom0_probe="")
    bed = PtBed(GUEST_WITH)
    b = _one_boot(bed, spec, 1, args, "hvm-pt")  # type: ignore[arg-type]
    assert (b.outcome, b.shape, b.boot_seconds, b.error) == ("ok", "hvm-pt", 80.0, "")
    assert bed.dom0_scripts == [
        passthrough.PCI_LISTING,
        f"xl pci-assignable-list | grep -q {HOST_E1000E} || xl pci-assignable-add {HOST_E1000E}"]
    [cfg] = bed.configs
    lines = cfg.splitlines()
    assert lines[-2:] == ['cpus = "1-3"', f'pci = [ "{HOST_E1000E}" ]']
    assert f"vnuma = {boots.SHAPES['hvm-pt'].vnuma()}" in lines
    assert "vcpus = 2" in lines and "maxmem = 1024" in lines and 'type = "hvm"' in lines
    assert spec.extra == []  # the shape's own spec is left as it was, for the next boot
    # a shape without a device asks Dom0 nothing
    bed = PtBed(GUEST_WITHOUT)
    [(_l, plain, _t)], _c, _s = _boots_setup(boots_args(shape=["hvm-2x4"], host_numa2=True))
    assert _one_boot(bed, plain, 1, args, "hvm-2x4").outcome == "ok"  # type: ignore[arg-type]
    assert bed.dom0_scripts == [] and "pci =" not in bed.configs[0]


def test_an_hvm_pt_guest_without_its_device_is_a_failure_of_its_own_not_a_death() -> None:
    from tests.e2e.__main__ import _one_boot

    [(_label, spec, _t)], _c, _s = _boots_setup(boots_args(shape=["hvm-pt"], host_numa2=True))
    args = argparse.Namespace(command="true", timeout=60, dom0_probe="")
    b = _one_boot(PtBed(GUEST_WITHOUT), spec, 3, args, "hvm-pt")  # type: ignore[arg-type]
    assert (b.outcome, b.n, b.boot_seconds) == ("no device", 3, 80.0)
    assert b.error == ("no PCI function 0x8086:0x10d3 in the guest's /sys/bus/pci/devices: "
                       "0000:00:00.0 0x8086:0x1237, 0000:00:02.0 0x5853:0x0001")
    assert not boots.is_death(b)
    ok = boots.Boot(1, "hvm-pt-1", "ok", 200.0, shape="hvm-pt", boot_seconds=90.0)
    assert boots.shape_table([ok, b], ["hvm-pt"])[2] == (
        "| hvm-pt | 2 | 2 | 85 | 0 | not deaths: #3 no device |")
    assert boots.summary([ok, b], "hvm-pt", "")[0].endswith("other errors: 1, ok boots 200-200 s")
    # no e1000e in Dom0 (not the 2-node layout): the boot is an error naming what Dom0 has
    dom0_without = PtBed(GUEST_WITH, "0000:00:00.0 0x8086:0x29c0\n")
    nodev = _one_boot(dom0_without, spec, 1, args, "hvm-pt")  # type: ignore[arg-type]
    assert nodev.outcome == "error" and nodev.error == (
        "Dom0's /sys/bus/pci/devices: 0 functions 0x8086:0x10d3 (none), the 2-node layout has one")


def test_a_boot_that_loses_dom0_is_counted_apart_and_the_bed_goes_on() -> None:
    """Dom0 silent after the device listing or the guest's command failed: the bed was started
    again (XenBed.dom0_lost) and the boot is "dom0 lost", not a death; the next boot runs."""
    from tests.e2e.__main__ import _one_boot

    [(_label, spec, _t)], _c, _s = _boots_setup(boots_args(shape=["hvm-pt"], host_numa2=True))
    args = argparse.Namespace(command="true", timeout=60, dom0_probe="")
    bed = PtBed(GUEST_WITH, "")  # the listing finds no device: a BedError
    bed.lost = True
    b = _one_boot(bed, spec, 2, args, "hvm-pt")  # type: ignore[arg-type]
    assert (b.outcome, bed.restarts) == ("dom0 lost", 1)
    assert b.error.startswith("Dom0 stopped answering (restart 1): Dom0's /sys/bus/pci/devices")
    assert not boots.is_death(b)
    ok = _one_boot(PtBed(GUEST_WITH), spec, 3, args, "hvm-pt")  # type: ignore[arg-type]
    assert ok.outcome == "ok"
    assert boots.shape_table([b, ok], ["hvm-pt"])[2] == (
        "| hvm-pt | 2 | 1 | 80 | 0 | not deaths: #2 dom0 lost |")
    assert "Dom0 lost 1 times (Xen started again)" in boots.summary([b, ok], "hvm-pt", "")[0]
    # a command that fails with Dom0 silent is a lost Dom0, not the command's error
    cmd_fails = PtBed(GUEST_WITH)
    cmd_fails.lost = True
    fail_args = argparse.Namespace(command="false", timeout=60, dom0_probe="")
    with patch.object(PtGuest, "run_ok", side_effect=BedError("timed out")):
        lost = _one_boot(cmd_fails, spec, 4, fail_args, "hvm-pt")  # type: ignore[arg-type]
    assert (lost.outcome, lost.guest, lost.boot_seconds) == ("dom0 lost", "hvm-pt-1", 80.0)


def test_the_device_check_reads_the_sysfs_listing() -> None:
    from tests.e2e import passthrough

    assert passthrough.functions_with_id(GUEST_WITH, "0x8086:0x10d3") == ["0000:00:04.0"]
    assert passthrough.functions_with_id(GUEST_WITHOUT, "0x8086:0x10d3") == []
    assert passthrough.functions_with_id("0000:00:04.0 0x8086:0x10d3 \n", "0x8086:0x10d3") == [
        "0000:00:04.0"]
    # an id that only ends like the device's is not it
    assert passthrough.functions_with_id("0000:00:05.0 0x8086:0x110d3\n", "0x8086:0x10d3") == []
    assert boots.device_missing(GUEST_WITH, "0x8086:0x10d3") == ""
    assert boots.device_missing("", "0x8086:0x10d3") == (
        "no PCI function 0x8086:0x10d3 in the guest's /sys/bus/pci/devices: nothing")
    assert passthrough.host_bdf(lambda _s: DOM0_PCI, "0x8086:0x10d3") == HOST_E1000E
    assert passthrough.xl_pci(HOST_E1000E) == 'pci = [ "0000:81:00.0" ]'


def test_an_interrupted_command_ends_in_one_line_and_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM/Ctrl-C (the signal handlers raise KeyboardInterrupt) during a bed command: the
    bed's context managers already cleaned up, so main says so in one line, no traceback."""
    import signal

    import tests.e2e.__main__ as e2e_main

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(e2e_main, "cmd_pins", interrupted)
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert e2e_main.main(["pins"]) == 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    err = capsys.readouterr().err
    assert err.strip() == "e2e: pins interrupted"
