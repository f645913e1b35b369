"""gunicorn's hooks for the dashboard: `gunicorn --config python:dashboard.gunicorn_conf`, as
deploy/Dockerfile.dashboard runs it.

gunicorn serves the dashboard from several processes, each with its own request counters; a
scrape answered by one of them would see its share only, and the counts would jump between
scrapes. prometheus_client's multiprocess mode writes every process's counts to files in
PROMETHEUS_MULTIPROC_DIR and adds them up at scrape time (dashboard/metrics.py). It chooses the
mode when it is first imported, so the variable is set in the master before the workers load
the app (which is why the app must not be preloaded), and the folder starts empty: files of an
earlier run would be counted again.
"""

from __future__ import annotations

import logging
import os
import shutil

from farm.logs import configure_logging
from farm.settings import Settings


def on_starting(server: object) -> None:
    """In gunicorn's master, before it starts any worker."""
    settings = Settings.from_env()
    configure_logging(logging.INFO, settings.log_format)
    directory = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir / "dashboard-metrics")
    )
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
