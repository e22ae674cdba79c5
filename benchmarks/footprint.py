"""Footprint of the idle daemon: resident memory and CPU time per idle hour, MEASURED.

Three processes, idle side by side over the same window:

* ``guestagent``: ``guestagent run`` with its default jobs (topology, devices);
* ``qemu-ga``: Debian's qemu-guest-agent, a native agent (``qemu-ga -m unix-listen -p SOCK``);
* ``python-floor``: a do-nothing Python (``python3 -c 'import signal; signal.pause()'``), the floor.

Memory is RSS and PSS (``/proc/PID/smaps_rollup``) at the end of the window. CPU is user + system
time of the whole process (``/proc/PID/stat``, clock ticks) and on-CPU nanoseconds of its threads
(``/proc/PID/task/*/schedstat``) between two samples; the first is taken after a settle time, so
start-up is left out. Wakeups are the threads' voluntary context switches (each sleep in poll(2)
that ends is one). Per-hour figures are the window's, extrapolated (x 3600 / window): say so when
quoting them. The agent's hourly topology refresh falls outside a window shorter than an hour:
on Xen (``e2e``) one republish of every job is measured on its own, set off from Dom0 the way a
migration would (a changed ``unique-domain-id``), and added once to the hour as an upper bound of
the refresh (which republishes the topology only).

    python -m benchmarks.footprint                  quick mode: this machine, no Xen, 60 s window
    python -m benchmarks.footprint local --seconds 300
    python -m benchmarks.footprint e2e              a PV guest on real Xen 4.17 (tests/e2e), the
                                                    agent from its .deb, started by cloud-init
                                                    under systemd, 600 s window
    python -m benchmarks.footprint measure --agent-pid PID [--seconds N] [--settle S] [--json]
                                                    the sampler alone (what e2e runs in the guest)
    python -m benchmarks.footprint sample --pid PID one sample of a process, as JSON

Targets (issue 7): under 25 MiB resident and under 1 s of CPU per idle hour. Under the testbed's
software emulation (TCG) every instruction costs far more than on hardware, so CPU seconds there
are pessimistic; the ratios to the floor, measured the same way, are what carries over.

The sampler imports nothing outside the standard library (it runs from /usr/src/guestagent in the
guest, next to the agent installed from its package).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_RSS_MIB = 25.0
TARGET_CPU_S_PER_HOUR = 1.0
FLOOR = "python-floor"
AGENT = "guestagent"
QGA = "qemu-ga"
ORDER = (FLOOR, AGENT, QGA)
FLOOR_CODE = "import signal; signal.pause()"

# --- sampling ---------------------------------------------------------------------------------


def _status_fields(path: str) -> dict[str, str]:
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _kib(value: str) -> int:
    return int(value.split()[0])


def sample(pid: int) -> dict[str, float]:
    """One look at a process: memory now, cumulative CPU and context switches."""
    base = f"/proc/{pid}"
    with open(f"{base}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: fields after it are counted from its ")".
    after = stat[stat.rindex(")") + 2 :].split()
    ticks = int(after[11]) + int(after[12])  # utime, stime (fields 14 and 15)
    status = _status_fields(f"{base}/status")
    rollup = _status_fields(f"{base}/smaps_rollup")
    sched_ns = 0
    voluntary = 0
    involuntary = 0
    for task in os.listdir(f"{base}/task"):
        try:
            with open(f"{base}/task/{task}/schedstat") as f:
                sched_ns += int(f.read().split()[0])
            tstatus = _status_fields(f"{base}/task/{task}/status")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        voluntary += int(tstatus.get("voluntary_ctxt_switches", "0"))
        involuntary += int(tstatus.get("nonvoluntary_ctxt_switches", "0"))
    return {
        "time": time.monotonic(),
        "rss_kib": _kib(status["VmRSS"]),
        "hwm_kib": _kib(status["VmHWM"]),
        "pss_kib": _kib(rollup["Pss"]),
        "threads": int(status["Threads"]),
        "cpu_ticks": ticks,
        "sched_ns": sched_ns,
        "voluntary": voluntary,
        "involuntary": involuntary,
    }


def window(first: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """What a process used between two samples, and per hour at that rate."""
    seconds = last["time"] - first["time"]
    per_hour = 3600.0 / seconds
    tick = float(os.sysconf("SC_CLK_TCK"))
    cpu_s = (last["cpu_ticks"] - first["cpu_ticks"]) / tick
    sched_s = (last["sched_ns"] - first["sched_ns"]) / 1e9
    wakeups = last["voluntary"] - first["voluntary"]
    return {
        "window_s": round(seconds, 1),
        "rss_mib": round(last["rss_kib"] / 1024, 2),
        "pss_mib": round(last["pss_kib"] / 1024, 2),
        "peak_rss_mib": round(last["hwm_kib"] / 1024, 2),
        "threads": int(last["threads"]),
        "cpu_s": round(cpu_s, 3),
        "oncpu_s": round(sched_s, 4),
        "cpu_s_per_hour": round(cpu_s * per_hour, 3),
        "oncpu_s_per_hour": round(sched_s * per_hour, 4),
        "wakeups": int(wakeups),
        "wakeups_per_hour": round(wakeups * per_hour, 1),
    }


# --- the comparison processes -----------------------------------------------------------------


def start_floor() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", FLOOR_CODE], stdin=subprocess.DEVNULL)


def start_qemu_ga(workdir: str) -> subprocess.Popen[bytes] | None:
    """Debian's qemu-ga listening on a unix socket nobody connects to (idle), or None."""
    exe = shutil.which("qemu-ga") or next(
        (p for p in ("/usr/sbin/qemu-ga", "/usr/bin/qemu-ga") if os.path.exists(p)), None
    )
    if exe is None:
        return None
    sock = os.path.join(workdir, "qga.sock")
    return subprocess.Popen(
        [exe, "-m", "unix-listen", "-p", sock, "-t", workdir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def measure(agent_pid: int, seconds: float, settle: float) -> dict[str, Any]:
    """Start the floor and qemu-ga next to the running agent, let them settle, sample all three
    over ``seconds``; stop what was started."""
    workdir = tempfile.mkdtemp(prefix="footprint-")
    procs: dict[str, subprocess.Popen[bytes]] = {FLOOR: start_floor()}
    qga = start_qemu_ga(workdir)
    if qga is not None:
        procs[QGA] = qga
    pids = {AGENT: agent_pid, **{name: p.pid for name, p in procs.items()}}
    try:
        time.sleep(settle)
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}) before the window")
        first = {name: sample(pid) for name, pid in pids.items()}
        time.sleep(seconds)
        last = {name: sample(pid) for name, pid in pids.items()}
    finally:
        for p in procs.values():
            stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {
        "window_s": seconds,
        "settle_s": settle,
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agent_cmdline": _cmdline(agent_pid),
        "agent_under_systemd_watchdog": _has_env(agent_pid, "WATCHDOG_USEC"),
        "processes": {name: window(first[name], last[name]) for name in pids},
        "missing": [] if qga is not None else [QGA],
    }
    return result


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return " ".join(a.decode(errors="replace") for a in f.read().split(b"\0") if a)


def _has_env(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return any(v.startswith(name.encode() + b"=") for v in f.read().split(b"\0"))
    except OSError:
        return False


# --- report -----------------------------------------------------------------------------------


def _ratio(value: float, floor: float) -> str:
    return f"x{value / floor:.2f}" if floor > 0 else "(floor 0)"


def report(result: dict[str, Any], where: str) -> str:
    procs: dict[str, dict[str, float]] = result["processes"]
    floor = procs[FLOOR]
    lines = [
        f"Idle footprint, {where}: {result['window_s']:.0f} s window after {result['settle_s']:.0f}"
        f" s settle; per-hour figures extrapolated from the window",
        f"  kernel {result['kernel']}, Python {result['python']}; agent: {result['agent_cmdline']}"
        + (" (systemd watchdog on)" if result.get("agent_under_systemd_watchdog") else ""),
        "",
        f"  {'process':14} {'RSS MiB':>16} {'PSS MiB':>16} {'CPU s/hour':>19} "
        f"{'on-CPU s/hour':>14} {'wakeups/hour':>13}",
    ]
    for name in ORDER:
        if name not in procs:
            continue
        p = procs[name]
        lines.append(
            f"  {name:14} {p['rss_mib']:>7.1f} {_ratio(p['rss_mib'], floor['rss_mib']):>8}"
            f" {p['pss_mib']:>7.1f} {_ratio(p['pss_mib'], floor['pss_mib']):>8}"
            f" {p['cpu_s_per_hour']:>8.3f}"
            f" {_ratio(p['cpu_s_per_hour'], floor['cpu_s_per_hour']):>10}"
            f" {p['oncpu_s_per_hour']:>14.4f} {p['wakeups_per_hour']:>13.0f}"
        )
    for name in result.get("missing", []):
        lines.append(f"  {name:14} not installed here: not measured")
    agent = procs[AGENT]
    republish = result.get("republish")
    lines.append("")
    # Clock ticks are sampled (10 ms each); schedstat's nanoseconds are exact: take the larger.
    cpu_bound = max(agent["cpu_s_per_hour"], agent["oncpu_s_per_hour"])
    if republish:
        cost = max(republish["cpu_s"], republish["oncpu_s"])
        cpu_bound += cost
        lines.append(
            f"  one republish of every job (set off from Dom0 like a migration; resumes seen: "
            f"{republish['resumes']}): {cost:.3f} s CPU, added once per hour for the hourly "
            "refresh"
        )
    rss_ok = agent["rss_mib"] < TARGET_RSS_MIB
    cpu_ok = cpu_bound < TARGET_CPU_S_PER_HOUR
    lines.append(
        f"  target: RSS {agent['rss_mib']:.1f} MiB < {TARGET_RSS_MIB:.0f} MiB "
        f"{'ok' if rss_ok else 'MISSED'}; CPU {cpu_bound:.3f} s/hour"
        f"{' (window + one republish)' if republish else ''} "
        f"< {TARGET_CPU_S_PER_HOUR:.0f} s {'ok' if cpu_ok else 'MISSED'}"
    )
    return "\n".join(lines)


# --- modes ------------------------------------------------------------------------------------


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> None:
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"guestagent run exited ({proc.returncode}) before READY=1")
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        if b"READY=1" in data.split(b"\n"):
            return
    raise RuntimeError(f"guestagent run sent no READY=1 within {timeout:.0f} s")


def _drain(sock: socket.socket, stop_event: threading.Event) -> None:
    while not stop_event.is_set():
        try:
            sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            return


def cmd_local(args: argparse.Namespace) -> int:
    """The daemon on a copy of the PV guest fixture tree (so it binds nothing on this machine),
    with NOTIFY_SOCKET and WATCHDOG_USEC as its systemd unit sets them (WatchdogSec=3min)."""
    tmp = Path(tempfile.mkdtemp(prefix="footprint-local-"))
    root = tmp / "root"
    shutil.copytree(REPO / "tests" / "fixtures" / "pv-guest", root, symlinks=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify.sock"), WATCHDOG_USEC="180000000")
    env.pop("WATCHDOG_PID", None)
    argv = [sys.executable, "-m", "guestagent", "--root", str(root), "run",
            "--config", str(tmp / "guestagent.toml"), "--conf-dir", str(tmp / "conf.d"),
            "--role", "guest"]
    with open(tmp / "daemon.log", "wb") as daemon_log:
        daemon = subprocess.Popen(argv, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                  stderr=daemon_log)
    stop_event = threading.Event()
    try:
        _wait_ready(notify, daemon, 60)
        drain = threading.Thread(target=_drain, args=(notify, stop_event), daemon=True)
        drain.start()
        result = measure(daemon.pid, args.seconds, args.settle)
    finally:
        stop_event.set()
        stop(daemon)
        notify.close()
    result["mode"] = "local"
    where = f"this machine without Xen ({platform.node()}; the daemon on a PV guest fixture tree)"
    _output(result, where, args)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    result = measure(args.agent_pid, args.seconds, args.settle)
    result["mode"] = "measure"
    _output(result, f"pid {args.agent_pid} on {platform.node()}", args)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    json.dump(sample(args.pid), sys.stdout)
    sys.stdout.write("\n")
    return 0


def cmd_e2e(args: argparse.Namespace) -> int:
    """Boot the testbed with the .deb image, a PV guest under systemd (cloud-init turns the agent
    on), and run the sampler in it."""
    sys.path.insert(0, str(REPO))
    from tests.e2e.bed import BedConfig, GuestSpec, XenBed
    from tests.e2e.util import log

    spec = GuestSpec.pv(memory=args.memory, vcpus=args.vcpus, name="fp")
    spec.init = "systemd"
    with XenBed(BedConfig(guest_debs=True, run_name="footprint")) as bed, bed.guest(spec) as g:
        out = g.run_ok(
            "cloud-init status --wait >/dev/null 2>&1; "
            "for i in $(seq 120); do systemctl is-active -q guestagent.service && break; "
            "sleep 2; done; systemctl is-active guestagent.service; "
            "systemctl show -p MainPID --value guestagent.service",
            timeout=1200,
        )
        pid = int(out.strip().splitlines()[-1])
        log(f"guestagent.service runs as pid {pid}; sampling for {args.seconds:.0f} s")
        tool = "cd /usr/src/guestagent && python3 benchmarks/footprint.py"
        raw = g.run_ok(
            f"{tool} measure --agent-pid {pid} --seconds {args.seconds} --settle {args.settle} "
            "--json",
            timeout=args.seconds + args.settle + 600,
        )
        result = json.loads(raw[raw.index("{"):])
        # One republish of every job, set off from Dom0 as a migration would: the agent watches
        # unique-domain-id and republishes when it changes (the first write only sets it).
        first = json.loads(g.run_ok(f"{tool} sample --pid {pid}"))
        key = f"/local/domain/{g.domid}/unique-domain-id"
        bed.dom0_ok(f"xenstore-write {key} footprint-1; sleep 5; xenstore-write {key} footprint-2")
        time.sleep(30)
        last = json.loads(g.run_ok(f"{tool} sample --pid {pid}"))
        status = json.loads(g.run_ok("guestagent status --json"))
        used = window(first, last)
        idle = result["processes"][AGENT]
        seconds = used["window_s"]
        result["republish"] = {
            "resumes": status["resumes"],
            "interval_s": seconds,
            # What the interval cost above the idle rate.
            "cpu_s": round(used["cpu_s"] - idle["cpu_s_per_hour"] * seconds / 3600, 3),
            "oncpu_s": round(used["oncpu_s"] - idle["oncpu_s_per_hour"] * seconds / 3600, 4),
        }
        result["mode"] = "e2e"
        result["guest"] = {"type": "pv", "memory_mib": args.memory, "vcpus": args.vcpus,
                           "boot_s": round(g.boot_seconds, 1)}
        result["run_dir"] = str(bed.run_dir)
        (bed.run_dir / "footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    where = (f"PV guest ({args.memory} MiB, {args.vcpus} vCPUs) on Xen 4.17 under QEMU TCG, "
             "agent from its .deb, turned on by cloud-init")
    _output(result, where, args)
    return 0


def _output(result: dict[str, Any], where: str, args: argparse.Namespace) -> None:
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(report(result, where))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    local = sub.add_parser("local", help="quick: this machine, no Xen (the default)")
    local.add_argument("--seconds", type=float, default=60.0)
    local.add_argument("--settle", type=float, default=5.0)
    local.set_defaults(func=cmd_local)
    e2e = sub.add_parser("e2e", help="a PV guest on real Xen (the testbed)")
    e2e.add_argument("--seconds", type=float, default=600.0)
    e2e.add_argument("--settle", type=float, default=60.0)
    e2e.add_argument("--memory", type=int, default=512)
    e2e.add_argument("--vcpus", type=int, default=2)
    e2e.set_defaults(func=cmd_e2e)
    meas = sub.add_parser("measure", help="sample a running agent next to qemu-ga and the floor")
    meas.add_argument("--agent-pid", type=int, required=True)
    meas.add_argument("--seconds", type=float, default=600.0)
    meas.add_argument("--settle", type=float, default=60.0)
    meas.set_defaults(func=cmd_measure)
    samp = sub.add_parser("sample", help="one sample of a process (JSON)")
    samp.add_argument("--pid", type=int, required=True)
    samp.set_defaults(func=cmd_sample)
    for p in (local, e2e, meas):
        p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args(argv)
    if args.mode is None:
        args = parser.parse_args(["local", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
