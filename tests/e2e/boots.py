"""Boot one guest shape N times on one bed and count the deaths (issue 13's proof).

    python -m tests.e2e boots 20 --vnuma '<3 vnodes, 4 vCPUs>' --memory 1024 --vcpus 4 \\
        [--load 'stress-ng --cpu 2 --io 1'] [--no-pin-hvm] [--command 'guestagent topology --json']

Each boot is ``xl create`` to the runner answering, then the command; a guest that does not boot
or dies under the command counts as one death (no retry), with its dead vCPUs' RIPs as symbols
(symbols.py). ``--load`` runs a host command beside the bed for the whole run (started in its own
process group, ended by that group's id). The summary goes to stdout and to ``boots.txt`` in the
run directory; the exit status is 0 with no death, 1 otherwise (3 when the bed itself failed).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

_DEAD = re.compile(r"d\d+v\d+ RIP [0-9a-f]{16}(?: = \S+)?")


@dataclass
class Boot:
    """One boot's outcome."""

    n: int
    guest: str
    #: "ok", "no boot" (did not come up), "died" (GuestDied under the command) or "error" (the
    #: command failed otherwise: not a death)
    outcome: str
    seconds: float
    error: str = ""
    rips: list[str] = field(default_factory=list)


def rips_in(text: str) -> list[str]:
    """The ``dNvM RIP ... = symbol`` phrases of a failure's text, each once, in order."""
    seen: list[str] = []
    for m in _DEAD.finditer(text):
        if m.group(0) not in seen:
            seen.append(m.group(0))
    return seen


def summary(boots: list[Boot], shape: str, load: str) -> list[str]:
    """The report: one line of counts, then one line per death with where it died."""
    deaths = [b for b in boots if b.outcome in ("no boot", "died")]
    errors = [b for b in boots if b.outcome == "error"]
    ok = [b.seconds for b in boots if b.outcome == "ok"]
    mean = f", ok boots {min(ok):.0f}-{max(ok):.0f} s" if ok else ""
    lines = [
        f"boots: {len(boots)} of {shape}, load: {load or 'none'}; deaths: {len(deaths)} "
        f"(no boot {sum(b.outcome == 'no boot' for b in deaths)}, "
        f"under the command {sum(b.outcome == 'died' for b in deaths)})"
        + (f", other errors: {len(errors)}" if errors else "") + mean
    ]
    for b in deaths + errors:
        where = "; ".join(b.rips) or "no vCPU dump"
        first = b.error.strip().splitlines()[0][:160] if b.error.strip() else ""
        lines.append(f"  #{b.n} {b.guest}: {b.outcome} after {b.seconds:.0f} s: {where} ({first})")
    return lines


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
