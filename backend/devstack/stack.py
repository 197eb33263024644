"""A local stack for the demo, tests and load scenarios: one NATS server (or a 3-node NATS
cluster), N shard processes and, optionally, M HAProxy processes in front of them on one
public port.

Synchronous on purpose (subprocess, urllib, sleep): it must also run inside a gevent-patched
Locust process, where no asyncio loop can be started. Started in dependency order (NATS,
shards, HAProxy) and stopped in reverse.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import secrets
import string
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from backend.bus import natsauth
from backend.bus.auth import issue_device_token
from backend.devstack import process
from backend.devstack.natsserver import NatsCluster, NatsServer
from backend.devstack.prometheus import ALERT_RULES, PrometheusServer
from backend.shard.config import ShardConfig, default_max_connections
from haproxy import runtime
from haproxy.config import (
    HaproxyConfig,
    check,
    ephemeral_ports,
    find_haproxy,
    max_maxconn,
    write,
)
from haproxy.tls import make_local_pki

# Set by the stack itself: given again in shard_options they would be ignored (CLI arguments
# beat environment variables) or, for the secret, break ``LocalStack.token``.
RESERVED_OPTIONS = frozenset({
    "host", "port", "shard_id", "nats_urls", "nats_credentials", "stream_replicas",
    "jwt_secret", "ready_file",
})  # fmt: skip
NATS_NODES = (1, 3)
"""One server, or a cluster that keeps every stream on all 3 nodes (it survives losing one)."""
DEFAULT_SHARDS = 2
SHARD_NAMES = [f"shard-{letter}" for letter in string.ascii_lowercase]
# A server line's health check got 200 from the shard's /healthz (proxy "shards", state L7OK).
CHECK_PASSED = re.compile(
    r'^haproxy_server_check_status\{proxy="shards",server="([^"]+)",state="L7OK"\} (\S+)$', re.M
)


def option_key(name: str) -> str:
    """``max-connections`` and ``max_connections`` both name the ``--max-connections`` option."""
    return name.lower().replace("-", "_")


@dataclass
class StackConfig:
    run_dir: Path
    shards: int = 2
    nats_nodes: int = 1
    """NATS servers: 1, or 3 for a cluster whose streams and KV buckets keep 3 copies."""
    # Hex, not urlsafe: a urlsafe secret may start with '-', which every command line that
    # passes it (--jwt-secret X) would read as an option.
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    host: str = "127.0.0.1"
    shard_options: dict[str, str] = field(default_factory=dict)
    """Extra ``fleet shard`` options, e.g. ``{"ping_interval": "1"}``; passed as FLEET_SHARD_*."""
    haproxies: int = 0
    """HAProxy processes in front of the shards, all on the public port; 0: none."""
    tls: bool = False
    """Terminate TLS on the public port, with a certificate from a local CA (``ca_file``)."""
    public_port: int = 0
    """HAProxy's public port; 0: a free one."""
    haproxy_binary: str | None = None
    """The haproxy to run; None: ``find_haproxy()``."""
    observe: bool = False
    """Also run Prometheus scraping every part (and a NATS exporter for it)."""
    prometheus_port: int = 0
    """Prometheus' port with ``observe``; 0: a free one."""
    scrape_targets: dict[str, list[str]] = field(default_factory=dict)
    """More ``host:port`` targets by job for Prometheus to scrape, e.g. the simulator's."""
    operator_api: bool = False
    """Also run the operator API (with a fleet state) on a free port, for one operator whose
    token is ``LocalStack.operator_token``: scenarios that run commands or rollouts."""
    connections: int = 0
    """Device connections the stack must hold at once; 0: unchecked. Too few shards or
    HAProxy processes for it, within their open-file limits, is refused before starting."""

    @classmethod
    def sized(
        cls, run_dir: Path, connections: int, shards: int | None, haproxies: int | None, **rest: Any
    ) -> StackConfig:
        """A config for ``connections``: ``None`` counts are derived from the limits."""
        return cls(
            run_dir,
            shards=shards_for(connections) if shards is None else shards,
            haproxies=haproxies_for(connections) if haproxies is None else haproxies,
            connections=connections,
            **rest,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= len(SHARD_NAMES):
            raise ValueError(f"shards must be 1 to {len(SHARD_NAMES)}, not {self.shards}")
        if self.nats_nodes not in NATS_NODES:
            raise ValueError(f"nats_nodes must be 1 or 3 (a cluster), not {self.nats_nodes}")
        if self.haproxies < 0:
            raise ValueError(f"haproxies must be 0 or more, not {self.haproxies}")
        if self.haproxies == 0 and (self.tls or self.public_port):
            raise ValueError("tls and public_port are HAProxy's: they need haproxies >= 1")
        if not 0 <= self.public_port <= 65535:
            raise ValueError(f"public_port must be 0 to 65535, not {self.public_port}")
        reserved = RESERVED_OPTIONS & {option_key(name) for name in self.shard_options}
        if reserved:
            raise ValueError(
                f"shard_options cannot set {', '.join(sorted(reserved))}: the stack sets them"
            )
        self._check_capacity()

    def shard_capacity(self) -> int:
        """Connections one shard takes: its max_connections option, else its open-file limit."""
        options = {option_key(k): v for k, v in self.shard_options.items()}
        given = options.get("max_connections")
        if given is None:
            return default_max_connections()
        try:
            return int(given)
        except ValueError:
            raise ValueError(
                f"shard option max_connections must be a number, not {given!r}"
            ) from None

    def _check_capacity(self) -> None:
        if self.connections < 0:
            raise ValueError(f"connections must be 0 or more, not {self.connections}")
        if not self.connections:
            return
        per_shard = self.shard_capacity()
        if self.shards * per_shard < self.connections:
            raise ValueError(
                f"{self.connections} connections need at least "
                f"{math.ceil(self.connections / per_shard)} shards (each takes {per_shard}, "
                "its open-file limit minus a reserve): raise --shards"
            )
        per_haproxy = max_maxconn()
        if self.haproxies and self.haproxies * per_haproxy < self.connections:
            raise ValueError(
                f"{self.connections} connections need at least "
                f"{math.ceil(self.connections / per_haproxy)} HAProxy processes (each holds "
                f"{per_haproxy}: 2 open files per connection within its limit): raise --haproxies"
            )

    def shard_env(self) -> dict[str, str]:
        env = {f"FLEET_SHARD_{option_key(k).upper()}": v for k, v in self.shard_options.items()}
        return {**env, "FLEET_SHARD_JWT_SECRET": self.jwt_secret}


def shards_for(connections: int) -> int:
    """Shards to hold ``connections``, each within its open-file limit; at least two, so one
    can be drained or lost."""
    return max(DEFAULT_SHARDS, math.ceil(connections / default_max_connections()))


def haproxies_for(connections: int) -> int:
    """HAProxy processes to hold ``connections``, each within its open-file limit."""
    return max(1, math.ceil(connections / max_maxconn()))


def haproxy_sources(index: int) -> list[str]:
    """The addresses HAProxy process ``index`` connects to the shards from: its own, so that
    no two processes share a (source, shard) pair's ~28k ephemeral ports, outside the
    simulator's 127.0.0.x, and only as many as its maxconn needs (one within a 20k open-file
    limit). Each one is a server line per shard, and a killed shard's lines are each tried,
    and each must fail a few connects, before HAProxy stops choosing them."""
    per_process = math.ceil(max_maxconn() / ephemeral_ports())
    first = 1 + index * per_process
    return [f"127.0.1.{first + n}" for n in range(per_process)]


def shard_settings(shard_options: Mapping[str, str], keys: Iterable[str]) -> dict[str, float]:
    """The embedded shards' values of ``keys``: as given in ``shard_options``, else the
    shard's defaults."""
    defaults = ShardConfig()
    given = {option_key(key): value for key, value in shard_options.items()}
    return {key: float(given.get(key, getattr(defaults, key))) for key in keys}


def count_or_auto(text: str) -> int | None:
    """A process count option: a number, or "auto" (None: derived from the connections)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a number or auto, not {text!r}") from None


class LocalStack(process.Service):
    """``with LocalStack(config) as stack:`` NATS and every shard ready; all stopped on exit."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats_url = ""
        """The first NATS node's; shards are given every node's (``nats_urls``)."""
        self.nats_monitor_url = ""
        self.nats_nodes: list[NatsServer] = []
        """The NATS server, or the cluster's nodes (a test may kill and restart one)."""
        self.nats_credentials: dict[str, Path] = {}
        """Each role's nkey seed file (``natsauth.LOCAL_ROLES``): NATS refuses clients without
        one, and each role may use only its own subjects."""
        self.prometheus_url = ""
        """With ``observe``: Prometheus' web UI and API."""
        self._nats_exporter_ports: list[int] = []  # one exporter per NATS node
        self.shard_ports: list[int] = []
        self._shards: list[subprocess.Popen[bytes]] = []
        self.public_port = 0
        self.ca_file: Path | None = None
        """The CA that signed HAProxy's certificate, with ``tls``: what devices must trust."""
        self.haproxy_stats_ports: list[int] = []
        self.haproxy_admin_sockets: list[Path] = []
        self.api_url = ""
        """With ``operator_api``: the operator API's base URL."""
        self.operator_token = ""
        self._haproxies: list[subprocess.Popen[bytes]] = []
        self._teardown = contextlib.ExitStack()

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def jwt_secret(self) -> str:
        return self.config.jwt_secret

    @property
    def shard_urls(self) -> list[str]:
        return [f"ws://{self.config.host}:{port}" for port in self.shard_ports]

    @property
    def public_url(self) -> str:
        """Where devices connect through HAProxy; "" without it. An IP, not "localhost": it
        cannot resolve to ::1 (HAProxy binds IPv4 only) and the certificate names it too."""
        if not self.public_port:
            return ""
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self.config.host}:{self.public_port}"

    @property
    def haproxy_stats_urls(self) -> list[str]:
        """Each HAProxy's stats frontend: ``/metrics`` for Prometheus, ``/stats`` for people."""
        return [f"http://{self.config.host}:{port}" for port in self.haproxy_stats_ports]

    @property
    def shard_names(self) -> list[str]:
        return SHARD_NAMES[: self.config.shards]

    def pids(self) -> dict[str, list[int]]:
        """Process ids by tier (nats, shards, haproxy): for status views and measurements."""
        return {
            "nats": [node.pid for node in self.nats_nodes if node.pid is not None],
            "shards": [proc.pid for proc in self._shards],
            "haproxy": [proc.pid for proc in self._haproxies],
        }

    def shard_connections(self) -> list[int | None]:
        """Each shard's open device connections (its gauge); None for one that does not answer."""
        return [connections_of(url) for url in self.shard_urls]

    def connections(self) -> int:
        """Open device connections over every shard that answers."""
        return sum(count or 0 for count in self.shard_connections())

    def drain_shard(self, name: str, timeout: float = 60.0) -> int:
        """Take ``name`` out of service without refusing anyone: every HAProxy stops sending
        it new connections (runtime API, state drain), then the shard drains (SIGTERM: close
        1012, devices reconnect through HAProxy to the others). Its exit code."""
        if name not in self.shard_names:
            raise ValueError(f"no shard {name!r}: the stack runs {', '.join(self.shard_names)}")
        for admin_socket in self.haproxy_admin_sockets:
            runtime.set_shard_state(admin_socket, name, "drain")
        return process.stop(self._shards[self.shard_names.index(name)], timeout)

    def token(self, device_id: str) -> str:
        """A device token the shards of this stack accept."""
        return issue_device_token(device_id, self.config.jwt_secret)

    def start(self) -> LocalStack:
        """NATS, the shards, then HAProxy; if any of it fails, stop what already runs before
        raising. A missing haproxy fails before anything starts."""
        haproxy = self._haproxy_binary()
        with contextlib.ExitStack() as teardown:
            self._start_nats(teardown)
            teardown.callback(self._stop_shards)
            self._start_shards()
            if haproxy is not None:
                teardown.callback(self._stop_haproxies)
                self._start_haproxies(haproxy)
            if self.config.operator_api:
                self._start_operator_api(teardown)
            if self.config.observe:
                self._start_observing(teardown)
            self._teardown = teardown.pop_all()
        return self

    def stop(self) -> None:
        """HAProxy first, so no device reaches a stopping shard; then the shards, which drain
        while NATS still takes what devices send; then NATS."""
        self._teardown.close()

    @property
    def nats_urls(self) -> list[str]:
        """Every NATS node's client URL: clients given them all reconnect to any survivor."""
        return [node.url for node in self.nats_nodes]

    def nats_args(self, role: str) -> list[str]:
        """How a backend process of ``role`` reaches this stack's NATS: every node, its
        credentials, and as many copies of each stream as there are nodes."""
        urls = [arg for url in self.nats_urls for arg in ("--nats-url", url)]
        credentials = ["--nats-credentials", str(self.nats_credentials[role])]
        return [*urls, *credentials, "--stream-replicas", str(self.config.nats_nodes)]

    def _start_nats(self, teardown: contextlib.ExitStack) -> None:
        """With new credentials for every role, written where only this user reads them."""
        made = natsauth.write_credentials(
            self.run_dir.resolve() / "nats-credentials", natsauth.LOCAL_ROLES
        )
        self.nats_credentials = {role: found.seed_file for role, found in made.items()}
        authorization = natsauth.render_authorization(
            {role: found.public_key for role, found in made.items()}
        )
        host = self.config.host
        if self.config.nats_nodes == 1:
            server = NatsServer(self.run_dir, host=host, config=authorization)
            self.nats_nodes = [teardown.enter_context(server)]
        else:
            cluster = NatsCluster(
                self.run_dir, size=self.config.nats_nodes, host=host, authorization=authorization
            )
            self.nats_nodes = list(teardown.enter_context(cluster).nodes)
        first = self.nats_nodes[0]
        self.nats_url, self.nats_monitor_url = first.url, first.monitor_url

    def _start_shards(self) -> None:
        """Spawn all shards at once (a faster start), then wait for each in turn."""
        names = self.shard_names
        for name in names:
            ready_file = self.run_dir / f"{name}.ready"
            ready_file.unlink(missing_ok=True)  # left by an earlier run in the same directory
            argv = [
                sys.executable, "-m", "backend.cli", "shard", "--host", self.config.host,
                "--port", "0", "--shard-id", name, "--ready-file", str(ready_file),
                *self.nats_args(natsauth.SHARD),
            ]  # fmt: skip
            log_file = self.run_dir / f"{name}.log"
            self._shards.append(process.spawn(argv, log_file, env=self.config.shard_env()))
        for name, proc in zip(names, self._shards, strict=True):
            self.shard_ports.append(self._wait_ready(name, proc))

    def _start_operator_api(self, teardown: contextlib.ExitStack) -> None:
        """``fleet api`` (with its fleet state) and a token file naming one operator."""
        host = self.config.host
        (port,) = process.free_ports(1, host)
        self.operator_token = secrets.token_hex(32)  # hex: see jwt_secret
        tokens = self.run_dir / "operator-tokens.json"
        tokens.touch(mode=0o600)
        tokens.write_text(json.dumps({self.operator_token: "stack-operator"}))
        argv = [
            sys.executable, "-m", "backend.cli", "api", "--host", host, "--port", str(port),
            "--operator-tokens-file", str(tokens), *self.nats_args(natsauth.API),
        ]  # fmt: skip
        log_file = self.run_dir / "api.log"
        api = process.spawn(argv, log_file)
        teardown.callback(process.stop, api)
        self.api_url = f"http://{host}:{port}"
        healthz = f"{self.api_url}/healthz"
        process.wait_until(lambda: process.answers_ok(healthz), api, "operator API", log_file)

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes]) -> int:
        """The shard's port, once it listens and its /healthz says it has NATS."""
        ready_file, log_file = self.run_dir / f"{name}.ready", self.run_dir / f"{name}.log"
        process.wait_until(lambda: listening_port(ready_file) > 0, proc, name, log_file)
        port = listening_port(ready_file)
        healthz = f"http://{self.config.host}:{port}/healthz"
        process.wait_until(lambda: process.answers_ok(healthz), proc, name, log_file)
        return port

    def _stop_shards(self) -> None:
        """SIGTERM every shard first so they drain in parallel, then reap each in turn."""
        for proc in self._shards:
            proc.terminate()
        for proc in self._shards:
            process.stop(proc)

    def _haproxy_binary(self) -> str | None:
        if not self.config.haproxies:
            return None
        return find_haproxy(self.config.haproxy_binary or "haproxy")

    def _start_haproxies(self, binary: str) -> None:
        """Check every configuration, spawn all processes, then wait for each in turn."""
        count = self.config.haproxies
        *self.haproxy_stats_ports, picked = process.free_ports(count + 1, self.config.host)
        self.public_port = self.config.public_port or picked
        self.haproxy_admin_sockets = [self._haproxy_file(i, "sock") for i in range(count)]
        tls_pem = self._tls_pem()
        for index in range(count):
            write(self._haproxy_config(index, tls_pem), self._haproxy_file(index, "cfg"))
            check(self._haproxy_file(index, "cfg"), binary)
        for index in range(count):
            argv = [binary, "-db", "-f", str(self._haproxy_file(index, "cfg"))]
            self._haproxies.append(process.spawn(argv, self._haproxy_file(index, "log")))
        urls = self.haproxy_stats_urls
        for index, (proc, url) in enumerate(zip(self._haproxies, urls, strict=True)):
            log_file, name = self._haproxy_file(index, "log"), f"haproxy-{index}"
            process.wait_until(functools.partial(servers_up, url), proc, name, log_file)

    def _haproxy_file(self, index: int, suffix: str) -> Path:
        """Absolute: HAProxy resolves relative paths against its own working directory."""
        return self.run_dir.resolve() / f"haproxy-{index}.{suffix}"

    def _tls_pem(self) -> Path | None:
        if not self.config.tls:
            return None
        pki = make_local_pki(self.run_dir.resolve() / "pki", ("localhost",), ("127.0.0.1",))
        self.ca_file = pki.ca_cert
        return pki.server_pem

    def _haproxy_config(self, index: int, tls_pem: Path | None) -> HaproxyConfig:
        shards = zip(self.shard_names, self.shard_ports, strict=True)
        return HaproxyConfig(
            port=self.public_port,
            stats_port=self.haproxy_stats_ports[index],
            shards=[(name, self.config.host, port) for name, port in shards],
            admin_socket=self.haproxy_admin_sockets[index],
            pidfile=self._haproxy_file(index, "pid"),
            bind_host=self.config.host,
            stats_host=self.config.host,
            tls_pem=tls_pem,
            source_addresses=haproxy_sources(index),
        )

    def scrape_targets(self) -> dict[str, list[str]]:
        """What Prometheus scrapes (``host:port`` by job), the NATS exporter once it runs."""
        targets = {
            "shards": [url.removeprefix("ws://") for url in self.shard_urls],
            "haproxy": [url.removeprefix("http://") for url in self.haproxy_stats_urls],
        }
        if self._nats_exporter_ports:
            targets["nats"] = [f"{self.config.host}:{port}" for port in self._nats_exporter_ports]
        return {**targets, **self.config.scrape_targets}

    def _start_observing(self, teardown: contextlib.ExitStack) -> None:
        """A NATS exporter per node (NATS serves JSON, not Prometheus' format), then
        Prometheus."""
        host = self.config.host
        self._nats_exporter_ports = process.free_ports(len(self.nats_nodes), host)
        for node, port in zip(self.nats_nodes, self._nats_exporter_ports, strict=True):
            argv = [
                sys.executable, "-m", "backend.bus.exporter", "--host", host,
                "--port", str(port), "--nats-monitor-url", node.monitor_url,
            ]  # fmt: skip
            log_file = self.run_dir / f"{node.name}-exporter.log"
            exporter = process.spawn(argv, log_file)
            teardown.callback(process.stop, exporter)
            metrics = f"http://{host}:{port}/metrics"
            process.wait_until(
                functools.partial(process.answers_ok, metrics), exporter, "nats-exporter", log_file
            )
        discovered = {}
        if "simulator" not in self.config.scrape_targets:
            self.simulator_targets_dir.mkdir(parents=True, exist_ok=True)
            discovered["simulator"] = str(self.simulator_targets_dir / "*.json")
        prometheus = PrometheusServer(
            self.run_dir / "prometheus",
            self.scrape_targets(),
            host,
            port=self.config.prometheus_port,
            discovered=discovered,
            rule_files=[str(ALERT_RULES)],
        )
        self.prometheus_url = teardown.enter_context(prometheus).url

    @property
    def simulator_targets_dir(self) -> Path:
        """With ``observe``: where a load test against this stack puts a file naming its
        metrics port (``simulator.plugin``), for Prometheus to scrape it while it runs."""
        return self.run_dir / "prometheus" / "simulator-targets"

    def _stop_haproxies(self) -> None:
        """-db: SIGTERM stops HAProxy at once, closing the devices' connections."""
        for proc in self._haproxies:
            process.stop(proc)


def fetch_metrics(base_url: str) -> str:
    """The Prometheus page under ``base_url``: a shard (``ws://`` or ``http://``) or an HAProxy
    stats port. Raises OSError when it does not answer."""
    url = base_url.replace("ws://", "http://", 1) + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def metric_sum(metrics_text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels``; None if none."""
    values = [
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(values) if values else None


def connections_of(shard_url: str) -> int | None:
    """A shard's ``fleet_shard_connections``; None when it does not answer."""
    try:
        return int(metric_sum(fetch_metrics(shard_url), "fleet_shard_connections") or 0)
    except OSError:
        return None


def servers_up(stats_url: str) -> bool:
    """Every server line of the shards backend passed its last health check (L7OK): the first
    checks run only some time after HAProxy starts, so answering /metrics is not enough."""
    try:
        passed = CHECK_PASSED.findall(fetch_metrics(stats_url))
    except OSError:
        return False
    return bool(passed) and all(float(value) == 1 for _server, value in passed)


def listening_port(ready_file: Path) -> int:
    """The port in a shard's ready file; 0 while the file is missing or half written."""
    try:
        return int(json.loads(ready_file.read_text())["port"])
    except (OSError, ValueError, KeyError):
        return 0
