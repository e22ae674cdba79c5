"""Issue 14 item 2: every long-running command is the daemon running one job. Signal handlers and
poll(2) belong to the daemon's event loop alone; the separate loops of ``balloon run``,
``balloon record``, ``tiering run`` and ``dom0 run`` are gone, and none may come back.

The same search as ``grep -rn "signal.signal\\|select.poll\\|XenstoreClient.open" guestagent/``
(issue 14's proof): xenstore is opened by the Host handle (guestagent/host.py) alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The issue's grep, character for character (an unescaped ``.`` matches any character, as in
#: grep: ``XenstoreClient(open_...`` counts too).
PATTERN = re.compile(r"signal.signal|select.poll|XenstoreClient.open")

#: Where the pattern may still be found, and why. Remove an entry when its loop becomes the daemon
#: with one job (the test fails while a listed file no longer needs its entry).
ALLOWED = {
    "guestagent/daemon/loop.py": "the daemon's event loop itself",
}


def matches() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PATTERN.search(line):
                found.setdefault(rel, []).append(number)
    return found


def test_signals_and_poll_only_in_the_daemon_loop() -> None:
    found = matches()
    outside = {rel: lines for rel, lines in found.items() if rel not in ALLOWED}
    assert outside == {}, f"a run loop of its own outside the daemon (file: lines): {outside}"
    stale = sorted(set(ALLOWED) - set(found))
    assert stale == [], f"no longer needed in ALLOWED: {stale}"


def test_the_one_job_commands_have_no_loop_of_their_own() -> None:
    """What was a loop is one round (Runner.tick, BalloonController.tick, RecordJob's snapshot)
    or one pass (Publisher.publish_all); the daemon's timers, watches and readers call them."""
    from guestagent.balloon import controller, trace
    from guestagent.balloon.signals import PsiTrigger
    from guestagent.dom0.publisher import Publisher
    from guestagent.tiering.runner import Runner

    assert not hasattr(Runner, "run") and not hasattr(Publisher, "run")
    assert not hasattr(controller, "run_controller") and not hasattr(PsiTrigger, "poll")
    assert not hasattr(trace, "_wait")
    for rel in ("guestagent/tiering/runner.py", "guestagent/tiering/commands.py",
                "guestagent/dom0/commands.py", "guestagent/dom0/publisher.py",
                "guestagent/balloon/controller.py", "guestagent/balloon/job.py",
                "guestagent/balloon/commands.py"):
        assert not re.search(r"^\s*while\b", (REPO / rel).read_text(), re.M), rel


#: Module-level factories the tests used to swap to reach the platform (issue 14 item 1):
#: ``hypercall_factory``, ``backend_factories``, ``sysctl_factory``, ``xenstore_factory``,
#: ``hint_source_factory``, or any new one.
FACTORY = re.compile(r"^\w+_factor(y|ies)\b\s*[:=]", re.M)


def test_no_module_level_factory_is_left_to_swap() -> None:
    """The platform is reached through one Host handle (guestagent/host.py), passed in."""
    left = [path.relative_to(REPO).as_posix()
            for path in sorted((REPO / "guestagent").rglob("*.py"))
            if FACTORY.search(path.read_text())]
    assert left == []


def test_the_host_opens_each_handle_on_use_with_its_opener(tmp_path: Path) -> None:
    """A Host made for a command or the daemon opens nothing until asked; each handle comes from
    the opener it was given (a test's fake), over the host's own file system."""
    from contextlib import nullcontext

    from guestagent.cli import Context
    from guestagent.config import defaults
    from guestagent.daemon.loop import EventLoop
    from guestagent.daemon.service import Daemon
    from guestagent.host import TIERING_BACKENDS, Host
    from guestagent.hostfs import HostFS

    fs = HostFS(str(tmp_path))
    opened: list[tuple[str, HostFS]] = []

    def opener(name: str, value: object) -> object:
        return lambda hostfs: opened.append((name, hostfs)) or value

    host = Host(fs, open_vnuma=opener("vnuma", "call"),  # type: ignore[arg-type]
                open_sysctl=opener("sysctl", nullcontext("sysctl")),  # type: ignore[arg-type]
                open_xenstore=opener("xenstore", "client"),  # type: ignore[arg-type]
                open_udev=opener("udev", "monitor"))  # type: ignore[arg-type]
    assert opened == []
    assert host.vnuma_call() == "call" and host.xenstore() == "client"
    with host.sysctl() as sysctl:
        assert sysctl == "sysctl"
    assert host.udev_monitor() == "monitor"
    assert opened == [("vnuma", fs), ("xenstore", fs), ("sysctl", fs), ("udev", fs)]
    # The udev monitor and the PSI trigger are made by the Host alone (the devices job, the
    # balloon job and balloon record ask ctx.host for them).
    for maker in (r"HotplugMonitor\.open\(", r"PsiTrigger\("):
        called = re.compile(r"(?<![`\w])" + maker)  # a call, not a name in ``quotes``
        makers = [p.relative_to(REPO).as_posix()
                  for p in sorted((REPO / "guestagent").rglob("*.py"))
                  if called.search(p.read_text())]
        assert makers == ["guestagent/host.py"], maker
    assert [name for name, _ in Host(fs).tiering_backends] == [n for n, _ in TIERING_BACKENDS]
    # The defaults: the real Host over the same file system, for a command and for the daemon.
    ctx = Context(hostfs=fs)
    assert isinstance(ctx.host, Host) and ctx.host.fs is fs
    loop = EventLoop()
    try:
        daemon = Daemon(fs, defaults(), defaults, lambda c, r: [], "guest", loop=loop, host=host)
        assert daemon._context().host is host
        assert daemon._default_connect() == "client"
    finally:
        loop.close()


def _job_classes() -> list[tuple[str, ast.ClassDef]]:
    """Every class in guestagent/ shaped like a daemon job (start, stop, reload, republish and
    status: guestagent.daemon.service.Job), with the file it is in."""
    jobs = []
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if {"start", "stop", "reload", "republish", "status"} <= methods:
                    jobs.append((path.relative_to(REPO).as_posix(), node))
    return jobs


def test_no_job_constructor_takes_a_platform_opener() -> None:
    """A job reaches Xen and the kernel through ``ctx.host`` (the one Host), never through an
    opener or factory of its own that a test swaps (``Dom0Job(open_sysctl=...)`` and
    ``HostNumaJob(open_xen=...)`` were the last): a test passes a fake Host instead."""
    from guestagent.daemon.commands import JOBS

    found = _job_classes()
    names = {node.name for _, node in found}
    assert {target.split(":")[1] for _, _, target in JOBS} <= names  # the search sees them all
    openers = {}
    for rel, node in found:
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                args = [a.arg for a in (*item.args.args, *item.args.kwonlyargs)]
                bad = [a for a in args if re.match(r"open_|make_|.*_(factory|factories|opener)$",
                                                   a)]
                if bad:
                    openers[f"{rel}:{node.name}"] = bad
    assert openers == {}


#: Where the default configuration files (config.MAIN_FILE, CONF_DIR) may still be read outside
#: cli.Context, and why (help texts, f-strings, do not count). None: every command asks its
#: context (``ctx.config_paths(args)``, ``ctx.config_files``).
CONFIG_DEFAULT_READERS: dict[str, str] = {}


def config_default_reads(source: str) -> list[int]:
    """Lines of ``source`` that read ``X.MAIN_FILE`` or ``X.CONF_DIR`` outside an f-string."""
    tree = ast.parse(source)
    in_fstrings = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                   for n in ast.walk(f)}
    return sorted({n.lineno for n in ast.walk(tree)
                   if isinstance(n, ast.Attribute) and n.attr in ("MAIN_FILE", "CONF_DIR")
                   and id(n) not in in_fstrings})


def test_config_default_reads_finds_what_it_must() -> None:
    assert config_default_reads('a = config_mod.MAIN_FILE\nh = f"x {config.CONF_DIR}"\n'
                                'b = (1,\n     cfg.CONF_DIR)\n') == [1, 4]


def test_the_default_config_files_come_from_the_context() -> None:
    """A command reads the files its --config/--conf-dir name, else its context's
    (``cli.Context.config_files``, default /etc/guestagent's): a test passes its own files to
    the context instead of patching config.MAIN_FILE. config.load and read_state_dir take the
    files as arguments, with no default of their own."""
    import inspect

    from guestagent import config

    found = {}
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != "guestagent/cli.py" and config_default_reads(path.read_text()):
            found[rel] = config_default_reads(path.read_text())
    assert set(found) == set(CONFIG_DEFAULT_READERS), found
    for function in (config.load, config.read_state_dir):
        assert all(p.default is inspect.Parameter.empty
                   for p in inspect.signature(function).parameters.values()), function


#: A read of a node's own files (meminfo, distance, cpulist) that does not go through
#: guestagent/nodesysfs.py: a call of a HostFS reader whose path names the node directory.
NODE_READ = re.compile(r"\.read_\w+\([^)]*(NODE_DIR|/sys/devices/system/node)")


def test_one_numa_node_reader() -> None:
    """Issue 14 item 4: topology, tiering, devices and numa read the node directory through
    guestagent.nodesysfs alone (one failure behaviour); each of them imports it."""
    found = {}
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "guestagent/nodesysfs.py":
            continue
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1)
                 if NODE_READ.search(line)]
        if lines:
            found[rel] = lines
    assert found == {}
    for rel in ("topology/sysfs.py", "tiering/readers.py", "devices/read.py",
                "devices/discovery.py", "numa/readers.py"):
        assert "nodesysfs" in (REPO / "guestagent" / rel).read_text(), rel


#: A byte/KiB/MiB factor written out: 1024 (or 1024**2, 1024**3) next to *, / or //.
UNIT_NUMBERS = {"1024", "1048576", "1073741824"}
UNIT_OPS = {"*", "/", "//", "*=", "/=", "//="}


def unit_arithmetic(source: str) -> list[int]:
    """Lines of ``source`` that scale by a written-out unit (strings and comments do not count)."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    lines = set()
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NUMBER or tok.string not in UNIT_NUMBERS:
            continue
        around = tokens[max(0, i - 1):i] + tokens[i + 1:i + 2]
        if any(t.type == tokenize.OP and t.string in UNIT_OPS for t in around):
            lines.add(tok.start[0])
    return sorted(lines)


def test_unit_arithmetic_finds_what_it_must() -> None:
    assert unit_arithmetic("a = b * 1024\nc = d // 1024 + 1\ne = 2 * 1024 * 1024\n") == [1, 2, 3]
    assert unit_arithmetic('x = 1024\nhelp = "target_kb / 1024"  # n * 1024\n') == []


def test_one_units_module() -> None:
    """Issue 14 item 4: byte, KiB and MiB factors come from guestagent/units.py."""
    found = {}
    for path in sorted((REPO / "guestagent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != "guestagent/units.py":
            lines = unit_arithmetic(path.read_text())
            if lines:
                found[rel] = lines
    assert found == {}


def guestagent_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the guestagent module or object it was imported as."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guestagent"):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("guestagent") and alias.asname:
                    names[alias.asname] = alias.name
    return names


def patched_globals(source: str) -> set[str]:
    """What ``monkeypatch.setattr``/``delattr`` replaces in a guestagent module or class of
    ``source``, as ``module.attribute`` (patches of an instance or of the test's own module are
    not globals of the agent and do not count)."""
    tree = ast.parse(source)
    names = guestagent_names(tree)
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("setattr", "delattr") and node.args):
            continue
        target = node.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            if target.value.startswith("guestagent."):
                found.add(target.value)
        elif (isinstance(target, ast.Name) and target.id in names and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)):
            found.add(f"{names[target.id]}.{node.args[1].value}")
    return found


#: Module globals of the agent a test still patches, and why (issue 14: tests pass a fake Host
#: and do not patch module globals). Remove an entry when its test no longer needs it; a new
#: patch of an agent global fails test_tests_patch_no_new_agent_global.
PATCHED_GLOBALS = {
    # cloud-init calls handle() with its own arguments and counts its parameters to choose the
    # calling convention (cloudinit/config/modules.py): the root and the command runner cannot be
    # parameters of handle_current/handle_legacy.
    "guestagent.cloudinit.module.ROOT": "cloud-init's module on a temporary root",
    "guestagent.cloudinit.module.RUN": "cloud-init's module without running systemctl",
}


def test_patched_globals_finds_what_it_must() -> None:
    source = ('from guestagent import config as config_mod\n'
              'from guestagent.daemon import service\n'
              'def t(monkeypatch, job):\n'
              '    monkeypatch.setattr(config_mod, "MAIN_FILE", "x")\n'
              '    monkeypatch.setattr("guestagent.devices.apply.lookup", None)\n'
              '    monkeypatch.setattr(service, "Daemon", None)\n'
              '    monkeypatch.setattr(job, "scan", None)\n')
    assert patched_globals(source) == {"guestagent.config.MAIN_FILE",
                                       "guestagent.devices.apply.lookup",
                                       "guestagent.daemon.service.Daemon"}


def test_tests_patch_no_new_agent_global() -> None:
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for name in patched_globals(path.read_text()):
            found.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    new = {name: files for name, files in found.items() if name not in PATCHED_GLOBALS}
    assert new == {}, "pass a fake Host (or a constructor argument) instead"
    stale = sorted(set(PATCHED_GLOBALS) - set(found))
    assert stale == [], f"no longer patched, remove from PATCHED_GLOBALS: {stale}"
