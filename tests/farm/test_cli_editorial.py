"""`farm reroll`, `farm pick` and `farm revise` on the embedded farm, run in this process with
click's runner; shards rendered here through `run_shard`, as tests/farm/test_cli.py does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.context import Farm
from farm.db.models import Render, Shard
from farm.db.states import ShardStatus
from farm.render.loading import LoadedPreset
from farm.settings import Settings
from tests.farm.conftest import job_rows
from tests.farm.test_cli import WORKER, farm_cli
from tests.fixtures.tasks import TaskRecorder
from tests.fixtures.tiny import EXAMPLES
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STORY = """\
character: {name: Newton, class_word: man, photos: [photos/newton_0.jpg]}
preset: tiny
width: 64
height: 64
steps: 2
seed: 3
scenes:
  - {prompt: "a man img reading", caption: "Chapter 1"}
  - {prompt: "%s"}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {"FARM_DATA_DIR": str(tmp_path / "data")}
    farm_cli(env, "db", "upgrade")
    return env


@pytest.fixture
def story(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES / "photos", tmp_path / "photos")
    path = tmp_path / "story.yaml"
    path.write_text(STORY % "a man img under a tree")
    return path


def render_queued(env: dict[str, str], tiny: LoadedPreset, job_id: str) -> None:
    farm = Farm(Settings.from_env(env))
    farm.__dict__["celery"] = TaskRecorder()
    runtime = WorkerRuntime(farm, WORKER, "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    with farm.sessions() as session:
        queued = session.scalars(
            select(Shard.id).where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
        ).all()
    for shard_id in queued:
        run_shard(runtime, shard_id).result()
    farm.close()


def renders(env: dict[str, str], job_id: str) -> list[Render]:
    farm = Farm(Settings.from_env(env))
    try:
        return job_rows(farm, job_id)[2]
    finally:
        farm.close()


def test_reroll_pick_and_revise(env, tiny, story):
    job_id = farm_cli(env, "submit", str(story)).stdout.strip()
    render_queued(env, tiny, job_id)

    out = farm_cli(env, "reroll", job_id[:8], "2", "--variants", "2").stdout
    assert out == f"job {job_id}: queued scene 2 v1, scene 2 v2 (1 shard(s))\n"
    render_queued(env, tiny, job_id)

    out = farm_cli(env, "pick", job_id[:8], "2", "v2").stdout
    assert out == f"job {job_id} scene 2: v2 picked; its comic is being built again\n"
    assert [(r.scene_index, r.variant) for r in renders(env, job_id) if r.picked] == [(1, 2)]

    story.write_text(STORY % "a man img at sea")
    out = farm_cli(env, "revise", job_id[:8], str(story)).stdout.splitlines()
    assert out == [
        f"job {job_id} revision 2: scene 2: prompt changed",
        "1 kept, 0 reused, 1 to render (1 shard(s)), 3 retired to the history",
    ]
    rows = renders(env, job_id)
    assert [(r.scene_index, r.variant, r.revision, r.status) for r in rows] == [
        (0, 0, 1, "done"),
        (1, 0, 2, "queued"),
    ]


def test_bad_input_is_one_line_and_changes_nothing(env, tiny, story, tmp_path):
    job_id = farm_cli(env, "submit", str(story)).stdout.strip()
    render_queued(env, tiny, job_id)
    before = [(r.id, r.status, r.picked) for r in renders(env, job_id)]

    cases = [
        (("reroll", job_id, "3"), f"error: job {job_id} has scenes 1 to 2; there is no scene 3"),
        (
            ("pick", job_id, "1", "v4"),
            f"error: scene 1 of job {job_id} has variants v0; there is no v4",
        ),
        (
            ("pick", job_id, "1", "best"),
            "error: variant: as its file names it, e.g. v1 or 1 (got 'best')",
        ),
        (("pick", "ffffffff", "1", "0"), "error: no job"),
    ]
    for args, message in cases:
        result = farm_cli(env, *args, code=2)
        assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, (
            result.stderr
        )

    other = tmp_path / "other.yaml"
    other.write_text((STORY % "a man img").replace("newton_0", "newton_1"))
    result = farm_cli(env, "revise", job_id, str(other), code=2)
    assert "not the photos of job" in result.stderr
    assert [(r.id, r.status, r.picked) for r in renders(env, job_id)] == before
