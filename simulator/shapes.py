"""Load shapes of the SRE scenarios, and what lets those scenarios live in ``scenarios/``
without joining the whole-fleet run.

``locust -f scenarios`` loads every file of the directory, runs every user class in it and
the first shape it finds. The SRE scenarios are experiments of their own (a shard kill, an
alert flood), so their classes stay abstract unless their file is named with ``-f``.

Every shape reads Locust's common options: ``-u`` gateways, ``-r`` per second, ``-t`` the
whole run (a hard limit Locust also enforces).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

from locust import LoadTestShape, argument_parser, events
from locust.env import Environment

from backend.client.operator import OperatorClient, OperatorError
from simulator import plugin
from simulator.checks import ROLLOUT_CREATED, ROLLOUT_FINISHED, SHARD_KILLED
from simulator.operator import OperatorActivity
from simulator.plugin import RunState
from simulator.remote import RemoteActivity
from simulator.rollout import RolloutPlan, RolloutWatch

log = logging.getLogger("fleet.simulator")

Tick = tuple[int, float] | None
ROLLOUT_SETTLE = 3.0  # s run on after a rollout finished: the last reports come in


def named_explicitly(path: str) -> bool:
    """Whether ``-f`` (or LOCUST_LOCUSTFILE) names the file ``path`` itself, not a directory
    holding it. A worker fetching its locustfile from the master (``-f -``) runs it."""
    # Locust's annotation says a tuple; it returns the parsed Namespace.
    parsed: Any = argument_parser.parse_locustfile_option(sys.argv[1:])
    option = parsed.locustfile or ""
    if option.strip() == "-":
        return True
    named = {Path(item.strip()).resolve() for item in option.split(",") if item.strip()}
    return Path(path).resolve() in named


class FleetShape(LoadTestShape):
    """Ramp to ``-u`` gateways at ``-r`` a second and hold them until ``-t``."""

    abstract = True  # LoadTestShape's metaclass makes every subclass concrete unless told
    use_common_options = True

    # Locust's LoadTestShape is unannotated: these two type it once for every shape here.
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def get_run_time(self) -> float:
        """Seconds since the test started (Locust's clock)."""
        run_time: float = super().get_run_time()  # type: ignore[no-untyped-call]
        return run_time

    @property
    def environment(self) -> Environment:
        assert self.runner is not None
        return self.runner.environment

    def users(self) -> tuple[int, float, float]:
        """(-u, -r, -t); -t 0 (not given) holds until stopped."""
        options = self.environment.parsed_options
        assert options is not None
        return options.num_users or 1, options.spawn_rate or 1.0, float(options.run_time or 0)

    def tick(self) -> Tick:
        users, rate, run_time = self.users()
        if run_time and self.get_run_time() >= run_time:
            return None
        return users, rate


class FullFleetShape(FleetShape):
    """A fleet shape whose experiment starts once the whole fleet is up."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.full_at: float | None = None

    def up_for(self, now: float) -> float | None:
        """Seconds since every gateway was connected (or the ramp overran by a minute);
        None before."""
        users, rate, _ = self.users()
        if self.full_at is None:
            connected = plugin.totals(self.environment)["connected"]
            if connected >= users or now > users / rate + 60:
                self.full_at = now
        return None if self.full_at is None else now - self.full_at


class StormShape(FullFleetShape):
    """Ramp, then once every gateway is connected (or the ramp overran by a minute) wait
    ``--kill-after`` s, SIGKILL the first shard of the embedded stack and stop
    ``--recovery-time`` s later."""

    abstract = True  # scenario files import it: only their own subclass may run

    def __init__(self) -> None:
        super().__init__()
        self.killed_at: float | None = None

    def tick(self) -> Tick:
        users, rate, _ = self.users()
        options = self.environment.parsed_options
        assert options is not None
        now = self.get_run_time()
        if self.killed_at is not None:
            return None if now >= self.killed_at + options.recovery_time else (users, rate)
        up_for = self.up_for(now)
        if up_for is not None and up_for >= options.kill_after:
            self.killed_at = now
            kill_first_shard(plugin.run_state(self.environment))
        return super().tick()


class RolloutShape(FullFleetShape):
    """Ramp, then once every gateway is connected wait ``--rollout-after`` s, roll an update
    out to the whole fleet through the embedded stack's operator API, and stop a few seconds
    after the rollout finished (or at -t)."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.watch: RolloutWatch | None = None

    def tick(self) -> Tick:
        options = self.environment.parsed_options
        assert options is not None
        state = plugin.run_state(self.environment)
        now = self.get_run_time()
        watch = self.watch
        if watch is None:
            up_for = self.up_for(now)
            if up_for is not None and up_for >= options.rollout_after:
                self.watch = try_rollout(
                    state,
                    RolloutPlan(
                        max_concurrent=options.rollout_max_concurrent, rate=options.rollout_rate
                    ),
                )
        elif watch.finished_at is not None:
            state.timeline.mark(ROLLOUT_FINISHED, watch.finished_at)
            if state.elapsed() >= watch.finished_at + ROLLOUT_SETTLE:
                return None
        return super().tick()


def stack_operator(state: RunState) -> OperatorClient:
    """The embedded stack's operator API, as its one operator."""
    stack = state.stack
    assert stack is not None  # the scenario refuses to start without it
    return OperatorClient(stack.api_url, stack.operator_token)


def start_rollout(state: RunState, plan: RolloutPlan) -> RolloutWatch:
    """Create the rollout now and watch it in a greenlet of its own."""
    watch = RolloutWatch(stack_operator(state), plan)
    watch.create(state.elapsed())
    assert watch.created_at is not None
    state.rollout = watch
    state.timeline.mark(ROLLOUT_CREATED, watch.created_at)
    log.info("update rollout %s: %d devices", watch.rollout_id, watch.status["total"])
    state.start_scenario_task(watch.watch, state.elapsed)
    return watch


def try_rollout(state: RunState, plan: RolloutPlan) -> RolloutWatch | None:
    """``start_rollout``, or None (the shape tries again next tick) when the API refused it:
    on a loaded host the fleet state may not know the gateways yet ("the selector matches no
    device"), and an exception would end the shape, and with it the run."""
    try:
        return start_rollout(state, plan)
    except OperatorError as exc:
        log.warning("update rollout not created yet (%s); trying again", exc)
        return None


def kill_first_shard(state: RunState) -> None:
    """SIGKILL shard-a: no drain, no close frames, as when a host dies."""
    stack = state.stack
    assert stack is not None  # the scenario refuses to start without it
    name, pid = stack.shard_names[0], stack.pids()["shards"][0]
    os.kill(pid, signal.SIGKILL)
    state.timeline.mark(SHARD_KILLED, state.elapsed())
    log.info("reconnect storm: killed %s (pid %d)", name, pid)


class DayShape(FleetShape):
    """A day compressed into ``-t``: the fleet ramps up, holds, dips to 70% in the evening
    (those gateways stop; new ones join when it comes back) and holds to the end. From 20%
    of the day an operator runs commands and shells on random online devices; at 25% an
    update goes out to a fifth of the fleet."""

    abstract = True
    OPERATOR_FROM, ROLLOUT_AT = 0.2, 0.25  # shares of the day

    def __init__(self) -> None:
        super().__init__()
        self.operating = self.rolling_out = False

    def tick(self) -> Tick:
        users, rate, run_time = self.users()
        base = super().tick()
        if base is None or not run_time:
            return base
        state = plugin.run_state(self.environment)
        share = self.get_run_time() / run_time
        if share >= self.OPERATOR_FROM and not self.operating:
            self.operating = True
            start_operator(state)
        if share >= self.ROLLOUT_AT and not self.rolling_out:
            plan = RolloutPlan(percent=20, max_concurrent=20, rate=5)
            self.rolling_out = try_rollout(state, plan) is not None
        return (round(users * 0.7), rate) if 0.5 <= share < 0.7 else base


class RemoteShape(FleetShape):
    """Ramp and hold; from 10% of ``-t`` ``OPERATORS`` operators each fetch pages through port
    forwards and copy files on random online gateways, one stream after another."""

    abstract = True
    REMOTE_FROM = 0.1
    OPERATORS = 3

    def __init__(self) -> None:
        super().__init__()
        self.operating = False

    def tick(self) -> Tick:
        _users, _rate, run_time = self.users()
        base = super().tick()
        due = bool(run_time) and self.get_run_time() >= self.REMOTE_FROM * run_time
        if base is not None and due and not self.operating:
            self.operating = True
            state = plugin.run_state(self.environment)
            for _ in range(self.OPERATORS):
                fire = events.request.fire
                activity = RemoteActivity(stack_operator(state), fire, random.Random())
                state.start_scenario_task(activity.run)
        return base


def start_operator(state: RunState) -> None:
    """An operator's commands and shells, reported through Locust's request hook."""
    activity = OperatorActivity(stack_operator(state), events.request.fire, random.Random())
    state.start_scenario_task(activity.run)


def needs_embedded_stack(selected: bool, scenario: str) -> None:
    """When the scenario's file is the one run: refuse ``--host`` before any gateway starts."""
    if selected:
        events.init.add_listener(
            lambda environment, **_: require_embedded_stack(environment, scenario)
        )


def require_embedded_stack(environment: Environment, scenario: str) -> None:
    """Stop before any gateway starts: ``scenario`` kills or reads the stack's processes."""
    if plugin.owns_stack(environment) and plugin.run_state(environment).stack is None:
        sys.exit(f"the {scenario} needs the embedded stack: run it without --host")
