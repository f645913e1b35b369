"""Probes for the orchestrator: `/healthz` (the process answers) and `/readyz` (it can reach the
database, object storage and the broker, so traffic may be sent to it).

A failing dependency makes the dashboard unready, never unhealthy: restarting it would not
bring PostgreSQL back. `/readyz` also says whether the farm's reaper runs (`reaper`, with
`reaper_last_run_s`), for whoever watches the farm; a stale reaper does not make the dashboard
unready, since taking it out of service would not restart the reaper either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from dashboard.context import farm
from dashboard.security import public
from farm.context import Farm
from farm.queue.beat import reaper_liveness

health = Blueprint("health", __name__)


@health.get("/healthz")
@public
def healthz() -> Response:
    return jsonify(status="ok")


@health.get("/readyz")
@public
def readyz() -> tuple[Response, int]:
    the_farm = farm()

    def database() -> None:
        with the_farm.sessions() as session:
            session.execute(text("SELECT 1"))

    def storage() -> None:
        the_farm.storage.exists("readyz")

    def broker() -> None:
        with the_farm.celery.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

    checks: dict[str, Callable[[], None]] = {
        "database": database,
        "storage": storage,
        "broker": broker,
    }
    report: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Exception as error:  # the probe reports what is down; it never fails itself
            report[name] = f"unavailable: {type(error).__name__}"
    ready = all(state == "ok" for state in report.values())
    if report["database"] == "ok":
        report.update(_reaper(the_farm))
    return jsonify(status="ready" if ready else "unready", **report), 200 if ready else 503


def _reaper(the_farm: Farm) -> dict[str, Any]:
    """`ok`, `stale` or `never ran`, and the seconds since its last run (None: never)."""
    try:
        with the_farm.sessions() as session:
            liveness = reaper_liveness(session)
    except Exception as error:  # as above: the probe reports, it never fails itself
        return {"reaper": f"unknown: {type(error).__name__}", "reaper_last_run_s": None}
    if liveness.age_s is None:
        return {"reaper": "never ran", "reaper_last_run_s": None}
    state = "ok" if liveness.alive else "stale"
    return {"reaper": state, "reaper_last_run_s": round(liveness.age_s)}
