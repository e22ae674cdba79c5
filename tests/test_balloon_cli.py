"""``guestagent balloon ...`` through the CLI contract (register + func(args, ctx))."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from guestagent import log
from guestagent.balloon import commands
from guestagent.cli import Context
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
PHASES = HERE / "traces" / "synthetic-phases-1g.jsonl"
TARGET = "sys/devices/system/xen_memory/xen_memory0/target_kb"


#: The main file and drop-in directory the commands read (the no_config fixture's); None: the
#: defaults, /etc/guestagent's.
CONFIG_FILES: tuple[str, str] | None = None


def run(root: Path | None, *argv: str, config_files: tuple[str, str] | None = None) -> int:
    """What guestagent.cli.main does once COMMAND_MODULES lists guestagent.balloon.commands;
    ``config_files`` (default :data:`CONFIG_FILES`) are the context's configuration files."""
    parser = argparse.ArgumentParser(prog="guestagent")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["balloon", *argv])
    log.configure(level="warning")  # as cli.main does, bound to this test's stderr
    ctx = Context(hostfs=HostFS(str(root) if root is not None else "/"),
                  config_files=config_files or CONFIG_FILES)
    result: int = args.func(args, ctx)
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "balloon-pv-1g"
    shutil.copytree(FIXTURES / "balloon-pv-1g", dest)
    return dest


def test_registered_in_the_cli_when_listed() -> None:
    import guestagent.cli as cli

    assert "guestagent.balloon.commands" in cli.COMMAND_MODULES
    assert cli.main(["--root", str(FIXTURES / "balloon-pv-1g"), "balloon", "status"]) == 0


def test_status_text(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "status") == 0
    out = capsys.readouterr().out
    assert "balloon driver: target 1048576 KiB" in out
    assert "ceiling 1048576 KiB" in out
    assert "some avg10 0.31" in out
    assert "no record" in out


def test_status_json_with_decisions(
    root: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``balloon run`` is the daemon with the balloon job alone: it decided (the classic target of
    the fixture's numbers), and on the way out the target went back to the ceiling."""
    assert run(root, "run", "--policy", "classic", "--duration", "0.3") == 0
    capsys.readouterr()
    assert run(root, "status", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["available"] is True and out["ceiling_kb"] == 1048576
    assert out["signals"]["balloon_target_kb"] == 1048576
    assert out["controller"]["policy"] == "classic" and out["controller"]["active"] is False
    decided = [d for d in out["controller"]["decisions"] if d.get("policy") == "classic"]
    assert decided and decided[0]["target_kb"] == 988980


def test_status_without_balloon(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "balloon-legacy-4.19", root)
    shutil.copytree(FIXTURES / "balloon-pv-1g" / "proc" / "pressure", root / "proc" / "pressure")
    assert run(root, "status") == 0
    assert "balloon unavailable: not running on Xen" in capsys.readouterr().out


def test_reset(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / TARGET).write_text("600000\n")
    assert run(root, "--reset") == 0
    assert (root / TARGET).read_text().strip() == "1048576"
    assert "reset to 1048576 KiB" in capsys.readouterr().out


def test_reset_without_balloon_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FIXTURES / "balloon-legacy-4.19", "--reset") == 0
    out = capsys.readouterr().out
    assert "balloon unavailable" in out and "nothing to reset" in out


def test_run_without_balloon_stays_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FIXTURES / "balloon-legacy-4.19", "run", "--duration", "1") == 0
    assert "self-ballooning stays off" in capsys.readouterr().out


def test_bare_balloon_prints_help(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root) == 2
    assert "--reset" in capsys.readouterr().err


def test_simulate_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(None, "simulate", "--trace", str(PHASES), "--policy", "classic") == 0
    out = capsys.readouterr().out
    assert "trace replay" in out and "not a measurement" in out and "GiB x s" in out
    assert run(None, "simulate", "--trace", str(PHASES), "--policy", "none", "--json") == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["policy"] == "none" and summary["memory_held_gib_s"] == pytest.approx(600.0)


def test_simulate_bad_trace_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(GuestAgentError) as e:
        run(None, "simulate", "--trace", str(bad))
    assert str(e.value).startswith(f"{bad} line 1")


def test_record_to_a_file(root: Path, tmp_path: Path, no_config: Path) -> None:
    out = tmp_path / "rec.jsonl"
    assert run(root, "record", "--out", str(out), "--interval", "0.05", "--duration", "0.05") == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3  # header + 2 snapshots
    assert json.loads(lines[1])["xs_static_max_kb"] == 1048576
    assert run(None, "simulate", "--trace", str(out), "--policy", "pressure") == 0


def test_set_writes_through_the_actuator_and_reset_undoes_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(root, "set", "--target-mib", "768") == 0
    assert (root / TARGET).read_text().strip() == str(768 * 1024)
    out = capsys.readouterr().out
    assert "set to 786432 KiB (was 1048576 KiB)" in out
    assert run(root, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["controller"]["original_target_kb"] == 1048576
    assert status["controller"]["decisions"][-1]["action"] == "set"
    assert run(root, "--reset") == 0
    assert (root / TARGET).read_text().strip() == "1048576"


@pytest.mark.parametrize(
    ("mib", "why"),
    [
        ("255", "below the hard minimum 262144 KiB"),
        ("1025", "above the ceiling 1048576 KiB"),
        ("0", "expected 1.."),
        ("-5", "expected 1.."),
    ],
)
def test_set_refuses_outside_the_limits(root: Path, mib: str, why: str) -> None:
    with pytest.raises(GuestAgentError) as e:
        run(root, "set", "--target-mib", mib)
    assert why in str(e.value)
    assert (root / TARGET).read_text().strip() == "1048576"


def test_set_without_balloon(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FIXTURES / "balloon-legacy-4.19", "set", "--target-mib", "512") == 1
    assert "balloon unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("record", "--out", "-", "--interval={}", "--duration", "1"),
        ("record", "--out", "-", "--interval", "1", "--duration={}"),
        ("run", "--duration={}"),
    ],
    ids=["record --interval", "record --duration", "run --duration"],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_float_options_refuse_nan_and_inf(
    root: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], value: str
) -> None:
    """A NaN or infinite interval or duration is a usage error (exit status 2, argparse's one
    line), before anything is read or written: a NaN duration never ends a run."""
    import guestagent.cli as cli

    words = [w.format(value) for w in argv]
    with pytest.raises(SystemExit) as e:
        cli.main(["--root", str(root), "balloon", *words])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"expected a finite number, got '{value}'" in err, err
    assert (root / TARGET).read_text().strip() == "1048576"
    assert not (root / "run").exists()


def test_float_options_take_finite_numbers(root: Path, tmp_path: Path, no_config: Path) -> None:
    out = tmp_path / "rec.jsonl"
    assert run(root, "record", "--out", str(out), "--interval", "5e-2", "--duration", "0") == 0
    assert run(root, "run", "--duration", "0.5") == 0


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The commands' configuration files below tmp_path (none exist at first), given to their
    context (run's, main's): not this machine's /etc/guestagent."""
    monkeypatch.setattr(sys.modules[__name__], "CONFIG_FILES",
                        (str(tmp_path / "etc/guestagent.toml"), str(tmp_path / "etc/conf.d")))
    return tmp_path / "etc/guestagent.toml"


def main(words: list[str]) -> int:
    """``guestagent WORDS`` with the no_config fixture's configuration files."""
    import guestagent.cli as cli

    return cli.main(words, config_files=CONFIG_FILES)


@pytest.mark.parametrize(
    "argv",
    [("set", "--target-mib", "512"), ("--reset",), ("run", "--duration", "0.2")],
    ids=["set", "--reset", "run"],
)
def test_writers_refuse_while_another_guestagent_holds_the_state_dir(
    root: Path, no_config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """Every command that writes target_kb takes the state directory's lock (as the daemon and
    devices apply do): with it held, one line naming the holder, exit status 1, nothing
    written; once it is free the command runs."""
    from guestagent import statelock

    (root / TARGET).write_text("600000\n")
    state_dir = root / "run/guestagent"
    state_dir.mkdir(parents=True, mode=0o700)
    fd = statelock.acquire(str(state_dir), "run")  # as a running daemon does
    try:
        assert main(["--root", str(root), "balloon", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"(run, pid {os.getpid()}) holds {state_dir};" in err[0], err
        assert f"not starting balloon {argv[0]}" in err[0], err
        assert (root / TARGET).read_text().strip() == "600000"
        assert not (state_dir / "balloon.json").exists()
    finally:
        statelock.release(fd)
    assert main(["--root", str(root), "balloon", *argv]) == 0


def test_the_lock_is_in_the_configured_state_dir(
    root: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[agent] state_dir of the default files says where the daemon's lock is; a bad value in
    them is one warning and the default applies (a reset is never blocked by the files)."""
    from guestagent import statelock

    no_config.parent.mkdir()
    no_config.write_text('[agent]\nstate_dir = "/srv/ga"\n[balloon]\npolicy = 7\n')
    (root / "srv/ga").mkdir(parents=True, mode=0o700)
    fd = statelock.acquire(str(root / "srv/ga"), "run")
    try:
        assert main(["--root", str(root), "balloon", "set", "--target-mib", "512"]) == 1
        assert f"holds {root}/srv/ga;" in capsys.readouterr().err
    finally:
        statelock.release(fd)
    no_config.write_text('[agent]\nstate_dir = "relative"\n')
    assert main(["--root", str(root), "--log-level", "warning", "balloon", "--reset"]) == 0
    err = capsys.readouterr().err
    assert "event=balloon_config_ignored" in err and "expected an absolute path" in err, err


def test_reset_creates_no_state_dir(root: Path, no_config: Path) -> None:
    """No state directory: nothing can hold its lock, and the reset does not make one."""
    (root / TARGET).write_text("600000\n")
    assert run(root, "--reset") == 0
    assert (root / TARGET).read_text().strip() == "1048576"
    assert not (root / "run/guestagent").exists()


def test_run_reads_the_configuration_files_like_the_unit(
    root: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``balloon run`` is the daemon with the balloon job alone: [balloon] of the default files
    applies (policy classic here) unless an option overrides it."""
    no_config.parent.mkdir()
    no_config.write_text('[balloon]\npolicy = "classic"\n')
    assert run(root, "run", "--duration", "0.2") == 0
    decisions = json.loads((root / "run/guestagent/balloon-status.json").read_text())["decisions"]
    assert {d["policy"] for d in decisions if "policy" in d} == {"classic"}
    assert run(root, "run", "--duration", "0.2", "--policy", "none") == 0
    decisions = json.loads((root / "run/guestagent/balloon-status.json").read_text())["decisions"]
    assert decisions[-1]["policy"] == "none" or decisions[-2]["policy"] == "none"


def test_run_gives_up_after_repeated_failed_ticks_and_exits_1(
    root: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three failed ticks in a row (a garbled /proc/meminfo): the job resets the target to the
    ceiling and the command exits 1 (as balloon run's own loop did)."""
    no_config.parent.mkdir()
    no_config.write_text("[balloon]\ninterval_seconds = 1\n")
    (root / TARGET).write_text("700000\n")  # as if an earlier run had shrunk it
    (root / "proc/meminfo").write_text("garbage\n")
    assert run(root, "run", "--duration", "60") == 1
    assert (root / TARGET).read_text().strip() == "1048576"
    err = capsys.readouterr().err
    # The log keeps the first of repeated errors (guestagent.log); the give-up says how many.
    assert "event=balloon_tick_failed" in err and "consecutive=3" in err, err
    assert "event=job_gave_up" in err, err


@pytest.mark.parametrize("extra", [(), ("--no-xenstore",)], ids=["fixture", "--no-xenstore"])
def test_run_on_a_fixture_or_without_xenstore_opens_no_connection(
    root: Path, no_config: Path, xs_server: Any, monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
) -> None:
    """With $XENSTORED_PATH naming a live xenstored, ``balloon run`` on a fixture tree uses the
    tree's stand-in files and ``--no-xenstore`` none: the daemon it runs connects to nothing."""
    monkeypatch.setenv("XENSTORED_PATH", xs_server.path)
    argv = ["--no-xenstore", "run", "--duration", "0.2"] if extra else ["run", "--duration", "0.2"]
    assert run(root, *argv) == 0
    assert xs_server.connections == []
    decisions = json.loads((root / "run/guestagent/balloon-status.json").read_text())["decisions"]
    assert decisions, "the job ticked"
