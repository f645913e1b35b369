"""Probes for the orchestrator: `/healthz` (the process answers) and `/readyz` (it can reach the
database, object storage and the broker, so traffic may be sent to it).

A failing dependency makes the dashboard unready, never unhealthy: restarting it would not
bring PostgreSQL back.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from dashboard.context import farm
from dashboard.security import public

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
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Exception as error:  # the probe reports what is down; it never fails itself
            report[name] = f"unavailable: {type(error).__name__}"
    ready = all(state == "ok" for state in report.values())
    return jsonify(status="ready" if ready else "unready", **report), 200 if ready else 503
