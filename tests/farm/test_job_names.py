"""Names people use for jobs: short ids (and any longer start of an id) wherever the CLI takes a
job id, an ambiguous start refused with the jobs it matches, and the file names downloads get."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from farm.context import Farm
from farm.db.models import Job, Render
from farm.errors import InputError
from farm.job_names import default_name, file_stem, resolve_job_id
from farmcli.main import main
from tests.db.rows import add_character, add_job

IDS = [
    "abcdef12-0000-4000-8000-000000000001",
    "abcdef34-0000-4000-8000-000000000002",
    "99999999-0000-4000-8000-000000000003",
]


@pytest.fixture
def env(farm: Farm, database_url: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment for a farm holding three cancelled jobs, two of whose ids start
    alike."""
    with farm.sessions.begin() as session:
        character = add_character(session)
        for number, job_id in enumerate(IDS, start=1):
            session.add(
                Job(
                    id=job_id,
                    name=f"Newton ch{number}",
                    character_id=character.id,
                    preset="tiny",
                    spec={},
                    renders_total=0,
                    status="cancelled",
                )
            )
    return {"FARM_DATA_DIR": str(tmp_path / "data"), "FARM_DATABASE_URL": database_url}


def test_a_start_of_an_id_names_the_one_job_it_starts(farm: Farm, env):
    with farm.sessions() as session:
        assert resolve_job_id(session, "abcdef12") == IDS[0]
        assert resolve_job_id(session, "ABCDEF3") == IDS[1]  # as typed, in capitals too
        assert resolve_job_id(session, IDS[2]) == IDS[2]
        with pytest.raises(InputError, match=r"^no job '12345678'$"):
            resolve_job_id(session, "12345678")
        with pytest.raises(InputError, match=r"^no job 'x%'$"):  # not an id: no LIKE pattern
            resolve_job_id(session, "x%")


def test_every_command_taking_a_job_takes_its_short_id(env):
    runner = CliRunner()
    status = runner.invoke(main, ["status", "9999"], env=env, catch_exceptions=False)
    assert status.exit_code == 0 and status.stdout.startswith(f"job {IDS[2]} cancelled")
    for command in (["status"], ["cancel"], ["retry"], ["fetch", "--out", "/nonexistent"]):
        result = runner.invoke(main, [*command, "abcdef"], env=env, catch_exceptions=False)
        assert result.exit_code == 2, command
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "error: job id 'abcdef' is ambiguous, it starts several jobs: "
        )
        assert f"{IDS[1]} 'Newton ch2' (cancelled)" in lines[0]
        assert f"{IDS[0]} 'Newton ch1' (cancelled)" in lines[0]


def test_a_job_is_named_after_its_story_or_its_character_and_day():
    day = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    assert default_name("Newton, chapter 1", "Newton", day) == "Newton, chapter 1"
    assert default_name(None, "Newton", day) == "Newton 2026-12-04"
    assert default_name("  ", "Newton", day) == "Newton 2026-12-04"


def test_downloads_carry_the_job_name_as_a_file_name():
    assert file_stem("Newton ch1", IDS[0]) == "newton-ch1"
    assert file_stem("Zoë: «утро» / Part 2!", IDS[0]) == "zo-part-2"
    assert file_stem("«утро»", IDS[0]) == "job-abcdef12"  # nothing left: the short id
    assert len(file_stem("x" * 300, IDS[0])) == 60


def test_fetched_files_are_named_by_scene_number_whatever_key_holds_them(farm: Farm, env, tmp_path):
    """A render reused from another job lies under that job's key: `farm fetch` names the
    file by this job's scene (from 1) and variant all the same."""
    with farm.sessions.begin() as session:
        job = add_job(session, renders=2)
        for render in session.scalars(select(Render).where(Render.job_id == job.id)):
            key = f"jobs/elsewhere/renders/{render.scene_index + 7:04d}-v0.png"
            farm.storage.put(key, f"png of scene {render.scene_index + 1}".encode())
            render.start("w", "cpu")
            render.finish(key)
        job_id = job.id
    out = tmp_path / "fetched"
    env = {**env, "FARM_STORAGE_URL": farm.settings.storage_url}
    result = CliRunner().invoke(main, ["fetch", job_id[:8], "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        "0001-v0.png": b"png of scene 1",
        "0002-v0.png": b"png of scene 2",
    }
