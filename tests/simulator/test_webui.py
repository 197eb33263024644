"""The web UI's tables: the fleet's rows and the verdict's checks as the Checks tab shows them.
The pages themselves are served by a real Locust in tests/simulator/test_plugin.py."""

from __future__ import annotations

from simulator.verdicts import at_least, at_most
from simulator.webui import TABLES, TABS, LiveViews, check_rows, extended_stats


def test_checks_are_rows_of_measured_against_threshold() -> None:
    rows = check_rows([at_most("connect_failed_pct", 12.5, 5, "%"), at_least("peak", None, 10)])
    assert rows == [
        {"check": "connect_failed_pct", "measured": "12.5 %", "threshold": "<= 5 %",
         "status": "failing"},
        {"check": "peak", "measured": "not measured", "threshold": ">= 10", "status": "waiting"},
    ]  # fmt: skip


def test_every_tab_has_its_table_and_its_rows() -> None:
    views = LiveViews(
        fleet_rows=lambda: [("connected now", 3)],
        checks=lambda: [at_most("alerts_unstored_pct", 0, 1, "%")],
        report=lambda: "",
    )
    stats = extended_stats(views)
    assert [tab["key"] for tab in TABS] == [table["key"] for table in TABLES]
    assert [table["key"] for table in stats] == [tab["key"] for tab in TABS]
    assert stats[0]["data"] == [{"metric": "connected now", "value": 3}]
    assert stats[1]["data"][0]["status"] == "passing"
    columns = [[column["key"] for column in table["structure"]] for table in TABLES]
    assert set(stats[1]["data"][0]) == set(columns[1])
