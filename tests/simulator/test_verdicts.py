"""Verdict checks: judging a figure against its threshold, overrides and the printed table."""

from __future__ import annotations

import json

import pytest

from simulator.verdicts import (
    Check,
    at_least,
    at_most,
    format_value,
    from_dicts,
    judge,
    parse_thresholds,
    table,
)


def test_at_most_and_at_least_judge_the_measured_figure() -> None:
    assert at_most("lost", 0, 0).ok
    assert not at_most("lost", 1, 0).ok
    assert at_least("rate", 20_000, 20_000, "/s").ok
    assert not at_least("rate", 3_812.5, 20_000, "/s").ok


def test_an_unmeasured_figure_fails() -> None:
    for measured in (None, float("nan")):
        check = at_most("ping_p99_ms", measured, 1000, "ms")
        assert (check.ok, check.measured) == (False, None)


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule"):
        judge("x", 1, "==", 1)


def test_checks_survive_the_json_round_trip() -> None:
    checks = [at_most("reconnect_99pct_s", 12.345678, 30, "s"), at_least("rate", None, 5)]
    rows = json.loads(json.dumps([c.as_dict() for c in checks]))
    assert from_dicts(rows) == [
        Check("reconnect_99pct_s", 12.346, 30, "s", True, "<="),
        Check("rate", None, 5, "", False, ">="),
    ]


def test_thresholds_from_the_command_line() -> None:
    assert parse_thresholds(["alert_p99_ms=500", " reconnect_99pct_s = 2.5"]) == {
        "alert_p99_ms": 500.0,
        "reconnect_99pct_s": 2.5,
    }
    for bad in ("alert_p99_ms", "=5", "alert_p99_ms=fast"):
        with pytest.raises(ValueError, match="NAME=NUMBER"):
            parse_thresholds([bad])


def test_the_table_puts_the_figure_next_to_the_threshold() -> None:
    lines = table([at_most("alert_p99_ms", 812, 2000, "ms"), at_least("rate", 3812.5, 20000, "/s")])
    assert lines[0].split() == ["check", "measured", "threshold", "status"]
    assert lines[1].split() == ["alert_p99_ms", "812", "ms", "<=", "2,000", "ms", "PASS"]
    assert lines[2].split() == ["rate", "3,812", "/s", ">=", "20,000", "/s", "FAIL"]
    column = lines[0].index("measured")
    assert all(line[column - 1] == " " and line[column] != " " for line in lines)


def test_values_are_readable() -> None:
    assert format_value(None) == "not measured"
    assert format_value(0.123456, "s") == "0.123 s"
    assert format_value(4.0) == "4"
