"""The migrations are the only way the schema is made, so they are tested on both backends."""

from __future__ import annotations

import pytest
from alembic import op
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from farm.db.migrate import current, downgrade, head, upgrade
from farm.db.models import Base
from farm.db.session import make_engine

TABLES = {
    "characters",
    "character_photos",
    "identity_tokens",
    "jobs",
    "shards",
    "renders",
    "workers",
    "projects",
    "api_tokens",
    "accounts",
    "job_cast",
    "reaper_runs",
    "job_revisions",
    "retired_renders",
    "job_worker_failures",
    "job_control_images",
    "job_consistency_tokens",
}


def _tables(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_to_head(database_url: str) -> None:
    assert current(database_url) is None

    upgrade(database_url)

    assert current(database_url) == head()
    assert _tables(database_url) == TABLES | {"alembic_version"}


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    upgrade(database_url)

    downgrade(database_url, "base")
    assert current(database_url) is None
    assert _tables(database_url) == {"alembic_version"}

    upgrade(database_url)
    assert current(database_url) == head()
    assert _tables(database_url) == TABLES | {"alembic_version"}


def test_a_failing_migration_leaves_nothing_behind(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even on SQLite, whose driver would run each CREATE outside any transaction."""
    create_table = op.create_table

    def create_table_or_fail(name: str, *args: object, **kwargs: object) -> object:
        if name == "workers":  # the last table: all the others exist by now
            raise RuntimeError("disk full, say")
        return create_table(name, *args, **kwargs)

    monkeypatch.setattr(op, "create_table", create_table_or_fail)

    with pytest.raises(RuntimeError, match="disk full"):
        upgrade(database_url)

    assert current(database_url) is None
    assert _tables(database_url) <= {"alembic_version"}


def test_models_match_the_migrated_schema(db_engine: Engine) -> None:
    with db_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
