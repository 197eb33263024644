"""A real Prometheus server (the system's ``prometheus`` package) scraping a stack, on loopback.

Used by the tests and the local stack, like ``backend.devstack.natsserver``: configuration,
storage and log live in the run directory; the server counts as started once ``/-/ready``
answers 200. ``render_config`` writes the scrape configuration (also the committed staging
example) and ``query`` evaluates PromQL through the HTTP API.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.devstack import process
from backend.devstack.process import free_ports
from backend.protocol.errors import FleetError

INSTALL_HINT = "install it: apt-get install prometheus"
# The fleet's alerting rules, beside the dashboards (checked by promtool in the tests).
ALERT_RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts.yml"


class QueryError(FleetError):
    """Prometheus refused a query; the message is Prometheus' own."""


def find_prometheus(name: str = "prometheus") -> str:
    """The prometheus binary (a name or a path)."""
    return process.find_binary(name, INSTALL_HINT)


def duration(seconds: float) -> str:
    """A Prometheus duration: a whole number of one unit, so 2s or 500ms but never 0.5s."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a scrape interval must be at least 1ms, not {seconds}s")
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def render_config(
    targets: Mapping[str, list[str]],
    scrape_interval: float = 2.0,
    *,
    discovered: Mapping[str, str] | None = None,
    rule_files: Sequence[str] = (),
) -> str:
    """``prometheus.yml`` scraping ``/metrics`` of each job's ``host:port`` targets, and of the
    targets listed in the JSON files ``discovered`` globs per job (file-based discovery: a
    process that comes and goes, such as a load test, adds its own file); loading
    ``rule_files``."""
    interval = duration(scrape_interval)
    lines = [
        "# Rendered by backend.devstack.prometheus.render_config. The dashboards select series",
        "# by metric name, never by job, so the job names are free; the alerting rules use them.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
    ]
    # JSON strings and lists are valid YAML flow scalars and sequences.
    if rule_files:
        lines += ["rule_files:", *(f"  - {json.dumps(path)}" for path in rule_files)]
    lines.append("scrape_configs:")
    for job, hosts in targets.items():
        lines += [
            f"  - job_name: {json.dumps(job)}",
            "    static_configs:",
            f"      - targets: {json.dumps(hosts)}",
        ]
    for job, files in (discovered or {}).items():
        lines += [
            f"  - job_name: {json.dumps(job)}",
            "    file_sd_configs:",
            f"      - files: {json.dumps([files])}",
        ]
    return "\n".join(lines) + "\n"


def target_file(targets: Sequence[str]) -> str:
    """A file-based discovery file listing ``targets`` (``host:port``)."""
    return json.dumps([{"targets": list(targets)}]) + "\n"


class PrometheusServer(process.Service):
    """``with PrometheusServer(run_dir, {"shards": ["127.0.0.1:8080"]}) as prom: prom.url``."""

    def __init__(
        self,
        run_dir: Path,
        targets: dict[str, list[str]],
        host: str = "127.0.0.1",
        scrape_interval: float = 2.0,
        binary: str | None = None,
        *,
        port: int = 0,
        name: str = "prometheus",
        discovered: Mapping[str, str] | None = None,
        rule_files: Sequence[str] = (),
    ) -> None:
        self.run_dir = run_dir
        self.targets = targets
        self.discovered = dict(discovered or {})
        self.rule_files = tuple(rule_files)
        self.host = host
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.port = port
        """Where the web UI and API listen; 0: a free one (a fixed one suits a Grafana)."""
        self.name = name
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def config_file(self) -> Path:
        return self.run_dir / f"{self.name}.yml"

    def start(self) -> PrometheusServer:
        binary = find_prometheus(self.binary or "prometheus")  # fails before writing anything
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                self.targets,
                self.scrape_interval,
                discovered=self.discovered,
                rule_files=self.rule_files,
            )
        )
        port = self.port or free_ports(1, self.host)[0]
        argv = [
            binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.run_dir / f'{self.name}-data'}",
            f"--web.listen-address={self.host}:{port}",
        ]
        self._proc = proc = process.spawn(argv, self.log_file)
        self.url = f"http://{self.host}:{port}"
        ready = f"{self.url}/-/ready"
        try:
            process.wait_until(lambda: process.answers_ok(ready), proc, "prometheus", self.log_file)
        except RuntimeError:
            self.stop()  # one that stalls still runs: __exit__ is not called when start fails
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            process.stop(self._proc)
            self._proc = None


def query(url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The result of an instant query at ``url`` (a Prometheus server): a list of
    ``{"metric": labels, "value": [time, "value"]}``, a scalar as one unlabelled element.
    Raises QueryError with Prometheus' message when it refuses the query."""
    request = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    answer = _get_json(request, timeout)
    if answer.get("status") != "success":
        raise QueryError(f"{promql}: {answer.get('errorType')}: {answer.get('error')}")
    data = answer["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """The JSON body of a GET, also of an error status: the API explains refusals in it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if not body.startswith(b"{"):
            raise QueryError(f"HTTP {exc.code} from {url}") from None
    answer: dict[str, Any] = json.loads(body)
    return answer
