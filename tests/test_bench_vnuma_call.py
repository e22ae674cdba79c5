"""benchmarks/vnuma_call: the C program against Xen's headers, its errors, and the harness's
arithmetic and agreement check on fake sides (no Xen here: the real run is in a guest)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import vnuma_call
from guestagent.xen.vnuma import validate_vnuma

C_SOURCE = vnuma_call.C_SOURCE
XEN_MEMORY_H = Path("/usr/include/xen/memory.h")
CC = os.environ.get("CC", "gcc")

needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler {CC}")

# (the program's struct, Xen's struct, fields)
STRUCTS = [
    ("vc_privcmd_hypercall", "privcmd_hypercall", ["op", "arg"]),
    ("vc_xen_vmemrange", "xen_vmemrange", ["start", "end", "flags", "nid"]),
    ("vc_xen_vnuma_topology_info", "xen_vnuma_topology_info",
     ["domid", "pad", "nr_vnodes", "nr_vcpus", "nr_vmemranges", "vdistance", "vcpu_to_vnode",
      "vmemrange"]),
]
CONSTANTS = [
    ("VC_IOCTL_PRIVCMD_HYPERCALL", "IOCTL_PRIVCMD_HYPERCALL"),
    ("VC_HYPERVISOR_memory_op", "__HYPERVISOR_memory_op"),
    ("VC_XENMEM_get_vnumainfo", "XENMEM_get_vnumainfo"),
    ("VC_DOMID_SELF", "DOMID_SELF"),
]
PRELUDE = """
#define __XEN_TOOLS__ 1
#define VNUMA_CALL_ABI_ONLY 1
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/types.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/sys/privcmd.h>
"""


def abi_pairs() -> list[tuple[str, str, str]]:
    """(what, the program's expression, Xen's expression)."""
    pairs = []
    for ours, theirs, fields in STRUCTS:
        pairs.append((f"sizeof {ours}", f"sizeof(struct {ours})", f"sizeof(struct {theirs})"))
        for f in fields:
            pairs.append((f"{ours}.{f} offset", f"offsetof(struct {ours}, {f})",
                          f"offsetof(struct {theirs}, {f})"))
            pairs.append((f"{ours}.{f} size", f"sizeof(((struct {ours} *)0)->{f})",
                          f"sizeof(((struct {theirs} *)0)->{f})"))
    pairs += [(ours, ours, theirs) for ours, theirs in CONSTANTS]
    return pairs


@needs_cc
def test_compiles_with_warnings_as_errors(tmp_path: Path) -> None:
    exe = tmp_path / "vnuma_call"
    done = subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                           str(C_SOURCE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert exe.exists()


@needs_cc
def test_abi_equals_xen_headers(tmp_path: Path) -> None:
    if not XEN_MEMORY_H.exists():
        if os.environ.get("CI"):
            pytest.fail("libxen-dev headers missing in CI")
        pytest.skip("Xen headers not installed (apt-get install libxen-dev)")
    pairs = abi_pairs()
    body = "\n".join(
        f'    printf("%llu %llu\\n", (unsigned long long)({ours}), (unsigned long long)({theirs}));'
        for _, ours, theirs in pairs)
    src = tmp_path / "probe.c"
    src.write_text(PRELUDE + f'#include "{C_SOURCE}"\n\nint main(void)\n{{\n{body}\n'
                   "    return 0;\n}\n")
    exe = tmp_path / "probe"
    subprocess.run([CC, "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    values = [tuple(int(v) for v in line.split()) for line in out if line]
    assert len(values) == len(pairs)
    wrong = [f"{what}: ours {a}, Xen's {b}" for (what, _, _), (a, b) in zip(pairs, values)
             if a != b]
    assert wrong == []
    # the reference's sizes (section 2.1): a probe that compared nothing would not get here
    sizes = dict(zip((w for w, _, _ in pairs), (a for a, _ in values)))
    assert sizes["sizeof vc_xen_vnuma_topology_info"] == 40
    assert sizes["sizeof vc_xen_vmemrange"] == 24


@needs_cc
@pytest.mark.parametrize("args", [["-d", "/nonexistent/xen/privcmd"], ["-n", "3", "-d",
                                                                       "/nonexistent/privcmd"]])
def test_without_privcmd_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    exe = vnuma_call.compile_c(tmp_path, extra_flags=("-Werror",))
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("vnuma_call: no /nonexistent/")
    assert "not running on Xen" in lines[0]


@needs_cc
def test_bad_call_count_is_refused(tmp_path: Path) -> None:
    exe = vnuma_call.compile_c(tmp_path)
    done = subprocess.run([str(exe), "-n", "0"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "vnuma_call: -n: a positive number of calls, not '0'"


@needs_cc
def test_c_side_turns_exit_2_into_unavailable(tmp_path: Path) -> None:
    script = tmp_path / "fake"
    script.write_text("#!/bin/sh\necho 'vnuma_call: no /dev/xen/privcmd: not running on Xen' >&2\n"
                      "exit 2\n")
    script.chmod(0o755)
    with pytest.raises(vnuma_call.Unavailable, match="no /dev/xen/privcmd"):
        vnuma_call.c_side(script)(10)


FAKE_C_OUTPUT = """device /dev/xen/privcmd
buffer device
calls 1000
seconds_per_call 2.500000000e-05
nr_vnodes 2
nr_vcpus 4
nr_vmemranges 2
vcpu_to_vnode 0,0,1,1
distances 10,20,20,10
"""

TWO_NODES = {"nr_vnodes": 2, "nr_vcpus": 4, "nr_vmemranges": 2,
             "vcpu_to_vnode": [0, 0, 1, 1], "distances": [10, 20, 20, 10]}


def test_parse_c_output() -> None:
    seconds, got = vnuma_call.parse_c_output(FAKE_C_OUTPUT)
    assert seconds == pytest.approx(25e-6)
    assert got == TWO_NODES


def test_parse_c_output_names_what_is_missing() -> None:
    text = FAKE_C_OUTPUT.replace("nr_vcpus 4\n", "")
    with pytest.raises(RuntimeError, match="nr_vcpus"):
        vnuma_call.parse_c_output(text)


def test_observed_of_a_vnumainfo_matches_the_c_terms() -> None:
    info = validate_vnuma(2, [0, 0, 1, 1], [10, 20, 20, 10],
                          [(0, 1 << 30, 0, 0), (1 << 30, 2 << 30, 0, 1)])
    assert vnuma_call.observed_of(info) == TWO_NODES


class FakeSide:
    """Hands out the given seconds per call in turn, and records the ``n`` it was asked for."""

    def __init__(self, seconds: list[float], got: dict[str, Any]) -> None:
        self.seconds = list(seconds)
        self.got = got
        self.asked: list[int] = []

    def __call__(self, n: int) -> tuple[float, dict[str, Any]]:
        self.asked.append(n)
        return self.seconds.pop(0), self.got


def test_measure_ratio_median_and_range() -> None:
    # 3 rounds, best of 2: agent 30|20, 40|45, 90|60 us; C 10|12, 20|25, 15|30 us
    agent = FakeSide([30e-6, 20e-6, 40e-6, 45e-6, 90e-6, 60e-6], TWO_NODES)
    c = FakeSide([10e-6, 12e-6, 20e-6, 25e-6, 15e-6, 30e-6], dict(TWO_NODES))
    result = vnuma_call.measure(rounds=3, n=500, repeat=2, agent=agent, c=c)
    s = result["summary"]
    assert s["ratios"] == pytest.approx([2.0, 2.0, 4.0])
    assert s["ratio"] == pytest.approx(2.0)
    assert (s["ratio_min"], s["ratio_max"]) == pytest.approx((2.0, 4.0))
    assert s["agent_us"] == pytest.approx(40.0)
    assert s["c_us"] == pytest.approx(15.0)
    assert agent.asked == c.asked == [500] * 6
    assert result["disagreements"] == []
    text = vnuma_call.report(result)
    assert "agent/C median x2.00 (min-max 2.00-4.00)" in text
    assert "target: agent/C <= 2.0: met" in text
    assert "both sides got the same" in text


def test_measure_target_missed_and_job_column() -> None:
    agent = FakeSide([50e-6], TWO_NODES)
    c = FakeSide([20e-6], TWO_NODES)
    job = FakeSide([80e-6], TWO_NODES)
    result = vnuma_call.measure(rounds=1, n=10, repeat=1, agent=agent, c=c, agent_job=job)
    assert result["summary"]["ratio"] == pytest.approx(2.5)
    assert result["summary"]["agent_job_us"] == pytest.approx(80.0)
    text = vnuma_call.report(result)
    assert "target: agent/C <= 2.0: MISSED" in text
    assert "| agent as the topology job calls it (privcmd opened each time) | 80.0 |" in text


def test_measure_reports_disagreement() -> None:
    c_got = dict(TWO_NODES, nr_vcpus=3, vcpu_to_vnode=[0, 0, 1])
    agent = FakeSide([10e-6, 10e-6], TWO_NODES)
    c = FakeSide([10e-6, 10e-6], c_got)
    result = vnuma_call.measure(rounds=2, n=1, repeat=1, agent=agent, c=c)
    assert result["disagreements"] == ["nr_vcpus: agent 4, C 3",
                                       "vcpu_to_vnode: agent [0, 0, 1, 1], C [0, 0, 1]"]
    assert "DISAGREE: nr_vcpus: agent 4, C 3" in vnuma_call.report(result)


def test_main_without_privcmd_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/dev/xen/privcmd").exists() or Path("/proc/xen/privcmd").exists():
        pytest.skip("this machine has privcmd")
    if shutil.which(CC) is None:
        pytest.skip(f"no C compiler {CC}")
    assert vnuma_call.main(["-n", "1", "--rounds", "1", "--repeat", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vnuma_call: the agent: no /dev/xen/privcmd: not running on Xen "
                   "(or xen-privcmd is not loaded)"]


@needs_cc
def test_fake_xen_compiles_with_warnings_as_errors(tmp_path: Path) -> None:
    library = vnuma_call.compile_fake_xen(tmp_path, extra_flags=("-Wextra", "-Werror"))
    assert library.name == vnuma_call.FAKE_XEN_LIBRARY
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_parse_c_output_cpu_time() -> None:
    text = FAKE_C_OUTPUT.replace("calls 1000\n", "calls 1000\ncpu_seconds_per_call 2e-05\n")
    assert vnuma_call.parse_c_output(text, "cpu_seconds_per_call")[0] == pytest.approx(20e-6)
    with pytest.raises(RuntimeError, match="cpu_seconds_per_call"):
        vnuma_call.parse_c_output(FAKE_C_OUTPUT, "cpu_seconds_per_call")


def test_c_side_passes_the_devices_and_reads_the_cpu_figure(tmp_path: Path) -> None:
    script = tmp_path / "fake"
    args_file = tmp_path / "args"
    output = FAKE_C_OUTPUT.replace("calls 1000\n", "calls 1000\ncpu_seconds_per_call 2e-05\n")
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {args_file}\ncat <<EOF\n{output}EOF\n")
    script.chmod(0o755)
    run = vnuma_call.c_side(script, ("-d", "/r/dev/xen/privcmd", "-b", "/r/hc"), cpu_time=True)
    seconds, got = run(7)
    assert seconds == pytest.approx(20e-6)
    assert got == TWO_NODES
    assert args_file.read_text().split() == ["-n", "7", "-d", "/r/dev/xen/privcmd", "-b", "/r/hc"]


@needs_cc
def test_fake_xen_run_both_sides_agree(capfd: pytest.CaptureFixture[str]) -> None:
    """The whole benchmark without Xen: the agent's doorway and the C program against the fake."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    rc = vnuma_call.main(["--fake-xen", "-n", "20", "--rounds", "1", "--repeat", "1"])
    out = capfd.readouterr().out
    assert rc == 0, out
    assert "Xen: fake (vnuma_call.c's LD_PRELOAD library" in out
    assert "timed in process CPU time" in out
    assert "topology: 2 vnodes, 4 vCPUs, 2 memory ranges" in out
    assert "both sides got the same counts, vCPU map and distances" in out


def test_measure_alternates_which_side_goes_first() -> None:
    order: list[str] = []

    def side(name: str) -> vnuma_call.Side:
        def run(n: int) -> tuple[float, dict[str, Any]]:
            order.append(name)
            return 1e-6, TWO_NODES
        return run

    vnuma_call.measure(rounds=3, n=1, repeat=2, agent=side("agent"), c=side("C"),
                       agent_job=side("job"))
    assert order == ["agent", "agent", "C", "C", "job", "job",
                     "C", "C", "agent", "agent", "job", "job",
                     "agent", "agent", "C", "C", "job", "job"]
