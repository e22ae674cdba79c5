"""benchmarks/balloon_move_cost.py without Xen: the guest part against a fake balloon driver
(a thread that gives the driver's size the target written), and the summary's ratios."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from benchmarks import balloon_move_cost as bmc


def fake_driver(root: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        target = (root / "target_kb").read_text().strip()
        if target:  # a sysfs file is read whole: the size is replaced, never seen half-written
            (root / "info/current_kb.new").write_text(target + "\n")
            (root / "info/current_kb.new").replace(root / "info/current_kb")
        time.sleep(0.05)


@pytest.mark.parametrize("move", [False, True])
def test_the_guest_part_moves_only_when_asked_and_leaves_the_ceiling(
    tmp_path: Path, move: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    bal = tmp_path / "xen_memory0"
    (bal / "info").mkdir(parents=True)
    (bal / "target_kb").write_text("1048576\n")
    (bal / "info/current_kb").write_text("1048576\n")
    stop = threading.Event()
    driver = threading.Thread(target=fake_driver, args=(bal, stop))
    driver.start()
    try:
        argv = ["guest", "--seconds", "1.5", "--balloon-dir", str(bal), "--tmp-dir", str(tmp_path)]
        assert bmc.main(argv + (["--move"] if move else [])) == 0
    finally:
        stop.set()
        driver.join()
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["iterations"] > 0 and got["wall_s"] >= 1.5 and got["cpu_s"] > 0
    assert (got["moved_mib"] > 0) is move
    assert (bal / "target_kb").read_text().strip() == "1048576"  # left at the ceiling
    assert list(tmp_path.glob("move-cost-*")) == []


def test_the_summary_sets_move_against_idle() -> None:
    runs = [
        {"iterations": 1e6, "wall_s": 1.0, "cpu_s": 1.0, "moved_mib": 0.0, "move": False},
        {"iterations": 8e5, "wall_s": 1.0, "cpu_s": 0.9, "moved_mib": 300.0, "move": True},
    ]
    lines = bmc.summary(runs)
    assert lines[0].startswith("idle: 1.000 M it/s wall")
    assert "the driver moved 300.0 MiB/s" in lines[1]
    assert lines[2].startswith("move / idle: loop speed x0.800 by the wall clock, x0.889")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bmc.main(["--low-mib", "100"])
    with pytest.raises(SystemExit):
        bmc.main(["bed", "--type", "kvm"])


def test_the_bed_boots_the_guest_type_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--type hvm`` boots an HVM guest of the same shape; the default is PV."""
    import tests.e2e.bed as bed_mod

    seen: list[str] = []

    class Stop(Exception):
        pass

    class FakeBed:
        def __init__(self, config: object) -> None:
            pass

        def __enter__(self) -> FakeBed:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def guest(self, spec: object) -> None:
            seen.append(getattr(spec, "type", "?"))
            raise Stop

    monkeypatch.setattr(bed_mod, "XenBed", FakeBed)
    for argv, want in ((["bed"], "pv"), (["bed", "--type", "hvm"], "hvm")):
        with pytest.raises(Stop):
            bmc.main(argv)
        assert seen[-1] == want
