"""Packaging: systemd units and their sandbox, presets, Debian and RPM metadata, package builds.

The builds themselves (``packaging/build-deb.sh`` with lintian, ``packaging/build-rpm.sh``) are
marked ``packaging``: they take minutes and run where dpkg-buildpackage / rpmbuild are installed;
in CI (``CI`` set) a missing tool fails instead of skipping.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guestagent
from guestagent.cli import build_parser
from tests.test_manpage import man_commands, parser_commands

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "packaging"
SYSTEMD = PKG / "systemd"
DEBIAN = PKG / "debian"
SPEC = PKG / "rpm" / "guestagent.spec"
UNITS = ("guestagent.service", "guestagent-dom0.service", "guestagent-cloud-config.service")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """systemd unit syntax: [Section], Key=Value (repeatable), # and ; comments, \\ continuation."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not Key=Value: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for v in unit[section].get(key, []) for w in v.split()]


@pytest.fixture(scope="module")
def guest() -> Unit:
    return parse_unit(SYSTEMD / "guestagent.service")


@pytest.fixture(scope="module")
def dom0() -> Unit:
    return parse_unit(SYSTEMD / "guestagent-dom0.service")


# --- what systemd makes of the file-system directives ------------------------------------------

#: ProtectKernelTunables=yes (systemd 252, src/core/namespace.c): these become read-only (or
#: inaccessible), and a ReadWritePaths= of the very same path loses against them.
PROTECT_KERNEL_TUNABLES = (
    "/proc/acpi", "/proc/apm", "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
    "/proc/kallsyms", "/proc/kcore", "/proc/latency_stats", "/proc/mtrr", "/proc/scsi",
    "/proc/sys", "/proc/sysrq-trigger", "/proc/timer_stats", "/sys", "/sys/fs/bpf",
    "/sys/kernel/debug", "/sys/kernel/tracing",
)
#: At the same path the stronger mode wins (systemd's MountMode order).
_RANK = {"inaccessible": 0, "ro": 1, "rw": 2}


def mount_modes(unit: Unit) -> list[tuple[str, str]]:
    svc = unit["Service"]
    entries: list[tuple[str, str]] = []
    if svc.get("ProtectSystem") == ["strict"]:
        # Everything read-only except the API file systems /dev, /proc, /sys.
        entries += [("/", "ro"), ("/dev", "rw"), ("/proc", "rw"), ("/sys", "rw")]
    if svc.get("ProtectHome") == ["yes"]:
        entries += [(p, "inaccessible") for p in ("/home", "/root", "/run/user")]
    if svc.get("ProtectKernelTunables") == ["yes"]:
        entries += [(p, "ro") for p in PROTECT_KERNEL_TUNABLES]
    for name in words(unit, "Service", "RuntimeDirectory"):
        entries.append((f"/run/{name}", "rw"))
    for key, mode in (("ReadOnlyPaths", "ro"), ("ReadWritePaths", "rw"),
                      ("InaccessiblePaths", "inaccessible")):
        entries += [(p.lstrip("-+"), mode) for p in words(unit, "Service", key)]
    return entries


def access(unit: Unit, path: str) -> str:
    """'rw', 'ro' or 'inaccessible' for ``path`` in the unit's mount namespace (a model: the
    deepest directive covering the path decides, ties go to the stronger mode)."""
    best: tuple[int, int, str] = (-1, 0, "rw")
    for prefix, mode in mount_modes(unit):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            key = (len(prefix), -_RANK[mode], mode)
            if key[:2] > best[:2]:
                best = key
    return best[2]


# Concrete paths the jobs write (see the unit's header and the issue).
GUEST_WRITES = (
    "/sys/devices/system/xen_memory/xen_memory0/target_kb",          # balloon
    "/proc/sys/vm/overcommit_memory",                                 # balloon's guard
    "/proc/sys/kernel/numa_balancing",                                # numa, balancing = auto
    "/proc/irq/24/smp_affinity_list",                                 # devices
    "/sys/bus/pci/drivers/ixgbevf/unbind",                            # devices (optional)
    "/sys/bus/pci/drivers/ixgbevf/bind",
    "/sys/bus/pci/drivers_probe",
    "/sys/devices/pci0000:00/0000:00:05.0/numa_node",                 # via /sys/bus/pci/devices
    "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages",
    "/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds",                # tiering
    "/sys/kernel/mm/damon/admin/kdamonds/0/contexts/0/schemes/0/action",
    "/run/guestagent/status.sock",                                    # status socket, undo state
    "/dev/xen/privcmd",
)
READ_ONLY = (
    "/proc/sys/vm/drop_caches",
    "/proc/sysrq-trigger",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/devices/system/memory/memory0/online",
    "/sys/devices/system/cpu/cpu1/online",
    "/etc/guestagent/guestagent.toml",
    "/usr/bin/guestagent",
    "/var/lib/xen/userdata-d.1.x.libxl-json",
    "/run/xenstored/socket",  # connecting to a socket needs no writable mount
)


def test_units_parse_and_sections() -> None:
    for name in UNITS:
        unit = parse_unit(SYSTEMD / name)
        assert set(unit) == {"Unit", "Service", "Install"}, name


def test_guest_unit_service_directives(guest: Unit) -> None:
    assert one(guest, "Unit", "ConditionVirtualization") == "xen"
    assert "cloud-config.service" in words(guest, "Unit", "After")
    assert one(guest, "Service", "Type") == "notify"
    assert one(guest, "Service", "ExecStart") == "/usr/bin/guestagent run"
    assert one(guest, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(guest, "Service", "Restart") == "on-failure"
    assert one(guest, "Service", "WatchdogSec")
    stop_post = guest["Service"]["ExecStopPost"]
    # one reset, privileged (the guard's zram swap): tests/test_systemd_unit.py
    assert len(stop_post) == 1 and stop_post[0].endswith("/usr/bin/guestagent reset")
    assert one(guest, "Service", "RuntimeDirectory") == "guestagent"
    assert one(guest, "Service", "RuntimeDirectoryMode") == "0700"
    assert one(guest, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", ["guestagent.service", "guestagent-dom0.service"])
def test_sandbox_directives(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    expect = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "CAP_SYS_ADMIN",
        "RestrictAddressFamilies": "AF_UNIX AF_NETLINK", "SystemCallFilter": "@system-service",
        "MemoryDenyWriteExecute": "yes", "DevicePolicy": "closed", "IPAddressDeny": "any",
        "SystemCallArchitectures": "native", "RestrictNamespaces": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
    }
    if name == "guestagent.service":  # the balloon job locks the agent's pages (memlock)
        expect["CapabilityBoundingSet"] = "CAP_SYS_ADMIN CAP_IPC_LOCK"
    for key, value in expect.items():
        assert one(unit, "Service", key) == value, key
    assert sorted(unit["Service"]["DeviceAllow"]) == [
        "/dev/xen/hypercall rw", "/dev/xen/privcmd rw", "/dev/xen/xenbus rw"]
    assert "AF_INET" not in " ".join(unit["Service"]["RestrictAddressFamilies"])


def test_guest_sandbox_writes_only_what_jobs_need(guest: Unit) -> None:
    for path in GUEST_WRITES:
        assert access(guest, path) == "rw", path
    for path in READ_ONLY:
        assert access(guest, path) == "ro", path
    assert access(guest, "/proc/kcore") == "inaccessible"
    assert access(guest, "/home/user/.ssh/id_rsa") == "inaccessible"


def test_dom0_sandbox_writes_only_irq_affinity(dom0: Unit) -> None:
    """[dom0] own_devices writes /proc/irq/N/smp_affinity_list (and sets backend threads'
    affinity with a system call, no file): /proc/irq is the one writable kernel path."""
    assert "ConditionVirtualization" in dom0["Unit"]
    assert one(dom0, "Unit", "ConditionVirtualization") == "!container"  # Dom0 is not 'xen'
    assert one(dom0, "Service", "ExecCondition") == "/bin/grep -qw control_d /proc/xen/capabilities"
    assert one(dom0, "Service", "ExecStart") == "/usr/bin/guestagent run --role dom0"
    assert [p.lstrip("-+") for p in words(dom0, "Service", "ReadWritePaths")] == ["/proc/irq"]
    for path in ("/run/guestagent/status.sock", "/run/guestagent/dom0-devices.json",
                 "/proc/irq/24/smp_affinity_list", "/proc/irq/120/smp_affinity_list"):
        assert access(dom0, path) == "rw", path
    for path in (*READ_ONLY, "/sys/devices/system/xen_memory/xen_memory0/target_kb",
                 "/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/numa_balancing",
                 "/sys/bus/pci/drivers/e1000e/unbind",
                 "/sys/devices/pci0000:80/0000:80:01.0/0000:81:00.0/numa_node",
                 "/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds"):
        assert access(dom0, path) == "ro", path
    assert access(dom0, "/proc/kcore") == "inaccessible"


@pytest.mark.parametrize("name", ["guestagent.service", "guestagent-dom0.service"])
def test_without_protect_kernel_tunables_its_paths_are_spelled_out(name: str) -> None:
    """A unit that must write /proc/irq sets ProtectKernelTunables=no (below) and keeps every
    other path that setting protects read-only or inaccessible."""
    unit = parse_unit(SYSTEMD / name)
    assert one(unit, "Service", "ProtectKernelTunables") == "no"
    assert access(unit, "/proc/irq") == "rw"
    for path in PROTECT_KERNEL_TUNABLES:
        if path != "/proc/irq":
            assert access(unit, path) in ("ro", "inaccessible"), (name, path)
    for path in ("/proc/kallsyms", "/proc/kcore"):
        assert access(unit, path) == "inaccessible", (name, path)


def _stop_post_command(unit: Unit) -> list[str]:
    """The unit's one ExecStopPost= as systemd runs it: the "-" prefix off, "$$" made "$"
    (systemd.service(5), "Command lines"), split by its quoting."""
    (line,) = unit["Service"]["ExecStopPost"]
    assert line.startswith("-") and "+" not in line.split("/", 1)[0], line  # in the sandbox
    return shlex.split(line[1:].replace("$$", "$"))


def test_dom0_stop_post_undoes_dom0s_own_devices_unless_the_start_was_skipped(
    dom0: Unit, tmp_path: Path
) -> None:
    """After a crash the Dom0 unit's ExecStopPost restores what dom0-devices.json records (the
    dom0_devices part of guestagent reset), with the real CLI on a fixture Dom0; when the
    ExecCondition= skipped the start (not Dom0) it runs nothing."""
    from guestagent.dom0.owndevices_io import journal_in
    from guestagent.hostfs import HostFS
    from guestagent.undo import Change

    argv = _stop_post_command(dom0)
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    assert "/usr/bin/guestagent host devices --reset" in argv[2]
    build_parser().parse_args(["host", "devices", "--reset"])  # a command the CLI has
    root = tmp_path / "root"
    irq_file = root / "proc/irq/120/smp_affinity_list"
    irq_file.parent.mkdir(parents=True)
    (root / "proc/xen").mkdir()
    (root / "proc/xen/capabilities").write_text("control_d\n")
    stub = tmp_path / "guestagent"
    stub.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m guestagent "
                    f"--root {shlex.quote(str(root))} \"$@\" "
                    f"--config {tmp_path}/none.toml --conf-dir {tmp_path}/none.d\n")
    stub.chmod(0o755)
    script = argv[2].replace("/usr/bin/guestagent", str(stub))

    def stop_post(result: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SERVICE_RESULT": result,
               "PYTHONPATH": str(REPO)}
        return subprocess.run([argv[0], "-c", script], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    path = "/proc/irq/120/smp_affinity_list"
    for result in ("signal", "exec-condition", "success"):
        irq_file.write_text("4-7\n")
        journal = journal_in(HostFS(str(root)), "/run/guestagent")
        journal.record(Change(kind="irq_affinity", path=path, bdf="0000:81:00.0",
                              previous="0-7"))
        journal.set_applied(path, "4-7")
        done = stop_post(result)
        assert done.returncode == 0, done.stderr[-2000:]
        if result == "exec-condition":
            assert done.stdout == "" and irq_file.read_text() == "4-7\n"
            assert (root / "run/guestagent/dom0-devices.json").exists()
            journal.forget(path)
        else:
            assert done.stdout == f"{path}: restored '0-7'\n", (result, done.stdout)
            assert irq_file.read_text().strip() == "0-7"
            assert not (root / "run/guestagent/dom0-devices.json").exists()


@pytest.mark.parametrize("name", UNITS)
def test_no_read_write_path_shadowed_by_protect_kernel_tunables(name: str) -> None:
    # The trap irqbalance fell into: ProtectKernelTunables=yes plus ReadWritePaths=/proc/irq
    # leaves /proc/irq read-only.
    unit = parse_unit(SYSTEMD / name)
    if unit["Service"].get("ProtectKernelTunables") != ["yes"]:
        return
    rw = {p.lstrip("-+") for p in words(unit, "Service", "ReadWritePaths")}
    assert not rw & set(PROTECT_KERNEL_TUNABLES)


def test_cloud_config_unit_order(guest: Unit) -> None:
    unit = parse_unit(SYSTEMD / "guestagent-cloud-config.service")
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "ExecStart") == "/usr/bin/cloud-init single --name guestagent"
    assert "cloud-config.service" in words(unit, "Unit", "After")
    assert "guestagent.service" in words(unit, "Unit", "Before")
    assert one(unit, "Install", "WantedBy") == "cloud-init.target"
    assert access(unit, "/etc/guestagent/guestagent.toml") == "rw"


def test_presets_enable_shipped_units() -> None:
    enabled = {}
    for preset in sorted(SYSTEMD.glob("*.preset")):
        assert preset.name.startswith("90-")
        for line in preset.read_text().splitlines():
            if line and not line.startswith("#"):
                verb, unit = line.split()
                assert verb == "enable", line
                enabled[unit] = preset.name
    assert enabled == {
        "guestagent.service": "90-guestagent.preset",
        "guestagent-cloud-config.service": "90-guestagent.preset",
        "guestagent-dom0.service": "90-guestagent-dom0.preset",
    }
    for unit in enabled:
        assert (SYSTEMD / unit).is_file()


def _verify_root(tmp_path: Path) -> Path:
    """A root with the units in /etc/systemd/system, systemd's own units, and stub binaries."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for exe in ("usr/bin/guestagent", "usr/bin/cloud-init", "bin/grep", "bin/kill", "bin/sh"):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, root / "etc/systemd/system" / name)
    return root


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    root = _verify_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *UNITS],
        capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(("name", "limit"), [("guestagent.service", 3.0),
                                             ("guestagent-dom0.service", 2.5)])
def test_systemd_analyze_security(tmp_path: Path, name: str, limit: float) -> None:
    root = _verify_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", name],
        capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr[:200]}")
    assert float(match.group(1)) <= limit, result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_dom0_syscall_filter_lets_the_backend_threads_be_moved(dom0: Unit) -> None:
    """The Dom0 job moves netback's and blkback's threads with sched_setaffinity(2): the unit's
    SystemCallFilter= group must hold it (this systemd's own expansion of the group)."""
    (group,) = dom0["Service"]["SystemCallFilter"]
    result = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                            capture_output=True, text=True, timeout=60, check=False)
    listed = {line.strip() for line in result.stdout.splitlines()}
    assert result.returncode == 0 and "@resources" in listed, result.stdout[-2000:]
    result = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", "@resources"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "sched_setaffinity" in {line.strip() for line in result.stdout.splitlines()}


#: Opt-in: the Dom0 unit's sandbox under a real systemd (it starts a copy of the unit).
SYSTEMD_CHECK = "GUESTAGENT_SYSTEMD_CHECK"
CHECK_UNIT = "guestagent-dom0-check.service"

#: What the copy runs instead of the daemon, inside the shipped sandbox: whether /proc/irq/N can
#: be written (and a write of its own value goes through), and that the other kernel paths are
#: read-only (test -w is access(2), which says EROFS on a read-only mount).
SANDBOX_PROBE = (
    "f=/proc/irq/$$CHECK_IRQ/smp_affinity_list; "
    'if [ -w "$$f" ] && v=$$(cat "$$f") && (echo "$$v" > "$$f") 2>/dev/null; '
    "then echo irq rw; else echo irq ro; fi; "
    "for p in /proc/sys/vm/overcommit_memory /proc/sys/kernel/numa_balancing "
    "/sys/bus/pci/drivers_probe /run/guestagent-dom0-check; do "
    'if [ -w "$$p" ]; then echo "$$p rw"; elif [ -e "$$p" ]; then echo "$$p ro"; fi; done'
)


def _writable_irq() -> int | None:
    """An IRQ whose smp_affinity_list takes its own value back (outside any sandbox)."""
    for path in sorted(Path("/proc/irq").glob("*/smp_affinity_list"),
                       key=lambda p: int(p.parent.name)):
        try:
            path.write_text(path.read_text())
        except OSError:
            continue
        return int(path.parent.name)
    return None


@pytest.mark.skipif(
    os.environ.get(SYSTEMD_CHECK) != "1" or not Path("/run/systemd/system").is_dir()
    or os.geteuid() != 0,
    reason=f"opt-in: {SYSTEMD_CHECK}=1, as root, where PID 1 is systemd (starts a copy of "
    "guestagent-dom0.service from /run/systemd/system)")
def test_dom0_unit_sandbox_and_stop_post_under_systemd(dom0: Unit) -> None:
    """The shipped Dom0 unit under the running systemd, its daemon swapped for a probe and its
    reset for an echo (a drop-in; the sandbox is the file's): /proc/irq is writable, /proc/sys
    and /sys are not, and the stop command runs after a run but not after a skipped start."""
    irq = _writable_irq()
    if irq is None:
        pytest.skip("no IRQ here takes a write of its own affinity")
    (stop_post,) = dom0["Service"]["ExecStopPost"]
    units = Path("/run/systemd/system")
    drop_in_dir = units / f"{CHECK_UNIT}.d"
    out = Path("/run/guestagent-dom0-check.out")

    def run(condition: int) -> list[str]:
        drop_in_dir.mkdir(exist_ok=True)
        (drop_in_dir / "check.conf").write_text(
            "[Service]\nType=oneshot\nWatchdogSec=0\nRestart=no\n"
            # Not the agent's own /run/guestagent: systemd removes it when this copy stops.
            "RuntimeDirectory=\nRuntimeDirectory=guestagent-dom0-check\n"
            f"Environment=CHECK_IRQ={irq}\n"
            f"ExecCondition=\nExecCondition=/bin/sh -c 'exit {condition}'\n"
            f"ExecStart=\nExecStart=/bin/sh -c '{SANDBOX_PROBE}'\nExecReload=\n"
            "ExecStopPost=\n"
            f"ExecStopPost={stop_post.replace('/usr/bin/guestagent', '/bin/echo stop-post:')}\n"
            f"StandardOutput=append:{out}\nStandardError=append:{out}\n")
        out.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
        subprocess.run(["systemctl", "start", CHECK_UNIT], check=False, timeout=120)
        for _ in range(600):  # the stop command runs after the start job may have returned
            state = subprocess.run(["systemctl", "show", "-p", "ActiveState", "--value",
                                    CHECK_UNIT], capture_output=True, text=True, timeout=60)
            if state.stdout.strip() in ("inactive", "failed"):
                break
            time.sleep(0.1)
        return out.read_text().splitlines() if out.exists() else []

    shutil.copy(SYSTEMD / "guestagent-dom0.service", units / CHECK_UNIT)
    try:
        ran = run(0)
        skipped = run(1)
    finally:
        subprocess.run(["systemctl", "stop", CHECK_UNIT], check=False, timeout=60)
        shutil.rmtree(drop_in_dir, ignore_errors=True)
        (units / CHECK_UNIT).unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
        subprocess.run(["systemctl", "reset-failed", CHECK_UNIT], check=False, timeout=60)
    assert ran and ran[0] == "irq rw", ran
    assert "/run/guestagent-dom0-check rw" in ran, ran
    assert [line for line in ran[1:] if line.endswith(" rw")] == [
        "/run/guestagent-dom0-check rw"], ran
    assert "/proc/sys/vm/overcommit_memory ro" in ran, ran
    assert ran[-1] == "stop-post: host devices --reset", ran
    assert skipped == [], skipped


def test_memory_deny_write_execute_is_compatible() -> None:
    """MemoryDenyWriteExecute=yes, checked with the kernel's own W^X switch (PR_SET_MDWE, Linux
    6.3+): the cffi extension, the dependencies and a CLI command run under it."""
    script = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("no PR_SET_MDWE"); sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping allowed: MDWE not in force")
except OSError:
    pass
import guestagent.xen._xenc, psutil, structlog, pyroute2
try:
    import pyudev; pyudev.Context()
except ImportError:
    pass
from guestagent.cli import main
sys.exit(main(["--root", sys.argv[1], "topology", "--json"]))
"""
    fixture = REPO / "tests" / "fixtures" / "hvm-3vnode"
    result = subprocess.run([sys.executable, "-c", script, str(fixture)], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    if result.stdout.startswith("no PR_SET_MDWE"):
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr[-2000:]


# --- Debian and RPM metadata -------------------------------------------------------------------

#: PyPI distribution -> (Debian package, RPM package); None where no package is needed.
PYPI_TO_DISTRO = {
    "cffi": ("python3-cffi-backend", "python3-cffi"),
    "psutil": ("python3-psutil", "python3-psutil"),
    "pyudev": ("python3-pyudev", "python3-pyudev"),
    "pyroute2": ("python3-pyroute2", "python3-pyroute2"),
    "structlog": ("python3-structlog", "python3-structlog"),
    # Only for Python < 3.11: Debian 12 has 3.11 (dh_python3 adds "python3-tomli | python3 (>>
    # 3.11)" from the metadata); RHEL 9 has 3.9.
    "tomli": (None, "python3-tomli"),
}


def pyproject_dependencies() -> dict[str, str]:
    """Distribution name -> environment marker ('' when none)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {}
    for spec in project["dependencies"]:
        requirement, _, marker = spec.partition(";")
        name = re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()
        deps[name] = marker.strip()
    return deps


def control_paragraphs() -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in (DEBIAN / "control").read_text().splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current = {}
        elif line[0] in " \t":
            current[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def relation_names(field: str) -> set[str]:
    names = set()
    for item in field.replace("\n", " ").split(","):
        item = item.strip()
        if item:
            match = re.match(r"\$\{[^}]+\}|[a-z0-9][a-z0-9.+-]*", item)
            assert match is not None, item
            names.add(match.group(0))
    return names


def test_debian_control_matches_pyproject() -> None:
    source, guest_pkg, dom0_pkg = control_paragraphs()
    assert guest_pkg["Package"] == "guestagent" and dom0_pkg["Package"] == "guestagent-dom0"
    assert guest_pkg["Architecture"] == "linux-any"  # the cffi extension
    assert dom0_pkg["Architecture"] == "all"
    depends = relation_names(guest_pkg["Depends"])
    wanted = {PYPI_TO_DISTRO[name][0] for name in pyproject_dependencies()} - {None}
    assert wanted <= depends
    substvars = {"${python3:Depends}", "${shlibs:Depends}", "${misc:Depends}"}
    assert substvars <= depends
    assert depends - wanted - substvars == set()
    build = relation_names(source["Build-Depends"])
    assert {"debhelper-compat", "dh-python", "python3-all-dev", "python3-cffi",
            "python3-setuptools"} <= build
    assert "libxen-dev" not in build  # csrc/guestagent_xen.h is self-contained
    assert "debhelper-compat (= 13)" in source["Build-Depends"]
    assert "guestagent" in relation_names(dom0_pkg["Depends"])


def test_every_pyproject_dependency_has_distro_packages() -> None:
    for name, marker in pyproject_dependencies().items():
        assert name in PYPI_TO_DISTRO, f"{name}: add its Debian and RPM package names"
        if PYPI_TO_DISTRO[name][0] is None:
            assert "3.11" in marker, f"{name} has no Debian package but is needed on 3.11"


def test_spec_requires_match_pyproject() -> None:
    text = SPEC.read_text()
    requires = set(re.findall(r"^Requires:\s+(\S+)", text, flags=re.MULTILINE))
    wanted = {PYPI_TO_DISTRO[name][1] for name in pyproject_dependencies()}
    assert wanted <= requires | {"%{name}"}


def test_versions_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    changelog = re.match(r"guestagent \(([^)]+)\)", (DEBIAN / "changelog").read_text())
    assert changelog is not None
    deb_version = changelog.group(1)
    spec_version = re.search(r"^Version:\s+(\S+)", SPEC.read_text(), flags=re.MULTILINE)
    assert spec_version is not None
    assert project["version"] == guestagent.__version__ == deb_version == spec_version.group(1)


def test_debian_files_refer_to_existing_sources() -> None:
    for listing in DEBIAN.glob("*.install"):
        for line in listing.read_text().splitlines():
            source = line.split()[0]
            if source.startswith("packaging/"):
                assert (REPO / source).exists(), f"{listing.name}: {source}"
    for name in ("guestagent.examples", "guestagent.docs"):
        for line in (DEBIAN / name).read_text().split():
            assert (REPO / line).exists(), f"{name}: {line}"
    assert os.access(DEBIAN / "rules", os.X_OK)
    assert (DEBIAN / "source" / "format").read_text().strip() == "3.0 (native)"


@pytest.mark.skipif(shutil.which("rpmspec") is None, reason="rpmspec not installed (rpm package)")
def test_spec_parses() -> None:
    result = subprocess.run(["rpmspec", "-P", str(SPEC)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Name:\s+guestagent$", result.stdout, flags=re.MULTILINE)
    assert "%package dom0" in result.stdout


# --- the builds --------------------------------------------------------------------------------

#: The Debian package that gives each build tool (.ci/run installs them).
_TOOL_PACKAGE = {"rpmbuild": "rpm", "rpmlint": "rpmlint", "lintian": "lintian",
                 "dpkg-buildpackage": "dpkg-dev and packaging/debian/control's Build-Depends"}


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed, and CI must build the packages")
        pytest.skip(f"{tool} not installed, so the package is not built here (Debian: apt-get "
                    f"install {_TOOL_PACKAGE.get(tool, tool)})")


@pytest.fixture(scope="module")
def built_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _need("dpkg-buildpackage")
    _need("lintian")
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run([str(PKG / "build-deb.sh"), str(out)], capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "build-deb: lintian passed" in result.stdout
    return {p.name.split("_")[0]: p for p in out.glob("*.deb")}


@pytest.fixture(scope="module")
def built_rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _need("rpmbuild")
    out = tmp_path_factory.mktemp("rpm")
    result = subprocess.run([str(PKG / "build-rpm.sh"), str(out)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    if shutil.which("rpmlint"):
        assert "build-rpm: rpmlint passed" in result.stdout, result.stdout[-4000:]
        assert "0 errors, 0 warnings" in result.stdout, result.stdout[-4000:]
    elif os.environ.get("CI"):
        pytest.fail("rpmlint is not installed, and CI must check the RPMs")
    rpms = {}
    for path in out.glob("*.rpm"):
        name = subprocess.run(["rpm", "-qp", "--qf", "%{NAME}", str(path)],
                              capture_output=True, text=True, check=True).stdout
        rpms["src" if path.name.endswith(".src.rpm") else name] = path
    return rpms


def deb_files(deb: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    return {line.split()[5][1:] for line in listing.splitlines() if not line.startswith("d")}


def rpm_files(rpm: Path) -> set[str]:
    listing = subprocess.run(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\\n]",
                              str(rpm)], capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[1] for line in listing.splitlines() if not line.startswith("d")}


#: Where each package format puts the same thing: (pattern, what it is) in order.
_LAYOUT = (
    (r"^/usr/lib/python3(?:\.\d+)?/(?:dist|site)-packages/cloudinit/", "cloudinit:"),
    (r"^/usr/lib(?:64)?/python3(?:\.\d+)?/(?:dist|site)-packages/", "python:"),
    (r"^(?:/usr)?/lib/systemd/system/", "unit:"),
    (r"^(?:/usr)?/lib/systemd/system-preset/", "preset:"),
    (r"^/usr/share/zsh/(?:vendor-completions|site-functions)/", "zsh:"),
    (r"^/usr/share/doc/guestagent/", "doc:"),
)
#: Files only one format has, by design: Debian policy's changelog and copyright and lintian's
#: overrides; RPM's build-id links, byte code compiled at build time (dh_python3 compiles at
#: install time) and installer's INSTALLER record.
_DEB_ONLY = re.compile(r"^/usr/share/doc/guestagent(?:-dom0)?/(?:changelog\.gz|copyright)$"
                       r"|^/usr/share/lintian/overrides/")
_RPM_ONLY = re.compile(r"^/usr/lib/\.build-id/|__pycache__/|\.dist-info/INSTALLER$")


def normalised(files: set[str], only: re.Pattern[str]) -> set[str]:
    """Paths with each format's location of the same thing replaced by a tag, minus ``only``."""
    out = set()
    for path in files:
        if only.search(path):
            continue
        for pattern, tag in _LAYOUT:
            if re.match(pattern, path):
                path = tag + re.sub(pattern, "", path)
                break
        out.add(re.sub(r"\.gz$", "", path))
    return out


@pytest.mark.packaging
def test_build_deb_and_lintian(built_debs: dict[str, Path]) -> None:
    debs = built_debs
    assert {"guestagent", "guestagent-dom0"} <= set(debs)
    listing = subprocess.run(["dpkg-deb", "-c", str(debs["guestagent"])], capture_output=True,
                             text=True, check=True).stdout
    for path in ("./lib/systemd/system/guestagent.service",
                 "./lib/systemd/system/guestagent-cloud-config.service",
                 "./lib/systemd/system-preset/90-guestagent.preset",
                 "./usr/bin/guestagent",
                 "./usr/lib/python3/dist-packages/guestagent/xen/_xenc.abi3.so",
                 "./usr/lib/python3/dist-packages/cloudinit/config/cc_guestagent.py",
                 "./usr/share/guestagent/cloud-config.schema.json",
                 "./usr/share/guestagent/grafana/guestagent.json",
                 "./usr/share/guestagent/prometheus/guestagent.rules.yml",
                 "./usr/share/doc/guestagent/CONFIG.md.gz",
                 "./usr/share/doc/guestagent/DASHBOARD.md.gz",
                 "./usr/share/bash-completion/completions/guestagent",
                 "./usr/share/zsh/vendor-completions/_guestagent",
                 "./usr/share/man/man8/guestagent.8.gz"):
        assert path in listing, path
    dom0_listing = subprocess.run(["dpkg-deb", "-c", str(debs["guestagent-dom0"])],
                                  capture_output=True, text=True, check=True).stdout
    assert "./lib/systemd/system/guestagent-dom0.service" in dom0_listing
    control = subprocess.run(["dpkg-deb", "-f", str(debs["guestagent"]), "Depends"],
                             capture_output=True, text=True, check=True).stdout
    for name in ("python3-cffi-backend", "python3-psutil", "python3-pyudev", "python3-pyroute2",
                 "python3-structlog"):
        assert name in control


@pytest.mark.packaging
def test_deb_man_page_lists_the_parsers_commands(built_debs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """The page in the package is the one generated from the packaged parser."""
    subprocess.run(["dpkg-deb", "-x", str(built_debs["guestagent"]), str(tmp_path)], check=True)
    page = gzip.decompress((tmp_path / "usr/share/man/man8/guestagent.8.gz").read_bytes())
    found = man_commands(page.decode())
    for path, options, _ in parser_commands(build_parser()):
        assert found.get(path) == options, path


@pytest.mark.packaging
def test_build_source_and_binary_rpms(built_rpms: dict[str, Path]) -> None:
    version = guestagent.__version__
    assert built_rpms["src"].name == f"guestagent-{version}-1.src.rpm"
    files = subprocess.run(["rpm", "-qpl", str(built_rpms["src"])], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(files) == [f"guestagent-{version}.tar.gz", "guestagent.spec"]
    assert built_rpms["guestagent"].name.startswith(f"guestagent-{version}-1.")
    assert built_rpms["guestagent-dom0"].name == f"guestagent-dom0-{version}-1.noarch.rpm"
    requires = subprocess.run(["rpm", "-qpR", str(built_rpms["guestagent"])],
                              capture_output=True, text=True, check=True).stdout.split("\n")
    for name in ("python3-cffi", "python3-psutil", "python3-pyudev", "python3-pyroute2",
                 "python3-structlog"):
        assert name in requires
    dom0 = subprocess.run(["rpm", "-qpR", str(built_rpms["guestagent-dom0"])],
                          capture_output=True, text=True, check=True).stdout
    assert f"guestagent = {version}-1" in dom0


@pytest.mark.packaging
def test_binary_rpms_carry_the_unit_man_page_and_cloud_init(built_rpms: dict[str, Path]) -> None:
    """The binary RPMs on their own (no .deb needed): each file where a RHEL-family system looks
    for it, and scriptlets that preset the units on install, disable and stop them on erase and
    restart the daemon (never the one-shot cloud-init unit) on upgrade."""
    files = rpm_files(built_rpms["guestagent"])
    sitearch = {p.split("/guestagent/")[0] for p in files
                if p.endswith("/guestagent/xen/_xenc.abi3.so")}
    assert len(sitearch) == 1 and re.match(r"^/usr/lib64/python3\.\d+/site-packages$",
                                           sitearch.pop()), sorted(files)
    sitelib = next(p for p in files if p.endswith("/cloudinit/config/cc_guestagent.py"))
    assert re.match(r"^/usr/lib/python3\.\d+/site-packages/cloudinit/config/", sitelib)
    for path in ("/usr/bin/guestagent",
                 "/usr/lib/systemd/system/guestagent.service",
                 "/usr/lib/systemd/system/guestagent-cloud-config.service",
                 "/usr/lib/systemd/system-preset/90-guestagent.preset",
                 "/usr/share/man/man8/guestagent.8.gz",
                 "/usr/share/bash-completion/completions/guestagent",
                 "/usr/share/zsh/site-functions/_guestagent",
                 "/usr/share/doc/guestagent/README.md",
                 "/usr/share/doc/guestagent/CONFIG.md",
                 "/usr/share/doc/guestagent/DASHBOARD.md",
                 "/usr/share/doc/guestagent/cloud-init/README.md",
                 "/usr/share/guestagent/cloud-config.schema.json",
                 "/usr/share/guestagent/grafana/guestagent.json",
                 "/usr/share/guestagent/prometheus/guestagent.rules.yml"):
        assert path in files, path
    assert not any("guestagent-dom0" in p for p in files)
    assert rpm_files(built_rpms["guestagent-dom0"]) == {
        "/usr/lib/systemd/system/guestagent-dom0.service",
        "/usr/lib/systemd/system-preset/90-guestagent-dom0.preset"}
    scripts = rpm_scripts(built_rpms["guestagent"])
    assert re.search(r"\$1 -eq 1 .*systemctl --no-reload preset guestagent\.service "
                     r"guestagent-cloud-config\.service", scripts["postin"]), scripts
    assert re.search(r"\$1 -eq 0 .*systemctl --no-reload disable --now guestagent\.service "
                     r"guestagent-cloud-config\.service", scripts["preun"]), scripts
    assert re.search(r"\$1 -ge 1 .*systemctl try-restart guestagent\.service",
                     scripts["postun"]), scripts
    assert "try-restart guestagent-cloud-config" not in scripts["postun"]
    dom0 = rpm_scripts(built_rpms["guestagent-dom0"])
    assert "preset guestagent-dom0.service" in dom0["postin"]
    assert "try-restart guestagent-dom0.service" in dom0["postun"]


@pytest.mark.packaging
@pytest.mark.parametrize("name", ["guestagent", "guestagent-dom0"])
def test_rpm_ships_the_same_files_as_the_deb(
    built_debs: dict[str, Path], built_rpms: dict[str, Path], name: str
) -> None:
    deb = normalised(deb_files(built_debs[name]), _DEB_ONLY)
    rpm = normalised(rpm_files(built_rpms[name]), _RPM_ONLY)
    assert deb == rpm, {"deb only": sorted(deb - rpm), "rpm only": sorted(rpm - deb)}
    if name == "guestagent":
        assert "python:guestagent/xen/_xenc.abi3.so" in rpm
        assert "/usr/share/man/man8/guestagent.8" in rpm


def deb_scripts(deb: Path, tmp_path: Path) -> dict[str, str]:
    control = tmp_path / deb.name
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    return {p.name: p.read_text() for p in control.iterdir()
            if p.name in ("postinst", "prerm", "postrm")}


def rpm_scripts(rpm: Path) -> dict[str, str]:
    scripts = {}
    for tag in ("POSTIN", "PREUN", "POSTUN"):
        text = subprocess.run(["rpm", "-qp", "--qf", f"%{{{tag}}}", str(rpm)],
                              capture_output=True, text=True, check=True).stdout
        scripts[tag.lower()] = "" if text == "(none)" else text
    return scripts


@pytest.mark.packaging
@pytest.mark.parametrize(("name", "restarted"), [
    ("guestagent", ("guestagent.service",)), ("guestagent-dom0", ("guestagent-dom0.service",))])
def test_rpm_scriptlets_do_what_the_debs_maintainer_scripts_do(
    built_debs: dict[str, Path], built_rpms: dict[str, Path], tmp_path: Path, name: str,
    restarted: tuple[str, ...],
) -> None:
    """Both enable the units on install, stop the service on removal and restart it on upgrade.
    By each family's policy, the .deb also starts guestagent.service when it is installed and the
    RPM does not (its preset enables it for the next boot); neither starts the cloud-init unit."""
    deb = deb_scripts(built_debs[name], tmp_path)
    rpm = rpm_scripts(built_rpms[name])
    units = {"guestagent": ("guestagent.service", "guestagent-cloud-config.service"),
             "guestagent-dom0": ("guestagent-dom0.service",)}[name]
    for unit in units:
        assert re.search(rf"deb-systemd-helper enable '{re.escape(unit)}'", deb["postinst"])
        assert re.search(rf"systemctl --no-reload preset [^\n]*{re.escape(unit)}", rpm["postin"])
        assert re.search(rf"systemctl --no-reload disable --now [^\n]*{re.escape(unit)}",
                         rpm["preun"])
    for unit in restarted:
        assert re.search(rf"deb-systemd-invoke stop '{re.escape(unit)}'", deb["prerm"])
        assert re.search(rf"deb-systemd-invoke \$_dh_action '{re.escape(unit)}'", deb["postinst"])
        assert re.search(rf"try-restart [^\n]*{re.escape(unit)}", rpm["postun"])
    assert "guestagent-cloud-config.service" not in deb.get("prerm", "")
    assert not re.search(r"try-restart [^\n]*guestagent-cloud-config", rpm["postun"])
