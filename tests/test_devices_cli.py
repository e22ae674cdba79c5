"""``guestagent devices``: table and JSON, apply, --reset, the irqbalance policy script."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from guestagent import config as config_mod
from guestagent.cli import Context
from guestagent.devices import commands
from guestagent.errors import InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from tests.test_devices import FakeXenstore, published

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # structlog configured here (is_configured), so the agent's get_logger keeps the capture;
    # left as found: unconfigured again if it was (the next get_logger sets up the default).
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs():
            yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", dest, symlinks=True)
    return dest


def run(root: Path, *argv: str, xenstore: dict[str, str] | None = None) -> tuple[int, str]:
    """The devices command on ``root``; ``xenstore``: the tree this guest's xenstore holds
    (none: the fixture has no xenstore, as off Xen)."""
    parser = argparse.ArgumentParser(prog="guestagent")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["devices", *argv])
    # The agent's configuration files live beside the tree, as --config and --conf-dir name them.
    args.config = str(root.parent / "guestagent.toml")
    args.conf_dir = str(root.parent / "conf.d")
    hostfs = HostFS(str(root))
    # No real default-route lookup: the default route is on eth0.
    host = Host(hostfs, open_default_interfaces=lambda _fs: ["eth0"])
    if xenstore is not None:
        host.open_xenstore = lambda _fs: FakeXenstore(xenstore)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = args.func(args, Context(hostfs=hostfs, host=host))
    return rc, out.getvalue()


def test_show_is_read_only_and_lists_node_and_source(root: Path) -> None:
    rc, out = run(root, "--node", f"{VF}=1")
    assert rc == 0
    assert f"{VF}  0x8086:0x10ed" in out and "node=1 (config)" in out
    assert "planned: write numa_node = 1" in out and "planned: IRQ 29" in out
    assert "irqbalance: not running" in out
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "0-3\n"
    assert not (root / "run/guestagent/devices.json").exists()


def test_apply_json_then_reset(root: Path) -> None:
    rc, out = run(root, "apply", "--json", "--node", f"{VF}=1")
    assert rc == 0
    data = json.loads(out)
    vf = next(d for d in data["devices"] if d["bdf"] == VF)
    assert (vf["node"], vf["source"]) == (1, "config")
    assert any("smp_affinity_list = 2-3" in a for a in vf["applied"])
    assert data["irqbalance"]["mode"] == "pin" and data["nodes"]["online"] == [0, 1]
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "2-3"
    # The read-only view now shows what is in force, and where the node came from.
    rc, out = run(root, "--node", f"{VF}=1")
    assert "node=1 (config)" in out and "applied: numa_node = 1 (was -1)" in out
    rc, out = run(root, "--reset")
    assert rc == 0 and "/proc/irq/29/smp_affinity_list: restored '0-3'" in out
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "0-3"
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1"
    rc, out = run(root, "--reset")
    assert out == "nothing to undo\n"


def test_apply_no_numa_node_write_and_dom0_hints(root: Path) -> None:
    """The Dom0 agent's hint for this guest (domid 7), read through the host's xenstore."""
    from guestagent.dom0.schema import DeviceHint as Dom0Hint
    from guestagent.xen.sysctl import PciAddress

    tree = {"domid": "7", **published(7, [Dom0Hint(PciAddress.parse("0000:3b:00.0"),
                                                    PciAddress.parse(VF), host_node=1, vnode=1,
                                                    vnode_source="pnode")])}
    rc, out = run(root, "apply", "--no-numa-node-write", xenstore=tree)
    assert rc == 0 and "node=1 (dom0)" in out and "off by configuration" in out
    assert (root / f"sys/devices/pci0000:00/{VF}/numa_node").read_text() == "-1\n"


def test_agent_configuration_devices_table(root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "guestagent.toml"
    cfg.write_text('[agent]\nstate_dir = "/run/ga"\n\n'
                   '[devices]\nnode_overrides = ["0000:00:05.0=1"]\nirqbalance = "defer"\n'
                   'hugepages_2m_per_node = 8\n')
    rc, out = run(root, "apply")
    assert rc == 0 and "mode defer" in out and "node=1 (config)" in out
    assert (root / "proc/irq/29/smp_affinity_list").read_text() == "0-3\n"
    assert (root / "run/ga/devices.json").exists()
    rc, out = run(root)
    assert ("applied: /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages = 8"
            " (was 0)") in out
    rc, out = run(root, "--reset")
    assert "nr_hugepages: restored '0'" in out
    cfg.write_text('[devices]\nirqbalance = "fight"\n')
    with pytest.raises(config_mod.ConfigError, match="irqbalance"):
        run(root)
    cfg.write_text('[devices]\nnode_overrides = ["eth0=1"]\n')
    with pytest.raises(config_mod.ConfigError, match="BDF=N"):  # as config check refuses it
        run(root)
    cfg.unlink()
    with pytest.raises(InputError, match="BDF=N"):
        run(root, "--node", "eth0=1")


def test_irqbalance_policy_script(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(root, "apply", "--node", f"{VF}=1")
    devpath = f"/sys/devices/pci0000:00/{VF}"
    assert run(root, "irqbalance-policy", devpath, "29") == (0, "ban=true\n")
    assert run(root, "irqbalance-policy", devpath, "99") == (0, "")
    assert run(root, "irqbalance-policy", "/sys/devices/pci0000:00/0000:00:07.0", "5") == (
        0, "ban=true\n")
    assert run(root, "irqbalance-policy", "junk", "x") == (0, "")


def test_irqbalance_policy_reads_dom0s_journal_too(root: Path) -> None:
    """In Dom0 the pins of Dom0's own devices are in dom0-devices.json, not devices.json: the
    command bans them as the packaged script does, from either journal, and an unreadable
    devices.json does not hide Dom0's."""
    from guestagent.dom0.owndevices_io import journal_in
    from guestagent.undo import Change

    state_dir = "/run/guestagent"
    dom0 = journal_in(HostFS(str(root)), state_dir)
    path = "/proc/irq/120/smp_affinity_list"
    dom0.record(Change(kind="irq_affinity", path=path, bdf="0000:81:00.0", previous="0-7"))
    dom0.set_applied(path, "4-7")
    devpath = "/sys/devices/pci0000:80/0000:81:00.0"
    assert not (root / "run/guestagent/devices.json").exists()
    assert run(root, "irqbalance-policy", devpath, "120") == (0, "ban=true\n")
    assert run(root, "irqbalance-policy", devpath, "12") == (0, "")
    run(root, "apply", "--node", f"{VF}=1")  # the guest's journal beside it
    assert run(root, "irqbalance-policy", f"/sys/devices/pci0000:00/{VF}", "29") == (
        0, "ban=true\n")
    assert run(root, "irqbalance-policy", devpath, "120") == (0, "ban=true\n")
    (root / "run/guestagent/devices.json").unlink()
    (root / "run/guestagent/devices.json").mkdir()  # unreadable: a directory
    assert run(root, "irqbalance-policy", devpath, "120") == (0, "ban=true\n")
    assert run(root, "irqbalance-policy", f"/sys/devices/pci0000:00/{VF}", "29") == (0, "")
    dom0.forget(path)
    assert run(root, "irqbalance-policy", devpath, "120") == (0, "")
