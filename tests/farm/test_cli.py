"""The `farm` commands of a queued farm, run in this process with click's runner.

The story is the README's example, submitted to the embedded broker and rendered here through
`run_shard` (no worker process), so that `status` and `fetch` are seen on a job that really ran.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from farm.context import Farm
from farm.db.migrate import head
from farm.queue.app import make_celery
from farm.render.loading import LoadedPreset
from farm.settings import Settings
from farmcli.main import main
from tests.farm.conftest import job_rows
from tests.fixtures.tasks import TaskRecorder
from tests.fixtures.tiny import EXAMPLES
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKER = "testhost:cpu0"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_DATABASE_URL": database_url}


def farm_cli(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def queued_tasks(env: dict[str, str]) -> int:
    app = make_celery(Settings.from_env(env), ["tiny"])
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("render.tiny")
        size = queue.qsize()
        queue.close()
    app.close()
    return size


def render_in_process(env: dict[str, str], tiny: LoadedPreset, job_id: str) -> None:
    """What the workers would do with the job's tasks, on the farm the commands use."""
    farm = Farm(Settings.from_env(env))
    farm.__dict__["celery"] = TaskRecorder()
    runtime = WorkerRuntime(farm, WORKER, "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    runtime.beat()  # loaded and consuming, as WorkerRuntime.start ends
    _, shards, _ = job_rows(farm, job_id)
    assert [run_shard(runtime, shard.id).result() for shard in shards] == ["succeeded", "succeeded"]
    farm.close()


def test_submit_status_fetch_cancel(env, tiny, tmp_path):
    story = str(EXAMPLES / "story.yaml")
    assert farm_cli(env, "db", "upgrade").output == f"database at revision {head()}\n"
    assert farm_cli(env, "workers").output.splitlines() == [
        "no workers have registered",
        "reaper: has never run; start one beat for the farm "
        "(farm worker --beat, farm up, or the chart's beat)",
    ]

    job_id = farm_cli(env, "submit", story).stdout.strip()
    assert UUID.fullmatch(job_id)
    assert queued_tasks(env) == 2  # one per shard, in the embedded broker
    assert farm_cli(env, "status", job_id).stdout.splitlines() == [
        f"job {job_id} queued  [{'.' * 30}] 0/6 0%",
        "  queued: 6",
        "  waiting: no worker serves preset tiny: it will wait",  # none registered yet
        "  shards: 2 (2 queued)",
        "  shard   0 queued    (attempt 0/3)",  # the default shards of 4 renders
        "  shard   1 queued    (attempt 0/3)",
    ]

    render_in_process(env, tiny, job_id)
    lines = farm_cli(env, "status", job_id).stdout.splitlines()
    assert re.fullmatch(r"  device: \d+\.\d s", lines.pop(2))  # its renders' device seconds
    assert lines == [
        f"job {job_id} succeeded  [{'#' * 30}] 6/6 100%",
        "  done: 6",
        "  shards: 2 (2 succeeded)",
        f"  shard   0 succeeded on {WORKER} (attempt 1/3)",
        f"  shard   1 succeeded on {WORKER} (attempt 1/3)",
    ]
    header, line, reaper = farm_cli(env, "workers").stdout.splitlines()
    assert reaper.startswith("reaper: has never run")  # no beat in this test
    assert header.split() == [
        *("WORKER", "STATE", "DEVICE", "PRESETS", "SHARD", "JOB", "BEAT", "DONE", "FAILED")
    ]
    cells = line.split()
    assert cells[:6] == [WORKER, "idle", "cpu", "tiny", "-", "-"]
    assert cells[-3:] == ["ago", "6", "0"]

    out = tmp_path / "out"
    assert farm_cli(env, "fetch", job_id, "--out", str(out)).stdout == (
        f"6 renders in {out.resolve()}\n"
    )
    assert sorted(p.name for p in out.iterdir()) == [  # scenes numbered from 1
        "0001-v0.png",
        "0002-v0.png",
        "0002-v1.png",
        "0003-v0.png",
        "0004-v0.png",
        "0005-v0.png",
    ]

    # Another preset: the same story again would reuse every render (farm/reuse.py) and end.
    second = farm_cli(env, "submit", story, "--priority", "9", "--preset", "tiny-v1")
    second = second.stdout.strip()
    # The 8 characters the dashboard shows name the job wherever the CLI takes one.
    assert farm_cli(env, "cancel", second[:8]).stdout == f"job {second} cancelled\n"
    again = farm_cli(env, "cancel", second, code=2)
    assert again.stderr.startswith(f"error: job {second} is cancelled; only queued, running")


def test_an_unknown_job_is_one_line_and_exit_2(env):
    farm_cli(env, "db", "upgrade")
    result = farm_cli(env, "status", "nope", code=2)
    assert (result.stdout, result.stderr) == ("", "error: no job 'nope'\n")
