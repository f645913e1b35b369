"""Jobs a person can find: `farm submit --project` (and FARM_PROJECT) puts a CLI job where the
README's token sees it in the dashboard, `farm jobs` lists and filters jobs, and `farm status`
answers as JSON and follows a job with --watch. Run in this process with click's runner on the
embedded farm, as tests/farm/test_cli.py does."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from dashboard.app import create_app
from farm.context import Farm
from farm.db.types import utcnow
from farm.queue.outbox import send_unsent
from farm.settings import Settings
from tests.farm.conftest import job_rows
from tests.farm.test_cli import farm_cli
from tests.fixtures.dashboard import SECRET_KEY
from tests.fixtures.farm_cluster import RedisServer
from tests.fixtures.tiny import EXAMPLES

STORY = str(EXAMPLES / "story.yaml")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The embedded farm, as the README's quick start has it (SQLite, embedded broker)."""
    env = {"FARM_DATA_DIR": str(tmp_path / "data")}
    farm_cli(env, "db", "upgrade")
    return env


def test_a_cli_job_is_seen_by_the_readmes_token(env):
    token = farm_cli(env, "tokens", "create", "--role", "admin", "--project", "studio")
    secret = token.stdout.strip()
    job_id = farm_cli({**env, "FARM_PROJECT": "studio"}, "submit", STORY).stdout.strip()
    flagged = farm_cli(env, "submit", STORY, "--project", "studio").stdout.strip()

    farm = Farm(Settings.from_env(env))
    app = create_app({"TESTING": True, "SECRET_KEY": SECRET_KEY, "FARM": farm})
    bearer = {"Authorization": f"Bearer {secret}"}
    with app.test_client() as client:
        assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer).status_code == 200
        listed = client.get("/api/v1/jobs", headers=bearer).json
    farm.close()
    assert {job["id"] for job in listed["items"]} == {job_id, flagged}


def test_an_unknown_project_is_one_line_and_writes_nothing(env):
    result = farm_cli(env, "submit", STORY, "--project", "stuido", code=2)
    assert result.stderr == (
        "error: no project 'stuido' (projects: default); "
        "`farm tokens create --project stuido` makes one\n"
    )
    assert farm_cli(env, "jobs").stdout == "no jobs\n"


def test_jobs_lists_newest_first_and_filters(env):
    farm_cli(env, "tokens", "create", "--role", "artist", "--project", "studio")
    old = farm_cli(env, "submit", STORY).stdout.strip()
    studio = farm_cli(env, "submit", STORY, "--project", "studio").stdout.strip()
    newest = farm_cli(env, "submit", STORY, "--project", "studio").stdout.strip()
    farm_cli(env, "cancel", newest)

    header, *rows = farm_cli(env, "jobs").stdout.splitlines()
    assert header.split() == ["JOB", "NAME", "PROJECT", "STATUS", "PRESET", "RENDERS", "CREATED"]
    assert [row.split()[0] for row in rows] == [newest[:8], studio[:8], old[:8]]
    assert "cancelled" in rows[0].split() and "0/6" in rows[0].split()

    def listed(*args: str) -> list[str]:
        return [
            json.loads(line)["id"]
            for line in farm_cli(env, "jobs", "--json", *args).stdout.splitlines()
        ]

    assert listed("--project", "studio") == [newest, studio]
    assert listed("--status", "queued") == [studio, old]
    assert listed("--status", "queued", "--project", "default") == [old]
    assert listed("--name", "NEWTON") == [newest, studio, old]  # the character's name and date
    assert listed("--name", "nobody") == []
    with_env = farm_cli({**env, "FARM_PROJECT": "default"}, "jobs", "--json").stdout
    assert [json.loads(line)["id"] for line in with_env.splitlines()] == [old]


def test_status_as_json_and_watching_a_job_to_its_end(env):
    job_id = farm_cli(env, "submit", STORY).stdout.strip()
    report = json.loads(farm_cli(env, "status", job_id[:8], "--json").stdout)
    assert report["job_id"] == job_id
    assert (report["status"], report["total"], report["percent"], report["eta_s"]) == (
        "queued",
        6,
        0,
        None,
    )
    assert report["waiting"] == "no worker serves preset tiny: it will wait"
    assert [s["status"] for s in report["shards"]] == ["queued", "queued"]
    assert report["shard_counts"]["queued"] == 2

    farm_cli(env, "cancel", job_id)
    watched = farm_cli(env, "status", job_id, "--watch", code=1)  # it ended cancelled
    assert watched.stdout.splitlines()[0].startswith(f"job {job_id} cancelled  [")
    assert "  shards: 2 (2 cancelled)" in watched.stdout.splitlines()


def test_submit_with_the_broker_down_says_so_once_and_the_reaper_sends_it_later(env, tmp_path):
    broker = RedisServer(tmp_path / "redis")  # its port is free: nothing answers there yet
    down = {**env, "FARM_BROKER_URL": broker.url}
    result = farm_cli(down, "submit", STORY)
    job_id = result.stdout.strip()
    assert result.stderr == (
        f"job {job_id} is queued, but the broker at {broker.url} did not answer: its 2 "
        "shard(s) are sent once it does (by the reaper of `farm up` or `farm worker --beat`)\n"
    )
    farm = Farm(Settings.from_env(down))
    try:
        _, shards, renders = job_rows(farm, job_id)
        assert [s.sent for s in shards] == [None, None] and len(renders) == 6
        broker.start(persistent=False)
        later = utcnow() + timedelta(seconds=1)
        assert send_unsent(farm, later) == [s.id for s in shards]  # what the reaper runs
        _, shards, _ = job_rows(farm, job_id)
        assert all(s.sent is not None for s in shards)
        client = redis.Redis.from_url(broker.url)
        # Redis keeps one list per priority step: "render.tiny", then a separator and the step.
        assert sum(client.llen(key) for key in client.keys("render.tiny*")) == 2
        client.close()
    finally:
        farm.close()
        broker.stop()
