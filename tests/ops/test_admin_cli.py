"""`farm workers`, `farm queues`, `farm requeue --stuck` and `farm drain`, run with click's
runner against a farm whose rows, broker and Celery node are real.

Queue depths are read from the embedded SQL broker and from a Redis database of the test's own,
where each priority has its list. `farm drain` talks to a real Celery node (a solo-pool worker
of the farm's app, so no model loads) through Redis's remote control.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import update

from dashboard import farm_state
from dashboard.api.schemas import QueueList
from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.models import Shard, Worker
from farm.db.states import ShardStatus, WorkerStatus
from farm.db.types import utcnow
from farm.queue.app import celery_node
from farm.settings import Settings
from farmcli.main import main
from tests.farm.conftest import farm_settings, job_rows, make_story, submit
from tests.fixtures.farm_cluster import REDIS_SERVER_URL, REPO, dedicated_redis_db

CLOSED_PORT = "redis://127.0.0.1:9/0"  # port 9 (discard): nothing listens there


@pytest.fixture
def redis_url() -> Iterator[str]:
    with dedicated_redis_db(os.environ.get("FARM_TEST_REDIS_URL", REDIS_SERVER_URL)) as url:
        yield url


def env_of(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        "FARM_DATA_DIR": str(settings.data_dir),
        "FARM_MODELS_DIR": str(settings.models_dir),
        "FARM_DATABASE_URL": settings.database_url,
        "FARM_STORAGE_URL": settings.storage_url,
        "FARM_BROKER_URL": settings.broker_url,
        "FARM_LEASE_SECONDS": str(settings.lease_s),
        "FARM_SHARD_SIZE": str(settings.shard_size),
    }
    return {**env, **overrides}


def farm_cli(farm: Farm, *args: str, code: int = 0, **env: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=env_of(farm.settings, **env))
    assert result.exit_code == code, result.output
    return result


def add_worker(
    farm: Farm,
    worker_id: str,
    status: WorkerStatus,
    *,
    shard: int | None = None,
    silent_s: float = 2,
    done: int = 0,
    presets: tuple[str, ...] = ("tiny", "tiny-v1"),
) -> None:
    with farm.sessions.begin() as session:
        session.add(
            Worker(
                id=worker_id,
                hostname=worker_id.split(":")[0],
                device="cuda:0" if "cuda" in worker_id else "cpu",
                presets=list(presets),
                status=status,
                current_shard_id=shard,
                last_heartbeat=utcnow() - timedelta(seconds=silent_s),
                renders_done=done,
            )
        )


# --- farm workers ------------------------------------------------------------------------------


def test_workers_says_what_each_one_does_and_whether_it_may_be_stopped(farm, faces):
    job_id = submit(farm, faces, make_story(4)).job_id
    _, (first, second), _ = job_rows(farm, job_id)
    add_worker(farm, "a:cpu0", WorkerStatus.IDLE, done=12)
    add_worker(farm, "a:cpu1", WorkerStatus.IDLE, shard=first.id)  # the shard loop's "busy"
    add_worker(farm, "b:cuda0", WorkerStatus.DRAINING, shard=second.id)
    add_worker(farm, "b:cuda1", WorkerStatus.DRAINING)
    add_worker(farm, "c:cuda0", WorkerStatus.LOST, silent_s=3600)
    add_worker(farm, "d:cpu0", WorkerStatus.STARTING)

    header, *lines, reaper = farm_cli(farm, "workers").stdout.splitlines()
    assert reaper.startswith("reaper: has never run")
    assert header.split() == [
        *("WORKER", "STATE", "DEVICE", "PRESETS", "SHARD", "JOB", "BEAT", "DONE", "FAILED")
    ]
    rows = {line.split()[0]: line.split() for line in lines}
    assert [row[1:6] for row in rows.values()] == [
        ["idle", "cpu", "tiny,tiny-v1", "-", "-"],
        ["busy", "cpu", "tiny,tiny-v1", str(first.id), job_id],
        ["draining", "cuda:0", "tiny,tiny-v1", str(second.id), job_id],
        ["drained", "cuda:0", "tiny,tiny-v1", "-", "-"],
        ["lost", "cuda:0", "tiny,tiny-v1", "-", "-"],
        ["starting", "cpu", "tiny,tiny-v1", "-", "-"],
    ]
    assert rows["a:cpu0"][-4:] == ["2s", "ago", "12", "0"]
    assert rows["c:cuda0"][-4] == "3600s"


# --- farm queues -------------------------------------------------------------------------------


def queue_lines(result: Result) -> dict[str, list[str]]:
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["QUEUE", "QUEUED", "RUNNING", "WAITING", "BY", "PRIORITY"]
    return {line.split()[0]: line.split()[1:] for line in lines}


def test_queues_on_the_embedded_broker_count_its_messages(database_url, tmp_path, faces):
    upgrade(database_url)
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    farm = Farm(farm_settings(tmp_path, database_url, broker_url=broker))
    submit(farm, faces, make_story(3))
    submit(farm, faces, make_story(2, seed=9), priority=9)

    rows = queue_lines(farm_cli(farm, "queues"))
    # The SQL broker serves in the order sent and keeps no priorities.
    assert rows["render.tiny"] == ["3", "0", "3", "-"]
    assert rows["render.photomaker-v2"] == ["0", "0", "0", "-"]
    farm.close()


def test_queues_on_redis_count_each_priority_and_name_each_task(
    database_url, tmp_path, faces, redis_url
):
    upgrade(database_url)
    farm = Farm(farm_settings(tmp_path, database_url, broker_url=redis_url))
    normal = submit(farm, faces, make_story(3), priority=5)
    urgent = submit(farm, faces, make_story(1, seed=9), priority=9)
    with farm.sessions.begin() as session:  # one of the normal shards is being rendered
        shard = session.get(Shard, job_rows(farm, normal.job_id)[1][0].id)
        shard.start("a:cpu0", 60)
    client = redis.Redis.from_url(redis_url)
    client.lpop("render.tiny:4")  # ... so a worker took its task

    rows = queue_lines(farm_cli(farm, "queues"))
    assert rows["render.tiny"] == ["2", "1", "2", "9:1", "5:1"]
    with farm.sessions() as session:  # GET /api/v1/queues returns these rows as they are
        api = QueueList(items=farm_state.queues(farm, session)).model_dump(mode="json")
    (tiny,) = [row for row in api["items"] if row["queue"] == "render.tiny"]
    assert {p: n for p, n in tiny["broker_by_priority"].items() if n} == {"9": 1, "5": 1}

    # Priority 9 is Celery's 0, the list Redis serves first, under the queue's own name.
    (message,) = [json.loads(raw) for raw in client.lrange("render.tiny", 0, -1)]
    (urgent_shard,) = job_rows(farm, urgent.job_id)[1]
    assert message["headers"]["task"] == "farm.render_shard"
    assert message["headers"]["argsrepr"] == (
        f"shard {urgent_shard.id} of job {urgent.job_id} (tiny, priority 9)"
    )
    client.close()
    farm.close()


def test_queues_say_unknown_when_the_broker_is_down(farm):
    result = farm_cli(farm, "queues", FARM_BROKER_URL=CLOSED_PORT)
    assert queue_lines(result)["render.tiny"] == ["0", "0", "unknown", "unknown"]
    assert result.stderr == "the broker could not be read: waiting tasks are unknown\n"


# --- farm requeue --stuck ----------------------------------------------------------------------


def test_requeue_stuck_does_now_what_the_reaper_would(farm, faces):
    job_id = submit(farm, faces, make_story(3)).job_id
    _, (stuck, fine), _ = job_rows(farm, job_id)
    with farm.sessions.begin() as session:  # a lease of 60 s, taken two minutes ago
        session.get(Shard, stuck.id).start("dead:cuda0", 60, now=utcnow() - timedelta(minutes=2))
    add_worker(farm, "dead:cuda0", WorkerStatus.IDLE, shard=stuck.id, silent_s=120)

    refused = farm_cli(farm, "requeue", code=2)
    assert "say --stuck" in refused.output and "farm retry JOB" in refused.output

    assert farm_cli(farm, "requeue", "--stuck", "--dry-run").stdout.splitlines() == [
        f"shards would be requeued (their worker died): {stuck.id}",
        "shards would be failed (no attempt left): none",
        "shards would be sent again (the broker lost their task): none",
        "workers would be marked lost (no heartbeat): dead:cuda0",
    ]
    assert job_rows(farm, job_id)[1][0].status is ShardStatus.RUNNING

    assert farm_cli(farm, "requeue", "--stuck").stdout.splitlines()[0] == (
        f"shards requeued (their worker died): {stuck.id}"
    )
    _, (stuck, fine), _ = job_rows(farm, job_id)
    assert (stuck.status, fine.status) == (ShardStatus.QUEUED, ShardStatus.QUEUED)
    with farm.sessions() as session:
        assert session.get(Worker, "dead:cuda0").status is WorkerStatus.LOST


def test_requeue_stuck_sends_again_a_task_the_broker_lost(database_url, tmp_path, faces, redis_url):
    upgrade(database_url)
    farm = Farm(farm_settings(tmp_path, database_url, broker_url=redis_url))
    job_id = submit(farm, faces, make_story(1), priority=6).job_id
    (shard,) = job_rows(farm, job_id)[1]
    with farm.sessions.begin() as session:  # queued for longer than two reaper passes
        session.execute(
            update(Shard).where(Shard.id == shard.id).values(updated=utcnow() - timedelta(hours=1))
        )
    client = redis.Redis.from_url(redis_url)
    assert client.llen("render.tiny:3") == 1  # priority 6 is Celery's 3
    assert farm_cli(farm, "requeue", "--stuck").stdout.splitlines()[2] == (
        "shards sent again (the broker lost their task): none"  # its task still waits
    )

    client.delete("render.tiny:3")  # a Redis restarted without persistence forgets it
    lines = farm_cli(farm, "requeue", "--stuck").stdout.splitlines()
    assert lines[2] == f"shards sent again (the broker lost their task): {shard.id}"
    (raw,) = client.lrange("render.tiny:3", 0, -1)
    assert json.loads(raw)["headers"]["argsrepr"].startswith(f"shard {shard.id} of job {job_id}")
    client.close()
    farm.close()


# --- farm drain --------------------------------------------------------------------------------


def test_drain_refuses_an_unknown_worker_and_a_broker_without_remote_control(farm, tmp_path):
    unknown = farm_cli(farm, "drain", "nobody:cpu0", code=2)
    assert unknown.stderr == "error: no worker 'nobody:cpu0' (farm workers lists them)\n"

    add_worker(farm, "a:cpu0", WorkerStatus.IDLE)
    embedded = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    refused = farm_cli(farm, "drain", "a:cpu0", code=2, FARM_BROKER_URL=embedded)
    assert refused.stderr.startswith("error: the broker (sql) carries no remote control")
    assert refused.stderr.count("\n") == 1

    add_worker(farm, "b:cpu0", WorkerStatus.LOST)
    lost = farm_cli(farm, "drain", "b:cpu0", code=2)
    assert lost.stderr == "error: worker b:cpu0 is lost: it takes no work to drain\n"
    with farm.sessions() as session:
        assert session.get(Worker, "a:cpu0").status is WorkerStatus.IDLE


@pytest.fixture
def drain_node(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, Settings]]:
    """A Celery node of the farm's worker app, consuming render.tiny and the control queue
    as `farm worker` does: (the SQL name of its worker, the settings it runs with). Its solo
    pool loads no model until a task comes, and none comes."""
    settings = Settings.from_env(
        {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_BROKER_URL": redis_url}
    )
    worker_id = "drain-test:cpu0"
    node = celery_node(worker_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(settings.data_dir), FARM_BROKER_URL=redis_url)
    command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"]
    command += ["--pool", "solo", "--hostname", node, "--queues", "render.tiny,farm.control"]
    command += ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    log = tmp_path / "node.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
    app = Farm(settings).celery
    deadline = time.monotonic() + 90
    while not app.control.inspect(destination=[node], timeout=1).ping():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Celery node {node} did not come up:\n{log.read_text()[-3000:]}")
    try:
        yield worker_id, settings
    finally:
        process.terminate()
        process.wait(30)
        app.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the SQL part is one move
def test_drain_stops_the_node_taking_work_and_marks_its_row(farm, drain_node):
    worker_id, node_settings = drain_node
    add_worker(farm, worker_id, WorkerStatus.IDLE, shard=None, presets=("tiny",))
    broker = {"FARM_BROKER_URL": node_settings.broker_url}
    app = Farm(node_settings).celery
    node = celery_node(worker_id)
    active = app.control.inspect(destination=[node], timeout=5).active_queues()
    assert sorted(q["name"] for q in active[node]) == ["farm.control", "render.tiny"]

    result = farm_cli(farm, "drain", worker_id, **broker)
    assert result.stdout == (
        f"worker {worker_id} is draining: it takes no more work; stop it once drained\n"
    )
    assert app.control.inspect(destination=[node], timeout=5).active_queues() == {node: []}
    lines = farm_cli(farm, "workers", **broker).stdout.splitlines()
    assert lines[1].split()[:2] == [worker_id, "drained"]

    again = farm_cli(farm, "drain", worker_id, **broker)  # idempotent: nothing left to cancel
    assert again.stdout.startswith(f"worker {worker_id} is draining")

    resumed = farm_cli(farm, "resume", worker_id, **broker)
    assert resumed.stdout == f"worker {worker_id} takes work again from render.tiny, farm.control\n"
    active = app.control.inspect(destination=[node], timeout=5).active_queues()
    assert sorted(q["name"] for q in active[node]) == ["farm.control", "render.tiny"]
    lines = farm_cli(farm, "workers", **broker).stdout.splitlines()
    assert lines[1].split()[:2] == [worker_id, "idle"]
    not_draining = farm_cli(farm, "resume", worker_id, code=2, **broker)
    assert not_draining.stderr == f"error: worker {worker_id} is idle, not draining\n"
    app.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_drain_fails_when_the_node_does_not_answer(farm, redis_url):
    add_worker(farm, "gone:cpu0", WorkerStatus.IDLE)
    result = farm_cli(farm, "drain", "gone:cpu0", code=2, FARM_BROKER_URL=redis_url)
    assert result.stderr == (
        "error: Celery node cpu0@gone did not answer within 5 s, so it cannot be told to stop "
        "taking work; is it running (farm workers)?\n"
    )
    with farm.sessions() as session:
        assert session.get(Worker, "gone:cpu0").status is WorkerStatus.IDLE
