"""The test tiers (issue 13 item 5): a plain ``pytest`` runs the fast tier only; the real-Xen
tier is its own command, ``pytest -m e2e``, whose ``-m`` wins over the one in pyproject's
addopts. Checked by collecting in a pytest subprocess (nothing is booted: ``--collect-only``)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.e2e.util import REPO

#: A fast test file and the e2e tier's directory: one collection shows both selections.
TARGETS = ["tests/test_e2e_boots.py", "tests/e2e"]


def collect(*args: str) -> tuple[int, list[str]]:
    """pytest's exit status and the node ids it selected, with no PYTEST_ADDOPTS of the caller."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args, *TARGETS],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=240, check=False)
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    return proc.returncode, ids


def test_a_plain_pytest_collects_no_e2e_test() -> None:
    rc, ids = collect()
    assert rc == 0, ids
    assert ids and all(i.startswith("tests/test_e2e_boots.py::") for i in ids)


def test_minus_m_e2e_on_the_command_line_selects_the_real_xen_tier_only() -> None:
    rc, ids = collect("-m", "e2e")
    assert rc == 0, ids
    assert not [i for i in ids if not i.startswith("tests/e2e/")]
    # every file of the tier, the HVM guests included
    files = {i.split("::")[0] for i in ids}
    assert {"tests/e2e/test_topology.py", "tests/e2e/test_tiering.py",
            "tests/e2e/test_dom0_devices.py"} <= files
    assert any("hvm" in i for i in ids)
