"""A user-space model of flaky networks for virtual gateways, pure and deterministic.

The load-test hosts have no netem, so each virtual gateway applies its own profile: it sleeps
``delay()`` around each message, waits ``handshake_delay`` before the upgrade request, and
schedules faults from ``next_fault()``. Every draw comes from a ``random.Random`` the caller
passes in, so a seeded run replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

FaultKind = Literal["drop", "blackhole", "offline"]
"""drop: a TCP reset; blackhole: the peer goes silent without closing; offline: link down."""

SECONDS_PER_HOUR = 3600.0
MIX_SLOTS = 100
"""The mix repeats every 100 indexes, so whole-percentage shares are exact per block."""


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """One link type. Times are in seconds, bandwidth in bytes/s, fault rates per hour."""

    name: str
    latency: float = 0.0  # one-way
    jitter: float = 0.0  # uniform 0..jitter added to each delay
    bandwidth: float = 0.0  # 0: unlimited
    drops_per_hour: float = 0.0
    blackholes_per_hour: float = 0.0
    blackhole_mean: float = 0.0
    offline_per_hour: float = 0.0
    offline_mean: float = 0.0
    handshake_delay: float = 0.0  # extra wait before the upgrade request: slow link setup

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("network profile name must not be empty")
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            # bool is an int; TOML "true" for a latency is a typo, not 1 second.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{self.name}: {f.name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.name}: {f.name} must be finite and >= 0, got {value!r}")
        # A fault without a duration is almost certainly a forgotten field.
        for rate, mean in (
            ("blackholes_per_hour", "blackhole_mean"),
            ("offline_per_hour", "offline_mean"),
        ):
            if getattr(self, rate) > 0 and getattr(self, mean) == 0:
                raise ValueError(f"{self.name}: {rate} > 0 needs {mean} > 0")

    def delay(self, nbytes: int, rng: random.Random) -> float:
        """Seconds for ``nbytes`` to cross the link one way: latency, jitter, serialisation."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        transfer = nbytes / self.bandwidth if self.bandwidth else 0.0
        return self.latency + rng.uniform(0.0, self.jitter) + transfer

    def arrival(
        self, now: float, nbytes: int, rng: random.Random, busy_until: float, legs: int = 1
    ) -> float:
        """When ``nbytes`` written at ``now`` arrive: after ``legs`` one-way latencies, each
        with its jitter, but never before what is still in flight (``busy_until``, TCP keeps
        order) plus their own serialisation."""
        transfer = nbytes / self.bandwidth if self.bandwidth else 0.0
        jitter = self.jitter * (
            rng.random() if legs == 1 else sum(rng.random() for _ in range(legs))
        )
        return max(now + legs * self.latency + jitter, busy_until) + transfer

    def departure(self, now: float, nbytes: int, busy_until: float) -> float:
        """When ``nbytes`` written at ``now`` have left: serialised after what is still
        leaving (``busy_until``), no latency."""
        transfer = nbytes / self.bandwidth if self.bandwidth else 0.0
        return max(now, busy_until) + transfer

    def next_fault(self, rng: random.Random) -> tuple[float, FaultKind] | None:
        """Seconds until the next fault and its kind, or None on a link that never fails.

        Racing one exponential per kind is a Poisson process of the summed rate in which each
        kind wins in proportion to its own rate.
        """
        rates: tuple[tuple[FaultKind, float], ...] = (
            ("drop", self.drops_per_hour),
            ("blackhole", self.blackholes_per_hour),
            ("offline", self.offline_per_hour),
        )
        waits = [(rng.expovariate(rate / SECONDS_PER_HOUR), kind) for kind, rate in rates if rate]
        return min(waits) if waits else None

    def fault_duration(self, kind: FaultKind, rng: random.Random) -> float:
        """Seconds the fault lasts: drops are instant, blackholes exponential, offline lognormal.

        Offline spells are heavy-tailed (mostly brief, now and then very long), hence lognormal
        with sigma 1; mu = -sigma**2 / 2 makes its mean 1 before scaling to ``offline_mean``.
        """
        if kind == "drop":
            return 0.0
        if kind == "blackhole":
            return self.blackhole_mean * rng.expovariate(1.0)
        if kind == "offline":
            return self.offline_mean * rng.lognormvariate(-0.5, 1.0)
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(get_args(FaultKind))}")

    def with_overrides(self, **fields: Any) -> NetworkProfile:
        """A copy with ``fields`` replaced, validated like a new profile (values may be TOML's)."""
        _check_keys(fields, PROFILE_FIELDS, f"network profile {self.name!r}")
        return dataclasses.replace(self, **fields)


PROFILE_FIELDS = tuple(f.name for f in dataclasses.fields(NetworkProfile))

# Typical figures from general knowledge of each link type (operator and vendor ballparks).
PROFILES: dict[str, NetworkProfile] = {
    p.name: p
    for p in (
        NetworkProfile(
            name="wired",
            latency=0.005,
            jitter=0.001,
            bandwidth=12_500_000,  # 100 Mbit/s
            drops_per_hour=0.01,
            blackholes_per_hour=0.005,
            blackhole_mean=10.0,
            offline_per_hour=0.002,
            offline_mean=60.0,
        ),
        NetworkProfile(
            name="lte",
            latency=0.040,
            jitter=0.020,
            bandwidth=2_500_000,  # 20 Mbit/s
            drops_per_hour=0.3,
            blackholes_per_hour=0.1,
            blackhole_mean=20.0,
            offline_per_hour=0.05,
            offline_mean=30.0,
            handshake_delay=0.1,
        ),
        NetworkProfile(
            name="3g",
            latency=0.120,
            jitter=0.060,
            bandwidth=250_000,  # 2 Mbit/s
            drops_per_hour=1.0,
            blackholes_per_hour=0.3,
            blackhole_mean=30.0,
            offline_per_hour=0.2,
            offline_mean=60.0,
            handshake_delay=0.5,
        ),
        NetworkProfile(
            name="gprs",
            latency=0.400,
            jitter=0.200,
            bandwidth=5_000,  # 40 kbit/s
            drops_per_hour=4.0,
            blackholes_per_hour=1.0,
            blackhole_mean=60.0,
            offline_per_hour=1.0,
            offline_mean=120.0,
            handshake_delay=1.5,
        ),
        NetworkProfile(
            name="satellite",
            latency=0.300,  # geostationary
            jitter=0.030,
            bandwidth=1_000_000,  # 8 Mbit/s
            drops_per_hour=0.2,
            blackholes_per_hour=0.5,  # rain fade
            blackhole_mean=120.0,
            offline_per_hour=0.02,
            offline_mean=600.0,
            handshake_delay=0.5,
        ),
    )
}

_TOML_KEYS = ("base", *PROFILE_FIELDS[1:])  # the table's own key is the name


def load_profiles(path: Path) -> dict[str, NetworkProfile]:
    """The profiles of a TOML file, one ``[name]`` table each; merge them over PROFILES to use.

    A table may say ``base = "lte"`` to start from a built-in profile or one defined earlier
    in the file; without a base, unspecified fields are 0 (a perfect link).
    """
    with path.open("rb") as file:
        tables = tomllib.load(file)
    loaded: dict[str, NetworkProfile] = {}
    for name, table in tables.items():
        where = f"{path}: profile {name!r}"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table, got {table!r}")
        _check_keys(table, _TOML_KEYS, where)
        overrides = dict(table)
        base_name = overrides.pop("base", None)
        known = {**PROFILES, **loaded}
        if base_name is None:
            base = NetworkProfile(name=name)
        elif base_name in known:
            base = known[base_name]
        else:
            raise ValueError(f"{where}: unknown base {base_name!r}; known: {', '.join(known)}")
        try:
            loaded[name] = base.with_overrides(name=name, **overrides)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return loaded


def _check_keys(keys: Mapping[str, object], allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in keys if key not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class NetworkMix:
    """Profiles with their shares of the fleet; shares are normalised to sum to 1."""

    entries: tuple[tuple[NetworkProfile, float], ...]
    _slots: tuple[NetworkProfile, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a network mix needs at least one profile")
        names = [profile.name for profile, _ in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"a network mix names a profile twice: {', '.join(names)}")
        for profile, share in self.entries:
            if not (math.isfinite(share) and share > 0):
                raise ValueError(f"share for {profile.name!r} must be a positive number: {share}")
        total = math.fsum(share for _, share in self.entries)
        entries = tuple((profile, share / total) for profile, share in self.entries)
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "_slots", _interleave(entries))

    def profile_for(self, index: int) -> NetworkProfile:
        """The profile of the ``index``-th gateway: the shares hold over any 100 in a row."""
        return self._slots[index % MIX_SLOTS]

    def describe(self) -> str:
        return ", ".join(f"{profile.name} {share * 100:.3g}%" for profile, share in self.entries)


def _interleave(entries: tuple[tuple[NetworkProfile, float], ...]) -> tuple[NetworkProfile, ...]:
    """MIX_SLOTS profiles in the shares' proportions, spread out rather than in runs.

    Largest-remainder rounding gives each profile its slot count; smooth weighted round-robin
    then orders the slots so that every prefix is close to the mix (70/25/5 starts
    lte, 3g, lte, lte, ...), so small fleets get a mix too.
    """
    quotas = [share * MIX_SLOTS for _, share in entries]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(entries)), key=lambda i: counts[i] - quotas[i])
    for i in by_remainder[: MIX_SLOTS - sum(counts)]:
        counts[i] += 1
    for (profile, share), count in zip(entries, counts, strict=True):
        if not count:
            raise ValueError(f"{profile.name} {share:.2%} is below the 1% resolution of a mix")
    current = [0] * len(entries)
    slots = []
    for _ in range(MIX_SLOTS):
        current = [c + count for c, count in zip(current, counts, strict=True)]
        pick = current.index(max(current))
        current[pick] -= MIX_SLOTS
        slots.append(entries[pick][0])
    return tuple(slots)


def parse_mix(spec: str, profiles: Mapping[str, NetworkProfile] = PROFILES) -> NetworkMix:
    """Parse ``"lte:70,3g:25,gprs:5"``; a bare name has share 100, shares are normalised."""
    entries = []
    for item in spec.split(","):
        name, colon, share_text = (part.strip() for part in item.partition(":"))
        if not name:
            raise ValueError(f"empty entry in network mix {spec!r}")
        if name not in profiles:
            raise ValueError(f"unknown network profile {name!r}; known: {', '.join(profiles)}")
        try:
            share = float(share_text) if colon else 100.0
        except ValueError:
            raise ValueError(f"share for {name!r} must be a number, got {share_text!r}") from None
        entries.append((profiles[name], share))
    return NetworkMix(tuple(entries))


def scenario_mix(
    spec: str, own: Mapping[str, NetworkProfile], loaded: Mapping[str, NetworkProfile]
) -> NetworkMix:
    """A scenario's mix ``spec`` over its own profiles, the named ones and the ``loaded`` ones
    of ``--network-profiles`` (later ones win)."""
    return parse_mix(spec, {**own, **PROFILES, **loaded})
