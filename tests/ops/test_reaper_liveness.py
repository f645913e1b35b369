"""The reaper is supervised and its liveness shown: `farm worker --beat` starts the beat again
when it is killed, the runs go on, and `farm workers` and `/readyz` say when it last ran, or
that it is stale.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from farm.db.migrate import upgrade
from farm.db.models import ReaperRun
from farm.db.session import make_engine, session_factory
from farm.db.types import utcnow
from farm.queue.beat import reaper_liveness, record_reap
from farm.render.tiny import ensure_tiny
from tests.fixtures.dashboard import make_studio
from tests.fixtures.farm_cluster import FARM, REDIS_SERVER_URL, dedicated_redis_db

T = TypeVar("T")
STARTED = re.compile(r"started the reaper's beat \(pid (\d+)\)")


def test_a_reaper_three_runs_late_is_stale_and_the_dashboard_stays_ready(tmp_path: Path):
    studio = make_studio(tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", record_tasks=False)
    client, now = studio.client(), utcnow()
    with studio.farm.sessions.begin() as session:
        record_reap(session, "a:cpu0", 60, now - timedelta(seconds=170))
    fresh = client.get("/readyz")
    assert (fresh.status_code, fresh.json["reaper"]) == (200, "ok")
    assert 170 <= fresh.json["reaper_last_run_s"] < 200

    with studio.farm.sessions.begin() as session:
        record_reap(session, "b:cuda0", 60, now - timedelta(seconds=181))  # one row, rewritten
    stale = client.get("/readyz")
    assert (stale.status_code, stale.json["status"], stale.json["reaper"]) == (
        200,
        "ready",
        "stale",
    )
    with studio.farm.sessions() as session:
        assert session.query(ReaperRun).count() == 1
        line = reaper_liveness(session, now).line()
    assert line == (
        "reaper: ran 181s ago on b:cuda0 (every 60s): stale; "
        "is its beat running, and a worker taking the control queue?"
    )
    studio.farm.close()


def _wait_for(what: str, probe: Callable[[], T | None], log: Path, timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"not {what} after {timeout_s:.0f} s; the log ends:\n{tail}")
        time.sleep(0.3)
    return found


@pytest.mark.slow
def test_a_killed_beat_is_started_again_and_the_reaper_runs_on(tmp_path: Path, models_dir: Path):
    ensure_tiny(models_dir)
    database_url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    log = tmp_path / "worker.log"

    def last_run() -> datetime | None:
        with sessions() as session:
            return reaper_liveness(session).last_run

    def beats() -> list[int]:
        return [int(pid) for pid in STARTED.findall(log.read_text(errors="ignore"))]

    with dedicated_redis_db(REDIS_SERVER_URL) as broker_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(
            FARM_DATA_DIR=str(tmp_path / "data"),
            FARM_MODELS_DIR=str(models_dir),
            FARM_DATABASE_URL=database_url,
            FARM_BROKER_URL=broker_url,
            FARM_REAP_INTERVAL="1",
            FARM_CPU_THREADS="1",
            FARM_PIN_CPUS="0",
            PYTHONUNBUFFERED="1",
        )
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(FARM), "-v", "worker", "--devices", "cpu", "--presets", "tiny", "--beat"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            (first,) = _wait_for("the beat started", beats, log, 60)
            _wait_for("a reap ran", last_run, log, 180)

            os.kill(first, signal.SIGKILL)
            restarted = f"the reaper's beat (pid {first}) exited with status -9; starting it again"
            _wait_for(
                "the death seen", lambda: restarted in log.read_text(errors="ignore"), log, 30
            )
            second = _wait_for("started again", lambda: beats()[1:], log, 30)[0]
            seen = utcnow()
            # A reap the dead beat sent expires after an interval: a run this late is the new one's.
            _wait_for(
                "a reap by the new beat", lambda: last_run() > seen + timedelta(seconds=2), log, 90
            )
            assert second != first and process.poll() is None

            said = subprocess.run(
                [str(FARM), "workers"], env=env, capture_output=True, text=True, timeout=60
            )
            reaper_line = said.stdout.splitlines()[-1]
            host = re.escape(socket.gethostname())
            assert re.fullmatch(rf"reaper: ran \d+s ago on {host}:cpu0 \(every 1s\)", reaper_line)
            studio = make_studio(
                tmp_path / "studio", database_url, record_tasks=False, migrate=False
            )
            assert studio.client().get("/readyz").json["reaper"] == "ok"
            studio.farm.close()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            engine.dispose()
    assert STARTED.findall(log.read_text(errors="ignore")) == [str(first), str(second)]
