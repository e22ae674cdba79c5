"""The pure pieces of the real-Xen rebind check (tests/e2e/io_rebind.py), checked without a bed:
the guest-side scripts that can run here (the ring script, the conf.d file, the parent lookup of
the runner pinning, the meminfo line), the samples' parser and the deltas' arithmetic."""

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
    MEM_SAMPLES,
    PIN_RUNNER,
    REBIND_CONF,
    REBIND_ON,
    RINGS_PY,
    SAMPLES,
    Delta,
    Memory,
    parse_samples,
)


def samples_text(per_node: dict[int, list[int]]) -> str:
    """What MEM_SAMPLES prints: per sample, one ``<node> <kB>`` line per node."""
    lines = []
    for i in range(SAMPLES):
        lines += [f"{n} {values[i]}" for n, values in sorted(per_node.items())]
    return "\n".join(lines) + "\n"


def test_samples_are_read_per_node() -> None:
    got = parse_samples("noise from the shell\n" + samples_text(
        {0: [100, 104, 98, 101, 100], 1: [50, 50, 51, 50, 49]}))
    assert got.samples == {0: [100, 104, 98, 101, 100], 1: [50, 50, 51, 50, 49]}
    assert (got.level(0), got.spread(0), got.level(1), got.spread(1)) == (100, 6, 50, 2)


def test_samples_of_a_missing_node_or_a_short_run_are_refused() -> None:
    with pytest.raises(AssertionError):
        parse_samples(samples_text({0: [1, 2, 3, 4, 5]}))
    with pytest.raises(AssertionError):
        parse_samples("0 1\n1 1\n")


def test_a_delta_is_the_change_of_the_medians_with_the_larger_spread_as_noise() -> None:
    before = Memory({0: [1000, 1010, 1000, 990, 1000], 1: [500, 500, 500, 500, 500]})
    after = Memory({0: [9000, 9000, 9004, 9000, 9000], 1: [520, 500, 500, 500, 500]})
    delta = Delta.between(before, after)
    assert delta.change == {0: 8000, 1: 0} and delta.noise == {0: 20, 1: 20}
    assert delta.shown() == "node 0 +8000 kB (noise 20 kB), node 1 +0 kB (noise 20 kB)"


def test_the_meminfo_line_gives_node_and_kilobytes(tmp_path: Path) -> None:
    """MEM_SAMPLES's awk on a node's meminfo as the kernel writes it."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("Node 1 MemTotal:         524288 kB\nNode 1 MemFree:          "
                       "400000 kB\nNode 1 MemUsed:          124288 kB\n")
    (awk,) = re.findall(r"awk '[^']*'", MEM_SAMPLES)
    out = subprocess.run(["sh", "-c", f"{awk} {meminfo}"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out == "1 124288\n"


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
