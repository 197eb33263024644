"""The HAProxy configuration in front of the shards, generated from one typed object.

``render`` writes a commented file, so the reasons stay next to the directives an operator
reads; ``check`` has HAProxy itself validate it (``haproxy -c``) before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backend.devstack.process import ConfigCheckFailed, find_binary
from backend.protocol.http import DEVICE_PATH

# Descriptors kept back from the connection budget: listeners, the runtime API socket, health
# checks (one per server line), logs, the poller and HAProxy's internal pipes.
FD_RESERVE = 256
# Linux's default ip_local_port_range (32768-60999), if /proc cannot tell.
DEFAULT_EPHEMERAL_PORTS = 28232
INSTALL_HINT = "install it: apt-get install haproxy"
# What HAProxy accepts in a server name ("~", for one, it refuses).
SERVER_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
ENV_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The stats port's probe endpoint: answered by HAProxy itself, never behind auth.
HEALTH_PATH = "/healthz"
STATS_USERLIST = "stats"


def max_maxconn() -> int:
    """What the open-file limit allows: HAProxy spends 2 fds per proxied connection.

    The hard limit counts: HAProxy raises its own soft limit up to it (and, strict-limits
    being the default since 2.6, refuses to start if it cannot).
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, (hard - FD_RESERVE) // 2)


def ephemeral_ports() -> int:
    """Local ports the kernel hands out per source address: the connections one server line
    (one source, one shard) can hold."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_PORTS
    return int(high) - int(low) + 1


@dataclass(frozen=True)
class StatsAuth:
    """Basic auth for the stats port's /stats and /metrics. The password is never in the
    file: HAProxy reads it from ``password_variable`` in its environment when it starts."""

    user: str
    password_variable: str

    def __post_init__(self) -> None:
        if not SERVER_NAME.fullmatch(self.user):
            raise ValueError(f"stats user {self.user!r} may hold only letters, digits and _.:-")
        if not ENV_VARIABLE.fullmatch(self.password_variable):
            raise ValueError(f"{self.password_variable!r} is not an environment variable name")


@dataclass
class HaproxyConfig:
    """Everything the generated file depends on; validated on creation."""

    port: int
    """The public port devices connect to: 443 in staging."""
    stats_port: int
    shards: list[tuple[str, str, int]]
    """(name, host, port) of each shard."""
    admin_socket: Path
    pidfile: Path
    bind_host: str = "127.0.0.1"
    stats_host: str = "127.0.0.1"
    """Metrics and the stats page are for operators, never on the public address by default."""
    stats_auth: StatsAuth | None = None
    """Required unless stats_host is loopback; HEALTH_PATH (the probes) never asks for it."""
    tls_pem: Path | None = None
    """Certificate and key in one PEM: TLS is terminated on the public port when set."""
    source_addresses: list[str] = field(default_factory=list)
    """One server line per shard and source address; none: the kernel picks the source."""
    maxconn: int = field(default_factory=max_maxconn)
    server_maxconn: int = field(default_factory=ephemeral_ports)
    nbthread: int = 1
    dns_slots: int = 0
    """0: each shard's host is one server. N: it is a DNS name for up to N shards (a
    Kubernetes headless Service), resolved while HAProxy runs, so shards come and go
    without a reload."""
    for_this_host: bool = True
    """False: the file is for another host (a container), whose open-file limit this one
    cannot tell, so maxconn is not checked against it."""

    def __post_init__(self) -> None:
        check_port("port", self.port)
        check_port("stats_port", self.stats_port)
        if self.port == self.stats_port:
            raise ValueError(f"port and stats_port are both {self.port}: give stats its own port")
        if self.stats_auth is None and not is_loopback(self.stats_host):
            raise ValueError(
                f"stats on {self.stats_host} needs stats_auth: only loopback is private"
            )
        check_shards(self.shards)
        check_sources(self.source_addresses)
        check_limits(self.maxconn, self.server_maxconn, self.nbthread, self.for_this_host)
        if self.dns_slots < 0:
            raise ValueError(f"dns_slots must be 0 or more, not {self.dns_slots}")
        if self.dns_slots and self.source_addresses:
            raise ValueError("source addresses need fixed server lines: use them without dns_slots")


def check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} must be 1 to 65535 (HAProxy must know it), not {port}")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_shards(shards: list[tuple[str, str, int]]) -> None:
    if not shards:
        raise ValueError("shards is empty: give at least one (name, host, port)")
    names = [name for name, _host, _port in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"shard names must be unique: {', '.join(names)}")
    for name, _host, port in shards:
        if not SERVER_NAME.fullmatch(name):
            raise ValueError(f"shard name {name!r} may hold only letters, digits and _.:-")
        check_port(f"the port of {name}", port)


def check_sources(addresses: list[str]) -> None:
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"source address {address!r} is not an IP address") from None
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"source addresses must be unique: {', '.join(addresses)}")


def check_limits(
    maxconn: int, server_maxconn: int, nbthread: int, for_this_host: bool = True
) -> None:
    if for_this_host:
        allowed = max_maxconn()
        if not 0 < maxconn <= allowed:
            raise ValueError(
                f"maxconn must be 1 to {allowed} (2 fds per connection within the open-file "
                f"hard limit, {FD_RESERVE} kept back), not {maxconn}: lower maxconn or raise "
                "the limit (ulimit -Hn, LimitNOFILE=)"
            )
    elif maxconn <= 0:
        raise ValueError(f"maxconn must be positive, not {maxconn}")
    if server_maxconn <= 0:
        raise ValueError(f"server_maxconn must be positive, not {server_maxconn}")
    if nbthread <= 0:
        raise ValueError(f"nbthread must be positive, not {nbthread}")


def render(config: HaproxyConfig) -> str:
    sections = [
        global_section(config),
        defaults_section(),
        *([resolvers_section()] if config.dns_slots else []),
        *([stats_userlist(config.stats_auth)] if config.stats_auth else []),
        stats_frontend(config),
        devices_frontend(config),
        shards_backend(config),
    ]
    header = "# Generated by haproxy/config.py from HaproxyConfig: edit that, not this file.\n"
    return header + "\n".join("\n".join(lines) + "\n" for lines in sections)


def global_section(config: HaproxyConfig) -> list[str]:
    socket = f"stats socket {config.admin_socket} mode 600 level admin expose-fd listeners"
    return [
        "global",
        "    # Per process; 2 fds per proxied connection, within the open-file limit.",
        f"    maxconn {config.maxconn}",
        "    # Scale out with more processes on the same port rather than threads: HAProxy",
        "    # sets SO_REUSEPORT on Linux, so the kernel spreads new connections over them.",
        f"    nbthread {config.nbthread}",
        f"    pidfile {config.pidfile}",
        "    # Runtime API (drain a shard, read counters); expose-fd hands the listening",
        "    # sockets to the next process on reload (-x), so no connect is refused.",
        f"    {socket}",
        "    # Notices and worse only: a line per connection would cost more than it tells.",
        "    log stdout format raw local0 notice",
        "    # Memory per connection matters at this scale: gateways send small messages and",
        "    # WebSocket frames stream through in pieces, so 8 KiB (instead of 16) suffices;",
        "    # it caps request headers at 7 KiB (bufsize - maxrewrite), ample for a token.",
        "    # A longer head is answered 400, not 431 (RFC 6585 §5) as a shard does: HAProxy",
        "    # 2.6 cannot generate 431 (http-error and errorfile refuse the code) and gives",
        "    # an oversized head the 400 of any unparsable request, so rewriting that 400",
        "    # would mislabel every malformed request.",
        "    tune.bufsize 8192",
        "    # TLS 1.2 or later; the keys are EC, so no DH parameters are needed.",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
    ]


def defaults_section() -> list[str]:
    return [
        "defaults",
        "    # HTTP mode: HAProxy sees the upgrade, passes it, then tunnels the WebSocket.",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    # A refused connect is retried on another server line at once (1: every retry),",
        "    # not on the same one: a killed shard refuses until its health checks fail.",
        "    option redispatch 1",
        "    retries 3",
        "    # So is an upgrade the shard took and died on before answering (a 502 otherwise):",
        "    # the request is a GET that changes nothing until its 101, safe to send again.",
        "    retry-on conn-failure empty-response",
        "    timeout connect 5s",
        "    # client/server govern the HTTP handshake; once upgraded, tunnel governs.",
        "    timeout client 30s",
        "    timeout server 30s",
        "    # Longer than the shards' keepalive: they reap silent devices, not HAProxy.",
        "    timeout tunnel 1h",
        "    # Half-closed connections must not pin fds for the whole tunnel timeout.",
        "    timeout client-fin 30s",
        "    timeout server-fin 30s",
        "    # A client that opens a connection and sends no request is dropped quickly.",
        "    timeout http-request 10s",
    ]


def resolvers_section() -> list[str]:
    return [
        "# Shards found by DNS: the nameservers of the container's resolv.conf (the cluster's",
        "# DNS), asked again every second, so a new shard gets devices without a reload and",
        "# one that left DNS (not ready: draining) gets no more.",
        "resolvers dns",
        "    parse-resolv-conf",
        "    # Room for every shard's address in one UDP answer (512 bytes hold ~29).",
        "    accepted_payload_size 8192",
    ]


def stats_userlist(auth: StatsAuth) -> list[str]:
    variable = auth.password_variable
    return [
        "# The stats user's password is in the environment HAProxy starts with, never here.",
        "# Unset or empty, it would make the password empty: refuse to start instead.",
        f'.if streq("${{{variable}}}","")',
        f'.alert "{variable} is unset or empty: it is the stats password"',
        ".endif",
        f"userlist {STATS_USERLIST}",
        "    # Plain rather than a crypt(3) hash: the file names only the variable, and a hash",
        "    # would cost a crypt call per scrape and a second form of the secret to keep.",
        f'    user {auth.user} insecure-password "${{{variable}}}"',
    ]


def stats_frontend(config: HaproxyConfig) -> list[str]:
    return [
        "# Operators only: Prometheus scrapes /metrics, people read /stats.",
        "frontend stats",
        f"    bind {config.stats_host}:{config.stats_port}",
        "    no log",
        "    # 200 while this process runs: liveness and readiness probes.",
        f"    monitor-uri {HEALTH_PATH}",
        *stats_auth_rule(config.stats_auth),
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 10s",
    ]


def stats_auth_rule(auth: StatsAuth | None) -> list[str]:
    if auth is None:
        return []
    return [
        "    # /metrics, /stats, anything but the probes' path: for the stats user only.",
        f"    http-request auth realm haproxy-stats unless {{ path {HEALTH_PATH} }}"
        f" || {{ http_auth({STATS_USERLIST}) }}",
    ]


def devices_frontend(config: HaproxyConfig) -> list[str]:
    bind = f"    bind {config.bind_host}:{config.port}"
    if config.tls_pem is not None:
        # Devices speak WebSocket over HTTP/1.1; no h2 (RFC 8441) to keep one code path.
        bind += f" ssl crt {config.tls_pem} alpn http/1.1"
    return [
        "# The public port. Several HAProxy processes may bind it (SO_REUSEPORT, the default).",
        "frontend devices",
        bind,
        f"    maxconn {config.maxconn}",
        "    # The shards' own /healthz and /metrics are not for the internet.",
        f"    http-request deny deny_status 404 unless {{ path {DEVICE_PATH} }}",
        "    # The device's address, for the shards' logs.",
        "    option forwardfor",
        "    default_backend shards",
    ]


def shards_backend(config: HaproxyConfig) -> list[str]:
    return [
        "backend shards",
        "    # Sessions last hours: balance what is open now, not what was opened.",
        "    balance leastconn",
        "    # /healthz is 200 only while a shard is ready. A shard that answers 503 (NATS",
        "    # lost) is alive: it only gets no new devices (L7OKC: NOLB) and keeps its own.",
        "    option httpchk",
        "    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host haproxy",
        "    http-check expect status 200 error-status L7OKC",
        "    # A shard that does not answer (hung, dead; a draining one closed its listener)",
        "    # is down after 3 failed checks of up to 3 s each, 500 ms apart once one failed:",
        "    # within 2 + 3 + 0.5 + 3 + 0.5 + 3 s. A shard busy with a connect ramp can be a",
        "    # few seconds late; marking it down would cut all its tunnels (a storm).",
        "    timeout check 3s",
        "    # maxconn per server line: one line is one (source, shard) pair, which has only",
        "    # the ephemeral port range; beyond it connects queue rather than fail.",
        "    default-server check inter 2s fastinter 500ms fall 3 rise 2"
        f" maxconn {config.server_maxconn}",
        "    # A line whose connects keep failing is marked down before its checks notice:",
        "    # leastconn would otherwise send every new device to a dead shard (it has the",
        "    # fewest connections) until two checks failed. The kernel accepts for a live",
        "    # shard, even a hung one, so 3 refused or timed-out connects in a row come only",
        "    # from a dead or unreachable one.",
        "    default-server observe layer4 error-limit 3 on-error mark-down",
        "    # Down, its tunnels are cut, so its devices reconnect to the others at once",
        "    # instead of waiting for their own keep-alive (75 s for a gateway) to give up.",
        "    default-server on-marked-down shutdown-sessions",
        *server_lines(config),
    ]


def server_lines(config: HaproxyConfig) -> list[str]:
    """One line per shard, or per shard and source address: name_1, name_2, ...; with
    dns_slots, one template per shard DNS name: name1 to nameN."""
    if config.dns_slots:
        # No address at start (init-addr none): the resolver fills the slots, so HAProxy
        # starts (and `haproxy -c` passes) before any shard exists or DNS answers.
        return [
            f"    server-template {name} {config.dns_slots} {host}:{port}"
            " resolvers dns init-addr none"
            for name, host, port in config.shards
        ]
    if not config.source_addresses:
        return [f"    server {name} {host}:{port}" for name, host, port in config.shards]
    return [
        f"    server {name}_{index} {host}:{port} source {source}"
        for name, host, port in config.shards
        for index, source in enumerate(config.source_addresses, start=1)
    ]


def write(config: HaproxyConfig, path: Path) -> None:
    """Atomically, so a reload never reads half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(render(config))
    os.replace(temporary, path)


def find_haproxy(name: str = "haproxy") -> str:
    """The haproxy binary (a name or a path); often in /usr/sbin, not on every user's PATH."""
    return find_binary(name, INSTALL_HINT)


def check(
    path: Path, haproxy_binary: str | None = None, env: Mapping[str, str] | None = None
) -> None:
    """``haproxy -c``, warnings counted as errors (-dW); the default binary: find_haproxy().
    ``env``: variables the file refers to, added to this process's environment."""
    argv = [haproxy_binary or find_haproxy(), "-dW", "-c", "-f", str(path)]
    environment = {**os.environ, **(env or {})}
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, env=environment
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"{argv[0]} not found; {INSTALL_HINT}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ConfigCheckFailed(f"haproxy rejects {path} (exit {result.returncode}):\n{output}")
