"""A lost Dom0 is found and Xen started again (issue 13).

Once in 61 passthrough boots under credit (run ``20261205-222142-17954-boots``) Dom0's runner
stopped answering for good and every later command of the run timed out. Not explained; the bed
now checks Dom0 with the runner's PING after a failure and before each test, and when nothing
answers it types Xen's debug keys (``dom0-lost-N.xenkeys``) and boots Xen again in the same run
directory (``XenBed.restart``); the test that lost it fails with ``Dom0Lost`` and is rerun.

Here the runner is lost on purpose: a Dom0 command stops it (``kill -STOP``), so that command and
every PING go unanswered, exactly what the host saw in that run. The next ``beds.get()`` (what
every e2e test's fixture calls) must find it, record Xen's view and hand back a working Dom0.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Beds
from tests.e2e.util import BedError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: Stops the runner this script runs under (its nearest ancestor running /sbin/e2e-runner).
STOP_THE_RUNNER = r"""
p=$$
while [ "$p" -gt 1 ]; do
    if tr '\0' ' ' </proc/$p/cmdline | grep -q /sbin/e2e-runner; then kill -STOP "$p"; exit 0; fi
    p=$(cut -d' ' -f4 /proc/$p/stat)
done
echo "no e2e-runner above $$"; exit 1
"""


def test_a_lost_dom0_is_found_and_xen_started_again(beds: Beds) -> None:
    bed = beds.get()
    assert bed.dom0_answers(), "Dom0 did not answer a PING before the test"
    restarts = bed.restarts
    with pytest.raises(BedError, match="timed out"):
        bed.dom0(STOP_THE_RUNNER, timeout=5)
    assert not bed.dom0_answers(timeout=5)
    assert beds.get() is bed
    assert bed.restarts == restarts + 1
    n = bed.restarts
    xen = (bed.run_dir / f"dom0-lost-{n}.xenkeys").read_text()
    assert "'q' pressed" in xen and "General information for domain 0" in xen, xen[-2000:]
    assert f"restart {n}: Dom0 did not answer a PING" in (bed.run_dir / "restarts.log").read_text()
    assert (bed.run_dir / f"transcript.log.before-restart-{n}").exists()
    assert bed.dom0_answers()
    assert "Domain-0" in bed.dom0_ok("xl list")
