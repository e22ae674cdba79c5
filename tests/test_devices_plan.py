"""The devices job's decisions (guestagent/devices/plan.py) as pure functions: plain data in, a plan
of steps out. No file system, no fixture tree, no HostFS: every model here is built by hand.

The rules under test: the protected root-file-system and default-route devices are never rebound
(and every device is refused when that cannot be told); node overrides and Dom0 hints and which
wins; the hotplug rules (which journal records an event makes stale, what is evaluated again);
coexistence with irqbalance (IRQs left to it, or pinned); the IRQ and hugepage steps.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from guestagent.devices.config import DevicesConfig
from guestagent.devices.irqbalance import IrqbalanceStatus, IrqDecision, decide
from guestagent.devices.model import DeviceHint, NodeInfo, PciDevice
from guestagent.devices.plan import (
    NO_PROTECTION_READ,
    TAINT_NOTE,
    DeviceModel,
    DevicePlan,
    DevicesContext,
    DevicesState,
    ForgetRecords,
    HugepageNode,
    HugepageNodeDone,
    IrqRead,
    Note,
    Rebind,
    ReserveHugepages,
    SetIrqAffinity,
    Step,
    WriteNumaNode,
    decide_device,
    decide_tail,
    hotplug_forgets,
    hotplug_reevaluates,
    hugepages_path,
    irq_affinity_path,
    numa_node_path,
)
from guestagent.devices.protect import Protected
from guestagent.undo import Change

VF = "0000:00:05.0"
BLK = "0000:00:04.0"
NET = "0000:00:03.0"
NODES = NodeInfo(online=[0, 1], cpus={0: [0, 1], 1: [2, 3]}, online_cpus=[0, 1, 2, 3])
PIN = IrqDecision(True, "pin", "irqbalance is not running: IRQs pinned")
PROTECTED = Protected(reasons={BLK: "holds the root file system",
                               NET: "carries the default route (eth0)"})
GiB = 1 << 30


def device(bdf: str = VF, numa_node: int = -1, irqs: tuple[int, ...] = (29, 30),
           driver: str | None = "ixgbevf", problems: list[str] | None = None) -> PciDevice:
    return PciDevice(bdf=bdf, vendor=0x8086, device=0x10ED, pci_class=0x020000, driver=driver,
                     numa_node=numa_node, local_cpus=[0, 1, 2, 3], msi_irqs=list(irqs),
                     msi_modes={}, legacy_irq=0, problems=problems or [])


def model(dev: PciDevice | None = None, affinity: str = "0-3",
          pools: dict[int, HugepageNode] | None = None) -> DeviceModel:
    dev = dev or device()
    cpus = [0, 1, 2, 3] if affinity == "0-3" else [int(c) for c in affinity.split(",")]
    reads = {i: IrqRead(i, "ok", text=affinity, cpus=cpus) for i in dev.irqs}
    return DeviceModel(device=dev, irqs=reads, hugepages=pools or {})


def context(dom0: dict[str, int] | None = None, overrides: dict[str, int] | None = None,
            irq: IrqDecision = PIN, protected: Protected | None = PROTECTED) -> DevicesContext:
    return DevicesContext(
        nodes=NODES,
        dom0_hints={b: DeviceHint(b, vnode=n) for b, n in (dom0 or {}).items()},
        config_hints={b: DeviceHint(b, vnode=n) for b, n in (overrides or {}).items()},
        irq=irq,
        protected=protected,
    )


def plan_for(dev_model: DeviceModel | None = None, ctx: DevicesContext | None = None,
             state: DevicesState | None = None, config: DevicesConfig | None = None,
             apply: bool = True) -> DevicePlan:
    return decide_device(dev_model or model(), ctx or context(dom0={VF: 1}),
                         state or DevicesState(), config or DevicesConfig(), apply)


def notes(steps: tuple[Step, ...] | list[Step], category: str) -> list[str]:
    return [s.text for s in steps if isinstance(s, Note) and s.category == category]


def of(steps: tuple[Step, ...] | list[Step], kind: type) -> list[Any]:
    return [s for s in steps if isinstance(s, kind)]


def record(kind: str, path: str, previous: str, applied: str, bdf: str = VF) -> Change:
    return Change(kind=kind, path=path, bdf=bdf, previous=previous, applied=applied)


# ---------------------------------------------------------------- node: overrides and hints


def test_a_dom0_hint_places_the_device_and_writes_numa_node_then_pins_its_vectors() -> None:
    plan = plan_for()
    assert (plan.node, plan.source) == (1, "dom0")
    (write,) = of(plan.head, WriteNumaNode)
    assert (write.bdf, write.node, write.previous, write.source) == (VF, 1, -1, "dom0")
    assert write.then == ()  # rebind is off by default
    assert of(plan.tail, SetIrqAffinity) == [
        SetIrqAffinity(VF, 29, "2-3", "0-3"), SetIrqAffinity(VF, 30, "2-3", "0-3")]


def test_the_kernel_wins_over_dom0_and_dom0_over_the_override() -> None:
    ctx = context(dom0={VF: 1}, overrides={VF: 0})
    kernel = plan_for(model(device(numa_node=0)), ctx)
    assert (kernel.node, kernel.source) == (0, "kernel")
    assert of(kernel.head, WriteNumaNode) == [], "never over a node the kernel found itself"
    dom0 = plan_for(model(), ctx)
    assert (dom0.node, dom0.source) == (1, "dom0")
    override = plan_for(model(), context(overrides={VF: 0}))
    assert (override.node, override.source) == (0, "config")
    assert of(override.head, WriteNumaNode)[0].source == "config"
    assert of(override.tail, SetIrqAffinity)[0].wanted == "0-1"


def test_no_node_anywhere_is_a_skip_and_nothing_else() -> None:
    plan = plan_for(ctx=context())
    assert (plan.node, plan.source, plan.tail) == (None, "unknown", ())
    assert notes(plan.head, "skipped") == [
        "no node known: kernel numa_node is -1, no Dom0 hint, no config override"]
    assert [s for s in plan.head if not isinstance(s, Note)] == []


def test_a_kernel_node_that_is_not_online_is_noted_and_the_hint_used() -> None:
    plan = plan_for(model(device(numa_node=3)))
    assert (plan.node, plan.source) == (1, "dom0")
    assert "kernel numa_node 3 is not an online node" in notes(plan.head, "skipped")


def test_a_numa_node_we_wrote_counts_as_minus_one_so_a_moved_hint_rewrites_it() -> None:
    ours = DevicesState(records={
        numa_node_path(VF): record("numa_node", numa_node_path(VF), "-1", "1")})
    moved = plan_for(model(device(numa_node=1)), context(dom0={VF: 0}), ours)
    (write,) = of(moved.head, WriteNumaNode)
    assert (write.node, write.previous) == (0, 1)
    assert "numa_node = 1 (was -1)" in notes(moved.head, "applied")
    same = plan_for(model(device(numa_node=1)), context(dom0={VF: 1}), ours)
    assert of(same.head, WriteNumaNode) == [] and same.source == "dom0"
    # The hint is gone: the node we wrote stays the answer, with a note.
    gone = plan_for(model(device(numa_node=1)), context(), ours)
    assert (gone.node, gone.source) == (1, "kernel")
    assert any("written by guestagent earlier" in n for n in notes(gone.head, "skipped"))


def test_writing_numa_node_off_by_configuration_still_pins_the_vectors() -> None:
    plan = plan_for(config=DevicesConfig(write_numa_node=False))
    assert of(plan.head, WriteNumaNode) == []
    assert notes(plan.head, "skipped") == [
        "numa_node left at -1: writing it is off by configuration"]
    assert len(of(plan.tail, SetIrqAffinity)) == 2


def test_unusable_inputs_are_failed_lines_with_a_log_event() -> None:
    plan = plan_for(model(device(problems=["numa_node: expected an integer"])))
    (note,) = [s for s in plan.head if isinstance(s, Note) and s.category == "failed"]
    assert note.event == "device_input_unusable"
    assert dict(note.fields) == {"bdf": VF, "problem": "numa_node: expected an integer"}


def test_a_dry_run_plans_lines_and_changes_nothing() -> None:
    plan = plan_for(config=DevicesConfig(rebind=True, hugepages_2m_per_node=64),
                    dev_model=model(pools={1: HugepageNode(0, mem_total=4 * GiB)}), apply=False)
    steps = plan.head + plan.tail
    assert all(isinstance(s, Note) for s in steps), steps
    assert notes(steps, "planned") == [
        f"write numa_node = 1 ({TAINT_NOTE})",
        "rebind the driver after writing numa_node",
        "IRQ 29: smp_affinity_list 0-3 -> 2-3",
        "IRQ 30: smp_affinity_list 0-3 -> 2-3",
        "hugepages: node 1 nr_hugepages 0 -> 64",
    ]


# ---------------------------------------------------------------- rebind and protection


def test_rebind_rides_on_the_numa_node_write() -> None:
    (write,) = of(plan_for(config=DevicesConfig(rebind=True)).head, WriteNumaNode)
    assert write.then == (Rebind(VF, "ixgbevf", (2, 3)),)  # node 1's CPUs


@pytest.mark.parametrize(("bdf", "reason"), [
    (BLK, "holds the root file system"),
    (NET, "carries the default route (eth0)"),
])
def test_the_root_and_default_route_devices_are_never_rebound(bdf: str, reason: str) -> None:
    plan = plan_for(model(device(bdf=bdf)), context(overrides={bdf: 1}),
                    config=DevicesConfig(rebind=True))
    (write,) = of(plan.head, WriteNumaNode)
    (refused,) = write.then
    assert isinstance(refused, Note) and refused.category == "skipped"
    assert refused.text == f"rebind refused: {reason}"
    assert refused.event == "rebind_refused" and dict(refused.fields)["reason"] == reason


def test_every_rebind_is_refused_when_protection_cannot_be_told() -> None:
    unknown = Protected(unknown=["cannot tell which device carries the default route (x)"])
    for protected, why in ((unknown, "cannot tell which device carries the default route"),
                           (None, NO_PROTECTION_READ)):
        plan = plan_for(ctx=context(dom0={VF: 1}, protected=protected),
                        config=DevicesConfig(rebind=True))
        (write,) = of(plan.head, WriteNumaNode)
        assert of(write.then, Rebind) == []
        assert why in notes(write.then, "skipped")[0]


def test_no_rebind_without_a_driver_or_without_a_write() -> None:
    (write,) = of(plan_for(model(device(driver=None)), config=DevicesConfig(rebind=True)).head,
                  WriteNumaNode)
    assert notes(write.then, "skipped") == [
        "rebind: no driver bound; it will probe on the new node"]
    kernel = plan_for(model(device(numa_node=1)), config=DevicesConfig(rebind=True))
    assert of(kernel.head, WriteNumaNode) == [] and of(kernel.head, Rebind) == []


# ---------------------------------------------------------------- irqbalance coexistence

RUNNING = IrqbalanceStatus(running=True, pid=42, found_by="process", cmdline=["irqbalance"])
OURS = IrqbalanceStatus(running=True, pid=42, found_by="process",
                        cmdline=["irqbalance", "-l", "guestagent devices irqbalance-policy"])
STOPPED = IrqbalanceStatus(running=False)


@pytest.mark.parametrize(("mode", "status", "pinned"), [
    ("auto", STOPPED, True),
    ("auto", RUNNING, False),  # left to irqbalance, which reads the numa_node we write
    ("auto", OURS, True),  # its policy script bans what we pin
    ("defer", STOPPED, False),
    ("pin", RUNNING, True),
])
def test_irqbalance_decides_whether_the_vectors_are_ours(
        mode: Any, status: IrqbalanceStatus, pinned: bool) -> None:
    decision = decide(mode, status)
    plan = plan_for(ctx=context(dom0={VF: 1}, irq=decision))
    assert len(of(plan.head, WriteNumaNode)) == 1, "numa_node is written either way"
    assert bool(of(plan.tail, SetIrqAffinity)) is pinned
    if not pinned:
        assert notes(plan.tail, "skipped") == [f"IRQs: {decision.reason}"]


# ---------------------------------------------------------------- IRQ steps


def test_vectors_already_on_the_node_are_a_skip_unless_we_put_them_there() -> None:
    on_node = model(affinity="2,3")
    plan = plan_for(on_node)
    assert of(plan.tail, SetIrqAffinity) == []
    assert notes(plan.tail, "skipped") == ["IRQ 29: already on 2-3", "IRQ 30: already on 2-3"]
    path = irq_affinity_path(29)
    ours = DevicesState(records={path: record("irq_affinity", path, "0-3", "2-3")})
    assert notes(plan_for(on_node, state=ours).tail, "skipped") == ["IRQ 30: already on 2-3"]


def test_a_vector_not_requested_yet_is_pending_and_a_missing_file_a_failure() -> None:
    dev = device(irqs=(29, 30, 31))
    reads = {29: IrqRead(29, "not_requested"), 30: IrqRead(30, "no_file"),
             31: IrqRead(31, "unreadable", error="/proc/irq/31/smp_affinity_list: garbage")}
    plan = plan_for(DeviceModel(device=dev, irqs=reads))
    (pending,) = [s for s in plan.tail if isinstance(s, Note) and s.pending_irq is not None]
    assert pending.pending_irq == 29 and pending.category == "skipped"
    assert pending.text.startswith("IRQ 29: not requested by the driver yet")
    assert notes(plan.tail, "failed") == [
        "IRQ 30: /proc/irq/30/smp_affinity_list does not exist",
        "IRQ 31: /proc/irq/31/smp_affinity_list: garbage"]


def test_records_of_vectors_the_device_lost_are_forgotten_before_pinning() -> None:
    lost = irq_affinity_path(31)
    state = DevicesState(records={lost: record("irq_affinity", lost, "0-3", "2-3")})
    plan = plan_for(state=state)
    assert plan.tail[0] == ForgetRecords((lost,))
    assert of(plan_for(state=state, apply=False).tail, ForgetRecords) == []


def test_a_node_without_online_cpus_fails_the_irqs() -> None:
    ctx = context(dom0={VF: 1})
    ctx = DevicesContext(nodes=NodeInfo([0, 1], {0: [0, 1], 1: []}, [0, 1]),
                         dom0_hints=ctx.dom0_hints, config_hints={}, irq=PIN)
    plan = plan_for(ctx=ctx)
    assert notes(plan.tail, "failed") == ["IRQs: node 1 has no online CPUs"]


def test_a_device_without_vectors_needs_no_irq_step() -> None:
    plan = plan_for(model(device(irqs=())))
    assert notes(plan.tail, "skipped") == ["IRQs: the device has none allocated"]


def test_decide_tail_plans_the_vectors_of_the_device_as_read_after_a_rebind() -> None:
    after = model(device(numa_node=1, irqs=(40,)))
    steps = decide_tail(after, 1, context(dom0={VF: 1}), DevicesState(), DevicesConfig(), True)
    assert steps == (SetIrqAffinity(VF, 40, "2-3", "0-3"),)


# ---------------------------------------------------------------- hugepages


def hugepage_plan(pool: HugepageNode, done: frozenset[int] = frozenset(),
                  apply: bool = True) -> tuple[Step, ...]:
    return plan_for(model(pools={1: pool}), state=DevicesState(hugepage_nodes=done),
                    config=DevicesConfig(hugepages_2m_per_node=512), apply=apply).tail[2:]


def test_hugepages_reserved_once_per_node_and_never_beyond_half_of_it() -> None:
    assert hugepage_plan(HugepageNode(0, mem_total=2 * GiB)) == (ReserveHugepages(1, 512, 0),)
    assert ReserveHugepages(1, 512, 0).path == hugepages_path(1)
    assert hugepage_plan(HugepageNode(0, mem_total=2 * GiB), done=frozenset({1})) == ()
    enough = hugepage_plan(HugepageNode(600))
    assert notes(enough, "skipped") == ["hugepages: node 1 already has 600 >= 512"]
    assert of(enough, HugepageNodeDone) == [HugepageNodeDone(1)]
    too_many = hugepage_plan(HugepageNode(0, mem_total=GiB))
    assert "more than half of the node's 1024 MiB" in notes(too_many, "failed")[0]
    assert of(too_many, HugepageNodeDone) == [HugepageNodeDone(1)]
    unknown_size = hugepage_plan(HugepageNode(0))
    assert unknown_size == (ReserveHugepages(1, 512, 0),), "an unknown size is the kernel's call"
    unreadable = hugepage_plan(HugepageNode(None, "nr_hugepages: expected an integer"))
    assert notes(unreadable, "failed") == ["hugepages: nr_hugepages: expected an integer"]
    assert of(unreadable, HugepageNodeDone) == []


# ---------------------------------------------------------------- hotplug


def test_hotplug_remove_forgets_every_record_of_the_device_only() -> None:
    irq, numa = irq_affinity_path(29), numa_node_path(VF)
    other = irq_affinity_path(40)
    state = DevicesState(records={
        irq: record("irq_affinity", irq, "0-3", "2-3"),
        numa: record("numa_node", numa, "-1", "1"),
        other: record("irq_affinity", other, "0-3", "0-1", bdf=BLK),
    })
    assert hotplug_forgets("remove", VF, False, state) == (irq, numa)
    # unbind: the driver freed its vectors, but only if none is bound again already.
    assert hotplug_forgets("unbind", VF, True, state) == (irq,)
    assert hotplug_forgets("unbind", VF, False, state) == ()
    assert hotplug_forgets("bind", VF, True, state) == ()
    assert hotplug_forgets("add", VF, True, state) == ()


@pytest.mark.parametrize(("action", "expected"), [
    ("add", (True, True)), ("bind", (False, True)), ("unbind", (False, True)),
    ("remove", (False, False)), ("change", (False, False)),
])
def test_hotplug_reevaluates_the_device_and_rereads_hints_on_add(
        action: str, expected: tuple[bool, bool]) -> None:
    assert hotplug_reevaluates(action) == expected


# ---------------------------------------------------------------- purity


def test_decide_changes_none_of_its_inputs_and_gives_the_same_plan_twice() -> None:
    path = irq_affinity_path(31)
    state = DevicesState(records={path: record("irq_affinity", path, "0-3", "2-3")},
                         hugepage_nodes=frozenset({0}))
    args = (model(pools={1: HugepageNode(0, mem_total=4 * GiB)}), context(dom0={VF: 1}), state,
            DevicesConfig(rebind=True, hugepages_2m_per_node=8), True)
    before = copy.deepcopy(args)
    first = decide_device(*args)
    assert decide_device(*args) == first
    assert args == before
