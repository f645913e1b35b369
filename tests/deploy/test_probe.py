"""The worker pod's probes, on an SQLite file with worker rows written by hand.

The probes decide when Kubernetes may restart a GPU worker, so each rule gets a row that
should pass it and one that should not: a busy worker with a fresh heartbeat is alive, one
whose heartbeat stopped is not, a worker still loading its models is neither started nor dead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from farm.db.migrate import upgrade
from farm.db.models import Worker
from farm.db.session import make_engine, session_factory
from farm.db.states import WorkerStatus
from farm.db.types import utcnow
from workers.probe import main

HOST = "farm-worker-7d9f-abcde"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(url)
    return url


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


def add_worker(
    session: Session,
    status: WorkerStatus,
    *,
    beat_s_ago: float = 2,
    host: str = HOST,
    label: str = "cuda0",
) -> None:
    session.add(
        Worker(
            id=f"{host}:{label}",
            hostname=host,
            device="cuda:0",
            presets=["photomaker-v2"],
            status=status,
            last_heartbeat=utcnow() - timedelta(seconds=beat_s_ago),
        )
    )
    session.commit()


def run(capsys: pytest.CaptureFixture[str], database_url: str, *args: str) -> tuple[int, str]:
    code = main([*args, "--database-url", database_url, "--hostname", HOST])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"one line expected, got {out!r}"
    return code, out.strip()


def test_startup_waits_until_the_presets_are_loaded(capsys, database_url, session):
    code, line = run(capsys, database_url, "--startup")
    assert (code, line) == (1, f"waiting: no worker registered as {HOST}:*")

    add_worker(session, WorkerStatus.STARTING)
    code, line = run(capsys, database_url, "--startup")
    assert code == 1 and "starting" in line

    session.get(Worker, f"{HOST}:cuda0").ready()
    session.commit()
    code, line = run(capsys, database_url, "--startup")
    assert code == 0 and line.startswith(f"started: {HOST}:cuda0 idle")


@pytest.mark.parametrize("status", [WorkerStatus.IDLE, WorkerStatus.BUSY, WorkerStatus.DRAINING])
def test_startup_passes_for_every_loaded_state(capsys, database_url, session, status):
    add_worker(session, status)
    assert run(capsys, database_url, "--startup")[0] == 0


def test_startup_ignores_a_stale_row_of_a_dead_process(capsys, database_url, session):
    """A row left idle by the process before a restart must not pass for the new one."""
    add_worker(session, WorkerStatus.IDLE, beat_s_ago=600)
    code, line = run(capsys, database_url, "--startup")
    assert code == 1 and "0 of 1" in line


def test_startup_counts_only_this_hosts_workers(capsys, database_url, session):
    add_worker(session, WorkerStatus.IDLE, host=f"{HOST}x")  # a longer name with this prefix
    assert run(capsys, database_url, "--startup")[0] == 1
    add_worker(session, WorkerStatus.IDLE)
    assert run(capsys, database_url, "--startup")[0] == 0


def test_an_underscore_in_the_hostname_is_no_wildcard(capsys, database_url, session):
    """SQL's LIKE reads `_` as any character: `farm_worker` must not answer for `farm-worker`."""
    add_worker(session, WorkerStatus.IDLE)
    lookalike = HOST.replace("-", "_", 1)
    code = main(["--startup", "--database-url", database_url, "--hostname", lookalike])
    assert code == 1
    assert capsys.readouterr().out == f"waiting: no worker registered as {lookalike}:*\n"


def test_startup_waits_for_every_expected_process(capsys, database_url, session):
    add_worker(session, WorkerStatus.IDLE, label="cuda0")
    add_worker(session, WorkerStatus.STARTING, label="cuda1")
    assert run(capsys, database_url, "--startup", "--expected", "2")[0] == 1
    assert run(capsys, database_url, "--startup", "--expected", "1")[0] == 0


def test_a_busy_worker_with_a_fresh_heartbeat_is_alive(capsys, database_url, session):
    add_worker(session, WorkerStatus.BUSY, beat_s_ago=30)
    code, line = run(capsys, database_url, "--liveness")
    assert code == 0 and line.startswith(f"alive: {HOST}:cuda0 busy")


def test_a_worker_whose_heartbeat_stopped_is_dead(capsys, database_url, session):
    add_worker(session, WorkerStatus.BUSY, beat_s_ago=200)
    code, line = run(capsys, database_url, "--liveness")
    assert code == 1
    assert re.fullmatch(rf"dead: {HOST}:cuda0 busy, last beat 2\d\ds ago \(limit 120s\)", line)
    assert run(capsys, database_url, "--liveness", "--max-age", "600")[0] == 0


@pytest.mark.parametrize("status", [WorkerStatus.LOST, WorkerStatus.STOPPED])
def test_a_lost_or_stopped_worker_is_dead(capsys, database_url, session, status):
    """The reaper's verdict stands: a lost worker cannot beat or take work until it registers
    again, so a restart is the way back."""
    add_worker(session, status)
    code, line = run(capsys, database_url, "--liveness")
    assert code == 1 and line.startswith("dead:")


def test_a_loading_worker_is_alive_until_the_start_timeout(capsys, database_url, session):
    """A prefork child that restarts loads its presets for minutes without beating."""
    add_worker(session, WorkerStatus.STARTING, beat_s_ago=600)
    assert run(capsys, database_url, "--liveness")[0] == 0
    code, line = run(capsys, database_url, "--liveness", "--start-timeout", "300")
    assert code == 1 and "still loading" in line


def test_no_registered_worker_is_dead(capsys, database_url, session):
    add_worker(session, WorkerStatus.BUSY, host="another-pod")
    code, line = run(capsys, database_url, "--liveness")
    assert (code, line) == (1, f"dead: no worker registered as {HOST}:*")


def test_an_unusable_database_fails_startup_but_not_liveness(capsys, tmp_path):
    """Restarting a GPU worker does not mend a database, and would cost the shard in flight."""
    never_migrated = f"sqlite:///{tmp_path / 'empty.db'}"
    code, line = run(capsys, never_migrated, "--liveness")
    assert code == 0 and line.startswith("unknown: database unusable (OperationalError:")
    code, line = run(capsys, never_migrated, "--startup")
    assert code == 1 and line.startswith("waiting: database unusable")


def test_migrated_waits_for_the_schema(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    code, line = run(capsys, url, "--migrated")
    assert code == 1 and line.startswith("waiting: database at no revision")
    upgrade(url)
    code, line = run(capsys, url, "--migrated")
    assert code == 0 and line.startswith("migrated: database at ")


def test_runs_as_a_module_with_the_farms_settings(database_url, session, tmp_path):
    """What the pod runs: `python -m workers.probe`, the database from FARM_DATABASE_URL."""
    add_worker(session, WorkerStatus.IDLE)
    env = {"FARM_DATABASE_URL": database_url, "FARM_DATA_DIR": str(tmp_path), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "workers.probe", "--liveness", "--hostname", HOST],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"alive: {HOST}:cuda0 idle") and done.stdout.count("\n") == 1

    bad = subprocess.run(
        [sys.executable, "-m", "workers.probe", "--startup"],
        capture_output=True,
        text=True,
        env={**env, "FARM_SHARD_SIZE": "many"},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stdout == "error: FARM_SHARD_SIZE must be a whole number, got 'many'\n"
