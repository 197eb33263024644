"""The part of a simulated fleet shared by all gateways of one process: where to connect, how
gateways behave, which network each one lives on, the process's accounting, and the drain at
the end of a run. Gateways keep only their own state and reach the rest through ``Fleet``,
which keeps them small. The fleet knows its gateways only as ``Gateway`` (what it asks of
them), so that this module never imports the gateway's.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import gevent

from backend.protocol.http import DEVICE_PATH
from backend.protocol.session import DeviceSession
from simulator.behaviour import Behaviour
from simulator.gateway.alerts import AlertPolicy, PoissonAlerts
from simulator.gateway.engine import Engine
from simulator.network import NetworkMix, parse_mix
from simulator.stats import FleetStats

_DEFAULT_PORTS = {"ws": 80, "wss": 443}
AUTO_SOURCES = 8  # loopback source addresses: 8 x ~28k ephemeral ports per destination
T = TypeVar("T")


class Gateway(Protocol):
    """What the fleet asks of each of its gateways."""

    @property
    def session(self) -> DeviceSession: ...

    @property
    def link_down(self) -> bool:
        """In a blackhole or offline spell of its simulated link."""
        ...


G = TypeVar("G", bound=Gateway)


@dataclass(frozen=True, slots=True)
class Target:
    """One backend endpoint: ``ws://host:port[/path]`` or ``wss://…`` (TLS)."""

    host: str
    port: int
    tls: bool
    path: str = DEVICE_PATH

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:  # a port that is no number or out of range, a bad IPv6 literal
            raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port == 0:
            raise ValueError(f"not a WebSocket URL: {url!r} (expected ws://host:port or wss://…)")
        path = parts.path if parts.path not in ("", "/") else DEVICE_PATH
        port = port or _DEFAULT_PORTS[parts.scheme]
        return cls(parts.hostname, port, parts.scheme == "wss", path)

    @property
    def netloc(self) -> str:
        default = _DEFAULT_PORTS["wss" if self.tls else "ws"]
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else f"{host}:{self.port}"


def parse_targets(hosts: str) -> list[Target]:
    """Comma- or space-separated endpoints; gateways are spread over them round-robin."""
    targets = [Target.parse(url) for url in hosts.replace(",", " ").split()]
    if not targets:
        raise ValueError("no backend URL given")
    return targets


def source_addresses(spec: str, targets: list[Target]) -> tuple[str, ...]:
    """``a,b,c``, a range ``first-last``, ``auto`` (spread over loopback when every target
    is on loopback, else the kernel's choice) or empty."""
    spec = spec.strip()
    if spec == "auto":
        if all(_is_loopback(target.host) for target in targets):
            return tuple(f"127.0.0.{n}" for n in range(1, AUTO_SOURCES + 1))
        return ()
    if "-" in spec and "," not in spec:
        first, last = (ipaddress.ip_address(part.strip()) for part in spec.split("-", 1))
        if int(last) < int(first):
            raise ValueError(f"--source-addresses {spec!r}: the range ends before it starts")
        return tuple(str(first + n) for n in range(int(last) - int(first) + 1))
    return tuple(part.strip() for part in spec.split(",") if part.strip())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def round_robin(items: Sequence[T], index: int, worker: int) -> T:
    """Gateway ``index``'s pick of ``items`` (targets, source addresses) on worker ``worker``.

    Every worker numbers its gateways from 0; started at the same place, the workers' first
    gateways would pile onto the first items, and a fleet split over workers would be spread
    worse than one process's. Workers 0, 1, 2, 3, 4, … start 0, 1/2, 1/4, 3/4, 1/8, … of the
    way in (the bit-reversed index): evenly apart however many workers run, which no worker
    knows."""
    fraction = int(f"{worker:b}"[::-1], 2) / (1 << worker.bit_length())
    return items[(index + int(fraction * len(items))) % len(items)]


def tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client context verifying the server against ``ca_file`` (None: the system's CAs).
    Gateways use it through memory buffers (``SSLContext.wrap_bio``), so it never blocks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()
    return context


@dataclass
class Fleet:
    """Everything gateways of one process share. ``credentials(device_id)`` returns its JWT."""

    targets: list[Target]
    credentials: Callable[[str], str]
    behaviour: Behaviour = field(default_factory=Behaviour)
    mix: NetworkMix = field(default_factory=lambda: parse_mix("wired"))
    stats: FleetStats = field(default_factory=FleetStats)
    prefix: str = "gw"
    source_addresses: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    """For wss:// targets: made by ``tls_context``."""
    alerts: AlertPolicy = field(default_factory=PoissonAlerts)
    engine: Engine = field(default_factory=Engine)
    """Runs the gateways; one per process, shared by its fleets."""
    rng: random.Random = field(default_factory=random.Random)
    worker: int = 0
    """This process's Locust worker index: where its round robins start (``round_robin``)."""
    # Alert ids must not repeat across runs within the stream's de-duplication window.
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    draining: bool = False
    gateways: set[Gateway] = field(default_factory=set)
    _indexes: itertools.count[int] = field(default_factory=itertools.count)

    def new_gateway(self, factory: Callable[[Fleet, int, str], G]) -> G:
        """A gateway of this fleet, made by ``factory(fleet, index, device_id)``
        (``simulator.gateway.driver.Gateway``); ``start`` it."""
        index = next(self._indexes)
        gateway = factory(self, index, f"{self.prefix}-{index:06d}")
        self.gateways.add(gateway)
        return gateway

    def target_for(self, index: int) -> Target:
        return round_robin(self.targets, index, self.worker)

    def source_for(self, index: int) -> str | None:
        sources = self.source_addresses
        return round_robin(sources, index, self.worker) if sources else None

    def pending_alerts(self) -> int:
        return sum(gateway.session.outbox_size for gateway in self.gateways)

    def held_by_links(self) -> int:
        """Unacked alerts of gateways whose simulated link is down now (a blackhole or an
        offline spell): they wait for the link, not for the backend."""
        return sum(g.session.outbox_size for g in self.gateways if g.link_down)

    def drain(self, timeout: float) -> int:
        """Stop raising alerts and wait up to ``timeout`` s for the outstanding acks; returns
        how many alerts are still unacked."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while (pending := self.pending_alerts()) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        return pending
