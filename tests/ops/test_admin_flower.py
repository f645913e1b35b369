"""Celery's own tools on the farm: a real Flower, pointed at the farm's Redis through
`farm.queue.monitor`, shows each shard task under its farm name with arguments a person can
read (which shard, of which job, on which preset, at which priority).

No worker is needed: the farm announces every task it sends (a `task-sent` event), and Flower
lists a task from that moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.context import Farm
from farm.queue.outbox import ShardTask, send_shards
from farm.settings import Settings
from tests.fixtures.farm_cluster import REDIS_SERVER_URL, REPO, dedicated_redis_db, free_port


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """Flower on the farm's app and a Redis database of its own: (its URL, the farm's settings)."""
    server = os.environ.get("FARM_TEST_REDIS_URL", REDIS_SERVER_URL)
    with dedicated_redis_db(server) as broker_url:
        settings = Settings.from_env(
            {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_BROKER_URL": broker_url}
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(
            FARM_DATA_DIR=str(settings.data_dir),
            FARM_BROKER_URL=broker_url,
            FLOWER_UNAUTHENTICATED_API="true",  # loopback only, for the test to read its API
        )
        command = [sys.executable, "-m", "celery", "-A", "farm.queue.monitor", "flower"]
        command += ["--address=127.0.0.1", f"--port={port}"]
        log = tmp_path / "flower.log"
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not _answers(f"{url}/healthcheck"):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Flower did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url, settings
        finally:
            process.terminate()
            process.wait(30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _tasks(flower_url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{flower_url}/api/tasks", timeout=5) as response:
        return json.load(response)


def test_flower_shows_shard_tasks_by_name_with_readable_arguments(flower):
    flower_url, settings = flower
    farm = Farm(settings)
    # Flower hears events from the moment its receiver subscribes, a little after it answers
    # HTTP: a shard is sent each second until one is listed.
    deadline = time.monotonic() + 30
    shard_id = 100
    while not (listed := _tasks(flower_url)):
        assert time.monotonic() < deadline, "Flower listed no task sent in 30 s"
        shard_id += 1
        send_shards(farm, [ShardTask(shard_id, "4f1c9a52-job", "tiny", 7)])
        time.sleep(1)

    task = next(iter(listed.values()))
    assert task["name"] == "farm.render_shard"
    shard = int(task["args"].split()[1])
    assert 100 < shard <= shard_id
    assert task["args"] == f"shard {shard} of job 4f1c9a52-job (tiny, priority 7)"
    farm.close()
