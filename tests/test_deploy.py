"""The staging deployment (deploy/), validated offline: every Kubernetes manifest against the
API schemas of pinned Kubernetes versions (kubernetes-validate), the Compose file against the
Compose specification (the copy check-jsonschema ships), the references between the parts,
and the configuration files they carry by the programs that read them: ``haproxy -c``,
``nats-server -t`` and ``promtool``."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from backend import cli
from backend.bus import natsauth
from backend.devstack.natsserver import check_config
from backend.devstack.process import ConfigCheckFailed, free_ports
from backend.shard.config import FD_RESERVE as SHARD_FD_RESERVE
from haproxy import staging
from haproxy.config import FD_RESERVE as HAPROXY_FD_RESERVE
from haproxy.config import HEALTH_PATH, STATS_USERLIST, check, render
from haproxy.tls import make_local_pki
from tests.observe_support import promtool
from tests.support import running_haproxy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
LOADGEN = K8S / "loadgen"
COMPOSE_DIR = DEPLOY / "compose"
GUIDE = ROOT / "docs" / "deploy.md"
STAGING_PROMETHEUS = ROOT / "dashboards" / "prometheus-staging.yml"
# The oldest Kubernetes the manifests are for and the newest the pinned validator knows: a
# field added after the first, or removed by the second, fails one of them.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Where the haproxy image reads its configuration (its CMD).
HAPROXY_IMAGE_CONFIG = "/usr/local/etc/haproxy/haproxy.cfg"
# Containers checked by their own health endpoint; the others serve none that says more
# than "the process runs": fleet state serves no HTTP, the NATS exporter answers even
# when NATS is down (nats_up 0), Locust is a test tool.
PROBE_PATHS = {
    "shard": "/healthz",
    "api": "/healthz",
    "haproxy": "/healthz",
    "nats": "/healthz",
    "prometheus": "/-/",
}
UNPROBED = {"fleet-state", "exporter", "locust"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def resources(directory: Path) -> list[dict[str, Any]]:
    return [
        doc for name in kustomization(directory)["resources"] for doc in load_all(directory / name)
    ]


BACKEND = resources(K8S)
MANIFESTS = BACKEND + resources(LOADGEN)
NAMESPACE = kustomization(K8S)["namespace"]
COMPOSE: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in MANIFESTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def workloads(docs: list[dict[str, Any]] = MANIFESTS) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    return selector.items() <= pod_labels(workload).items()


def containers(docs: list[dict[str, Any]] = MANIFESTS) -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            yield f"{workload['metadata']['name']}/{container['name']}", container


def container(workload: str, name: str) -> dict[str, Any]:
    (found,) = [c for where, c in containers() if where == f"{workload}/{name}"]
    return found


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in container.get("env", [])}


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container["ports"]}


def port_number(container: dict[str, Any], port: int | str) -> int:
    return port if isinstance(port, int) else ports(container)[port]


def mounts(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Volume name -> (mount path, the volume's source)."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    claims = {c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", [])}
    return {
        m["name"]: (m["mountPath"], volumes.get(m["name"]) or claims[m["name"]])
        for m in container.get("volumeMounts", [])
    }


def secret_files(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path of each file mounted from a Secret's item -> (the Secret, the item's key)."""
    return {
        f"{path}/{item['path']}": (source["secret"]["secretName"], item["key"])
        for path, source in mounts(workload, container).values()
        if "secret" in source
        for item in source["secret"].get("items", [])
    }


def processes() -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    """(where, argv, environment) of every container and Compose service."""
    for where, found in containers():
        yield where, found.get("args", []), env(found)
    for name, service in SERVICES.items():
        yield f"compose {name}", service.get("command", []), service.get("environment", {})


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"{duration!r}: expected whole seconds, like 30s"
    return int(match[1])


def aliases(service: dict[str, Any]) -> list[str]:
    found: list[str] = service.get("networks", {}).get("default", {}).get("aliases", [])
    return found


# --- schemas ---------------------------------------------------------------------------------


def schema_errors(docs: list[dict[str, Any]], version: str) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")
    return errors


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schemas(version: str) -> None:
    # Strict: an unknown field (a typo, a field of another kind) is an error, not ignored.
    assert schema_errors(MANIFESTS, version) == []


def test_a_misspelt_field_fails_validation() -> None:
    shard = json.loads(json.dumps(named("StatefulSet", "shard")))
    pod_spec(shard)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    assert "readinesProbe" in " ".join(schema_errors([shard], KUBERNETES_VERSIONS[-1]))


@pytest.mark.parametrize("directory", [K8S, LOADGEN], ids=["backend", "loadgen"])
def test_each_kustomization_deploys_every_manifest_beside_it(directory: Path) -> None:
    listed = kustomization(directory)
    manifests = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed["resources"]) == manifests
    for generator in listed.get("configMapGenerator", []):
        assert all((directory / name).is_file() for name in generator["files"])


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (kustomize is built in)")
@pytest.mark.parametrize("directory", [K8S, LOADGEN], ids=["backend", "loadgen"])
def test_kustomize_builds_valid_manifests_with_the_files_as_config_maps(directory: Path) -> None:
    argv = ["kubectl", "kustomize", str(directory)]
    built = [d for d in yaml.safe_load_all(subprocess.check_output(argv, timeout=60)) if d]
    assert schema_errors(built, KUBERNETES_VERSIONS[-1]) == []
    assert {d["metadata"].get("namespace", NAMESPACE) for d in built} == {NAMESPACE}
    config_maps = {d["metadata"]["name"]: d["data"] for d in built if d["kind"] == "ConfigMap"}
    for generator in kustomization(directory).get("configMapGenerator", []):
        (name,) = [n for n in config_maps if n.startswith(f"{generator['name']}-")]
        files = {f: (directory / f).read_text() for f in generator["files"]}
        assert config_maps[name] == files
    used = {
        volume["configMap"]["name"]
        for workload in workloads(built)
        for volume in pod_spec(workload).get("volumes", [])
        if "configMap" in volume
    }
    assert used <= set(config_maps)


@pytest.mark.integration
def test_the_compose_file_matches_the_compose_specification() -> None:
    validator = Path(sys.executable).with_name("check-jsonschema")
    argv = [str(validator), "--builtin-schema", "vendor.compose-spec", "compose.yaml"]
    result = subprocess.run(
        argv, cwd=COMPOSE_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- references between the parts ------------------------------------------------------------


def test_selectors_services_and_their_ports_meet() -> None:
    for workload in workloads():
        assert selects(workload["spec"]["selector"]["matchLabels"], workload)
    for service in (d for d in MANIFESTS if d["kind"] == "Service"):
        name = service["metadata"]["name"]
        (target,) = [w for w in workloads() if selects(service["spec"]["selector"], w)]
        offered = {
            key: number
            for found in pod_spec(target)["containers"]
            for key, number in ports(found).items()
        }
        for port in service["spec"]["ports"]:
            wanted = port.get("targetPort", port["port"])
            assert wanted in offered or wanted in offered.values(), f"{name}: {wanted}"
    for stateful in (w for w in workloads() if w["kind"] == "StatefulSet"):
        governing = named("Service", stateful["spec"]["serviceName"])
        assert governing["spec"]["clusterIP"] == "None"
        assert selects(governing["spec"]["selector"], stateful)


def test_probes_ask_each_health_endpoint_on_a_port_of_the_container() -> None:
    for where, found in containers():
        probes = [
            found[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in found
        ]
        if found["name"] in UNPROBED:
            assert probes == [], where
            continue
        assert {"readinessProbe", "livenessProbe"} <= found.keys(), where
        for probe in probes:
            assert probe["httpGet"]["path"].startswith(PROBE_PATHS[found["name"]]), where
            assert port_number(found, probe["httpGet"]["port"]) in ports(found).values(), where


def test_every_replicated_backend_tier_has_a_disruption_budget_of_one() -> None:
    budgets = [d for d in BACKEND if d["kind"] == "PodDisruptionBudget"]
    covered = []
    for budget in budgets:
        assert budget["spec"]["maxUnavailable"] == 1
        (target,) = [
            w for w in workloads(BACKEND) if selects(budget["spec"]["selector"]["matchLabels"], w)
        ]
        covered.append(target["metadata"]["name"])
    replicated = [w["metadata"]["name"] for w in workloads(BACKEND) if w["spec"]["replicas"] > 1]
    assert sorted(covered) == sorted(replicated)


def test_shards_are_given_longer_than_their_drain_to_stop() -> None:
    shard = named("StatefulSet", "shard")
    drain = float(env(container("shard", "shard"))["FLEET_SHARD_DRAIN_TIMEOUT"])
    assert pod_spec(shard)["terminationGracePeriodSeconds"] > drain
    service = SERVICES["shard"]
    assert seconds(service["stop_grace_period"]) > float(
        service["environment"]["FLEET_SHARD_DRAIN_TIMEOUT"]
    )


def fleet_env_names(command: str) -> set[str]:
    """The variables click reads for ``fleet COMMAND``'s options (auto_envvar_prefix)."""
    prefix = "FLEET_" + command.upper().replace("-", "_")
    params = cli.main.commands[command].params
    return {f"{prefix}_{p.name.upper()}" for p in params if isinstance(p, click.Option) and p.name}


def test_fleet_processes_are_configured_by_variables_their_command_reads() -> None:
    nats = named("StatefulSet", "nats")
    replicas = nats["spec"]["replicas"]
    client_port = nats_listen_ports()[0]
    pods = [
        f"{nats['metadata']['name']}-{i}.{nats['spec']['serviceName']}" for i in range(replicas)
    ]
    urls = " ".join(f"tls://{pod}:{client_port}" for pod in pods)  # clients must use TLS
    commands = set()
    for where, argv, environment in processes():
        if argv[:1] != ["fleet"]:
            continue
        commands.add(argv[1])
        assert {k for k in environment if k.startswith("FLEET_")} <= fleet_env_names(argv[1]), where
        for key, value in environment.items():
            if key.endswith("_NATS_URLS"):
                assert value == urls, where
            if key.endswith("_STREAM_REPLICAS"):
                assert int(value) == replicas, where
    assert commands == {"shard", "state", "api", "nats-exporter"}


LOCUST_PARSE = """
import json, sys
from locust import argument_parser
from simulator import plugin
parser = argument_parser.get_empty_argument_parser()
argument_parser.setup_parser_arguments(parser)
plugin.add_options(parser)
for argv in json.loads(sys.argv[1]):
    parser.parse_args(argv)
"""


@pytest.mark.integration
def test_locust_arguments_are_options_of_locust_with_the_scenarios(tmp_path: Path) -> None:
    argvs = [argv[1:] for _where, argv, _env in processes() if argv[:1] == ["locust"]]
    assert len(argvs) == 4
    # A process of its own: importing Locust monkey-patches the standard library. Locust's
    # own variables would change what parses.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    argv = [sys.executable, "-c", LOCUST_PARSE, json.dumps(argvs)]
    result = subprocess.run(
        argv, cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_workers_have_the_ca_file_where_the_master_says() -> None:
    master = container("locust-master", "locust")
    ca_file = master["args"][master["args"].index("--ca-file") + 1]
    for name in ("locust-master", "locust-worker"):
        workload = named("Deployment", name)
        (found,) = pod_spec(workload)["containers"]
        paths = {path for path, source in mounts(workload, found).values() if "secret" in source}
        assert str(Path(ca_file).parent) in paths
    command = SERVICES["locust-master"]["command"]
    assert command[command.index("--ca-file") + 1] == ca_file
    for name in ("locust-master", "locust-worker"):
        assert ca_file in {s["target"] for s in SERVICES[name]["secrets"]}


CREATE_SECRET = re.compile(r"kubectl -n (\S+) create secret (generic|tls) (\S+)(.*)")
# A variable Compose refuses to start without: ${NAME:?message}.
COMPOSE_REQUIRED = re.compile(r"\$\{(\w+):\?")


def documented_secrets() -> set[tuple[str, str]]:
    """(secret, key) of every `kubectl create secret` in the guide."""
    found = set()
    for namespace, kind, name, options in CREATE_SECRET.findall(GUIDE.read_text()):
        assert namespace == NAMESPACE
        if kind == "tls":
            keys = {"tls.crt", "tls.key"}
        else:
            keys = {k.rsplit("/", 1)[-1] for k in re.findall(r"--from-\w+=([^=\s]+)", options)}
        found |= {(name, key) for key in keys}
    return found


def secret_references() -> set[tuple[str, str]]:
    """(secret, key) the pods read: in variables, as mounted items, or as files under a
    mounted secret that a path in the container's variables or arguments names."""
    found = set()
    for workload in workloads():
        for container_ in pod_spec(workload)["containers"]:
            for value in env(container_).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    found.add((value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]))
            values = [v for v in env(container_).values() if isinstance(v, str)]
            words = [*container_.get("args", []), *values]
            for path, source in mounts(workload, container_).values():
                if "secret" not in source:
                    continue
                secret = source["secret"]
                found |= {(secret["secretName"], i["key"]) for i in secret.get("items", [])}
                prefix = path.rstrip("/") + "/"
                found |= {
                    (secret["secretName"], w[len(prefix) :]) for w in words if w.startswith(prefix)
                }
    return found


def test_the_guide_creates_every_secret_the_pods_read() -> None:
    references = secret_references()
    assert {name for name, _key in references} == {
        "device-jwt", "gateway-tls", "gateway-ca", "operator-tokens",
        "nats-tls", "nats-nkeys", "nats-credentials", "haproxy-stats",
    }  # fmt: skip
    assert references <= documented_secrets()
    guide = GUIDE.read_text()
    required = set(COMPOSE_REQUIRED.findall((COMPOSE_DIR / "compose.yaml").read_text()))
    for secret in COMPOSE["secrets"].values():
        if "file" in secret:
            assert f"deploy/compose/secrets/{Path(secret['file']).name}" in guide
        else:  # from a variable, which must not be missing (an empty secret)
            assert secret["environment"] in required
    for variable in required:
        assert f"export {variable}=" in guide, variable


# --- HAProxy ---------------------------------------------------------------------------------


# Stands in for the Secret haproxy-stats' password.
STATS_PASSWORD = "test-stats-password-0123456789abcdef"


def haproxy_section(header: str) -> list[str]:
    """The directives (comments left out) of the section ``header`` of haproxy.cfg."""
    lines = staging.DEPLOYED.read_text().splitlines()
    directives = []
    for line in lines[lines.index(header) + 1 :]:
        if not line.startswith(" "):
            break
        if not line.lstrip().startswith("#"):
            directives.append(line.strip())
    return directives


def stats_status(url: str, credentials: tuple[str, str] | None = None) -> int:
    """The status a GET of ``url`` gets, with basic auth if ``credentials``."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_haproxy_config_is_the_rendered_staging_config() -> None:
    assert staging.DEPLOYED.read_text() == render(staging.staging_config())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dns_slots": -1}, "dns_slots must be 0 or more"),
        ({"source_addresses": ["192.0.2.1"]}, "source addresses need fixed server lines"),
        # Not held to this host's open-file limit (staging's may exceed it), still a count.
        ({"maxconn": 0}, "maxconn must be positive"),
    ],
)
def test_the_staging_options_refuse_what_haproxy_cannot_run(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(staging.staging_config(), **overrides)


def test_haproxy_accepts_the_config_with_the_files_the_pod_mounts(tmp_path: Path) -> None:
    workload = named("Deployment", "haproxy")
    found = container("haproxy", "haproxy")
    pki = make_local_pki(tmp_path / "pki", hostnames=(f"gateway.{NAMESPACE}.svc.cluster.local",))
    secret_files = {"tls.crt": pki.server_cert, "tls.key": pki.server_key}
    text = staging.DEPLOYED.read_text()
    for name, (path, source) in mounts(workload, found).items():
        local = tmp_path / name
        local.mkdir()
        for item in source.get("secret", {}).get("items", []):
            shutil.copy(secret_files[item["key"]], local / item["path"])
        text = text.replace(f"{path}/", f"{local}/")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    variables = dict.fromkeys(env(found), STATS_PASSWORD)  # from the Secret
    check(config, env=variables)  # warnings count as errors
    # Without the password HAProxy refuses to start, rather than take an empty one.
    with pytest.raises(RuntimeError, match=staging.STATS_AUTH.password_variable):
        check(config)
    (tmp_path / "tls" / f"{staging.TLS_PEM.name}.key").unlink()
    with pytest.raises(RuntimeError, match="No Private Key"):
        check(config, env=variables)  # so the key does come from the second file


def test_the_haproxy_pods_and_service_fit_the_config() -> None:
    config = staging.staging_config()
    workload = named("Deployment", "haproxy")
    found = container("haproxy", "haproxy")
    assert set(ports(found).values()) == {config.port, config.stats_port}
    assert found["readinessProbe"]["httpGet"]["port"] == "stats"
    paths = {name: path for name, (path, _source) in mounts(workload, found).items()}
    sources = {name: source for name, (_path, source) in mounts(workload, found).items()}
    assert paths["config"] == str(Path(HAPROXY_IMAGE_CONFIG).parent)
    assert paths["tls"] == str(staging.TLS_PEM.parent)
    assert {i["path"] for i in sources["tls"]["secret"]["items"]} == {
        staging.TLS_PEM.name, f"{staging.TLS_PEM.name}.key",
    }  # fmt: skip
    assert paths["run"] == str(staging.RUN_DIR)
    assert "emptyDir" in sources["run"]
    (sysctl,) = pod_spec(workload)["securityContext"]["sysctls"]
    low, high = map(int, sysctl["value"].split())
    assert high - low + 1 == config.server_maxconn
    shard = named("StatefulSet", "shard")
    shard_dns_name = f"{shard['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
    assert shard_dns_name == staging.SHARDS_DNS_NAME
    assert env(container("shard", "shard"))["FLEET_SHARD_PORT"] == str(staging.SHARD_PORT)
    gateway = named("Service", "gateway")["spec"]["ports"]
    assert [(p["port"], ports(found)[p["targetPort"]]) for p in gateway] == [(443, config.port)]


def test_the_stats_port_asks_for_the_stats_user_but_not_on_the_probes_path() -> None:
    auth = staging.STATS_AUTH
    found = container("haproxy", "haproxy")
    assert {found[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")} == {
        HEALTH_PATH
    }
    frontend = haproxy_section("frontend stats")
    assert f"monitor-uri {HEALTH_PATH}" in frontend
    # The first request rule, so no other answers (/metrics, /stats) before it.
    rules = [line for line in frontend if line.startswith("http-request ")]
    assert rules[0] == (
        f"http-request auth realm haproxy-stats unless {{ path {HEALTH_PATH} }}"
        f" || {{ http_auth({STATS_USERLIST}) }}"
    )
    assert haproxy_section(f"userlist {STATS_USERLIST}") == [
        f'user {auth.user} insecure-password "${{{auth.password_variable}}}"'
    ]
    secret = {"secretKeyRef": {"name": "haproxy-stats", "key": "password"}}
    assert env(found) == {auth.password_variable: secret}


@pytest.mark.integration
def test_the_staging_stats_port_lets_only_the_stats_user_in_but_anyone_probe(
    tmp_path: Path,
) -> None:
    # The staging rendering, only listening on loopback (devices without TLS) and within
    # this host's limits: the stats frontend and its userlist are the deployed ones.
    port, stats_port = free_ports(2)
    config = dataclasses.replace(
        staging.staging_config(),
        port=port, stats_port=stats_port, bind_host="127.0.0.1", stats_host="127.0.0.1",
        tls_pem=None, admin_socket=tmp_path / "admin.sock", pidfile=tmp_path / "haproxy.pid",
        maxconn=1000,
    )  # fmt: skip
    auth = staging.STATS_AUTH
    probe_path = container("haproxy", "haproxy")["livenessProbe"]["httpGet"]["path"]
    with running_haproxy(config, tmp_path, {auth.password_variable: STATS_PASSWORD}):
        stats = f"http://127.0.0.1:{stats_port}"
        for path in ("/metrics", "/stats"):
            assert stats_status(stats + path) == 401, path
            assert stats_status(stats + path, (auth.user, "not-the-password")) == 401, path
            assert stats_status(stats + path, (auth.user, STATS_PASSWORD)) == 200, path
        assert stats_status(stats + probe_path) == 200


def test_compose_runs_haproxy_as_the_pods_do() -> None:
    config = staging.staging_config()
    haproxy = SERVICES["haproxy"]
    assert f"../k8s/haproxy.cfg:{HAPROXY_IMAGE_CONFIG}:ro" in haproxy["volumes"]
    assert {s["target"] for s in haproxy["secrets"]} == {
        str(staging.TLS_PEM), f"{staging.TLS_PEM}.key",
    }  # fmt: skip
    assert str(staging.RUN_DIR) in haproxy["tmpfs"]
    assert f"443:{config.port}" in haproxy["ports"]
    low, high = map(int, haproxy["sysctls"]["net.ipv4.ip_local_port_range"].split())
    assert high - low + 1 == config.server_maxconn
    assert haproxy["ulimits"]["nofile"] >= 2 * config.maxconn + HAPROXY_FD_RESERVE
    assert staging.SHARDS_DNS_NAME in aliases(SERVICES["shard"])
    shard_env = SERVICES["shard"]["environment"]
    assert shard_env["FLEET_SHARD_PORT"] == str(staging.SHARD_PORT)
    needed = int(shard_env["FLEET_SHARD_MAX_CONNECTIONS"]) + SHARD_FD_RESERVE
    assert SERVICES["shard"]["ulimits"]["nofile"] >= needed


# --- NATS ------------------------------------------------------------------------------------

NATS_CONF = K8S / "nats.conf"
NATS_AUTH = K8S / "nats-auth.conf"
NATS_TLS = Path("/etc/nats-tls")
# The component of each fleet command, as NATS knows it.
ROLE_OF_COMMAND = {"shard": natsauth.SHARD, "api": natsauth.API, "state": natsauth.STATE}


def nats_listen_ports() -> list[str]:
    """The clients' port, then the cluster's (routes)."""
    return re.findall(r"^\s*listen:\s*\S+:(\d+)\s*$", NATS_CONF.read_text(), re.MULTILINE)


def nats_setting(name: str) -> str:
    match = re.search(rf"^\s*{name}:\s*(\S+)\s*$", NATS_CONF.read_text(), re.MULTILINE)
    assert match, name
    return match[1]


def nats_config_here(tmp_path: Path) -> Path:
    """nats.conf and the file it includes, with the TLS files of the pod's Secret made here."""
    pki = make_local_pki(tmp_path / "pki", hostnames=("*.nats",), ips=())
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, made in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key),
                       ("ca.crt", pki.ca_cert)):  # fmt: skip
        shutil.copy(made, tls / name)
    for source in (NATS_CONF, NATS_AUTH):
        text = source.read_text().replace(f"{NATS_TLS}/", f"{tls}/")
        (tmp_path / source.name).write_text(text)
    return tmp_path / NATS_CONF.name


def test_nats_server_accepts_the_config_with_tls_and_every_roles_key(tmp_path: Path) -> None:
    nats = named("StatefulSet", "nats")
    variables = env(container("nats", "nats"))
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    made = natsauth.write_credentials(tmp_path / "credentials", natsauth.DEPLOYED_ROLES)
    keys = {natsauth.env_variable(role): found.public_key for role, found in made.items()}
    pod = {"POD_NAME": f"{nats['metadata']['name']}-0", **keys}
    config = nats_config_here(tmp_path)
    check_config(config, pod)
    missing = {k: v for k, v in pod.items() if k != natsauth.env_variable(natsauth.SHARD)}
    with pytest.raises(ConfigCheckFailed, match="NATS_NKEY_SHARD"):
        check_config(config, missing)


def test_the_deployed_authorization_is_the_rendered_one_and_requires_tls() -> None:
    assert NATS_AUTH.read_text() == natsauth.deployed_authorization()
    text = NATS_CONF.read_text()
    assert f"include ./{NATS_AUTH.name}" in text
    # Clients and routes both: the certificate, the key and the CA; routes verify the peer.
    assert text.count(f"cert_file: {NATS_TLS}/tls.crt") == 2
    assert text.count(f"ca_file: {NATS_TLS}/ca.crt") == 2
    assert re.search(r"cluster \{[^}]*tls \{[^}]*verify: true", text, re.S)


def credentials_given() -> Iterator[tuple[str, str, str, set[str]]]:
    """(where, the fleet command, the seed file given, the files the container has)."""
    for workload in workloads():
        for found in pod_spec(workload)["containers"]:
            argv, variables = found.get("args", []), env(found)
            seeds = [v for k, v in variables.items() if k.endswith("_NATS_CREDENTIALS")]
            if argv[:1] != ["fleet"] or not seeds:
                continue
            files = set(secret_files(workload, found))
            yield f"{workload['metadata']['name']}/{found['name']}", argv[1], seeds[0], files
    for name, service in SERVICES.items():
        variables = service.get("environment", {})
        seeds = [v for k, v in variables.items() if k.endswith("_NATS_CREDENTIALS")]
        if seeds:
            files = {secret["target"] for secret in service.get("secrets", [])}
            yield f"compose {name}", service["command"][1], seeds[0], files


def test_each_component_has_its_own_roles_credentials_and_nats_knows_every_one() -> None:
    given = {}
    for where, command, seed, files in credentials_given():
        assert Path(seed).name == f"{ROLE_OF_COMMAND[command]}{natsauth.SEED_SUFFIX}", where
        assert seed in files, where
        given[where] = ROLE_OF_COMMAND[command]
    assert set(given.values()) == set(natsauth.DEPLOYED_ROLES)
    for where, _argv, variables in processes():
        ca_files = [v for k, v in variables.items() if k.endswith("_NATS_CA_FILE")]
        urls = [v for k, v in variables.items() if k.endswith("_NATS_URLS")]
        assert len(ca_files) == len(urls), where  # every NATS client verifies the certificate
    # The keys nats-auth.conf refers to are the NATS pods' and nodes' variables, from the
    # Secret (Compose: the env file) that holds the deployed roles' public keys.
    wanted = {natsauth.env_variable(role) for role in natsauth.DEPLOYED_ROLES}
    assert set(re.findall(r"nkey: \$(\w+)", NATS_AUTH.read_text())) == wanted
    variables = env(container("nats", "nats"))
    assert {k: variables[k] for k in wanted} == {
        k: {"secretKeyRef": {"name": "nats-nkeys", "key": k}} for k in wanted
    }
    for index in range(named("StatefulSet", "nats")["spec"]["replicas"]):
        assert SERVICES[f"nats-{index}"]["env_file"] == ["./secrets/nats-nkeys.env"]


@pytest.mark.integration
def test_the_nats_nodes_route_to_every_pod_and_mount_what_the_config_names() -> None:
    nats = named("StatefulSet", "nats")
    found = container("nats", "nats")
    _client_port, cluster_port = nats_listen_ports()
    routes = re.findall(r"nats-route://\S+", NATS_CONF.read_text())
    service = nats["spec"]["serviceName"]
    pods = [f"{nats['metadata']['name']}-{i}" for i in range(nats["spec"]["replicas"])]
    assert routes == [f"nats-route://{pod}.{service}:{cluster_port}" for pod in pods]
    paths = {name: path for name, (path, _source) in mounts(nats, found).items()}
    assert found["args"] == ["nats-server", "--config", f"{paths['config']}/nats.conf"]
    pid_file = nats_setting("pid_file")
    assert str(Path(pid_file).parent) == paths["pid"]
    assert f"ldm={pid_file}" in found["lifecycle"]["preStop"]["exec"]["command"]
    assert nats_setting("store_dir") == paths["data"]
    assert paths["tls"] == str(NATS_TLS)
    # Lame duck mode: the grace period, then the clients moved over the duration.
    grace, duration = nats_setting("lame_duck_grace_period"), nats_setting("lame_duck_duration")
    lame_duck = seconds(grace) + seconds(duration)
    assert pod_spec(nats)["terminationGracePeriodSeconds"] > lame_duck
    # Compose: a service per pod, with the pod's name and DNS name.
    for pod in pods:
        node = SERVICES[pod]
        assert node["environment"]["POD_NAME"] == pod
        assert f"{pod}.{service}" in aliases(node)
        assert node["command"] == found["args"]
        configs = [f"../k8s/{f.name}:{paths['config']}/{f.name}:ro" for f in (NATS_CONF, NATS_AUTH)]
        assert node["volumes"] == [*configs, f"{pod}:{paths['data']}"]
        tls_files = {f"{paths['tls']}/{n}" for n in ("tls.crt", "tls.key", "ca.crt")}
        assert {secret["target"] for secret in node["secrets"]} == tls_files
        assert str(Path(pid_file).parent) in node["tmpfs"]
        assert node["stop_signal"] == "SIGUSR2"  # lame duck mode
        assert seconds(node["stop_grace_period"]) > lame_duck


# --- Prometheus ------------------------------------------------------------------------------

PROMETHEUS_YML = K8S / "prometheus.yml"


def test_promtool_accepts_the_prometheus_config() -> None:
    result = promtool("check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_haproxy_as_the_stats_user_with_the_password_haproxy_has() -> None:
    auth = staging.STATS_AUTH
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "haproxy"]
    assert job["basic_auth"]["username"] == auth.user
    password_file = job["basic_auth"]["password_file"]
    # Kubernetes: the file is the item of the Secret HAProxy's variable comes from.
    secret = env(container("haproxy", "haproxy"))[auth.password_variable]["secretKeyRef"]
    prometheus = named("StatefulSet", "prometheus")
    mounted = secret_files(prometheus, container("prometheus", "prometheus"))
    assert mounted[password_file] == (secret["name"], secret["key"])
    # Compose: both from the one variable Compose is started with.
    variable = auth.password_variable
    assert SERVICES["haproxy"]["environment"][variable].startswith(f"${{{variable}:?")
    (given,) = [s for s in SERVICES["prometheus"]["secrets"] if s["target"] == password_file]
    assert COMPOSE["secrets"][given["source"]] == {"environment": variable}


def test_prometheus_scrapes_the_staging_jobs_through_headless_services() -> None:
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    staging_jobs = {
        job["job_name"] for job in yaml.safe_load(STAGING_PROMETHEUS.read_text())["scrape_configs"]
    }
    assert {job["job_name"] for job in scrape} <= staging_jobs
    compose_names = {alias for service in SERVICES.values() for alias in aliases(service)}
    for job in scrape:
        (discovery,) = job["dns_sd_configs"]
        (name,) = discovery["names"]
        service_name, rest = name.split(".", 1)
        assert rest == f"{NAMESPACE}.svc.cluster.local"
        service = named("Service", service_name)
        assert service["spec"]["clusterIP"] == "None"
        assert discovery["port"] in {p["port"] for p in service["spec"]["ports"]}
        assert name in compose_names
    prometheus = container("prometheus", "prometheus")
    (flag,) = [a for a in prometheus["args"] if a.startswith("--config.file=")]
    path = flag.split("=", 1)[1]
    assert f"../k8s/prometheus.yml:{path}:ro" in SERVICES["prometheus"]["volumes"]
    assert flag in SERVICES["prometheus"]["command"]


# --- Compose ---------------------------------------------------------------------------------


def test_compose_health_checks_ask_healthz_on_the_port_the_service_listens_on() -> None:
    monitor_port = nats_setting("http").rsplit(":", 1)[1]
    checked = 0
    for name, service in SERVICES.items():
        if "healthcheck" not in service:
            continue
        checked += 1
        (port, path) = re.findall(
            r"http://127\.0\.0\.1:(\d+)(/[^']*)", " ".join(service["healthcheck"]["test"])
        )[0]
        assert path.startswith("/healthz"), name
        listens = [v for k, v in service.get("environment", {}).items() if k.endswith("_PORT")]
        assert [port] == (listens or [monitor_port]), name
    assert checked == 5  # three NATS nodes, shards, API


# --- the image -------------------------------------------------------------------------------


def test_the_image_is_built_from_what_the_build_context_sends() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    allowed = set(
        re.findall(r"^!(\S+)$", (DEPLOY / "Dockerfile.dockerignore").read_text(), re.MULTILINE)
    )
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), source
            assert source in allowed, source
    (uid,) = re.findall(r"useradd --uid (\d+)", dockerfile)
    ours = [
        w
        for w in workloads()
        if any(c["image"] == "fleetharness" for c in pod_spec(w)["containers"])
    ]
    assert {pod_spec(w)["securityContext"]["runAsUser"] for w in ours} == {int(uid)}


# --- network policies --------------------------------------------------------------------------

ANYONE = "anyone"
# (pod, port) -> the pods that may connect to it; every other pair is denied.
REACHABLE = {
    ("haproxy", 8443): ANYONE,  # devices
    ("haproxy", 8404): {"prometheus"},
    ("shard", 8080): {"haproxy", "prometheus"},
    ("nats", 4222): {"shard", "api", "fleet-state"},
    ("nats", 6222): {"nats"},
    ("nats", 7777): {"prometheus"},
    ("locust-master", 5557): {"locust-worker"},
}


def policies() -> list[dict[str, Any]]:
    return [doc for doc in MANIFESTS if doc["kind"] == "NetworkPolicy"]


def allowed_from(workload: dict[str, Any], port: int) -> set[str] | str:
    """The workloads whose pods the policies let reach ``port`` of ``workload``'s pods."""
    allowed: set[str] = set()
    for policy in policies():
        if not selects(policy["spec"]["podSelector"].get("matchLabels", {}), workload):
            continue
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule:
                return ANYONE
            for peer in rule["from"]:
                allowed |= {
                    w["metadata"]["name"]
                    for w in workloads()
                    if selects(peer["podSelector"]["matchLabels"], w)
                }
    return allowed


def test_network_policies_deny_by_default_and_allow_only_what_the_parts_use() -> None:
    (deny,) = [p for p in policies() if p["spec"]["podSelector"] == {}]
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]  # no rule: nothing is allowed in
    for workload in workloads():
        name = workload["metadata"]["name"]
        for found in pod_spec(workload)["containers"]:
            for port in (p["containerPort"] for p in found.get("ports", [])):
                assert allowed_from(workload, port) == REACHABLE.get((name, port), set()), (
                    name,
                    port,
                )
    # NATS monitoring only for the probes and the exporter beside it: not in its Service.
    assert 8222 not in {p["port"] for p in named("Service", "nats")["spec"]["ports"]}
