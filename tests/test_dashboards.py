"""The Grafana dashboards and provisioning files, structurally: what Grafana needs to load
them as provisioned. That every query is valid PromQL and finds series on a running stack is
tests/devstack/test_prometheus.py's part."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.observe_support import DASHBOARDS, dashboards, panel_queries, promtool

BOARDS = dashboards()
DOCS = DASHBOARDS.parent / "docs" / "observability.md"
# Grafana unit ids these dashboards use; a typo would silently show plain numbers.
UNITS = {"short", "cps", "reqps", "Bps", "bytes", "s", "percentunit"}


def datasources(node: Any) -> Iterator[Any]:
    """Every ``datasource`` value anywhere in the dashboard (panels, targets, variables)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasources(item)


def test_the_three_dashboards_with_distinct_uids() -> None:
    assert set(BOARDS) == {"fleet-overview.json", "backend-capacity.json", "load-test.json"}
    uids = [board["uid"] for board in BOARDS.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels_have_unique_ids_units_and_queries(name: str) -> None:
    board = BOARDS[name]
    assert board["schemaVersion"] >= 39
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in board["panels"]:
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_datasource_is_the_provisioned_one(name: str) -> None:
    found = list(datasources(BOARDS[name]))
    assert found
    assert all(ds == {"type": "prometheus", "uid": "prometheus"} for ds in found), found


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_queries_use_only_defined_variables(name: str) -> None:
    for title, promql in panel_queries(BOARDS[name]):  # KeyError on an undefined one
        assert "$" not in promql, title


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels_do_not_overlap(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in BOARDS[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_the_datasource_provisioning_gives_uid_prometheus() -> None:
    config = yaml.safe_load((DASHBOARDS / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = config["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")


def test_the_dashboard_provider_reads_where_the_docs_mount_the_dashboards() -> None:
    config = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/fleetharness.yaml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    docs = DOCS.read_text()
    assert f"$PWD/dashboards:{path}" in docs
    assert "$PWD/dashboards/provisioning:/etc/grafana/provisioning" in docs


ALERT_RULES = DASHBOARDS / "alerts.yml"
ALERT_TESTS = DASHBOARDS.parent / "tests" / "data" / "alerts_test.yml"


def test_the_alerting_rules_are_valid_and_each_tells_what_to_do() -> None:
    checked = promtool("check", "rules", ALERT_RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (group,) = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    for rule in group["rules"]:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_each_alert_fires_on_its_series_and_stays_quiet_otherwise() -> None:
    """promtool's rule unit tests: the series, the times and the alerts expected then."""
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {
        rule["alert"] for rule in yaml.safe_load(ALERT_RULES.read_text())["groups"][0]["rules"]
    }
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check["exp_alerts"]
    }
    assert fired == names  # every rule has a case where it fires
