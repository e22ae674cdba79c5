"""guestagent.lazyimport: a stand-in loads the real module on first use and leaves no trace; the
CLI's parser measures the terminal as argparse would, without shutil. Each case that needs a
module not imported yet runs in a fresh interpreter (pytest has imported nearly everything)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent import cli

REPO = Path(__file__).resolve().parents[1]


def fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_stand_in_imports_the_real_module_on_first_attribute_access() -> None:
    out = fresh(
        "import sys\n"
        "from guestagent.lazyimport import deferring\n"
        "assert 'colorsys' not in sys.modules\n"
        "with deferring('colorsys') as names:\n"
        "    import colorsys\n"
        "assert names == ['colorsys'] and 'colorsys' not in sys.modules, names\n"
        "assert 'colorsys' not in sys.modules\n"
        "print(colorsys.rgb_to_hsv(1.0, 0.0, 0.0))\n"
        "import colorsys as real\n"
        "assert sys.modules['colorsys'] is real and real is not colorsys\n"
        "assert real.rgb_to_hsv is colorsys.rgb_to_hsv\n")
    assert out.strip() == "(0.0, 1.0, 1.0)"


def test_a_stand_ins_function_imports_the_real_module_only_when_called() -> None:
    out = fresh(
        "import sys\n"
        "from guestagent.lazyimport import deferring\n"
        "with deferring('colorsys', 'os', calls={'colorsys': ('rgb_to_hsv',)}) as names:\n"
        "    from colorsys import rgb_to_hsv\n"
        "assert names == ['colorsys'], names  # os was imported already: left alone\n"
        "assert 'colorsys' not in sys.modules\n"
        "print(rgb_to_hsv(1.0, 0.0, 0.0), 'colorsys' in sys.modules)\n")
    assert out.strip() == "(0.0, 1.0, 1.0) True"


def test_a_function_called_inside_the_block_does_not_loop() -> None:
    fresh("from guestagent.lazyimport import deferring\n"
          "with deferring('colorsys', calls={'colorsys': ('rgb_to_hsv',)}):\n"
          "    from colorsys import rgb_to_hsv\n"
          "    assert rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)\n")


def test_import_lean_refuses_a_module_marked_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from guestagent.lazyimport import import_lean

    monkeypatch.setitem(sys.modules, "pyudev", None)
    with pytest.raises(ImportError):
        import_lean("pyudev", "subprocess")
    monkeypatch.setitem(sys.modules, "pyudev", argparse)
    assert import_lean("pyudev") is argparse


def test_pyudev_without_its_unused_imports_still_monitors() -> None:
    """pyudev imported lean: the modules it does not use to open a monitor are not loaded, and
    its ``udev_version`` (which needs the deferred ``check_output``) still works."""
    pytest.importorskip("pyudev")
    out = fresh(
        "import sys\n"
        "from guestagent.lazyimport import PYUDEV_DEFERS, import_pyudev\n"
        "pyudev = import_pyudev()\n"
        "loaded = sorted(m for m in PYUDEV_DEFERS if m in sys.modules)\n"
        "print(loaded)\n"
        "from pyudev import _util\n"
        "try:\n"
        "    print(_util.udev_version() > 0)\n"
        "except OSError:  # no udevadm here: check_output ran, the real subprocess loaded\n"
        "    print('subprocess' in sys.modules)\n")
    assert out.split() == ["[]", "True"], out


@pytest.mark.parametrize("columns", [None, "", "abc", "-3", "0", "57", "200"])
def test_terminal_columns_is_what_shutil_says(monkeypatch: pytest.MonkeyPatch,
                                              columns: str | None) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli.terminal_columns() == shutil.get_terminal_size().columns


@pytest.mark.parametrize("columns", ["40", "100"])
def test_the_cli_parser_formats_help_as_argparse_does(monkeypatch: pytest.MonkeyPatch,
                                                      columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)

    def build(cls: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        parser = cls(prog="guestagent", description="Make a Linux guest NUMA-aware. " * 4)
        parser.add_argument("--root", metavar="DIR", help="the host's file system root " * 5)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        run = sub.add_parser("run", help="run the daemon", description="Run it. " * 12)
        run.add_argument("--config", metavar="FILE", help="main configuration file " * 4)
        return parser

    ours, theirs = build(cli.Parser), build(argparse.ArgumentParser)
    assert ours.format_help() == theirs.format_help()
    assert ours.format_usage() == theirs.format_usage()
    sub_ours = ours._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    sub_theirs = theirs._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    assert type(sub_ours) is cli.Parser
    assert sub_ours.format_help() == sub_theirs.format_help()


def test_a_package_stand_in_still_imports_its_submodules() -> None:
    """``import PKG.sub`` asks the stand-in for ``__path__``: one without calls imports the real
    package to answer (the structlog asyncio stand-in's behaviour since it was written)."""
    out = fresh(
        "import sys\n"
        "from guestagent.lazyimport import deferring\n"
        "assert 'xml' not in sys.modules\n"
        "with deferring('xml'):\n"
        "    import xml.dom\n"
        "real = sys.modules['xml']\n"
        "print('stand-in' in (real.__doc__ or ''), real.dom is sys.modules['xml.dom'])\n")
    assert out.split() == ["False", "True"]
