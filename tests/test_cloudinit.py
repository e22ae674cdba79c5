"""cloud-init module cc_guestagent: schema, TOML writer, apply, and handle as cloud-init calls."""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.cloudinit import module, settings
from guestagent.cloudinit.schema import build_schema, validate
from guestagent.cloudinit.settings import CloudConfigError, CloudSettings, parse, render_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "packaging" / "cloud-init" / "cc_guestagent.py"


# --- render_toml -------------------------------------------------------------------------------

def test_render_toml_tables_and_scalars() -> None:
    doc = {
        "agent": {"role": "guest", "log_level": "debug"},
        "topology": {"enabled": True, "refresh_seconds": 600},
        "metrics": {"ratio": 0.25, "names": ["a", "b"], "empty": []},
    }
    text = render_toml(doc, header="")
    assert text.startswith("[agent]\nrole = \"guest\"\n")
    assert "refresh_seconds = 600\n" in text
    assert "enabled = true\n" in text
    assert 'names = ["a", "b"]\n' in text
    assert tomllib.loads(text) == doc


def test_render_toml_header_is_a_comment() -> None:
    text = render_toml({"agent": {"role": "auto"}})
    assert text.startswith("# Written by cloud-init")
    assert tomllib.loads(text) == {"agent": {"role": "auto"}}


def test_render_toml_escapes_strings_and_keys() -> None:
    doc = {
        "odd keys": {"with.dot": 'quote " and \\ backslash', "tab": "a\tb\nc\x01\x7f",
                     "unicode": "Größe ✓", "": "empty key"},
        "top": 1,
    }
    text = render_toml(doc, header="")
    assert text.splitlines()[0] == "top = 1"  # scalars before tables
    assert '["odd keys"]' in text
    assert tomllib.loads(text) == doc


def test_render_toml_special_floats_and_nested_tables() -> None:
    doc = {"a": {"inf": math.inf, "ninf": -math.inf, "big": 1e300, "small": -2.5e-7,
                 "b": {"c": {"d": 1}}}}
    text = render_toml(doc, header="")
    assert "[a.b.c]" in text
    assert tomllib.loads(text) == doc
    nan = tomllib.loads(render_toml({"x": math.nan}, header=""))["x"]
    assert math.isnan(nan)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"agent": {"role": None}}, "agent.role = 'None': TOML has no null"),
        ({"agent": {"when": __import__("datetime").date(2026, 1, 1)}},
         "agent.when = '2026-01-01': a date cannot be written as TOML"),
        ({"agent": {"list": [{"a": 1}]}}, "agent.list"),
        ({"agent": {1: "x"}}, "agent.'1': keys must be strings"),
    ],
)
def test_render_toml_refuses_what_toml_cannot_hold(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(CloudConfigError) as err:
        render_toml(doc)
    assert message in str(err.value)


_keys = st.text(min_size=0, max_size=12)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


@given(st.dictionaries(_keys, st.dictionaries(_keys, _values, max_size=6), max_size=5))
def test_render_toml_round_trips(doc: dict[str, dict[str, Any]]) -> None:
    assert tomllib.loads(render_toml(doc)) == doc


# --- schema and parse --------------------------------------------------------------------------

def test_schema_covers_every_config_key() -> None:
    from guestagent.config import KEYS

    props = build_schema()["properties"]["guestagent"]["properties"]
    assert props["enabled"]["type"] == "boolean"
    for key in KEYS:
        assert key.name in props[key.section]["properties"], (key.section, key.name)
    json.dumps(build_schema())  # serialisable


def test_schema_is_valid_json_schema_and_agrees_with_validator() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = build_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    good = {"guestagent": {"enabled": True, "agent": {"role": "dom0"},
                           "topology": {"refresh_seconds": 600}}}
    bad = {"guestagent": {"agent": {"role": "sideways"}, "topology": {"refresh_seconds": 1}}}
    assert validate(good, schema, "cfg") == []
    assert jsonschema.Draft4Validator(schema).is_valid(good)
    assert len(validate(bad, schema, "cfg")) == 2
    assert not jsonschema.Draft4Validator(schema).is_valid(bad)


def test_parse_valid() -> None:
    got = parse({"enabled": True, "agent": {"log_level": "debug"},
                 "topology": {"refresh_seconds": 600}})
    assert got == CloudSettings(enabled=True, sections={
        "agent": {"log_level": "debug"}, "topology": {"refresh_seconds": 600}})
    assert got.unit == "guestagent.service"
    assert parse({}).enabled is True
    assert parse({"enabled": False}) == CloudSettings(enabled=False, sections={})
    assert parse({"agent": {"role": "dom0"}}).unit == "guestagent-dom0.service"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", "guestagent = 'yes': expected a mapping"),
        ({"enabled": "yes"}, "guestagent.enabled = 'yes': expected true or false"),
        ({"nosuch": {}}, "guestagent.nosuch: unknown key"),
        ({"agent": {"colour": "blue"}}, "guestagent.agent.colour: unknown key"),
        ({"agent": {"role": "sideways"}}, "guestagent.agent.role = 'sideways': expected one of"),
        ({"agent": "guest"}, "guestagent.agent = 'guest': expected a mapping"),
        ({"topology": {"refresh_seconds": 5}},
         "guestagent.topology.refresh_seconds = 5: below the minimum 10"),
        ({"topology": {"refresh_seconds": True}},
         "guestagent.topology.refresh_seconds = 'True': expected an integer"),
        ({"metrics": {"listen": "0.0.0.0:9731"}}, "[metrics] listen = '0.0.0.0:9731'"),
    ],
)
def test_parse_names_key_and_value(value: object, message: str) -> None:
    with pytest.raises(CloudConfigError) as err:
        parse(value)
    assert message in str(err.value)


# --- apply and handle --------------------------------------------------------------------------

class FakeCloud:
    """What cloud-init passes as ``cloud``; the module does not use it."""

    distro = None
    datasource = None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Any) -> None:
        self.calls.append(list(argv))


def test_apply_writes_config_the_daemon_reads(tmp_path: Path) -> None:
    from guestagent import config

    run = Recorder()
    cfg = parse({"agent": {"log_level": "debug"}, "topology": {"refresh_seconds": 600}})
    done = module.apply(cfg, root=str(tmp_path), run=run)
    path = tmp_path / "etc/guestagent/guestagent.toml"
    assert path.stat().st_mode & 0o777 == 0o644
    loaded = config.load(str(path), str(tmp_path / "etc/guestagent/conf.d"))
    assert loaded.get("agent", "log_level") == "debug"
    assert loaded.get("topology", "refresh_seconds") == 600
    assert run.calls == [["systemctl", "enable", "guestagent.service"],
                         ["systemctl", "--no-block", "reload-or-restart", "guestagent.service"]]
    assert done[0].startswith("wrote /etc/guestagent/guestagent.toml")
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_apply_disabled_and_without_sections(tmp_path: Path) -> None:
    run = Recorder()
    module.apply(CloudSettings(enabled=False), root=str(tmp_path), run=run)
    assert not (tmp_path / "etc").exists()
    assert run.calls == [["systemctl", "disable", "guestagent.service"],
                         ["systemctl", "--no-block", "stop", "guestagent.service"]]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Recorder]:
    run = Recorder()
    monkeypatch.setattr(module, "ROOT", str(tmp_path))
    monkeypatch.setattr(module, "RUN", run)
    return tmp_path, run


def test_handle_current_api(sandbox: tuple[Path, Recorder]) -> None:
    root, run = sandbox
    cfg = {"guestagent": {"enabled": True, "agent": {"role": "dom0"}}, "runcmd": ["true"]}
    # cloud-init 23.2 and later: keywords, no log.
    module.handle_current(name="guestagent", cfg=cfg, cloud=FakeCloud(), args=[])
    text = (root / "etc/guestagent/guestagent.toml").read_text()
    assert tomllib.loads(text) == {"agent": {"role": "dom0"}}
    assert run.calls[0] == ["systemctl", "enable", "guestagent-dom0.service"]


def test_handle_legacy_api(sandbox: tuple[Path, Recorder]) -> None:
    root, run = sandbox
    cfg = {"guestagent": {"topology": {"enabled": False}}}
    # cloud-init 22.4 (Debian 12): func_args = [name, self.cfg, cc, LOG, args], positional.
    func_args: list[Any] = ["guestagent", cfg, FakeCloud(), logging.getLogger("t"), []]
    module.handle_legacy(*func_args)
    assert "enabled = false" in (root / "etc/guestagent/guestagent.toml").read_text()
    assert len(run.calls) == 2


def test_handle_without_key_does_nothing(sandbox: tuple[Path, Recorder]) -> None:
    root, run = sandbox
    module.handle_current("guestagent", {"runcmd": []}, FakeCloud(), [])
    assert run.calls == [] and not (root / "etc").exists()


def test_handle_bad_config_writes_nothing(sandbox: tuple[Path, Recorder]) -> None:
    root, run = sandbox
    with pytest.raises(CloudConfigError, match=r"guestagent\.agent\.role"):
        module.handle_current("guestagent", {"guestagent": {"agent": {"role": "x"}}},
                              FakeCloud(), [])
    assert run.calls == [] and not (root / "etc").exists()


def test_handle_matches_the_cloud_init_api() -> None:
    # cloud-init >= 23.2 passes log= only to a handle with exactly five parameters.
    assert list(inspect.signature(module.handle_current).parameters) == [
        "name", "cfg", "cloud", "args"]
    assert list(inspect.signature(module.handle_legacy).parameters) == [
        "name", "cfg", "cloud", "log", "args"]
    assert module.cloud_init_passes_log("22.4.2") is True
    assert module.cloud_init_passes_log("23.1.2-0ubuntu0~18.04.1") is True
    assert module.cloud_init_passes_log("23.2") is False
    assert module.cloud_init_passes_log("25.2-0ubuntu1~22.04.1") is False
    assert module.cloud_init_passes_log("unknown") is False


def test_run_command_reports_failure() -> None:
    module.run_command([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="exited with 3: boom"):
        module.run_command([sys.executable, "-c", "import sys; sys.exit('boom') if False else "
                            "(sys.stderr.write('boom'), sys.exit(3))"])


def test_settings_module_has_no_cloud_init_import() -> None:
    assert "cloudinit" not in settings.__dict__


# --- the file cloud-init loads -----------------------------------------------------------------

def test_shim_is_a_valid_cloud_init_module() -> None:
    spec = importlib.util.spec_from_file_location("cc_guestagent", SHIM)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # cloudinit.config.modules.validate_module (22.4): meta with frequency and distros, a known
    # frequency, and no 'schema' attribute.
    assert mod.meta["id"] == "cc_guestagent"
    assert mod.meta["frequency"] in ("once-per-instance", "always", "once")
    assert mod.meta["distros"] == ["all"]
    assert mod.meta["activate_by_schema_keys"] == ["guestagent"]
    assert not hasattr(mod, "schema")
    assert callable(mod.handle)
    for example in mod.meta["examples"]:
        yaml = pytest.importorskip("yaml")
        parse(yaml.safe_load(example)["guestagent"])
