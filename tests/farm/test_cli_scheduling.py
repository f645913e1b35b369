"""`farm pause`, `farm unpause`, `farm priority`, `farm projects` and `farm usage`, run in this
process with click's runner on the embedded broker, as tests/farm/test_cli.py runs the rest."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from farm.auth import ensure_project
from farm.context import Farm
from farm.settings import Settings
from tests.farm.test_cli import farm_cli, render_in_process
from tests.fixtures.tiny import EXAMPLES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STORY = str(EXAMPLES / "story.yaml")


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_DATABASE_URL": database_url}


def make_projects(env: dict[str, str], *names: str) -> None:
    farm = Farm(Settings.from_env(env))
    with farm.sessions.begin() as session:
        for name in names:
            ensure_project(session, name)
    farm.close()


def test_pause_unpause_and_priority_of_a_job(env):
    farm_cli(env, "db", "upgrade")
    make_projects(env, "commercials")
    job_id = farm_cli(env, "submit", STORY).stdout.strip()

    assert farm_cli(env, "pause", job_id[:8]).stdout == f"job {job_id} paused\n"
    assert "paused: 6" not in farm_cli(env, "status", job_id).stdout  # renders wait, queued
    again = farm_cli(env, "pause", job_id, code=2)
    assert again.stderr == f"error: job {job_id} is paused; only a queued or running job pauses\n"
    assert farm_cli(env, "priority", job_id, "9").stdout == f"job {job_id} priority 9\n"
    assert farm_cli(env, "unpause", job_id).stdout == f"job {job_id} queued\n"

    bad = farm_cli(env, "priority", job_id, "12", code=2)
    assert bad.stderr == "error: priority must be a whole number from 0 to 9, got 12\n"
    theirs = farm_cli(env, "pause", job_id, "--project", "commercials", code=2)
    assert theirs.stderr == (
        f"error: job {job_id} is not in this project; a project changes only its own\n"
    )
    unknown = farm_cli(env, "unpause", job_id, "--project", "nobody", code=2)
    assert unknown.stderr.startswith("error: no project 'nobody'")
    assert farm_cli(env, "status", job_id).stdout.startswith(f"job {job_id} queued")


def test_projects_share_and_list(env):
    farm_cli(env, "db", "upgrade")
    make_projects(env, "features", "commercials")

    said = farm_cli(env, "projects", "share", "features", "--weight", "3", "--max-running", "8")
    assert said.stdout == "project features: weight 3, at most 8 running shards\n"
    uncapped = farm_cli(env, "projects", "share", "features", "--no-max-running")
    assert uncapped.stdout == "project features: weight 3, no cap\n"
    lines = farm_cli(env, "projects", "list").stdout.splitlines()
    assert [line.split() for line in lines] == [
        ["project", "weight", "max", "running", "queued", "running"],
        ["commercials", "1", "-", "0", "0"],
        ["default", "1", "-", "0", "0"],
        ["features", "3", "-", "0", "0"],
    ]

    zero = farm_cli(env, "projects", "share", "features", "--weight", "0", code=2)
    assert zero.stderr == "error: weight must be a number above 0, got 0.0\n"
    negative = farm_cli(env, "projects", "share", "features", "--weight", "-1", code=2)
    assert negative.stderr == "error: weight must be a number above 0, got -1.0\n"
    cap = farm_cli(env, "projects", "share", "features", "--max-running", "0", code=2)
    assert cap.stderr.startswith("error: max running shards must be 1 or more")
    unchanged = farm_cli(env, "projects", "share", "features", "--weight", "3").stdout
    assert "weight 3, no cap" in unchanged


def test_usage_reports_a_projects_device_seconds_as_csv_and_json(env, tiny):
    farm_cli(env, "db", "upgrade")
    job_id = farm_cli(env, "submit", STORY).stdout.strip()
    render_in_process(env, tiny, job_id)

    as_csv = farm_cli(env, "usage", "--project", "default", "--since", "2026-01-01").stdout
    (row,) = csv.DictReader(io.StringIO(as_csv))
    assert (row["job"], row["preset"], row["device_kind"], row["renders"]) == (
        job_id,
        "tiny",
        "cpu",
        "6",
    )
    assert float(row["device_seconds"]) > 0
    as_json = json.loads(
        farm_cli(
            env, "usage", "--project", "default", "--since", "2026-01-01", "--format", "json"
        ).stdout
    )
    assert as_json["renders"] == 6 and as_json["jobs"][0]["job_id"] == job_id
    assert as_json["device_seconds"] == pytest.approx(float(row["device_seconds"]), abs=2e-3)
    later = farm_cli(env, "usage", "--project", "default", "--since", "2999-01-01").stdout
    assert later == "job,name,preset,device_kind,renders,device_seconds\n"

    bad = farm_cli(env, "usage", "--project", "default", "--since", "last week", code=2)
    assert bad.stderr == (
        "error: --since: a date like 2026-12-01 (or a full ISO time), got 'last week'\n"
    )
    backwards = ("--since", "2026-12-02", "--until", "2026-12-01")
    wrong = farm_cli(env, "usage", "--project", "default", *backwards, code=2)
    assert wrong.stderr == "error: --until (2026-12-01) must come after --since (2026-12-02)\n"
