"""Boot one guest shape N times on one bed and count the deaths (issue 13's proof).

    python -m tests.e2e boots 20 --vnuma '<3 vnodes, 4 vCPUs>' --memory 1024 --vcpus 4 \\
        [--load 'stress-ng --cpu 2 --io 1'] [--no-pin-hvm] [--command 'guestagent topology --json']

Each boot is ``xl create`` to the runner answering, then the command; a guest that does not boot
or dies under the command counts as one death (no retry), with its dead vCPUs' RIPs as symbols
(symbols.py). ``--load`` runs a host command beside the bed for the whole run (started in its own
process group, ended by that group's id). The summary goes to stdout and to ``boots.txt`` in the
run directory; the exit status is 0 with no death, 1 otherwise (3 when the bed itself failed).

    python -m tests.e2e boots 2 --shape hvm-2x2 --shape hvm-3n4 --shape pv-4 --max-minutes 23

boots named guest shapes (:data:`SHAPES`, the sizes a cloud runs), N of each, taken in turns
(one boot of each shape, then the next round), so that a time budget that runs out leaves every
shape measured; ``--max-minutes`` starts no boot that would not end inside the budget by the
shape's longest boot so far (a guess at first: :data:`FIRST_GUESS_S`). The report ends with one
table row per shape: boots tried, boots that reached a shell, the median seconds from
``xl create`` to the shell, the deaths and where each died.

    python -m tests.e2e boots 10 --shape hvm-2x4 --shape hvm-pt --host-numa2 --max-minutes 50

on the 2-node host layout. A shape's vnodes go to host nodes in turns there (vnode i on pnode
i mod 2: :meth:`Shape.placed`; on the one-node layout all on pnode 0), except a shape whose
pnodes are part of it (``host_numa2``, e.g. ``hvm-pt``), which keeps its own and is refused
without ``--host-numa2``. ``hvm-pt`` is the passthrough guest of test_dom0_devices.py: before each
of its boots Dom0 makes the e1000e assignable, and after the command the guest must list the
device (by ``vendor:device`` under /sys/bus/pci/devices), or the boot counts as "no device".
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import dataclass, field, replace

from tests.e2e import passthrough
from tests.e2e.vnuma import VNode, cpus_text, xl_vnuma

_DEAD = re.compile(r"d\d+v\d+ RIP [0-9a-f]{16}(?: = \S+)?")
#: Xen's and the guest kernel's own words for a death (xl dmesg, the guest's console tail).
_CAUSE = re.compile(r"[Tt]riple fault|Kernel panic[^\n]*|BUG: [^\n]*|general protection fault|"
                    r"Fatal exception[^\n]*|domain_crash[^\n]*")


@dataclass(frozen=True)
class Shape:
    """A guest shape to boot: its type, size and vNUMA layout."""

    name: str
    type: str  # "hvm" or "pv"
    memory: int  # MiB
    vcpus: int
    nodes: tuple[VNode, ...] = ()
    why: str = ""
    #: Extra xl.cfg lines of this shape (a candidate fix measured beside the plain shape).
    xl: tuple[str, ...] = ()
    #: Needs the 2-node host layout (``--host-numa2``): its vnodes' pnodes are part of the shape.
    host_numa2: bool = False
    #: ``vendor:device`` of the host PCI function passed through to it ("" for none).
    passthrough: str = ""

    def placed(self, host_nodes: int = 1) -> tuple[VNode, ...]:
        """The vnodes on a host of ``host_nodes`` nodes: a ``host_numa2`` shape's as given,
        any other's in turns (vnode i on pnode i mod ``host_nodes``), as a VM of as many sockets
        is spread over the host's, and because one 2 GiB node of the 2-node layout cannot hold
        a 2 GiB guest beside Dom0 (libxl allocates a vnode's memory on its pnode only)."""
        if self.host_numa2:
            return self.nodes
        return tuple(replace(v, pnode=i % host_nodes) for i, v in enumerate(self.nodes))

    def vnuma(self, host_nodes: int = 1) -> str | None:
        """The xl.cfg ``vnuma=`` list on a host of ``host_nodes`` nodes, or None for a guest
        without vNUMA."""
        return xl_vnuma(list(self.placed(host_nodes))) if self.nodes else None

    def describe(self, host_nodes: int = 1) -> str:
        """E.g. ``hvm 4 vCPUs 2048 MiB, 2 vnodes (1024 MiB vCPUs 0-1 | 1024 MiB vCPUs 2-3)``; on
        a 2-node host each vnode also names its pnode (``1024 MiB vCPUs 0-1 on pnode 0``), and a
        passthrough shape its device."""
        text = f"{self.type} {self.vcpus} vCPUs {self.memory} MiB"
        nodes = self.placed(host_nodes)
        if nodes:
            text += f", {len(nodes)} vnodes (" + " | ".join(
                f"{v.size_mb} MiB vCPUs {cpus_text(v.vcpus) or 'none'}"
                + (f" on pnode {v.pnode}" if host_nodes > 1 or self.host_numa2 else "")
                for v in nodes) + ")"
        if self.passthrough:
            text += f", PCI {self.passthrough} passed through"
        return text


def _shapes(*shapes: Shape) -> dict[str, Shape]:
    for s in shapes:
        if s.nodes:
            assert sum(v.size_mb for v in s.nodes) == s.memory, s.name
            assert sorted(c for v in s.nodes for c in v.vcpus) == list(range(s.vcpus)), s.name
            # pnodes other than 0 only where they are part of the shape (placed() sets the rest)
            assert max(v.pnode for v in s.nodes) < (2 if s.host_numa2 else 1), s.name
        assert not s.passthrough or (s.type, s.host_numa2) == ("hvm", True), s.name
    return {s.name: s for s in shapes}


def host_numa2_missing(names: list[str], host_numa2: bool) -> str:
    """The error line for shapes that need the 2-node layout booted without it; "" if none."""
    need = [n for n in names if SHAPES[n].host_numa2]
    if not need or host_numa2:
        return ""
    return (f"--shape {', '.join(need)} needs the 2-node host layout (its vnodes' pnodes, "
            "its passthrough device): add --host-numa2")


#: The guest shapes a cloud runs, as issue 13 names them (``boots --shape NAME``).
SHAPES = _shapes(
    Shape("hvm-2x2", "hvm", 2048, 4,
          (VNode(1024, [0, 1], [10, 20]), VNode(1024, [2, 3], [20, 10])),
          "a 2-socket 4-vCPU VM: 2 vnodes x 2 vCPUs, 2 GiB"),
    Shape("hvm-3n4", "hvm", 1024, 4,
          (VNode(512, [0, 1], [10, 21, 31]), VNode(256, [2], [21, 10, 17]),
           VNode(256, [3], [31, 17, 10])),
          "issue 13's guest: 3 vnodes of unequal sizes, asymmetric distances, 4 vCPUs, 1 GiB"),
    Shape("hvm-3n4-tsc", "hvm", 1024, 4,
          (VNode(512, [0, 1], [10, 21, 31]), VNode(256, [2], [21, 10, 17]),
           VNode(256, [3], [31, 17, 10])),
          "hvm-3n4 with tsc_mode=native: Xen stops trapping RDTSC (one of the two death sites; "
          "every pvclock read of the guest is an RDTSC)", ('tsc_mode = "native"',)),
    Shape("hvm-2x4", "hvm", 2048, 8,
          (VNode(1024, [0, 1, 2, 3], [10, 20]), VNode(1024, [4, 5, 6, 7], [20, 10])),
          "issue 13's 8-vCPU guest: 2 vnodes x 4 vCPUs, 2 GiB"),
    Shape("pv-4", "pv", 1024, 4, (), "a PV guest with 4 vCPUs, 1 GiB (Xen has no PV vNUMA)"),
    Shape("hvm-pt", "hvm", 1024, 2, passthrough.PNODE_MAPPED,
          "test_dom0_devices.py's passthrough guest: the e1000e of host node 1 passed through, "
          "vnode 0 on pnode 0 and vnode 1 on pnode 1, 1 vCPU each, 1 GiB (needs --host-numa2)",
          host_numa2=True, passthrough=passthrough.E1000E),
)

#: Seconds a boot of a type is guessed to take (``xl create``, the shell, the command, the
#: teardown) before one has been seen: a little above the slowest seen on 2026-12-04 (an HVM
#: guest 252 s to its shell, a PV guest 60-90 s).
FIRST_GUESS_S = {"hvm": 330.0, "pv": 150.0}


def clock_time(text: str) -> str:
    """``--end-by``'s value checked: ``HH:MM``, a UTC time of day (argparse's ``type``; its
    default, ``""``, is no end)."""
    if not text:
        return text
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise argparse.ArgumentTypeError(f"not a time of day HH:MM (UTC): {text!r}")
    return text


def budget_seconds(max_minutes: float, end_by: str, now_utc: float) -> float:
    """The bed time budget from the moment the bed is up: ``max_minutes`` of it, and no later
    than ``end_by`` (``HH:MM`` UTC, e.g. the last minute of a shared bed's slot); 0 for no
    budget. ``end_by`` is the next such time within 12 hours (``00:05`` at 21:30 is tonight's),
    else one passed within the last 12 hours, which leaves nothing to start. ``now_utc``: seconds
    since the epoch when the bed's time started."""
    budget = max_minutes * 60
    if end_by:
        hh, mm = (int(x) for x in end_by.split(":"))
        day = now_utc - now_utc % 86400
        left = (day + hh * 3600 + mm * 60 - now_utc) % 86400
        left = left if 0 < left <= 12 * 3600 else 1.0  # now, or passed: nothing starts
        budget = min(budget, left) if budget else left
    return budget


def rounds(shapes: list[str], n: int) -> list[tuple[int, str]]:
    """The boot order: round 1 boots each shape once, then round 2, ... (``n`` rounds)."""
    return [(r, s) for r in range(1, n + 1) for s in shapes]


def fits(elapsed: float, budget: float, kind: str, seen: list[float]) -> bool:
    """Whether a boot started after ``elapsed`` seconds ends inside ``budget`` (0: no budget),
    guessing its length by the longest boot of the shape so far (``seen``)."""
    if budget <= 0:
        return True
    guess = max(seen) if seen else FIRST_GUESS_S.get(kind, FIRST_GUESS_S["hvm"])
    return elapsed + guess <= budget


@dataclass
class Boot:
    """One boot's outcome."""

    n: int
    guest: str
    #: "ok", "no boot" (died before its shell), "died" (GuestDied under the command),
    #: "timeout" (alive but no shell within the boot timeout: not a death), "error" (the command
    #: failed otherwise: not a death), "no device" (a passthrough shape's guest ran the command
    #: but does not show its device: not a death), "dom0 lost" (Dom0 stopped answering during
    #: this boot; the bed started Xen again: not the guest's death) or "interrupted" (the run
    #: was stopped during this boot)
    outcome: str
    seconds: float
    error: str = ""
    rips: list[str] = field(default_factory=list)
    #: The shape's name (``--shape``), or "" for a shape given by its options.
    shape: str = ""
    #: Seconds from ``xl create`` to the guest's shell (its runner answering); 0 when it never
    #: got there.
    boot_seconds: float = 0.0


def rips_in(text: str) -> list[str]:
    """The ``dNvM RIP ... = symbol`` phrases of a failure's text, each once, in order."""
    seen: list[str] = []
    for m in _DEAD.finditer(text):
        if m.group(0) not in seen:
            seen.append(m.group(0))
    return seen


def cause_in(text: str) -> str:
    """Xen's or the kernel's words for a death in a failure's text (``Triple fault``, ``Kernel
    panic - ...``), each once, in order; "" when it has none."""
    seen: list[str] = []
    for m in _CAUSE.finditer(text):
        phrase = m.group(0).strip()[:100]
        if phrase not in seen:
            seen.append(phrase)
    return "; ".join(seen)


def reached_shell(b: Boot) -> bool:
    return b.boot_seconds > 0


def boot_failure(message: str) -> str:
    """The outcome of a guest that did not reach its shell, from the bed's message: "no boot"
    (the domain died: a death), "timeout" (alive, no shell in time) or "error" (e.g. ``xl
    create`` failed: neither)."""
    if "died during boot" in message:
        return "no boot"
    if re.search(r"no runner in \S+ after", message):
        return "timeout"
    return "error"


def is_death(b: Boot) -> bool:
    return b.outcome in ("no boot", "died")


#: The failed boots that are not deaths (the guest was alive, or Dom0 was lost under it).
NOT_DEATHS = ("timeout", "error", "no device", "dom0 lost")


def device_missing(listing: str, vendor_device: str) -> str:
    """The failure text of a passthrough boot whose guest listing (passthrough.PCI_LISTING's
    output) lacks the device; "" when the guest has it."""
    if passthrough.functions_with_id(listing, vendor_device):
        return ""
    seen = ", ".join(ln.strip() for ln in listing.splitlines() if ln.strip()) or "nothing"
    return f"no PCI function {vendor_device} in the guest's /sys/bus/pci/devices: {seen}"


def shape_table(boots: list[Boot], shapes: list[str]) -> list[str]:
    """One markdown row per shape: boots tried, reached a shell, the median seconds from ``xl
    create`` to the shell, deaths, and where each died (its RIPs as symbols, Xen's words)."""
    lines = ["| shape | boots | reached a shell | median boot s | deaths | where they died |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in shapes:
        mine = [b for b in boots if b.shape == name and b.outcome != "interrupted"]
        shell = [b.boot_seconds for b in mine if reached_shell(b)]
        median = f"{statistics.median(shell):.0f}" if shell else "-"
        deaths = [b for b in mine if is_death(b)]
        where = "; ".join(
            f"#{b.n} {b.outcome}: " + ("; ".join(b.rips) or "no vCPU dump")
            + (f" ({cause_in(b.error)})" if cause_in(b.error) else "") for b in deaths)
        others = [f"#{b.n} {b.outcome}" for b in mine if b.outcome in NOT_DEATHS]
        if others:
            where = "; ".join(filter(None, [where, "not deaths: " + ", ".join(others)]))
        lines.append(f"| {name} | {len(mine)} | {len(shell)} | {median} | {len(deaths)} | "
                     f"{where or '-'} |")
    return lines


def summary(boots: list[Boot], shape: str, load: str) -> list[str]:
    """The report: one line of counts, then one line per death with where it died."""
    deaths = [b for b in boots if is_death(b)]
    errors = [b for b in boots if b.outcome in (*NOT_DEATHS, "interrupted")]
    ok = [b.seconds for b in boots if b.outcome == "ok"]
    lost = sum(b.outcome == "dom0 lost" for b in boots)
    mean = f", ok boots {min(ok):.0f}-{max(ok):.0f} s" if ok else ""
    lines = [
        f"boots: {len(boots)} of {shape}, load: {load or 'none'}; deaths: {len(deaths)} "
        f"(no boot {sum(b.outcome == 'no boot' for b in deaths)}, "
        f"under the command {sum(b.outcome == 'died' for b in deaths)})"
        + (f", other errors: {len(errors)}" if errors else "")
        + (f", Dom0 lost {lost} times (Xen started again)" if lost else "") + mean
    ]
    for b in deaths + errors:
        where = "; ".join(b.rips) or "no vCPU dump"
        first = b.error.strip().splitlines()[0][:160] if b.error.strip() else ""
        lines.append(f"  #{b.n} {b.guest}: {b.outcome} after {b.seconds:.0f} s: {where} ({first})")
    return lines


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
