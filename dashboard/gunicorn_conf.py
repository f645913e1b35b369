"""gunicorn's hooks for the dashboard: `gunicorn --config python:dashboard.gunicorn_conf`, as
deploy/Dockerfile.dashboard runs it.

gunicorn serves the dashboard from several processes, each with its own request counters; a
scrape answered by one of them would see its share only, and the counts would jump between
scrapes. prometheus_client's multiprocess mode writes every process's counts to files in
PROMETHEUS_MULTIPROC_DIR and adds them up at scrape time (dashboard/metrics.py). It chooses the
mode when it is first imported, so the variable is set in the master before the workers load
the app (which is why the app must not be preloaded), and the folder starts empty: files of an
earlier run would be counted again.

Each live progress stream (dashboard/live.py) holds a thread of its process while it is
open. Workers are gthread workers, and each gets a thread for every stream it may serve
(`sse_max_streams`) plus `PAGE_THREADS` that streams can never take: however many tabs stay
open, pages and the API find a free thread, and a stream over the cap gets a 429.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from farm.logs import configure_logging
from farm.settings import Settings

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.config import Config


# gunicorn reads these names as settings; the command line and GUNICORN_CMD_ARGS may override.
worker_class = "gthread"
PAGE_THREADS = 8  # threads of each process that only pages and the API use

log = logging.getLogger(__name__)


def on_starting(server: Arbiter) -> None:
    """In gunicorn's master, before it starts any worker."""
    settings = Settings.from_env()
    configure_logging(logging.INFO, settings.log_format)
    _size_threads(server.cfg, settings)
    directory = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir / "dashboard-metrics")
    )
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)


def _size_threads(cfg: Config, settings: Settings) -> None:
    """Raise each worker's threads to the streams it may serve plus PAGE_THREADS; fewer (say a
    `--threads 8` given on the command line) would let streams starve the pages."""
    needed = settings.sse_max_streams + PAGE_THREADS
    if cfg.threads < needed:
        log.info(
            "gunicorn threads raised from %s to %s: %s live streams (FARM_SSE_MAX_STREAMS) "
            "and %s for pages",
            cfg.threads,
            needed,
            settings.sse_max_streams,
            PAGE_THREADS,
        )
        cfg.set("threads", needed)
