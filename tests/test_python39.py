"""guestagent runs on the Python of Debian 12 and RHEL 9 guests: nothing newer than 3.9."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_vermin_finds_nothing_newer_than_python_39() -> None:
    vermin = shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [
            vermin,
            "--target=3.9-",
            "--violations",
            "--no-tips",
            "--no-eval-annotations",
            "--backport",
            "typing",
            str(ROOT / "guestagent"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_defers_annotations() -> None:
    """``X | Y`` in annotations is only safe on 3.9 when annotations are never evaluated."""
    missing = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "guestagent").rglob("*.py")
        if p.stat().st_size > 0
        and "from __future__ import annotations" not in p.read_text()
        and ("|" in p.read_text() or "->" in p.read_text())
    ]
    assert missing == []


def test_running_interpreter_is_supported() -> None:
    assert sys.version_info >= (3, 9)
