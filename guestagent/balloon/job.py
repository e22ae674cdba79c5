"""The balloon job of the daemon: the controller driven by the PSI trigger, an interval timer and
xenstore watches on ``memory/target`` and ``memory/static-max``; on stop the target goes back to
the ceiling.

``guestagent run`` runs it with the other jobs, ``guestagent balloon run`` alone
(:func:`guestagent.daemon.commands.run_one_job`). What the job does when its inputs fail:

* a tick that fails (bad input, InputError; or any other exception, e.g. an actuator write
  refused) is logged (``balloon_tick_failed``) and counted; after
  :data:`MAX_CONSECUTIVE_ERRORS` in a row the job gives up: the daemon stops it, which puts the
  target back at the ceiling, and ``balloon run`` exits 1. A tick that fails while the daemon's
  xenstore connection is down is not counted: the hub reconnects (and, after 300 s, stops feeding
  systemd's watchdog), and a balloon reset then could not read the ceiling either;
* the PSI trigger's descriptor reporting an error or a hang-up is dropped with one warning
  (``psi_trigger_lost``): the interval timer goes on alone;
* a refused watch on ``memory/target`` or ``memory/static-max`` is one warning
  (``xenstore_watch_failed``): that node is then read on every tick. A watched node is read
  after its watch fires, after a resume and at least every minute
  (:mod:`guestagent.balloon.xsnodes`), not at every decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from guestagent.balloon.actuator import BalloonUnavailable
from guestagent.balloon.config import ALLOW_HVM, LOCK_MEMORY, policy_config
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.memlock import Locker, lock_agent_memory, mlockall, munlockall
from guestagent.balloon.policy import default_config
from guestagent.config import Config
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger
from guestagent.xen.detect import detect_hypervisor

if TYPE_CHECKING:
    from guestagent.balloon.common import PolicyConfig
    from guestagent.balloon.signals import PsiTrigger, XenstoreReader
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext
    from guestagent.hostfs import HostFS

#: Consecutive failed ticks after which the job resets and gives up.
MAX_CONSECUTIVE_ERRORS = 3

#: ``xenstore=`` of :class:`BalloonJob`: the daemon's shared client (the default).
HUB = "hub"

#: The toolstack's nodes the job watches (relative to the domain): a write wakes a decision.
WATCHED_NODES = ("memory/target", "memory/static-max")


#: Why the job holds the ceiling in an HVM guest unless ``[balloon] allow_hvm`` (and warns when
#: it is allowed).
HVM_REASON = ("self-ballooning is proven in PV guests only: HVM guests on the test bed were "
              "lost in 3 of 16 runs (a guest kernel panic while the driver gave memory back); "
              "see docs/BALLOON.md")


def guest_is_hvm(hostfs: HostFS) -> bool:
    """``/sys/hypervisor/guest_type`` says HVM: where :func:`running_policy` holds the ceiling."""
    return detect_hypervisor(hostfs).guest_type == "HVM"


def running_policy(section: dict[str, Any], hvm: bool) -> PolicyConfig:
    """The policy the job runs: the configured one; in an HVM guest, unless ``allow_hvm``, the
    ``none`` policy (hold the toolstack's ceiling) in place of one that moves memory. On the test
    bed (Xen 4.17 under QEMU/TCG) HVM guests were lost in 3 of 16 runs of ``pressure``, each a
    guest kernel panic while the driver gave memory back; the same panic came without the agent
    (balloon moves with a zram swap like the allocation guard's), cause not established; every
    result that supports self-ballooning is from PV guests (docs/BALLOON.md)."""
    config = policy_config(section)
    if hvm and config.name != "none" and not section.get("allow_hvm", ALLOW_HVM.default):
        return default_config("none")
    return config


def say_hvm(configured: str, running: str) -> None:
    """In an HVM guest, one warning: a policy that moves memory held (``balloon_hvm_held``), or
    run because ``allow_hvm`` says so (``balloon_hvm_unproven``); nothing for ``none``."""
    log = get_logger("balloon")
    if running != configured:
        log.warning("balloon_hvm_held", guest_type="HVM", policy=configured, running=running,
                    action="the toolstack's ceiling held, no memory moved",
                    enable="[balloon] allow_hvm = true", reason=HVM_REASON)
    elif configured != "none":
        log.warning("balloon_hvm_unproven", guest_type="HVM", policy=configured,
                    allowed="[balloon] allow_hvm = true", reason=HVM_REASON)


class BalloonJob:
    name = "balloon"

    def __init__(
        self,
        locker: Locker = mlockall,
        unlocker: Callable[[], None] = munlockall,
        use_trigger: bool = True,
        xenstore: XenstoreReader | str | None = HUB,
    ) -> None:
        """``use_trigger=False``: the interval timer only (``balloon run --no-trigger``).
        ``xenstore``: the daemon's client (:data:`HUB`), or a reader of its own that cannot
        watch (a fixture tree's stand-in), or None (``--no-xenstore``)."""
        self._locker = locker
        self._unlocker = unlocker
        self._use_trigger = use_trigger
        self._xenstore = xenstore
        self._memory_locked = False
        self._ctx: JobContext | None = None
        self._ctl: BalloonController | None = None
        self._trigger: PsiTrigger | None = None
        self._timer: Timer | None = None
        self._given_up = False
        #: An HVM guest (``/sys/hypervisor/guest_type``), read at start.
        self._hvm = False
        #: (configured, running) policy names last said in an HVM guest (:func:`say_hvm`).
        self._hvm_said: tuple[str, str] | None = None

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        client = ctx.xenstore.client() if self._xenstore == HUB else self._xenstore
        assert not isinstance(client, str)
        self._hvm = guest_is_hvm(ctx.hostfs)
        self._hvm_said = None
        ctl = BalloonController(ctx.hostfs, client, self._policy(ctx.config),
                                clock=ctx.loop.now, guard_commands=ctx.host.guard_commands())
        try:
            ctl.start()
        except BalloonUnavailable as e:
            raise GuestAgentError(str(e)) from None
        self._ctl = ctl
        self._given_up = False
        try:
            self._wire(ctx, watch=client is not None and self._xenstore == HUB)
        except BaseException:  # whatever failed, what start did so far is undone
            self.stop()
            raise
        self._tick()

    def _wire(self, ctx: JobContext, watch: bool) -> None:
        """The memory lock, the PSI trigger, the watches on the toolstack's nodes and the
        interval."""
        assert self._ctl is not None
        self._lock_memory(ctx)
        self._trigger = self._ctl.arm_trigger(ctx.host) if self._use_trigger else None
        if self._trigger is not None:
            ctx.loop.add_reader(self._trigger.fileno(), lambda: self._tick(psi_fired=True),
                                priority=True, on_error=self._trigger_lost)
        watched = [path for path in WATCHED_NODES if watch and self._watch(ctx, path)]
        self._schedule()
        get_logger("balloon").info(
            "balloon_controller_start", policy=self._ctl.config.name,
            interval_s=self._ctl.interval_s,
            psi_trigger=None if self._trigger is None else self._trigger.spec,
            xenstore_watch=bool(watched), xenstore_watched=watched)
        self._say_hvm(ctx.config)

    def _policy(self, config: Config) -> PolicyConfig:
        return running_policy(config.section("balloon"), self._hvm)

    def _say_hvm(self, config: Config) -> None:
        """:func:`say_hvm` in an HVM guest, at start and when a reload changes what it said."""
        assert self._ctl is not None
        said = (str(config.section("balloon")["policy"]), self._ctl.config.name)
        if self._hvm and said != self._hvm_said:
            say_hvm(*said)
            self._hvm_said = said

    def _watch(self, ctx: JobContext, path: str) -> bool:
        """Watch one toolstack node: a write to it wakes a decision, which reads it again; until
        then decisions use the value read last (guestagent.balloon.xsnodes). A refused watch is
        one warning, and the node is read at every decision."""
        assert self._ctl is not None
        try:
            watching = ctx.xenstore.watch(path, lambda changed: self._reread_and_tick())
        except (GuestAgentError, OSError) as e:
            get_logger("balloon").warning("xenstore_watch_failed", path=path, error=str(e),
                                          fallback=f"{path} read per tick")
            return False
        if watching and self._ctl.nodes is not None:
            self._ctl.nodes.watching(path)
        return watching

    def _reread_and_tick(self) -> None:
        """The toolstack's nodes may have changed (a watch fired, the guest resumed): read them
        again at the decision made now."""
        if self._ctl is not None and self._ctl.nodes is not None:
            self._ctl.nodes.changed()
        self._tick()

    def _trigger_lost(self) -> None:
        """The trigger's descriptor errored or hung up (the loop has removed it already)."""
        get_logger("balloon").warning("psi_trigger_lost", fallback="interval timer only")
        if self._trigger is not None:
            self._trigger.close()
            self._trigger = None

    def _lock_memory(self, ctx: JobContext, config: Config | None = None) -> None:
        """Keep the agent resident while it balloons (guestagent.balloon.memlock)."""
        log = get_logger("balloon")
        section = (config or ctx.config).section("balloon")
        if not section.get("lock_memory", LOCK_MEMORY.default):
            log.info("memory_not_locked", reason="[balloon] lock_memory = false")
            return
        if not ctx.hostfs.is_real_host:
            log.debug("memory_not_locked", reason="not the real host (a --root fixture tree)")
            return
        why = lock_agent_memory(self._locker)
        if why is None:
            self._memory_locked = True
            log.info("memory_locked", how="mlockall MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT")
        else:
            log.warning("memory_not_locked", reason=why)

    def _unlock_memory(self) -> None:
        if not self._memory_locked:
            return
        self._memory_locked = False
        try:
            self._unlocker()
        except OSError as e:
            get_logger("balloon").warning("memory_unlock_failed", error=str(e))
        else:
            get_logger("balloon").info("memory_unlocked")

    def _schedule(self) -> None:
        assert self._ctx is not None and self._ctl is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._ctx.loop.call_every(self._ctl.interval_s, self._tick)

    def _tick(self, psi_fired: bool = False) -> None:
        ctl = self._ctl
        if ctl is None or self._given_up:
            return
        try:
            ctl.tick(psi_trigger_fired=psi_fired)
        except Exception as e:  # an actuator failure, a bug: counted as a failed tick
            ctl.errors += 1
            get_logger("balloon").error("balloon_tick_failed", error=str(e),
                                        kind=type(e).__name__, consecutive=ctl.errors)
        if ctl.errors and self._xenstore_down():
            ctl.errors = 0  # not bad input: the daemon's hub reconnects (module docstring)
        if ctl.errors >= MAX_CONSECUTIVE_ERRORS:
            self._give_up(ctl.errors)

    def _xenstore_down(self) -> bool:
        if self._ctx is None or self._xenstore != HUB:
            return False
        hub = self._ctx.xenstore
        return hub.lost is not None or getattr(hub.client(), "broken", None) is not None

    def _give_up(self, errors: int) -> None:
        """Too many failed ticks in a row: the daemon stops the job (its reset runs)."""
        assert self._ctx is not None
        self._given_up = True
        why = f"{errors} ticks in a row failed; the target goes back to the ceiling"
        get_logger("balloon").error("balloon_given_up", consecutive=errors,
                                    action="reset to the ceiling, balloon job stopped")
        self._ctx.end_job(self.name, why)

    def reload(self, config: Config) -> None:
        assert self._ctl is not None
        self._ctl.configure(self._policy(config))
        self._say_hvm(config)
        if self._ctx is not None:
            wanted = bool(config.section("balloon").get("lock_memory", LOCK_MEMORY.default))
            if wanted and not self._memory_locked:
                self._lock_memory(self._ctx, config)
            elif not wanted:
                self._unlock_memory()
        self._schedule()

    def republish(self, reason: str) -> None:
        """After a resume or migration the toolstack's limits may differ: read them again and
        decide now."""
        self._reread_and_tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._trigger is not None and self._ctx is not None:
            self._ctx.loop.remove_reader(self._trigger.fileno())
            self._trigger.close()
            self._trigger = None
        ctl, self._ctl = self._ctl, None
        try:
            if ctl is not None:
                get_logger("balloon").info("balloon_controller_stop", ticks=ctl.ticks)
                ctl.stop(reset=True)
        finally:
            self._unlock_memory()

    def status(self) -> dict[str, Any]:
        ctl = self._ctl
        if ctl is None:
            return {}
        last = ctl.last_decision
        return {
            "policy": ctl.config.name,
            # the configured policy held as `none` in an HVM guest ([balloon] allow_hvm)
            "held_in_hvm": self._hvm_said is not None and self._hvm_said[0] != self._hvm_said[1],
            "ticks": ctl.ticks,
            "psi_trigger": self._trigger is not None,
            # the allocation guard (guestagent.balloon.guard) armed: overcommit and zram set
            "guard_armed": ctl.guard.armed,
            # the agent's pages locked in RAM (guestagent.balloon.memlock)
            "memory_locked": self._memory_locked,
            # reads of the toolstack's nodes by decisions (watched ones are kept between writes)
            "xenstore_reads": None if ctl.nodes is None else ctl.nodes.reads,
            "target_kb": None if last is None else last.target_kb,
            "floor_kb": None if last is None else last.floor_kb,
            "ceiling_kb": None if last is None else last.ceiling_kb,
            "last_action": None if last is None else last.action,
            "last_reason": None if last is None else last.reason,
        }
