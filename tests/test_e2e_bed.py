"""The e2e testbed's guest configs (tests/e2e/bed.py), checked without a bed."""

from __future__ import annotations

from tests.e2e.bed import BedConfig, GuestSpec


def test_hvm_guests_are_pinned_off_pcpu0_by_default() -> None:
    assert BedConfig().pin_hvm_off_cpu0
    assert BedConfig(cpus=4).hvm_cpus() == "1-3"
    assert BedConfig(cpus=2).hvm_cpus() == "1"
    cfg = GuestSpec.hvm(memory=1024, vcpus=4).xl_config(BedConfig().hvm_cpus())
    assert 'cpus = "1-3"' in cfg.splitlines()


def test_the_pin_follows_the_pcpus_xen_runs_not_qemus_smp() -> None:
    """Under TCG a CPU QEMU was given may not come up: the pin follows Xen's count."""
    assert BedConfig(cpus=4).hvm_cpus(pcpus=3) == "1-2"
    assert BedConfig(cpus=4).hvm_cpus(pcpus=2) == "1"
    assert BedConfig(cpus=4).hvm_cpus(pcpus=1) is None


def test_no_pin_with_one_pcpu_or_when_turned_off() -> None:
    assert BedConfig(cpus=1).hvm_cpus() is None
    assert BedConfig(pin_hvm_off_cpu0=False).hvm_cpus() is None
    cfg = GuestSpec.hvm(memory=1024, vcpus=4).xl_config(None)
    assert not any(line.startswith("cpus") for line in cfg.splitlines())


def test_a_guests_own_cpus_line_wins() -> None:
    spec = GuestSpec.hvm(memory=1024, vcpus=2)
    spec.extra.append('cpus = "2"')
    lines = spec.xl_config("1-3").splitlines()
    assert [ln for ln in lines if ln.startswith("cpus")] == ['cpus = "2"']
