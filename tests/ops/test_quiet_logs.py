"""Quiet logs: a farm's worker and beat say nothing once a minute about a reaper that did
nothing, a worker run as root (a developer's box, CI) is not warned about it, and loading a
preset does not ask for `pip install accelerate`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from farm.queue.app import REAP, RENDER_SHARD
from workers.routine_logs import quiet_routine_reaps


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_celerys_routine_lines_about_the_reaper_are_dropped():
    quiet_routine_reaps()
    kept = Kept()
    root = logging.getLogger()
    root.addHandler(kept)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        trace = logging.getLogger("celery.app.trace")
        succeeded = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
        for name in (REAP, RENDER_SHARD):
            context = {"name": name, "id": "t1", "runtime": 0.01, "return_value": "{}"}
            logging.getLogger("celery.worker.strategy").info(
                "Task %(name)s[%(id)s] received", context
            )
            trace.info(succeeded, context)
        trace.error(
            "Task %(name)s[%(id)s] raised unexpected: %(exc)s",
            {"name": REAP, "id": "t2", "exc": "boom"},
        )
        beat = logging.getLogger("celery.beat")
        beat.info("Scheduler: Sending due task %s (%s)", "reap-expired-leases", REAP)
    finally:
        root.removeHandler(kept)
        root.setLevel(level)
    assert kept.lines == [
        f"Task {RENDER_SHARD}[t1] received",
        f"Task {RENDER_SHARD}[t1] succeeded in 0.01s: {{}}",
        f"Task {REAP}[t2] raised unexpected: boom",
    ]


def test_a_worker_run_as_root_is_not_warned_about_it(tmp_path: Path):
    # Celery warns only a worker run as root: the check runs as root whoever runs the test.
    check = (
        "import os\n"
        "os.getuid = os.geteuid = os.getgid = os.getegid = lambda: 0\n"
        "import workers.celery_app as worker\n"
        "from celery.platforms import check_privileges\n"
        "check_privileges(worker.app.conf.accept_content)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, "FARM_DATA_DIR": str(tmp_path)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "superuser" not in result.stderr, result.stderr


def test_loading_the_tiny_preset_asks_for_no_accelerate(models_dir: Path, caplog):
    from farm.render.loading import load_preset
    from farm.render.presets import get_preset

    caplog.set_level(logging.WARNING)
    load_preset(get_preset("tiny"), models_dir, device="cpu")
    assert not [r for r in caplog.records if "accelerate" in r.getMessage()]
