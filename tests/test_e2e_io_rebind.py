"""The pure pieces of the real-Xen rebind check (tests/e2e/io_rebind.py), checked without a bed:
the guest-side scripts that can run here (the ring script, the conf.d file, the parent lookup of
the runner pinning, one memory sample on this machine's files), the samples' parser and the
deltas' arithmetic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.config import load
from guestagent.devices.netif import EthtoolRings
from tests.e2e.io_rebind import (
    ONE_SAMPLE,
    PIN_RUNNER,
    REBIND_CONF,
    REBIND_ON,
    RINGS_PY,
    SAMPLES,
    Delta,
    Memory,
    carrier_within,
    parse_samples,
)


def samples_text(used: dict[int, list[int]], parked: dict[int, list[int]]) -> str:
    """What MEM_SAMPLES prints: per sample, an ``m`` line per node, then a ``p`` line per node
    (in awk's order, which need not be the nodes')."""
    lines = []
    for i in range(SAMPLES):
        lines += [f"m {n} {values[i]}" for n, values in sorted(used.items())]
        lines += [f"p {n} {values[i]}" for n, values in sorted(parked.items(), reverse=True)]
    return "\n".join(lines) + "\n"


def test_samples_are_read_per_node_less_the_pages_on_the_cpu_lists() -> None:
    got = parse_samples("noise from the shell\n" + samples_text(
        {0: [1000, 1004, 998, 1001, 1000], 1: [500, 500, 501, 500, 499]},
        {0: [10, 10, 10, 10, 10], 1: [0, 1, 0, 0, 2]}))
    assert got.mem_used == {0: [1000, 1004, 998, 1001, 1000], 1: [500, 500, 501, 500, 499]}
    assert got.samples == {0: [960, 964, 958, 961, 960], 1: [500, 496, 501, 500, 491]}
    assert (got.level(0), got.spread(0), got.level(1), got.spread(1)) == (960, 6, 500, 10)


def test_samples_of_a_missing_node_or_a_short_run_are_refused() -> None:
    with pytest.raises(AssertionError):
        parse_samples(samples_text({0: [1, 2, 3, 4, 5]}, {0: [0, 0, 0, 0, 0]}))
    with pytest.raises(AssertionError):
        parse_samples("m 0 1\nm 1 1\np 0 0\np 1 0\n")
    with pytest.raises(AssertionError):  # the free lists not read
        parse_samples(samples_text({0: [1] * SAMPLES, 1: [1] * SAMPLES}, {}))


def test_a_delta_is_the_change_of_the_medians_with_the_larger_spread_as_noise() -> None:
    before = Memory({0: [1000, 1010, 1000, 990, 1000], 1: [500, 500, 500, 500, 500]}, {})
    after = Memory({0: [9000, 9000, 9004, 9000, 9000], 1: [520, 500, 500, 500, 500]}, {})
    delta = Delta.between(before, after)
    assert delta.change == {0: 8000, 1: 0} and delta.noise == {0: 20, 1: 20}
    assert delta.shown() == "node 0 +8000 kB (noise 20 kB), node 1 +0 kB (noise 20 kB)"


def test_one_sample_reads_this_machine_s_meminfo_and_zoneinfo(tmp_path: Path) -> None:
    """ONE_SAMPLE on the real files of this machine (its vm.stat_refresh write sent to a file
    here): an ``m`` and a ``p`` line for every node, numbers only."""
    nodes = sorted(p.name[4:] for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    if not nodes:
        pytest.skip("no NUMA nodes in this machine's sysfs")
    script = ONE_SAMPLE.replace("/proc/sys/vm/stat_refresh", str(tmp_path / "stat_refresh"))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    lines = sorted(out.split("\n")[:-1])
    assert [ln.split()[:2] for ln in lines] == sorted(
        [["m", n] for n in nodes] + [["p", n] for n in nodes]), out
    assert all(ln.split()[2].isdigit() for ln in lines), out
    assert (tmp_path / "stat_refresh").read_text() == "1\n"


def test_rebind_on_writes_a_conf_d_file_the_agent_loads(tmp_path: Path) -> None:
    script = REBIND_ON.replace("/etc/guestagent", str(tmp_path / "etc"))
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    conf_dir = Path(REBIND_CONF.replace("/etc/guestagent", str(tmp_path / "etc"))).parent
    config = load(str(tmp_path / "none.toml"), str(conf_dir))
    assert config.get("devices", "rebind") is True


def test_the_runner_pinning_walks_up_through_each_parent() -> None:
    """PIN_RUNNER's parent lookup (not the pinning: that would pin this machine's session)."""
    (lookup,) = re.findall(r"p=\$\(([^;]*)\); done", PIN_RUNNER)
    out = subprocess.run(["sh", "-c", f"p=$$; {lookup}"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert int(out) == os.getpid()


def test_the_ring_script_reaches_the_driver(tmp_path: Path) -> None:
    """RINGS_PY's ioctl gets to the device's ethtool ops: the loopback device has no rings."""
    script = tmp_path / "rings.py"
    script.write_text(RINGS_PY)
    run = subprocess.run([sys.executable, str(script), "lo"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode != 0 and "Operation not supported" in run.stderr, run.stderr


def test_the_ring_script_reads_what_the_agent_reads(tmp_path: Path) -> None:
    """The check's ring reader and the agent's (a netlink socket, not an inet one) agree on a
    NIC of this machine that has rings (read only)."""
    found = {}
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            found[name] = EthtoolRings().get(name)
        except OSError:
            continue
    if not found:
        pytest.skip("no interface here has ring parameters")
    name, rings = next(iter(found.items()))
    script = tmp_path / "rings.py"
    script.write_text(RINGS_PY)
    out = subprocess.run([sys.executable, str(script), name], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    assert (int(out[0]), int(out[1])) == (rings.rx, rings.tx)


@pytest.mark.parametrize(("state", "printed"), [("1\n", "1"), ("0\n", "0"), (None, "0")])
def test_carrier_within_waits_for_carrier(tmp_path: Path, state: str | None,
                                          printed: str) -> None:
    """1 once ``carrier`` reads 1; 0 when it reads 0 or cannot be read (an interface down)."""
    carrier = tmp_path / "eth0" / "carrier"
    carrier.parent.mkdir()
    if state is not None:
        carrier.write_text(state)
    script = carrier_within("eth0", 1).replace("/sys/class/net", str(tmp_path))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    assert out.strip() == printed
