"""Configuration files: defaults, overrides, and one line per problem naming file, key, value."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent import cli
from guestagent.config import KEYS, ConfigError, defaults, load, markdown

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_defaults_only_when_there_are_no_files(tmp_path: Path) -> None:
    cfg = load(str(tmp_path / "none.toml"), str(tmp_path / "conf.d"))
    assert cfg.files == []
    assert cfg.values == defaults().values
    assert cfg.get("topology", "enabled") is True


def test_conf_d_overrides_the_main_file_in_name_order(tmp_path: Path) -> None:
    main = write(
        tmp_path / "guestagent.toml", '[agent]\nlog_level = "debug"\nlog_format = "json"\n'
    )
    write(tmp_path / "conf.d/20-b.toml", '[agent]\nlog_level = "error"\n')
    write(tmp_path / "conf.d/10-a.toml", '[agent]\nlog_level = "warning"\n')
    write(tmp_path / "conf.d/ignored.conf", "not toml at all [[[")
    cfg = load(main, str(tmp_path / "conf.d"))
    assert cfg.get("agent", "log_level") == "error"
    assert cfg.get("agent", "log_format") == "json"
    assert [Path(f).name for f in cfg.files] == ["guestagent.toml", "10-a.toml", "20-b.toml"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[agent]\nrole = "hypervisor"\n',
            "[agent] role = 'hypervisor': expected one of auto, guest, dom0",
        ),
        ("[topology]\nenabled = 1\n", "[topology] enabled = '1': expected true or false"),
        (
            "[topology]\nrefresh_seconds = 1\n",
            "[topology] refresh_seconds = '1': below the minimum 10",
        ),
        (
            '[topology]\nrefresh_seconds = "60"\n',
            "[topology] refresh_seconds = '60': expected an integer",
        ),
        ("[topology]\nrefesh_seconds = 60\n", "[topology] refesh_seconds: unknown key"),
        ("[balooon]\nenabled = true\n", "[balooon]: unknown section"),
        ("agent = 3\n", "agent = '3': expected a [agent] table"),
        ("[agent\n", "not valid TOML"),
        ('[metrics]\nlisten = "0.0.0.0:9731"\n', "expected a loopback address"),
    ],
)
def test_every_problem_names_file_key_and_value(tmp_path: Path, text: str, problem: str) -> None:
    main = write(tmp_path / "guestagent.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(main, str(tmp_path / "conf.d"))
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    if "loopback" not in problem:
        assert all(line.startswith(main) for line in caught.value.problems)


def test_config_check_lists_all_problems_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = write(tmp_path / "guestagent.toml", '[agent]\nrole = "x"\nlog_level = 3\n')
    (tmp_path / "d").mkdir()
    assert cli.main(["config", "check", "--file", main, "--conf-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and err[-1] == "configuration refused: 2 problem(s)"
    ok = write(tmp_path / "ok.toml", "[topology]\nrefresh_seconds = 600\n")
    assert cli.main(["config", "check", "--file", ok, "--conf-dir", str(tmp_path / "d")]) == 0
    assert "configuration ok" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["check", "show"])
@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--config", "{tmp}/none.toml"], "{tmp}/none.toml: does not exist"),
        (["--file", "{tmp}/none.toml"], "{tmp}/none.toml: does not exist"),
        (["--config", "{tmp}"], "{tmp}: a directory, not a file"),
        (["--conf-dir", "{tmp}/no.d"], "{tmp}/no.d: does not exist"),
        (["--conf-dir", "{tmp}/ok.toml"], "{tmp}/ok.toml: not a directory"),
        (["--config", "{tmp}/ok.toml", "--conf-dir", "{tmp}/no.d"], "{tmp}/no.d: does not exist"),
    ],
)
def test_a_named_file_or_directory_must_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, argv: list[str],
    problem: str
) -> None:
    """``config check --file /nonexistent.toml`` said "configuration ok: no files (defaults
    only)" and exited 0; a missing or non-directory --conf-dir too. A path named on the command
    line must be there: one line, exit status 1. The defaults may still be absent."""
    write(tmp_path / "ok.toml", "[topology]\nrefresh_seconds = 600\n")
    words = [w.format(tmp=tmp_path) for w in argv]
    assert cli.main(["config", action, *words]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"guestagent: {problem.format(tmp=tmp_path)} (named on the command line by "
        f"{'--conf-dir' if 'conf-dir' in argv[-2] else '--config'})"]


def test_config_and_file_are_one_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = write(tmp_path / "guestagent.toml", '[agent]\nlog_level = "debug"\n')
    for flag in ("--config", "--file"):
        assert cli.main(["config", "show", flag, main, "--conf-dir", str(tmp_path / "none")]) == 1
        capsys.readouterr()
        (tmp_path / "empty.d").mkdir(exist_ok=True)
        empty = ["--conf-dir", str(tmp_path / "empty.d")]
        assert cli.main(["config", "show", flag, main, *empty]) == 0
        assert 'log_level = "debug"' in capsys.readouterr().out  # TOML (--json: JSON)
        assert cli.main(["config", "check", flag, main, *empty]) == 0
        assert f"configuration ok: {main}" in capsys.readouterr().out


def test_config_check_refuses_a_bad_override_as_devices_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One validator (devices.config.parse_override) for both: the same line, naming the file,
    from ``config check`` and from ``guestagent devices``."""
    main = write(tmp_path / "guestagent.toml",
                 '[devices]\nnode_overrides = ["0000:00:05.0=banana"]\n')
    (tmp_path / "conf.d").mkdir()
    conf = ["--config", main, "--conf-dir", str(tmp_path / "conf.d")]
    assert cli.main(["config", "check", *conf]) == 1
    check = capsys.readouterr().err.splitlines()
    root = str(ROOT / "tests/fixtures/hvm-3vnode")
    assert cli.main(["--root", root, "devices", *conf]) == 1
    devices = capsys.readouterr().err.splitlines()
    line = (f"{main}: [devices] node_overrides = '0000:00:05.0=banana': "
            "expected BDF=N like 0000:00:05.0=1")
    assert check == [line, "configuration refused: 1 problem(s)"]
    assert devices == [f"guestagent: {line}"]


def test_every_key_is_documented_and_the_doc_is_current() -> None:
    assert all(k.doc.strip() for k in KEYS)
    assert len({(k.section, k.name) for k in KEYS}) == len(KEYS)
    assert (ROOT / "docs/CONFIG.md").read_text() == markdown(), (
        "docs/CONFIG.md is stale: run 'guestagent config doc > docs/CONFIG.md'"
    )


def test_every_daemon_job_has_its_section_and_name() -> None:
    from guestagent.daemon.commands import JOBS, make_jobs

    cfg = defaults()
    for name, _roles, _target in JOBS:
        assert isinstance(cfg.get(name, "enabled"), bool), name
        cfg.values[name]["enabled"] = True
    assert [j.name for j in make_jobs(cfg, "guest")] == [
        "topology",
        "balloon",
        "devices",
        "tiering",
        "numa",
    ]
    assert [j.name for j in make_jobs(cfg, "dom0")] == ["dom0", "hostnuma"]
    assert [j.name for j in make_jobs(defaults(), "dom0")] == ["dom0"]  # hostnuma: off
    cfg.values["devices"]["enabled"] = False
    assert "devices" not in [j.name for j in make_jobs(cfg, "guest")]


def test_balloon_keys_the_job_would_refuse_are_refused_by_load(tmp_path: Path) -> None:
    # Each key is in range on its own; the pressure policy needs target < grow. Before, load()
    # (and so `config check`) accepted this and the balloon job refused it when it started.
    main = write(tmp_path / "guestagent.toml",
                 "[balloon]\npolicy = \"pressure\"\npsi_target_pct = 5\npsi_grow_pct = 2\n")
    with pytest.raises(ConfigError) as e:
        load(main, str(tmp_path / "conf.d"))
    assert len(e.value.problems) == 1, e.value.problems
    line = e.value.problems[0]
    assert line.startswith(f"{main}: [balloon] psi_target_pct = ")
    assert "target < grow" in line
    # The same pair in the right order loads.
    write(tmp_path / "guestagent.toml", "[balloon]\npsi_target_pct = 2\npsi_grow_pct = 5\n")
    assert load(main, str(tmp_path / "conf.d")).get("balloon", "psi_grow_pct") == 5


def test_the_pressure_reserve_is_a_key_with_a_floor(tmp_path: Path) -> None:
    """``reserve_mb`` sets the pressure policy's reserve R (at least that, in MiB); under 16 MiB
    is refused with the file, the key and the value."""
    from guestagent.balloon.config import policy_config

    main = write(tmp_path / "guestagent.toml", "[balloon]\nreserve_mb = 48\n")
    cfg = load(main, str(tmp_path / "conf.d"))
    assert policy_config(cfg.section("balloon")).reserve_min_kb == 48 * 1024  # type: ignore[attr-defined]
    assert policy_config(defaults().section("balloon")).reserve_min_kb == 32 * 1024  # type: ignore[attr-defined]
    write(tmp_path / "guestagent.toml", "[balloon]\nreserve_mb = 8\n")
    with pytest.raises(ConfigError) as e:
        load(main, str(tmp_path / "conf.d"))
    assert e.value.problems[0] == f"{main}: [balloon] reserve_mb = '8': below the minimum 16"


def test_the_probe_interval_is_a_key(tmp_path: Path) -> None:
    """``probe_interval_seconds`` spaces the pressure policy's shrinks (5 s by default; 0: at
    every decision); a negative value is refused with the file, the key and the value."""
    from guestagent.balloon.config import policy_config

    main = write(tmp_path / "guestagent.toml", "[balloon]\nprobe_interval_seconds = 0\n")
    cfg = load(main, str(tmp_path / "conf.d"))
    assert policy_config(cfg.section("balloon")).shrink_interval_s == 0  # type: ignore[attr-defined]
    assert policy_config(defaults().section("balloon")).shrink_interval_s == 5  # type: ignore[attr-defined]
    write(tmp_path / "guestagent.toml", "[balloon]\nprobe_interval_seconds = -1\n")
    with pytest.raises(ConfigError) as e:
        load(main, str(tmp_path / "conf.d"))
    assert e.value.problems[0] == (
        f"{main}: [balloon] probe_interval_seconds = '-1': below the minimum 0")


def test_the_idle_watchdog_is_a_key(tmp_path: Path) -> None:
    """``[agent] idle_watchdog_seconds`` (720 s by default; an integer is taken as seconds); a
    negative value or a word is refused with the file, the key and the value."""
    main = write(tmp_path / "guestagent.toml", "[agent]\nidle_watchdog_seconds = 600\n")
    assert load(main, str(tmp_path / "conf.d")).get("agent", "idle_watchdog_seconds") == 600.0
    assert defaults().get("agent", "idle_watchdog_seconds") == 720.0
    for value, why in (("-5", "below the minimum 0"), ('"soon"', "expected a number")):
        write(tmp_path / "guestagent.toml", f"[agent]\nidle_watchdog_seconds = {value}\n")
        with pytest.raises(ConfigError) as e:
            load(main, str(tmp_path / "conf.d"))
        shown = value.strip('"')
        assert e.value.problems == [f"{main}: [agent] idle_watchdog_seconds = '{shown}': {why}"]


def test_every_job_packages_checks_pass_on_the_declared_defaults() -> None:
    """``cross_checks`` skips a job package's ``section_problems`` while its section holds the
    declared defaults (so an idle daemon does not import the policy modules): that is sound only
    while the defaults pass, which this runs for real."""
    from importlib import import_module

    from guestagent.config import JOB_KEY_MODULES, at_defaults, job_section

    cfg = defaults()
    checked = 0
    for name in JOB_KEY_MODULES:
        module = import_module(name)
        assert {k.section for k in module.config_keys()} == {job_section(name)}, name
        assert at_defaults(cfg, job_section(name))
        check = getattr(module, "section_problems", None)
        if check is not None:
            assert check(cfg) == [], name
            checked += 1
    assert checked >= 2  # balloon and tiering, at least


def test_a_section_set_to_its_defaults_by_a_file_is_at_defaults(tmp_path: Path) -> None:
    from guestagent.config import at_defaults

    main = write(tmp_path / "guestagent.toml", "[balloon]\ninterval_seconds = 0\n")
    assert at_defaults(load(main, str(tmp_path / "conf.d")), "balloon")
    write(tmp_path / "guestagent.toml", "[balloon]\ninterval_seconds = 6\n")
    cfg = load(main, str(tmp_path / "conf.d"))
    assert not at_defaults(cfg, "balloon") and at_defaults(cfg, "tiering")
