"""The dashboard's app factory: pages, the JSON API and live progress for one farm.

Configuration goes defaults, then the environment, then `test_config` (which may also hand over
a ready `Farm` as "FARM"); nothing is read at import time. Gunicorn serves
`dashboard.app:create_app()`; on a laptop, `flask --app dashboard.app run`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask

from dashboard import errors, formatting, metrics, security
from dashboard.api import api
from dashboard.context import SharedFaces
from dashboard.files import files
from dashboard.health import health
from dashboard.live import live
from dashboard.pages import PAGES
from farm.context import Farm
from farm.settings import Settings

MIN_SECRET_KEY = 32

DEFAULTS: dict[str, Any] = {
    # 16 photos of up to 20 MB each would be 320 MB; a studio uploads phone photos, not RAWs.
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    "MAX_FORM_MEMORY_SIZE": 8 * 1024 * 1024,  # a story typed into the form: 10,000 scenes fit
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_SECURE": False,
    "SESSION_COOKIE_NAME": "farm_session",
    "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
    "PAGE_SIZE": 50,
    "SSE_POLL_S": 1.0,  # how often the stream reads SQL when Redis events are not configured
    # A comment line that keeps proxies from closing a quiet stream; a closed tab's stream is
    # noticed at its next write, which frees its slot (dashboard/live.py): so not much longer.
    "SSE_HEARTBEAT_S": 5.0,
    "SSE_MAX_S": 300.0,  # then the browser reconnects: no thread waits forever on a lost tab
}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if env.get("FARM_SECRET_KEY"):
        config["SECRET_KEY"] = env["FARM_SECRET_KEY"]
    if env.get("FARM_COOKIE_SECURE"):
        config["SESSION_COOKIE_SECURE"] = env["FARM_COOKIE_SECURE"].lower() in ("1", "true", "yes")
    if env.get("FARM_MAX_UPLOAD_MB"):
        config["MAX_CONTENT_LENGTH"] = int(env["FARM_MAX_UPLOAD_MB"]) * 1024 * 1024
    return config


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(_from_env(os.environ))
    if test_config is not None:
        app.config.from_mapping(test_config)
    _check_secret_key(app)

    farm = app.config.get("FARM") or Farm(Settings.from_env())
    app.extensions["farm"] = farm
    app.extensions["faces"] = SharedFaces(farm.settings.models_dir)

    metrics.init_app(app)  # first: its clock starts before the login checks may answer
    errors.init_app(app)  # then control characters are refused before a login reads the database
    security.init_app(app)
    formatting.init_app(app)
    for blueprint in (health, api, live, files, *PAGES):
        app.register_blueprint(blueprint)
    return app


def _check_secret_key(app: Flask) -> None:
    """Sessions and CSRF tokens are signed with it: a missing or short key would let anyone
    forge a login, so the dashboard refuses to start rather than run without one."""
    key = app.config.get("SECRET_KEY") or ""
    if app.testing and key:
        return
    if len(key) < MIN_SECRET_KEY:
        raise RuntimeError(
            f"FARM_SECRET_KEY must be set to at least {MIN_SECRET_KEY} random characters "
            f"(got {len(key)}); make one with: "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
