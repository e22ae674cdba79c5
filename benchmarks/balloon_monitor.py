"""The balloon benchmark's watcher in the guest: runs the agent and stamps what happens, in time.

    python3 balloon_monitor.py --out EVENTS.jsonl [--trace TRACE.jsonl] [--note TEXT]
        [--interval 0.2] -- guestagent run --config FILE --conf-dir DIR

Standard library only (it runs in the e2e guest from ``/usr/src/guestagent/benchmarks``). It
starts the command (the agent's daemon, as systemd's ``ExecStart`` would, with its output on a
pipe as on journald's stream) and, with ``--trace``, ``guestagent balloon record --out -``; then
writes one JSON line per event to ``--out``, each with ``mono`` (CLOCK_MONOTONIC, the clock the
workload's phase lines carry):

* ``{"agent": line}``: every line the agent writes, stamped when it arrives;
* ``{"psi": spec}``: the monitor's own PSI trigger (``some 150000 1000000``, the pressure
  policy's) fired: a spike's first sign, seen the way the agent sees it;
* ``{"target_kb", "current_kb"}``: the balloon driver's target and size, read every
  ``--interval`` seconds and written when either changed;
* ``{"agent_cpu_s": s}``: the agent's CPU time so far (user + system, with the helpers it ran and
  waited for; ``/proc/PID/stat``), every second while it runs;
* at the end, ``{"trace_offset": s}`` (the monotonic time of the recorder's ``timestamp`` 0: its
  least arrival delay over every snapshot) and ``{"agent_exit": status}``.

SIGTERM or SIGINT ends it: the agent gets SIGTERM (it puts the balloon back to its ceiling) and
up to 60 s to exit, the recorder SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import IO, Any

BALLOON = "/sys/devices/system/xen_memory/xen_memory0"
PSI_MEMORY = "/proc/pressure/memory"
PSI_SPEC = "some 150000 1000000"
STOP_WAIT_S = 60.0
DRAIN_S = 5.0
CPU_EVERY_S = 1.0


class Lines:
    """Split a non-blocking pipe's bytes into lines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def read(self) -> list[str]:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not chunk:
            self.eof = True
            rest, self.buf = self.buf, b""
            return [rest.decode(errors="replace")] if rest else []
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def read_kb(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and of its children it waited for (``/proc/PID/stat``
    fields 14-17: the helpers the agent runs count); None when it is gone or does not parse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
        fields = line[line.rindex(")") + 2:].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def arm_psi() -> int | None:
    try:
        fd = os.open(PSI_MEMORY, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        os.write(fd, PSI_SPEC.encode() + b"\0")
    except OSError:
        os.close(fd)
        return None
    return fd


class Monitor:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.out = out
        self.trace: IO[str] | None = None
        self.trace_offset: float | None = None
        self.last: tuple[int | None, int | None] = (None, None)
        self.stop_requested = False

    def emit(self, **obj: Any) -> None:
        obj.setdefault("mono", round(time.monotonic(), 3))
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()

    def sample(self) -> None:
        now = (read_kb(f"{BALLOON}/target_kb"), read_kb(f"{BALLOON}/info/current_kb"))
        if now != self.last:
            self.last = now
            self.emit(target_kb=now[0], current_kb=now[1])

    def on_trace_line(self, line: str, mono: float) -> None:
        if self.trace is None or not line:
            return
        self.trace.write(line + "\n")
        self.trace.flush()
        try:
            ts = json.loads(line).get("timestamp")
        except (ValueError, AttributeError):
            return
        if isinstance(ts, (int, float)):
            offset = mono - float(ts)
            if self.trace_offset is None or offset < self.trace_offset:
                self.trace_offset = offset

    def run(self) -> int:
        agent = subprocess.Popen(self.args.command, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.emit(start=True, command=self.args.command, agent_pid=agent.pid)
        recorder = None
        if self.args.trace:
            self.trace = open(self.args.trace, "w")  # noqa: SIM115 - closed below
            recorder = subprocess.Popen(
                ["guestagent", "balloon", "record", "--out", "-", "--interval", "1",
                 "--duration", "7200", "--note", self.args.note],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        psi = arm_psi()
        self.emit(psi_armed=PSI_SPEC if psi is not None else None)
        try:
            self.loop(agent, recorder, psi)
        finally:
            if psi is not None:
                os.close(psi)
            if self.trace is not None:
                self.trace.close()
        return 0

    def loop(self, agent: subprocess.Popen[bytes], recorder: subprocess.Popen[bytes] | None,
             psi: int | None) -> None:
        readers: dict[int, tuple[str, Lines]] = {}
        poller = select.poll()
        assert agent.stdout is not None
        for name, proc in (("agent", agent), ("trace", recorder)):
            if proc is not None and proc.stdout is not None:
                fd = proc.stdout.fileno()
                os.set_blocking(fd, False)
                readers[fd] = (name, Lines(fd))
                poller.register(fd, select.POLLIN)
        if psi is not None:
            poller.register(psi, select.POLLPRI)
        interval = self.args.interval
        next_sample = next_cpu = time.monotonic()
        stop_at: float | None = None
        agent_done = False
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self.sample()
                next_sample = now + interval
            if now >= next_cpu and not agent_done:
                cpu = process_cpu_s(agent.pid)
                if cpu is not None:
                    self.emit(agent_cpu_s=round(cpu, 2))
                next_cpu = now + CPU_EVERY_S
            if self.stop_requested and stop_at is None:
                stop_at = now + STOP_WAIT_S
                with contextlib.suppress(ProcessLookupError):
                    agent.terminate()
                if recorder is not None:
                    with contextlib.suppress(ProcessLookupError):
                        recorder.send_signal(signal.SIGINT)
            timeout = max(0.0, next_sample - time.monotonic())
            for fd, event in poller.poll(int(timeout * 1000) + 1):
                self.on_event(fd, event, fd == psi, readers, poller)
            if not agent_done and agent.poll() is not None:
                agent_done = True
                self.emit(agent_exit=agent.returncode)
            if stop_at is not None and (agent_done or time.monotonic() > stop_at):
                break
        self.finish(agent, recorder, readers, agent_done)

    def on_event(self, fd: int, event: int, is_psi: bool,
                 readers: dict[int, tuple[str, Lines]], poller: select.poll) -> None:
        mono = time.monotonic()
        if is_psi:
            if event & select.POLLPRI:
                self.emit(psi=PSI_SPEC, mono=round(mono, 3))
            if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                poller.unregister(fd)
            return
        name, lines = readers[fd]
        for line in lines.read():
            if name == "agent":
                self.emit(agent=line, mono=round(mono, 3))
            else:
                self.on_trace_line(line, mono)
        if lines.eof:
            poller.unregister(fd)

    def finish(self, agent: subprocess.Popen[bytes], recorder: subprocess.Popen[bytes] | None,
               readers: dict[int, tuple[str, Lines]], agent_done: bool) -> None:
        if not agent_done:
            agent.kill()
            self.emit(agent_exit=agent.wait(), killed=True)
        if recorder is not None:
            try:
                recorder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        # What is left in the pipes; bounded: a grandchild may hold a pipe open.
        deadline = time.monotonic() + DRAIN_S
        for fd, (name, lines) in readers.items():
            while not lines.eof and time.monotonic() < deadline:
                select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                for line in lines.read():
                    if name == "agent":
                        self.emit(agent=line)
                    else:
                        self.on_trace_line(line, time.monotonic())
        self.sample()
        if self.trace_offset is not None:
            self.emit(trace_offset=round(self.trace_offset, 3))
        self.emit(end=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="events, one JSON object a line")
    p.add_argument("--trace", default="", help="also record a trace (guestagent balloon record)")
    p.add_argument("--note", default="", help="the trace header's note")
    p.add_argument("--interval", type=float, default=0.2, help="balloon driver sampling (s)")
    p.add_argument("command", nargs="+", help="the agent's command line (after --)")
    args = p.parse_args(argv)
    if not 0.01 <= args.interval <= 10:
        p.error("--interval must be 0.01..10 s")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with open(args.out, "w") as out:
        mon = Monitor(args, out)

        def on_signal(signum: int, frame: object) -> None:
            mon.stop_requested = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        return mon.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
