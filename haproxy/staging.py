"""The HAProxy configuration of the staging deployment (``deploy/``), from HaproxyConfig.

Kubernetes and Compose run the same file: Compose gives its containers the cluster's DNS
names as aliases. ``python -m haproxy.staging`` rewrites it; ``tests/test_deploy.py`` checks
that the committed file is this rendering and that HAProxy accepts it.
"""

from __future__ import annotations

from pathlib import Path

from haproxy.config import HaproxyConfig, StatsAuth, write

DEPLOYED = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "haproxy.cfg"
# The shards' headless Service: its A records are the ready shard pods.
SHARDS_DNS_NAME = "shard.fleet.svc.cluster.local"
SHARD_PORT = 8080
# The container binds an unprivileged port; the Service (Compose: the published port) maps
# 443 to it, so HAProxy needs no root nor NET_BIND_SERVICE.
PORT = 8443
STATS_PORT = 8404
# The stats port listens on the pod's address, so /stats and /metrics ask for this user.
# The password is the item "password" of the Secret haproxy-stats: HAProxy gets it as this
# variable, Prometheus as its basic_auth password_file.
STATS_AUTH = StatsAuth(user="stats", password_variable="HAPROXY_STATS_PASSWORD")
# The TLS Secret is mounted here: tls.crt as server.pem and tls.key beside it as
# server.pem.key, which HAProxy loads with the certificate (ssl-load-extra-files).
TLS_PEM = Path("/etc/haproxy/tls/server.pem")
# An emptyDir (Compose: a tmpfs) writable by HAProxy's unprivileged user.
RUN_DIR = Path("/var/run/haproxy")
MAXCONN = 50_000
# The pods set net.ipv4.ip_local_port_range to 1024-65535: ports per (HAProxy pod, shard).
EPHEMERAL_PORTS = 65535 - 1024 + 1
# More than the shards ever run: a slot without a shard costs only a line in the stats.
SHARD_SLOTS = 16


def staging_config() -> HaproxyConfig:
    return HaproxyConfig(
        port=PORT,
        stats_port=STATS_PORT,
        shards=[("shard", SHARDS_DNS_NAME, SHARD_PORT)],
        admin_socket=RUN_DIR / "admin.sock",
        pidfile=RUN_DIR / "haproxy.pid",
        bind_host="0.0.0.0",
        stats_host="0.0.0.0",
        stats_auth=STATS_AUTH,
        tls_pem=TLS_PEM,
        maxconn=MAXCONN,
        server_maxconn=EPHEMERAL_PORTS,
        dns_slots=SHARD_SLOTS,
        for_this_host=False,
    )


if __name__ == "__main__":
    write(staging_config(), DEPLOYED)
    print(DEPLOYED)
