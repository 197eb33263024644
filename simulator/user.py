"""``GatewayUser``: one Locust user is one virtual gateway.

Scenarios subclass it and set ``network_mix`` and ``behaviour``; command-line options
(``--network-mix``, ``--alerts-per-hour``, ``--status-interval``) override them for a run.

Locust counts users by the greenlets in its runner's user group (``-u``, the web UI's user
count, ramp-downs and ``stop`` all go through it), but a running greenlet per gateway costs
~8 KiB and a wake-up per read. So a user's greenlet is created and added to that group but
never started: an unstarted greenlet has no stack. The gateway itself runs in the process's
``Engine``. When Locust kills the greenlet (a ramp-down, the end of the run), its link stops
the gateway, which leaves with a close frame; the group drops the greenlet, and the count.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gevent
from gevent.pool import Group
from locust import User
from locust.env import Environment
from locust.runners import WorkerRunner

from backend.bus.auth import issue_device_token
from simulator import plugin
from simulator.behaviour import Behaviour
from simulator.checks import RunRecord
from simulator.fleet import Fleet, Target, parse_targets, source_addresses, tls_context
from simulator.gateway.alerts import AlertPolicy, PoissonAlerts
from simulator.gateway.driver import Gateway
from simulator.network import NetworkMix, NetworkProfile, load_profiles, scenario_mix
from simulator.verdicts import Check


def _never_run(user: User) -> None:
    """The user's task and its greenlet's body, for Locust's bookkeeping: never called."""
    raise AssertionError("a gateway user's greenlet is never started")


class GatewayUser(User):
    abstract = True
    tasks = [_never_run]  # noqa: RUF012 (Locust declares it); Locust warns without a task
    network_mix: ClassVar[str] = "wired"
    behaviour: ClassVar[Behaviour] = Behaviour()
    network_profiles: ClassVar[Mapping[str, NetworkProfile]] = {}
    """The scenario's own profiles, usable in ``network_mix`` next to the named ones."""
    shard_options: ClassVar[Mapping[str, str]] = {}
    """Settings of the embedded shards this scenario needs; ``--shard-option`` overrides."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.gateway = fleet_for(environment, type(self)).new_gateway(Gateway)

    @classmethod
    def alert_policy(cls, options: Any) -> AlertPolicy:
        """How the scenario's gateways raise alerts (a household's problems by default)."""
        return PoissonAlerts()

    @classmethod
    def checks(cls, record: RunRecord) -> list[Check]:
        """The scenario's verdict checks on the finished run (none by default)."""
        return []

    def start(self, group: Group) -> gevent.Greenlet[..., object]:
        """Count in ``group`` as Locust's users do, run in the engine (see the module's doc)."""
        placeholder: gevent.Greenlet[..., object] = gevent.Greenlet(_never_run, self)
        placeholder.rawlink(self._stopped)
        group.add(placeholder)
        self._greenlet, self._group = placeholder, group
        self.gateway.start()
        return placeholder

    def _stopped(self, _: object) -> None:
        self.gateway.stop()


def fleet_for(environment: Environment, user_class: type[GatewayUser]) -> Fleet:
    fleets = plugin.run_state(environment).fleets
    if user_class not in fleets:
        fleets[user_class] = make_fleet(environment, user_class)
    return fleets[user_class]


def make_fleet(environment: Environment, user_class: type[GatewayUser]) -> Fleet:
    """The fleet of one scenario class in this process, from its defaults and the options."""
    options = environment.parsed_options
    if not environment.host:
        raise ValueError("no backend: give --host ws://… (or run without it on master/local)")
    targets = parse_targets(environment.host)
    secret = getattr(options, "jwt_secret", "")
    if not secret:
        raise ValueError("no --jwt-secret (env LOCUST_JWT_SECRET): needed to sign device tokens")
    worker = environment.runner.worker_index if isinstance(environment.runner, WorkerRunner) else 0
    seed = getattr(options, "seed", None)
    stats = plugin.run_state(environment).stats
    stats.request_hook = environment.events.request.fire
    behaviour = _behaviour(user_class.behaviour, options)
    fleet = Fleet(
        targets,
        lambda device_id: issue_device_token(device_id, secret),
        behaviour=behaviour,
        mix=_mix(user_class, options),
        alerts=user_class.alert_policy(options),
        engine=plugin.run_state(environment).engine,
        stats=stats,
        prefix=f"{getattr(options, 'fleet_prefix', 'gw')}-{user_class.__name__.lower()}-w{worker}",
        source_addresses=source_addresses(getattr(options, "source_addresses", ""), targets),
        ssl_context=_tls_context(targets, getattr(options, "ca_file", "")),
        rng=random.Random(None if seed is None else seed + worker),
        worker=worker,
    )
    if run_id := getattr(options, "fleet_run_id", ""):
        fleet.run_id = run_id
    return fleet


def _mix(user_class: type[GatewayUser], options: Any) -> NetworkMix:
    spec = getattr(options, "network_mix", None) or user_class.network_mix
    path = getattr(options, "network_profiles", "")
    return scenario_mix(
        spec, user_class.network_profiles, load_profiles(Path(path)) if path else {}
    )


def _behaviour(base: Behaviour, options: Any) -> Behaviour:
    overrides = {
        name: value
        for name in ("alerts_per_hour", "status_interval", "ping_interval", "keepalive_timeout")
        if (value := getattr(options, name, None)) is not None
    }
    return dataclasses.replace(base, **overrides)


def _tls_context(targets: list[Target], ca_file: str) -> ssl.SSLContext | None:
    if not any(target.tls for target in targets):
        return None
    return tls_context(ca_file or None)
