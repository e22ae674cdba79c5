"""The balloon job's one step: (state, observation, config) -> (plan, new state). Pure.

The daemon's balloon job (:class:`~guestagent.balloon.controller.BalloonController`) and
``guestagent balloon simulate`` (:func:`~guestagent.balloon.trace.simulate`) both call
:func:`step`, so a replay decides exactly what the live job decides on the same snapshots:

* read (I/O): :func:`~guestagent.balloon.signals.read_raw` and
  :func:`~guestagent.balloon.guard.read_commit`, made into an :class:`Observation` by the pure
  :func:`~guestagent.balloon.signals.build_signals` (a replay builds it from a trace line);
* decide (this module): the policy's :class:`~guestagent.balloon.common.Decision`, floored under
  overcommit mode 2 by the allocation guard's strict-commit floor, and whether to write it;
* apply (I/O): arm the guard when :attr:`Plan.arm_guard`, then
  :meth:`~guestagent.balloon.actuator.BalloonActuator.apply` writes :attr:`Plan.write_kb`,
  exactly that, or nothing when it is None.

Every limit and threshold is here or in the policy: the actuator neither clamps nor skips.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from guestagent.balloon.common import Decision, PolicyConfig, PolicyState
from guestagent.balloon.guard import CommitFigures, commit_floor_kb
from guestagent.balloon.policy import decide
from guestagent.balloon.signals import MemorySignals
from guestagent.units import MIB_KB

#: A target closer than this to the driver's own is not written (a few pages' churn is not worth
#: a hypercall and a log line) unless a follow or a limit forces it.
WRITE_MIN_KB = 4 * MIB_KB


@dataclass(frozen=True)
class Observation:
    """What one tick read: the snapshot and, under overcommit mode 2, the commit figures."""

    signals: MemorySignals
    commit: CommitFigures | None = None


@dataclass(frozen=True)
class Plan:
    """What one step decided and what apply must do."""

    #: The policy's decision, floored under overcommit mode 2.
    decision: Decision
    #: The target to write to the driver; None: nothing to write.
    write_kb: int | None
    #: The driver's target after the plan is applied (the written one, else the unchanged one).
    target_after_kb: int
    #: Arm the allocation guard before writing: the policy went below the ceiling.
    arm_guard: bool
    #: The policy's own target when the strict-commit floor raised it (for the log), else None.
    floored_from_kb: int | None = None


def commit_floored(decision: Decision, commit: CommitFigures | None, current_kb: int | None
                   ) -> Decision:
    """The decision with the guard's strict-commit floor (overcommit mode 2): a target below the
    ceiling is raised so CommitLimit stays above Committed_AS plus the margin."""
    if decision.target_kb >= decision.ceiling_kb or current_kb is None:
        return decision
    floor = commit_floor_kb(commit, current_kb)
    if floor is None or decision.target_kb >= floor:
        return decision
    target = min(floor, decision.ceiling_kb)
    return replace(decision, target_kb=target,
                   reason=f"{decision.reason}; floored at {target} KiB (strict commit)")


def write_kb(decision: Decision, driver_target_kb: int | None) -> int | None:
    """The target to write, or None: not when the driver holds it already, nor when it is within
    :data:`WRITE_MIN_KB` of the driver's unless the decision follows the toolstack or the
    driver's target is outside the limits."""
    if driver_target_kb is None:
        return decision.target_kb
    delta = decision.target_kb - driver_target_kb
    forced = decision.action == "follow" or not (
        decision.floor_kb <= driver_target_kb <= decision.ceiling_kb)
    if delta == 0 or (abs(delta) < WRITE_MIN_KB and not forced):
        return None
    return decision.target_kb


def step(state: PolicyState, observation: Observation, config: PolicyConfig
         ) -> tuple[Plan, PolicyState]:
    """One tick's decision and what to write; the state remembers the driver's target after it."""
    signals = observation.signals
    policy = decide(signals, state, config)
    current = signals.balloon_current_kb or signals.balloon_target_kb
    decision = commit_floored(policy, observation.commit, current)
    driver = signals.balloon_target_kb
    write = write_kb(decision, driver)
    after = write if write is not None else (driver if driver is not None else decision.target_kb)
    plan = Plan(
        decision=decision,
        write_kb=write,
        target_after_kb=after,
        arm_guard=policy.target_kb < policy.ceiling_kb,
        floored_from_kb=policy.target_kb if decision is not policy else None,
    )
    if decision.new_state.last_target_kb == after:
        return plan, decision.new_state
    return plan, replace(decision.new_state, last_target_kb=after)
