"""`farm up` serves the dashboard as a studio's server does (gunicorn with the deployed
configuration), so it answers, and nothing warns of a development server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from farm.db.migrate import upgrade
from farm.settings import Settings
from tests.fixtures.farm_cluster import free_port

SERVE_AND_STOP = """
import sys, time, urllib.request
from farm.settings import Settings
from workers.supervisor import start_dashboard

port = int(sys.argv[1])
web = start_dashboard(Settings.from_env(), port)
status, deadline = None, time.monotonic() + 60
while status is None and time.monotonic() < deadline:
    try:
        status = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status
    except OSError:
        time.sleep(0.2)
web.terminate()
web.wait(30)
print(status)
"""


def test_the_dashboard_of_farm_up_answers_without_a_development_server_warning(tmp_path: Path):
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path / "data")}
    env.pop("FARM_DATABASE_URL", None)
    upgrade(Settings.from_env(env).database_url)
    result = subprocess.run(
        [sys.executable, "-c", SERVE_AND_STOP, str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "200", result.stderr
    assert "development server" not in result.stderr
    assert "WARNING" not in result.stderr, result.stderr
