"""``kill -9`` right after every write of every job that writes, then ``guestagent reset``
(issue 15, Proof: "kill -9 at every write of every job").

Each job runs as the daemon runs it (its ``start``, the loop's timers on a fake clock, its
``stop``) in a forked child process, on a fixture tree: the balloon job (balloon-pv-1g and its
stand-in xenstore, the overcommit sysctls at mode 0), the devices job (devices-2node, a device
put on node 1 by an override), the tiering job (tiering-2node with the fake DAMON kernel of
``tests/test_tiering_damon.py``) and the numa job (numa-2node, ``balancing = "auto"``). Every
write the child makes below the root counts: a sysfs or procfs value (``HostFS.write_text``, the
DAMON writer) and a state file committed or removed (``os.replace``, ``os.unlink``: the undo
journals, the balloon record). A first run counts the writes, N, from the start to the end of
the job's stop. Then, for each k in 1..N, a fresh tree, a child that sends itself SIGKILL right
after its k-th write (a real kill: no ``finally``, no ``atexit``, no stop), and ``guestagent
reset`` (the unit's ExecStopPost, in this process, from the state files alone). Asserted for
every k: the child died of SIGKILL at that write, the reset exits 0 and writes no error line,
and every file of the tree outside the state directory is what it was before the job started
(the balloon target at the toolstack's ceiling, ``overcommit_memory`` back, every device file
as it was, no kdamond of the agent's, ``numa_balancing`` back); the journals are gone and a
second reset has nothing to undo.

Found by it (fixed in ``guestagent/tiering/journal.py``): a kill between the DAMON backend's
``nr_kdamonds`` write and its scheme's ``action`` (24 of the tiering job's 79 writes) left a
journalled kdamond, off, holding part of the agent's setup; the reset took it for another DAMON
user's and left it and ``nr_kdamonds`` as they were, and the next start saw "another DAMON user"
and kept tiering off.

The Dom0 job journals nothing (its hints stay published by design, ``guestagent/dom0/job.py``),
nor does the topology job (the guest's tree in ``data/guestagent`` describes it): their tests
kill them after each xenstore write and assert that no tree is ever left half written (each is
written in one transaction, which xenstored drops with the connection).

The balloon's allocation guard arms with its sysctl change (``overcommit_memory`` 0 -> 1,
recorded first) in every balloon case. In three more its zram swap is made too, on the fixture
tree: the host handle's guard commands (``Host.open_guard_commands``) and the zram sysfs files
are :class:`tests.faults.zram_kernel.ZramKernel`, which makes each command's and each file's
effect in the tree (module, control directory, devices, ``/proc/swaps``) and counts each as one
write: ``balloon-zram`` (zram not loaded: modprobe, hot_add, disksize, mkswap, swapon, and at
the stop swapoff, reset, hot_remove, ``modprobe -r``: 9 guard steps among 27 writes),
``balloon-idle-zram`` (zram loaded by someone else with an idle zram0: the guard adds zram1; 7
steps among 24 writes; zram0 and the module must stay) and ``balloon-foreign-zram`` (someone
else's zram swap: the guard adds none, and the reset must leave that swap alone; 13 writes).

Found by those (fixed in ``guestagent/balloon/guard.py``): a kill between the record's
``zram_module`` entry and the ``modprobe``, or between ``modprobe -r`` and the record's save,
left an entry for a module not loaded, and every reset ran ``modprobe -r zram``, which fails
(kmod exits 1): ``guard_undo_failed``, exit status 1, on every reset. And (fixed in the guard
on 2026-12-05, helper faults5; the balloon-idle-zram case failed at write 6 of 24 on the code
before): a kill between the record's ``zram_device`` entry (number not known yet) and the save
of the number ``hot_add`` gave left an empty zram device no record named, when the module was
someone else's (:func:`test_a_kill_between_the_zram_device_entry_and_hot_adds_number`).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guestagent import cli
from guestagent.balloon.job import BalloonJob
from guestagent.balloon.signals import DirectoryXenstore
from guestagent.config import defaults, load
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import JobContext, XenstoreHub
from guestagent.devices.hotplug import HotplugUnavailableError
from guestagent.devices.job import DevicesJob
from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.numa.job import NumaJob
from guestagent.tiering.damon import DamonBackend
from guestagent.tiering.job import TieringJob
from tests.faults.config_files import config_files_beside
from tests.faults.zram_kernel import WRITE_ONLY, ZramFS, ZramKernel
from tests.test_tiering_damon import FIXTURES, FakeDamonKernel, make_tree

STATE_DIR = "run/guestagent"
CEILING = 1048576  # balloon-pv-1g's xenstore memory/target
TARGET = "sys/devices/system/xen_memory/xen_memory0/target_kb"
VF = "0000:00:05.0"
Wrote = Callable[[str], None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_for(loop: EventLoop, clock: Clock, seconds: float) -> None:
    """Fake time passes; every timer due meanwhile runs, in order."""
    end = clock.now + seconds
    while True:
        timeout = loop._next_timeout()
        if timeout is None or clock.now + timeout > end:
            break
        clock.now += timeout
        loop.run_once(max_wait=0)
    clock.now = end


def no_xenstore() -> Any:
    raise GuestAgentError("no xenstore in this test")


def hook_xenstore_writes(wrote: Wrote) -> None:
    """Report every xenstore write, removal, permission change and commit to ``wrote`` (in the
    forked child that runs the job, so the hooks die with it)."""
    from guestagent.xen.xenstore import Transaction, _Operations

    for cls, name in ((_Operations, "write"), (_Operations, "rm"),
                      (_Operations, "set_perms"), (Transaction, "commit")):
        real = getattr(cls, name)

        def hooked(self: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            result = _real(self, *args)
            wrote(f"{_name} {args[0] if args else getattr(self, 'tx_id', '')}")
            return result

        setattr(cls, name, hooked)


def lifecycle(job: Any, root: Path, config: Any, seconds: float, host: Host | None = None,
              ) -> None:
    """What the daemon does with one job: start, its timers for ``seconds``, stop (undo)."""
    clock = Clock()
    loop = EventLoop(clock=clock)
    hostfs = host.fs if host is not None else HostFS(str(root))
    ctx = JobContext(loop, hostfs, config, XenstoreHub(loop, no_xenstore), "guest",
                     lambda name, error: None, host=host)  # type: ignore[arg-type]
    job.start(ctx)
    run_for(loop, clock, seconds)
    job.stop()


# --- the jobs, each on its own tree --------------------------------------------------------------


def balloon_tree(tmp: Path) -> Path:
    """balloon-pv-1g with the overcommit sysctls at mode 0, so the allocation guard arms (its
    sysctl change; no zram on a fixture tree), and a quiet guest the policy shrinks."""
    from tests.test_balloon_guard import make_root, quiet

    tmp.mkdir(parents=True, exist_ok=True)
    root = make_root(tmp, mode=0)
    quiet(root)
    return root


def balloon_job(root: Path, wrote: Wrote, host: Host | None = None) -> None:
    cfg = defaults()
    cfg.values["balloon"].update(enabled=True, policy="pressure")
    hostfs = host.fs if host is not None else HostFS(str(root))
    job = BalloonJob(lambda flags: None, lambda: None,
                     xenstore=DirectoryXenstore(hostfs, "/xenstore"))
    lifecycle(job, root, cfg, 12.0, host=host)  # the tick at start, two at interval 5 s


def zram_host(root: Path, wrote: Wrote | None = None) -> Host:
    """The host with :class:`ZramKernel` behind the guard's commands and zram's sysfs files:
    the guard makes (and undoes) its zram swap on the fixture tree."""
    kernel = ZramKernel(root, wrote)
    return Host(ZramFS(root, kernel), open_guard_commands=lambda fs: kernel)


def balloon_zram_job(root: Path, wrote: Wrote) -> None:
    balloon_job(root, wrote, zram_host(root, wrote))


def balloon_zram_tree(tmp: Path) -> Path:
    """zram not loaded, in the kernel's modules.dep: the guard loads it, adds a device, swaps
    on it (and undoes all of it at its stop)."""
    return balloon_tree(tmp)


def balloon_idle_zram_tree(tmp: Path) -> Path:
    """zram loaded by someone else, with an idle zram0 (disksize 0, as ``modprobe zram``
    leaves it): the guard adds its own device beside it; zram0 and the module must stay."""
    root = balloon_tree(tmp)
    kernel = ZramKernel(root)
    kernel.load()
    kernel.add_device()
    return root


def balloon_foreign_zram_tree(tmp: Path) -> Path:
    """Someone else's zram swap (zram0, 256 MiB, swapped on): the guard adds none (overcommit
    only) and the reset must leave that swap, device and module as they are."""
    root = balloon_tree(tmp)
    kernel = ZramKernel(root)
    kernel.load()
    n = kernel.add_device(256 << 20)
    kernel.mkswap(f"/dev/zram{n}")
    kernel.swapon(f"/dev/zram{n}", 5)
    return root


def devices_tree(tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    return root


def devices_job(root: Path, wrote: Wrote) -> None:
    toml = root.parent / "devices.toml"
    toml.write_text(f'[devices]\nnode_overrides = ["{VF}=1"]\n')
    config = load(str(toml), str(root.parent / "conf.d"))
    lifecycle(DevicesJob(), root, config, 70.0, host=quiet_devices_host(root))


def quiet_devices_host(root: Path) -> Host:
    """No udev, and a default route on eth0, for the devices job."""
    def no_udev(hostfs: HostFS) -> Any:
        raise HotplugUnavailableError("no udev in this test")

    return Host(HostFS(str(root)), open_udev=no_udev,
                open_default_interfaces=lambda hostfs: ["eth0"])


def tiering_tree(tmp: Path) -> Path:
    return make_tree(tmp)


def damon_host(root: Path, wrote: Wrote | None = None) -> Host:
    """The host with the fake DAMON kernel behind the sysfs writes; its memory of which kdamonds
    ran rebuilt from their state, as a new process finds it."""
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    kernel.ran.update(i for i, s in enumerate(kernel.kdamond_states()) if s == "on")

    def write(path: str, value: str) -> None:
        kernel.write(path, value)
        if wrote is not None:
            wrote(f"{path} = {value}")

    return Host(HostFS(str(root)),
                tiering_backends=[("damon", lambda h: DamonBackend(h, writer=write))])


def tiering_job(root: Path, wrote: Wrote) -> None:
    cfg = defaults()
    cfg.values["tiering"].update(enabled=True, interval_seconds=5.0)
    lifecycle(TieringJob(), root, cfg, 12.0, host=damon_host(root, wrote))


def numa_tree(tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(FIXTURES / "numa-2node", root)
    return root


def numa_job(root: Path, wrote: Wrote) -> None:
    cfg = defaults()
    cfg.values["numa"].update(enabled=True, balancing="auto")
    lifecycle(NumaJob(), root, cfg, 70.0)


JOBS: dict[str, tuple[Callable[[Path], Path], Callable[[Path, Wrote], None]]] = {
    "balloon": (balloon_tree, balloon_job),
    "balloon-zram": (balloon_zram_tree, balloon_zram_job),
    "balloon-idle-zram": (balloon_idle_zram_tree, balloon_zram_job),
    "balloon-foreign-zram": (balloon_foreign_zram_tree, balloon_zram_job),
    "devices": (devices_tree, devices_job),
    "tiering": (tiering_tree, tiering_job),
    "numa": (numa_tree, numa_job),
}


GUARD_COMMANDS = {"modprobe", "hot_add", "mkswap", "swapon", "swapoff"}
#: The guard's zram steps each balloon case makes, from its arm to its undo at the stop.
GUARD_STEPS = {
    "balloon-zram": [
        "modprobe zram num_devices=0", "hot_add -> zram0", "/sys/block/zram0/disksize = 805306368",
        "mkswap /dev/zram0", "swapon /dev/zram0", "swapoff /dev/zram0",
        "/sys/block/zram0/reset = 1", "/sys/class/zram-control/hot_remove = 0",
        "modprobe -r zram"],
    "balloon-idle-zram": [
        "hot_add -> zram1", "/sys/block/zram1/disksize = 805306368", "mkswap /dev/zram1",
        "swapon /dev/zram1", "swapoff /dev/zram1", "/sys/block/zram1/reset = 1",
        "/sys/class/zram-control/hot_remove = 1"],
}


# --- the crash -----------------------------------------------------------------------------------


def hook_writes(root: Path, wrote: Wrote) -> None:
    """In the child only: every write below ``root`` reported, after it was made."""
    real_write_text, real_replace, real_unlink = HostFS.write_text, os.replace, os.unlink
    below = str(root) + os.sep

    def write_text(self: HostFS, host_path: str, value: str) -> None:
        real_write_text(self, host_path, value)
        wrote(f"{host_path} = {value.strip()}")

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        real_replace(src, dst, **kw)
        if str(dst).startswith(below):
            wrote("/" + str(dst)[len(below):])

    def unlink(path: Any, **kw: Any) -> None:
        real_unlink(path, **kw)
        if str(path).startswith(below + STATE_DIR + os.sep):
            wrote("/" + str(path)[len(below):] + " (removed)")

    HostFS.write_text = write_text  # type: ignore[method-assign]
    os.replace = replace
    os.unlink = unlink


def run_child(job: Callable[[Path, Wrote], None], root: Path, kill_at: int,
              ) -> tuple[int, list[str]]:
    """The job in a forked child that SIGKILLs itself right after write ``kill_at`` (0: never).
    Returns the child's wait status and the writes it reported."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            count = 0

            def wrote(what: str) -> None:
                nonlocal count
                count += 1
                os.write(write_end, f"{what}\n".encode())
                if count == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            hook_writes(root, wrote)
            job(root, wrote)
        except BaseException as e:  # reported to the parent, then exit
            os.write(write_end, f"!error {type(e).__name__}: {e}\n".encode())
            code = 3
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks).decode().splitlines()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` outside the state directory: its bytes (a link: its target)."""
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == STATE_DIR or rel.startswith(STATE_DIR + os.sep):
            dirnames.clear()
            continue
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            key = os.path.normpath(os.path.join(rel, name))
            if WRITE_ONLY.match(key):
                continue  # a write-only sysfs attribute: nothing reads it back
            # a sysfs or procfs value reads back with its newline: compared without it
            files[key] = (b"-> " + os.readlink(path).encode() if os.path.islink(path)
                          else Path(path).read_bytes().rstrip(b"\n"))
    return files


def differences(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def reset(root: Path, job: str) -> int:
    host: Callable[[HostFS], Host] | None = None
    if job == "tiering":
        host = lambda fs: damon_host(root)  # noqa: E731
    elif job.endswith("-zram"):
        host = lambda fs: zram_host(root)  # noqa: E731
    files = config_files_beside(root)
    if host is None:
        return cli.main(["--root", str(root), "reset"], config_files=files)
    return cli.main(["--root", str(root), "reset"], make_host=host, config_files=files)


def crash_then_reset(root: Path, job: str, before: dict[str, bytes],
                     capsys: pytest.CaptureFixture[str], logfmt: io.StringIO, where: str
                     ) -> list[str]:
    """``guestagent reset`` after the crash, twice; what is wrong afterwards (one line each)."""
    logfmt.seek(0)
    logfmt.truncate()
    rc = reset(root, job)
    out, err = capsys.readouterr()
    wrong = []
    # the command line logs to stderr (cli.main configures it): both streams are looked at
    errors = [ln for ln in (logfmt.getvalue() + err).splitlines() if "level=error" in ln]
    if rc != 0 or errors:
        wrong.append(f"{where}: reset exit status {rc}, errors {errors}, output {out!r}")
    diff = differences(before, snapshot(root))
    if diff:
        wrong.append(f"{where}: after the reset {len(diff)} files differ, e.g. {diff[:3]}; "
                     f"reset said {out!r}")
    # balloon.json keeps the toolstack offset for the boot; balloon-status.json is not undo (the
    # last reset's target, the last resort of a second reset without xenstore, and what
    # ``balloon status`` shows)
    kept = ("balloon.json", "balloon-status.json")
    left = sorted(p.name for p in (root / STATE_DIR).glob("*.json") if p.name not in kept)
    if left:
        wrong.append(f"{where}: journals left after the reset: {left}")
    again = reset(root, job), capsys.readouterr().out
    if again != (0, "nothing to undo\n"):
        wrong.append(f"{where}: a second reset: {again}")
    return wrong


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork(2)")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("job", list(JOBS))
def test_kill_9_after_every_write_then_reset_restores_the_tree(
    job: str, tmp_path: Path, logfmt: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, run = JOBS[job]
    pristine = make(tmp_path / "pristine")
    before = snapshot(pristine)

    def fresh(name: str) -> Path:
        root = tmp_path / name / "root"
        shutil.copytree(pristine, root, symlinks=True)
        return root

    counted = fresh("count")
    status, writes = run_child(run, counted, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, writes
    assert writes and not any(w.startswith("!error") for w in writes), writes
    # the job undoes at its stop: after a clean run the tree is as before
    assert differences(before, snapshot(counted)) == [], writes

    # the guard's steps on the kernel's side (ZramKernel): the fake really ran, in this order
    steps = [w for w in writes if w.split()[0] in GUARD_COMMANDS or "zram" in w]
    assert steps == GUARD_STEPS.get(job, []), writes

    left_changed = 0
    failed: list[str] = []
    for k in range(1, len(writes) + 1):
        root = fresh(f"k{k}")
        status, seen = run_child(run, root, k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, seen)
        assert seen == writes[:k], (k, seen, writes)
        left_changed += snapshot(root) != before
        failed += crash_then_reset(root, job, before, capsys, logfmt,
                                   f"{job}: killed after write {k} of {len(writes)} "
                                   f"({writes[k - 1]})")
        shutil.rmtree(root.parent)
    assert failed == [], "\n".join(failed)
    # the crashes did leave something to undo (the test can fail)
    assert left_changed > 0, f"{job}: no crash left the tree changed"
    print(f"{job}: {len(writes)} writes, {left_changed} crashes left the tree changed",
          file=sys.stderr)


# --- what a crash in the DAMON backend's configuration leaves ------------------------------------

CUT_SHORT = [("contexts/nr_contexts", "1"), ("contexts/0/operations", "paddr"),
             ("contexts/0/targets/nr_targets", "1"), ("contexts/0/schemes/nr_schemes", "1")]


@pytest.mark.parametrize(("writes", "ours"), [
    (CUT_SHORT[:1], True),  # the kernel's defaults: vaddr, no target, no scheme
    (CUT_SHORT[:2], True),
    (CUT_SHORT[:3], True),
    (CUT_SHORT, True),  # one scheme, still at the default action stat
    ([CUT_SHORT[0], CUT_SHORT[2]], False),  # vaddr with a target: a monitor of someone's
    ([*CUT_SHORT, ("contexts/0/schemes/0/action", "pageout")], False),
    ([*CUT_SHORT[:2], ("contexts/0/schemes/nr_schemes", "2")], False),
], ids=["defaults", "paddr", "target", "scheme", "vaddr-target", "pageout", "two-schemes"])
def test_a_journalled_kdamond_cut_short_is_the_agents_and_nothing_else_is(
    tmp_path: Path, logfmt: io.StringIO, writes: list[tuple[str, str]], ours: bool,
) -> None:
    """Found by the crash test above: a kill between the backend's ``nr_kdamonds`` write and
    its scheme's ``action`` left a kdamond the journal names, off, holding part of the agent's
    setup; the reset took it for another DAMON user's and left it and ``nr_kdamonds`` as they
    were (the next start then saw "another DAMON user" and kept tiering off). Now such a
    kdamond is emptied and ``nr_kdamonds`` goes back; anything else stays as it is."""
    from guestagent.tiering.journal import (
        NR_KDAMONDS,
        TieringJournal,
        added_entries,
        journal_path,
        undo_kdamonds,
    )
    from tests.test_tiering_damon import kd_path

    root = make_tree(tmp_path)
    kernel = FakeDamonKernel(root, FIXTURES / "damon-6.12")
    hostfs = HostFS(str(root))
    path = journal_path("/run/guestagent")
    TieringJournal(hostfs, path).load().record_all(added_entries(0, [0]))
    kernel.write(NR_KDAMONDS, "1")
    for name, value in writes:
        kernel.write(kd_path(0, name), value)
    kernel.writes.clear()
    report = undo_kdamonds(hostfs, kernel.write, TieringJournal(hostfs, path).load())
    assert report.failures == 0, report
    if ours:
        assert kernel.writes == [(kd_path(0, "contexts/nr_contexts"), "0"), (NR_KDAMONDS, "0")]
        assert kernel.kdamond_states() == []
    else:
        assert kernel.writes == [], kernel.writes
        assert "holds another DAMON user's setup" in "\n".join(report.lines), report
        assert kernel.kdamond_states() == ["off"]


# --- the Dom0 job: each guest's hints in one transaction -----------------------------------------


def hints_of(server: Any, domid: int) -> dict[str, Any]:
    """The guest's hint tree on the server: every node below the base, value and perms."""
    from guestagent.dom0.schema import base_path

    base = base_path(domid)
    with server.lock:
        return {k: (n.value, list(n.perms)) for k, n in server.nodes.items()
                if k == base or k.startswith(base + "/")}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork(2)")
@pytest.mark.timeout(300)
def test_kill_9_after_every_xenstore_write_of_the_dom0_job_leaves_no_half_tree(
    xs_server: Any, logfmt: io.StringIO,
) -> None:
    """The Dom0 job's pass (``Publisher.publish_all``, what the job runs on every event) in a
    child connected to the in-process xenstored as Dom0, killed right after each of its
    xenstore writes (write, rm, set_perms, and each transaction's commit). The job journals
    nothing and ``reset`` has nothing of it to undo (the hints stay published by design: they
    describe the hardware; the next start's pass writes them again); what a crash must never
    leave is a half-written tree a guest would read. Asserted for every k: each guest's tree is
    either absent (the transaction never committed: xenstored dropped it with the connection)
    or complete, exactly what a whole pass writes."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    from guestagent.xen.xenstore import XenstoreClient
    from guestagent.xen.xsconn import connect_unix
    from tests.test_dom0_publish import add_backend, make_publisher, remove_node

    server = xs_server
    server.populate_guest(6)
    add_backend(server, 5, [("0000:3b:00.0", "28", None), ("0000:5e:00.0", "30", None)])
    add_backend(server, 6, [("0000:00:02.0", None, "0000:00:00.00")])

    def publish(root: Path, wrote: Wrote) -> None:
        hook_xenstore_writes(wrote)
        make_publisher(XenstoreClient(connect_unix(server.path), timeout=5.0)).publish_all()

    def clear() -> None:
        from guestagent.dom0.schema import base_path

        for domid in (5, 6):
            if server.get_node(base_path(domid)) is not None:
                remove_node(server, base_path(domid))

    server.next_domids.append(0)
    status, writes = run_child(publish, Path("/nonexistent"), 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, writes
    whole = {d: hints_of(server, d) for d in (5, 6)}
    assert all(whole.values()) and sum(w.startswith("commit") for w in writes) == 2, writes
    partial: list[str] = []
    seen_states: set[tuple[bool, bool]] = set()
    for k in range(1, len(writes) + 1):
        clear()
        server.next_domids.append(0)
        status, seen = run_child(publish, Path("/nonexistent"), k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, seen)
        now = {d: hints_of(server, d) for d in (5, 6)}
        seen_states.add((bool(now[5]), bool(now[6])))
        partial += [f"killed after write {k} ({writes[k - 1]}): guest {d}'s tree is half there"
                    for d in (5, 6) if now[d] and now[d] != whole[d]]
    assert partial == [], "\n".join(partial)
    # the crashes fell before, between and after the two commits
    assert {(False, False), (True, False), (True, True)} <= seen_states, seen_states


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork(2)")
@pytest.mark.timeout(300)
def test_kill_9_after_every_xenstore_write_of_the_topology_job_leaves_no_half_tree(
    tmp_path: Path, logfmt: io.StringIO,
) -> None:
    """The guest's topology job publishing its tree (``data/guestagent``, one ``sync_tree``
    transaction) into the in-process xenstored as domain 5, killed right after each xenstore
    write and the commit: the tree is absent or whole, never half written. Like the Dom0 hints
    it is not undone by ``reset`` (it describes the guest; the next start writes it again)."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    from guestagent.schema import BASE
    from guestagent.topology.job import TopologyJob
    from guestagent.xen.xenstore import XenstoreClient
    from guestagent.xen.xsconn import connect_unix
    from tests.xenstore_server import XenstoreServer

    server = XenstoreServer(str(tmp_path / "xenstored.sock"))
    server.populate_guest(5)
    server.default_domid = 5
    server.start()
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    base = f"/local/domain/5/{BASE}"

    def tree() -> dict[str, Any]:
        with server.lock:
            return {k: (n.value, list(n.perms)) for k, n in server.nodes.items()
                    if k == base or k.startswith(base + "/")}

    def publish(root: Path, wrote: Wrote) -> None:
        hook_xenstore_writes(wrote)
        cfg = defaults()
        cfg.values["devices"]["enabled"] = False
        loop = EventLoop(clock=Clock())
        hub = XenstoreHub(loop, lambda: XenstoreClient(connect_unix(server.path), timeout=5.0))
        ctx = JobContext(loop, HostFS(str(root)), cfg, hub, "guest", lambda n, e: None)
        job = TopologyJob()
        job.start(ctx)
        job.stop()

    try:
        status, writes = run_child(publish, root, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, writes
        whole = tree()
        assert whole and sum(w.startswith("commit") for w in writes) >= 1, writes
        half: list[str] = []
        for k in range(1, len(writes) + 1):
            with server.lock:  # as before the job: nothing of it
                for key in [p for p in server.nodes if p.startswith(base + "/")]:
                    del server.nodes[key]
                server.nodes.pop(base, None)
                parent = server.nodes[base.rsplit("/", 1)[0]]
                if base.rsplit("/", 1)[1] in parent.children:
                    parent.children.remove(base.rsplit("/", 1)[1])
            status, seen = run_child(publish, root, k)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, seen)
            now = tree()
            if now and now != whole:
                half.append(f"killed after write {k} ({writes[k - 1]}): {len(now)} of "
                            f"{len(whole)} nodes")
        assert half == [], "\n".join(half)
    finally:
        server.stop()


# --- found by the guard's crash cases ------------------------------------------------------------


@pytest.mark.parametrize("loaded", [False, True], ids=["not-loaded", "loaded"])
def test_the_guards_zram_module_is_unloaded_only_when_it_is_loaded(
    tmp_path: Path, logfmt: io.StringIO, loaded: bool,
) -> None:
    """Found by the balloon-zram case above (kills after writes 4 and 22 of 25): the guard
    records ``zram_module`` before its ``modprobe zram`` and drops it after ``modprobe -r``; a
    kill before the one or before the other left the entry with no module loaded, and every
    reset ran ``modprobe -r zram``, which kmod refuses for a module not in the kernel (exit 1):
    ``guard_undo_failed``, exit status 1, for good. Now a module that is not loaded is undone
    already; a loaded one is still unloaded."""
    from guestagent.balloon.actuator import BalloonActuator
    from guestagent.balloon.guard import OVERCOMMIT_MEMORY, undo

    root = balloon_tree(tmp_path)
    kernel = ZramKernel(root)
    if loaded:
        kernel.load()
    fs = ZramFS(root, kernel)
    actuator = BalloonActuator(fs, DirectoryXenstore(fs, "/xenstore"))
    record = actuator.load_record()
    record["guard"] = [{"kind": "sysctl", "path": OVERCOMMIT_MEMORY, "previous": "0"},
                       {"kind": "zram_module", "previous": "not loaded"}]
    actuator.save_record(record)
    (root / "proc/sys/vm/overcommit_memory").write_text("1\n")
    assert undo(fs, actuator, kernel) == 0, logfmt.getvalue()
    assert "level=error" not in logfmt.getvalue()
    assert (root / "proc/sys/vm/overcommit_memory").read_text() == "0\n"
    assert not kernel.loaded() and "guard" not in actuator.load_record()
    undone = [ln for ln in logfmt.getvalue().splitlines() if 'what="module zram"' in ln]
    assert len(undone) == 1 and "event=guard_undone" in undone[0], undone
    assert ("note=already" in undone[0]) is not loaded, undone


class Killed(BaseException):
    """A kill -9 in this process: nothing of the guard's catches it, nothing runs after it."""


def kill_at_hot_add(kernel: ZramKernel, before_read: bool) -> None:
    """``hot_add`` kills the guard right after the kernel made its device (or before)."""
    real = kernel.hot_add

    def hot_add() -> int:
        if before_read:
            raise Killed()
        real()
        raise Killed()

    kernel.hot_add = hot_add  # type: ignore[method-assign]


#: What happens between the kill at ``hot_add`` and the reset, and what the reset must leave:
#: (killed before the read, a step by another program, the zram devices left, a warning).
HOT_ADD_CASES: dict[str, tuple[bool, Callable[[ZramKernel], None], list[int], bool]] = {
    "the-guards-device-alone": (False, lambda k: None, [0], False),
    "killed-before-the-read": (True, lambda k: None, [0], False),
    "another-device-added-since": (False, lambda k: k.add_device(), [0, 1, 2], True),
    "the-device-set-up-since": (
        False, lambda k: (k.device(1) / "disksize").write_text(f"{64 << 20}\n"), [0, 1], True),
}


@pytest.mark.parametrize("case", list(HOT_ADD_CASES))
def test_a_kill_between_the_zram_device_entry_and_hot_adds_number(
    tmp_path: Path, logfmt: io.StringIO, capsys: pytest.CaptureFixture[str], case: str,
) -> None:
    """Found by the balloon-idle-zram case above (the kill after ``hot_add``, write 6 of 24):
    the guard recorded its ``zram_device`` before reading ``hot_add`` (number unknown) and the
    number after; a kill between the two left the new, empty zram device no record named, when
    zram was someone else's (zram0, idle, beside it). Now the entry holds the devices present
    before and the number the kernel gives next (the lowest free): the reset removes that
    device when it alone appeared and is idle, and touches no zram device otherwise (one
    warning line: another program may have added one meanwhile)."""
    from guestagent.balloon.actuator import BalloonActuator
    from guestagent.balloon.guard import Guard

    before_read, meanwhile, left, warned = HOT_ADD_CASES[case]
    root = balloon_idle_zram_tree(tmp_path)
    kernel = ZramKernel(root)
    fs = ZramFS(root, kernel)
    actuator = BalloonActuator(fs, DirectoryXenstore(fs, "/xenstore"))
    actuator.start()
    kill_at_hot_add(kernel, before_read)
    with pytest.raises(Killed):
        Guard(fs, actuator, kernel).arm(CEILING, 256 * 1024)
    assert kernel.devices() == ([0] if before_read else [0, 1])
    meanwhile(kernel)
    logfmt.seek(0)
    logfmt.truncate()
    rc = reset(root, "balloon-idle-zram")
    log = logfmt.getvalue() + capsys.readouterr().err
    assert rc == 0 and "level=error" not in log, log
    assert kernel.devices() == left and kernel.loaded(), log
    assert all((kernel.device(n) / "disksize").exists() for n in left)
    assert ("event=guard_undo_unsure" in log) is warned, log
    assert (root / "proc/sys/vm/overcommit_memory").read_text() == "0\n"
    assert reset(root, "balloon-idle-zram") == 0
    assert capsys.readouterr().out == "nothing to undo\n"
