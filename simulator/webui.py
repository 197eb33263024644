"""What the simulator adds to Locust's web UI: a "Gateways" tab (the connection gauge, drops
and failed tries by cause, alert accounting), a "Checks" tab (the run's verdict checks judged on
its figures so far, each against its threshold) and ``/fleet``, the run's report live: its
charts redrawn every few seconds while the run goes on.

Locust's UI has no chart extension point; its tabs show tables that its page fills from
``/stats/requests``, which is where the two tabs' rows are added.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from simulator import report
from simulator.verdicts import Check, format_value

if TYPE_CHECKING:  # importing Locust patches the process with gevent: only its plugin does
    from locust.web import WebUI

View = Callable[[], str]
REFRESH_S = 3
# Fetches the report's content again and swaps it in: charts that follow the run, no library.
_REFRESH_SCRIPT = (
    "<script>setInterval(async () => {"
    "const answer = await fetch('fleet/content'); if (!answer.ok) return;"
    "document.getElementById('live').innerHTML = await answer.text();"
    f"}}, {REFRESH_S * 1000});</script>"
)


@dataclass(frozen=True)
class LiveViews:
    """What the pages show, asked for at each request (the run goes on between them)."""

    fleet_rows: Callable[[], Sequence[tuple[str, Any]]]
    checks: Callable[[], Sequence[Check]]
    report: Callable[[], str]  # the report's content, from the figures so far


def check_rows(checks: Sequence[Check]) -> list[dict[str, str]]:
    """The "Checks" tab's rows: every check, measured against its threshold."""
    return [
        {
            "check": check.name,
            "measured": format_value(check.measured, check.unit),
            "threshold": f"{check.rule} {format_value(check.threshold, check.unit)}",
            "status": _status(check),
        }
        for check in checks
    ]


def _status(check: Check) -> str:
    if check.measured is None:
        return "waiting"  # e.g. a storm's recovery before its kill
    return "passing" if check.ok else "failing"


def extended_stats(views: LiveViews) -> list[dict[str, Any]]:
    gateways = [{"metric": name, "value": value} for name, value in views.fleet_rows()]
    return [
        {"key": "gateways", "data": gateways},
        {"key": "checks", "data": check_rows(views.checks())},
    ]


TABS = [{"title": "Gateways", "key": "gateways"}, {"title": "Checks", "key": "checks"}]
TABLES = [
    {"key": "gateways", "structure": [
        {"key": "metric", "title": "Metric"}, {"key": "value", "title": "Value"},
    ]},
    {"key": "checks", "structure": [
        {"key": "check", "title": "Check"}, {"key": "measured", "title": "Measured so far"},
        {"key": "threshold", "title": "Threshold"}, {"key": "status", "title": "Now"},
    ]},
]  # fmt: skip


def extend(web_ui: WebUI, views: LiveViews) -> None:
    """The two tabs, and the live report at /fleet (behind --web-login when it is on)."""
    if web_ui.app is None:  # Locust's WebUI always makes its app
        return
    web_ui.template_args["extendedTabs"] = TABS
    web_ui.template_args["extendedTables"] = TABLES
    app = web_ui.app
    # Locust's decorator is unannotated: it keeps the view's signature.
    protected = cast(Callable[[View], View], web_ui.auth_required_if_enabled)

    @app.after_request
    def add_fleet_rows(response: Any) -> Any:
        from flask import request

        if request.path != "/stats/requests" or not response.is_json:
            return response
        body: Mapping[str, Any] = response.json
        response.set_data(json.dumps({**body, "extended_stats": extended_stats(views)}))
        return response

    @app.route("/fleet")
    @protected
    def live_report() -> str:
        content = f"<p>Redrawn every {REFRESH_S} s.</p><div id=live>{views.report()}</div>"
        return report.page("fleet run (live)", content, head=_REFRESH_SCRIPT)

    @app.route("/fleet/content")
    @protected
    def live_report_content() -> str:
        return views.report()
