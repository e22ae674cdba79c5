"""benchmarks/footprint.py's verdict line: issue 18 item 4's targets, on made-up results."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.footprint import report


def _footprint_result(agent_rss: float, agent_cpu: float, republish_s: float) -> dict[str, Any]:
    def proc(rss: float, cpu: float) -> dict[str, float]:
        return {"rss_mib": rss, "pss_mib": rss / 2, "cpu_s_per_hour": cpu,
                "oncpu_s_per_hour": cpu * 0.9, "wakeups_per_hour": 10.0}

    return {"window_s": 720, "settle_s": 60, "kernel": "6.1", "python": "3.11.2",
            "agent_cmdline": "guestagent run",
            "processes": {"python-floor": proc(8.5, 0.0), "guestagent": proc(agent_rss, agent_cpu)},
            "republish": {"resumes": 1, "cpu_s": republish_s, "oncpu_s": republish_s * 0.9}}


@pytest.mark.parametrize("rss, cpu, republish_s, verdict", [
    (16.4, 0.20, 0.12, "RSS x1.93 the floor <= x2.0 met; CPU 0.320 s/hour (window + one "
                       "republish) <= 0.5 s met"),
    (16.4, 0.78, 0.12, "RSS x1.93 the floor <= x2.0 met; CPU 0.900 s/hour (window + one "
                       "republish) <= 0.5 s MISSED"),
    (21.4, 0.30, 0.25, "RSS x2.52 the floor <= x2.0 MISSED; CPU 0.550 s/hour (window + one "
                       "republish) <= 0.5 s MISSED"),
])
def test_the_footprint_report_checks_issue_18s_targets(rss: float, cpu: float,
                                                       republish_s: float, verdict: str) -> None:
    """The idle hour is the window's CPU plus one republish; RSS against the floor's."""
    text = report(_footprint_result(rss, cpu, republish_s), "test")
    assert text.splitlines()[-1] == f"  target (issue 18): {verdict}", text
