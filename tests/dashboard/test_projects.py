"""Migration 0002 on a farm that already has jobs, and `farm tokens` for the first admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from farm.db.migrate import current, downgrade, upgrade
from farm.db.models import Character, Job
from farm.db.session import make_engine, session_factory
from farm.db.types import utcnow
from farmcli.main import main
from tests.db.rows import add_job


def test_existing_rows_go_to_the_default_project_and_come_back(database_url: str):
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO characters (name, class_word, trigger, photos_fingerprint) "
                "VALUES ('Ada', 'woman', 'img', :fp)"
            ),
            {"fp": "f" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, character_id, preset, spec, renders_total) "
                "VALUES ('job-1', (SELECT id FROM characters), 'tiny', '{}', 0)"
            )
        )

    upgrade(database_url)

    with engine.connect() as connection:
        default = connection.execute(text("SELECT id FROM projects WHERE name = 'default'"))
        project_id = default.scalar_one()
        assert connection.execute(text("SELECT project_id FROM jobs")).scalar_one() == project_id
        owners = connection.execute(text("SELECT project_id FROM characters")).scalar_one()
        assert owners == project_id
        columns = {c["name"]: c for c in inspect(connection).get_columns("jobs")}
        assert columns["project_id"]["nullable"] is False

    # Rows made without naming a project (the CLI, older callers) land in the default one.
    with session_factory(engine).begin() as session:
        job = add_job(session)
        assert job.project_id == project_id
        assert session.get(Character, job.character_id).project_id == project_id

    downgrade(database_url, "0001")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert not {"projects", "api_tokens", "accounts"} & tables
        assert "project_id" not in {c["name"] for c in inspect(connection).get_columns("jobs")}
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2
    engine.dispose()
    assert current(database_url) == "0001"


@pytest.fixture
def farm_env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    for name in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_STORAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'farm.db'}"


def test_farm_tokens_create_makes_the_first_admin(farm_env: str):
    runner = CliRunner()
    unmigrated = runner.invoke(main, ["tokens", "create", "--role", "admin", "--project", "x"])
    assert unmigrated.exit_code == 2 and "farm db upgrade" in unmigrated.output
    upgrade(farm_env)

    made = runner.invoke(main, ["tokens", "create", "--role", "admin", "--project", "studio-a"])

    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("rf_") and "keep it secret" in made.stderr
    listed = runner.invoke(main, ["tokens", "list", "--project", "studio-a"])
    assert "studio-a" in listed.output and "admin" in listed.output and secret not in listed.output
    engine = make_engine(farm_env)
    with session_factory(engine)() as session:
        from farm.auth import authenticate_token

        who = authenticate_token(session, secret)
        assert who is not None and who.project == "studio-a" and who.role == "admin"
    engine.dispose()

    assert runner.invoke(main, ["tokens", "revoke", "1"]).exit_code == 0
    assert runner.invoke(main, ["tokens", "revoke", "99"]).exit_code == 2
    bad = runner.invoke(main, ["tokens", "create", "--role", "admin", "--project", "a b"])
    assert bad.exit_code == 2 and "project 'a b' is not allowed" in bad.output


def test_jobs_table_stays_indexed_by_project(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        indexes = {i["name"]: i["column_names"] for i in inspect(connection).get_indexes("jobs")}
    engine.dispose()
    assert indexes["ix_jobs_project_id_created"] == ["project_id", "created"]
    assert Job.__table__.c.project_id.nullable is False


def test_farm_tokens_create_expires(farm_env: str):
    upgrade(farm_env)
    runner = CliRunner()

    made = runner.invoke(
        main, ["tokens", "create", "--role", "viewer", "--project", "p", "--expires", "30d"]
    )

    assert made.exit_code == 0, made.output
    assert ", expires 20" in made.stderr
    listed = runner.invoke(main, ["tokens", "list"]).output
    assert "live" in listed and "expires never" not in listed
    engine = make_engine(farm_env)
    with session_factory(engine)() as session:
        from farm.db.models import ApiToken

        token = session.get(ApiToken, 1)
        left = token.expires - utcnow()
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    engine.dispose()
    bad = runner.invoke(
        main, ["tokens", "create", "--role", "viewer", "--project", "p", "--expires", "soon"]
    )
    assert bad.exit_code == 2 and "e.g. 30d" in bad.output
