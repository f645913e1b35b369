"""Readiness: the dashboard's `/readyz` follows its database down and back up, and a worker
reports ready (to `workers.probe --startup`) only once its models are loaded *and* its Celery
consumer takes tasks.

Both run on real services that the test stops and starts: a PostgreSQL cluster of the test's
own (the shared server must never stop), and a broker port on which a Redis of the test's own
starts only after the worker has said it cannot reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.db.migrate import upgrade
from farm.db.session import make_engine, session_factory
from farm.render.tiny import ensure_tiny
from tests.fixtures.dashboard import make_studio
from tests.fixtures.farm_cluster import FARM, PostgresServer, RedisServer
from workers.probe import check_startup


def test_readyz_goes_unready_while_the_database_is_down(
    postgres_server: PostgresServer, tmp_path: Path
):
    studio = make_studio(tmp_path, postgres_server.url, record_tasks=False)
    client = studio.client()
    everything_ok = {
        **{"status": "ready", "database": "ok", "storage": "ok", "broker": "ok"},
        **{"reaper": "never ran", "reaper_last_run_s": None},  # no beat here: not unready
    }
    assert (client.get("/readyz").status_code, client.get("/readyz").json) == (200, everything_ok)

    postgres_server.stop()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json["status"] == "unready"
    assert down.json["database"].startswith("unavailable: OperationalError")
    assert (down.json["storage"], down.json["broker"]) == ("ok", "ok")
    assert "reaper" not in down.json  # read from the database, which is down
    assert client.get("/healthz").status_code == 200  # unready, never unhealthy

    postgres_server.start()
    back = client.get("/readyz")  # the pool's pre-ping replaces the connections the stop broke
    assert (back.status_code, back.json) == (200, everything_ok)
    studio.farm.close()


@pytest.fixture
def worker_waiting_for_its_broker(
    tmp_path: Path, models_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], RedisServer, str, Path]]:
    """`farm worker` whose broker port is closed: (process, the Redis to start on that port,
    the database URL, the log)."""
    ensure_tiny(models_dir)
    database_url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(database_url)
    broker = RedisServer(tmp_path / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(
        FARM_DATA_DIR=str(tmp_path / "data"),
        FARM_MODELS_DIR=str(models_dir),
        FARM_DATABASE_URL=database_url,
        FARM_BROKER_URL=broker.url,
        FARM_LEASE_SECONDS="15",  # a beat every 5 s: readiness is seen soon after it is true
        FARM_CPU_THREADS="1",
        FARM_PIN_CPUS="0",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(FARM), "worker", "--devices", "cpu", "--presets", "tiny"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, broker, database_url, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        broker.stop()


def _wait_for(what: str, condition: Callable[[], bool], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"not {what} after {timeout_s:.0f} s; the worker's log ends:\n{tail}")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_worker_is_ready_once_its_models_are_loaded_and_it_consumes(
    worker_waiting_for_its_broker,
):
    process, broker, database_url, log = worker_waiting_for_its_broker
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    host = socket.gethostname()

    def startup() -> tuple[bool, str]:
        with sessions() as session:
            verdict = check_startup(session, host)
        return verdict.ok, verdict.line

    # `farm worker` waits for its broker before it starts its device's worker (one line that
    # names the URL), so a worker that cannot consume is never reported ready.
    _wait_for(
        "waiting", lambda: "cannot reach the broker" in log.read_text(errors="ignore"), log, 60
    )
    time.sleep(6)  # more than a heartbeat: a row would have had its chance to turn ready
    ok, line = startup()
    assert not ok, line
    assert process.poll() is None

    broker.start(persistent=False)  # the supervisor's next look finds it
    _wait_for("loaded", lambda: "preset tiny warmed up" in log.read_text(errors="ignore"), log, 240)
    _wait_for("ready", lambda: startup()[0], log, 90)
    assert f"worker {host}:cpu0 ready on cpu" in log.read_text(errors="ignore")
    engine.dispose()
