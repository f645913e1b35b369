"""Engines get each backend's settings, and a unit of work commits or leaves no trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from farm.db.models import Character
from farm.db.session import make_engine, session_factory, session_scope


def test_sqlite_gets_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'farm.db'}")
    try:
        with engine.connect() as connection:

            def pragma(name: str) -> object:
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 30_000
    finally:
        engine.dispose()


def test_sqlite_makes_the_data_folder_of_a_fresh_machine(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'not' / 'yet' / 'farm.db'}")
    try:
        with engine.connect():
            assert (tmp_path / "not" / "yet" / "farm.db").is_file()
    finally:
        engine.dispose()


def test_a_plain_postgresql_url_uses_the_installed_driver() -> None:
    engine = make_engine("postgresql://farm:secret@db.internal:5432/farm")
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


def _characters(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return session.scalar(select(func.count()).select_from(Character)) or 0


def test_a_unit_of_work_commits_and_its_rows_stay_readable(db_engine: Engine) -> None:
    with session_scope(session_factory(db_engine)) as session:
        character = Character(
            name="Ada", class_word="woman", trigger="img", photos_fingerprint="f" * 64
        )
        session.add(character)

    assert _characters(db_engine) == 1
    assert (character.name, character.created.tzinfo is not None) == ("Ada", True)


def test_a_failed_unit_of_work_leaves_no_trace(db_engine: Engine) -> None:
    factory = session_factory(db_engine)
    with (
        pytest.raises(RuntimeError, match="upload failed"),
        session_scope(factory) as session,
    ):
        session.add(
            Character(name="Ada", class_word="woman", trigger="img", photos_fingerprint="f" * 64)
        )
        session.flush()
        raise RuntimeError("upload failed")

    assert _characters(db_engine) == 0
