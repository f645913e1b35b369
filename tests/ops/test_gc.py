"""`farm gc`: exactly the objects that no row needs any more, on SQLite and PostgreSQL.

The farm here is real up to the broker (a recorder): a job submitted with its character, a
second job whose row is then deleted, characters deleted while a job still names them or
not, identity tokens with and without their row, and objects that are not the farm's.
"""

from __future__ import annotations

import os
import time

from click.testing import CliRunner
from sqlalchemy import delete

from farm.characters import create_character
from farm.context import Farm
from farm.db.models import CastMember, Character, Job, StoredIdentityTokens
from farm.identity.cache import identity_key
from farm.identity.faces import FaceAnalyzer
from farm.storage import LocalStorage
from farmcli.main import main
from tests.farm.conftest import make_story, submit
from tests.fixtures.tiny import photos_of

OLD_S = 2 * 3600  # older than the default grace of an hour


def farm_cli(farm: Farm, *args: str) -> list[str]:
    settings = farm.settings
    env = {
        "FARM_DATA_DIR": str(settings.data_dir),
        "FARM_DATABASE_URL": settings.database_url,
        "FARM_STORAGE_URL": settings.storage_url,
        "FARM_BROKER_URL": settings.broker_url,
    }
    result = CliRunner().invoke(main, ["gc", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def put(storage: LocalStorage, key: str, size: int, *, age_s: float = OLD_S) -> None:
    storage.put(key, b"x" * size)
    then = time.time() - age_s
    os.utime(storage.root / key, (then, then))


def deleted_character(farm: Farm, faces: FaceAnalyzer, person: str) -> tuple[int, str]:
    """A character of `person` made and then deleted: (its id, its photo's key)."""
    with farm.sessions.begin() as session:
        character = create_character(
            session,
            farm.storage,
            faces,
            name=person,
            class_word="woman",
            trigger="img",
            photos=photos_of(person, 1),
        )
        character.soft_delete()
        return character.id, character.photos[0].storage_key


def test_gc_lists_then_deletes_exactly_what_no_row_needs(farm: Farm, faces):
    storage = farm.storage
    assert isinstance(storage, LocalStorage)
    kept = submit(farm, faces).job_id
    gone = submit(farm, faces, make_story(2, seed=7)).job_id
    with farm.sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == gone))
        newton = session.get(Job, kept).character_id
        session.get(Character, newton).soft_delete()  # deleted, but job `kept` still needs it
        newton_photo = session.get(Character, newton).photos[0].storage_key
    _, scarlett_photo = deleted_character(farm, faces, "scarletthead_woman")
    lenna, lenna_photo = deleted_character(farm, faces, "lenna_woman")
    with farm.sessions.begin() as session:  # deleted, but in the cast of job `kept`
        session.add(CastMember(job_id=kept, character_id=lenna, trigger="img2", position=0))
        session.add(
            StoredIdentityTokens(
                encoder_fingerprint="e" * 64,
                photos_fingerprint="a" * 64,
                storage_key=identity_key("e" * 64, "a" * 64),
                num_tokens=2,
                seconds=1.0,
            )
        )
    for key in storage.list("photos/"):  # stored by the submissions just now
        os.utime(storage.root / key, (time.time() - OLD_S,) * 2)
    put(storage, f"jobs/{kept}/renders/0000-v0.png", 1000)
    put(storage, f"jobs/{gone}/renders/0000-v0.png", 1000)
    put(storage, f"jobs/{gone}/comic/page-001.png", 2048)
    put(storage, f"jobs/{gone}/exports/renders.zip", 10, age_s=60)  # in the grace period
    put(storage, identity_key("e" * 64, "a" * 64), 300)
    put(storage, identity_key("e" * 64, "b" * 64), 400)  # its worker died before the row
    put(storage, "jobs/stray.bin", 5)  # not a key the farm writes: never judged
    put(storage, "notes/readme.txt", 5)  # not the farm's
    before = set(storage.list())
    garbage = {
        f"jobs/{gone}/comic/page-001.png": "2.0 KiB",
        f"jobs/{gone}/renders/0000-v0.png": "1000 B",
        scarlett_photo: f"{len(photos_of('scarletthead_woman', 1)[0].data) / 1024:.1f} KiB",
        identity_key("e" * 64, "b" * 64): "400 B",
    }
    assert {newton_photo, lenna_photo, scarlett_photo} <= before

    *listed, summary = farm_cli(farm)
    assert sorted(listed) == sorted(f"{key}  {size}" for key, size in garbage.items())
    assert summary.startswith("4 objects, ") and summary.endswith(
        " no longer needed (farm gc --delete deletes them)"
    )
    assert set(storage.list()) == before  # a dry run by default

    *deleted, summary = farm_cli(farm, "--delete")
    assert sorted(deleted) == sorted(f"deleted {key}  {size}" for key, size in garbage.items())
    assert summary.startswith("deleted 4 objects, ")
    assert set(storage.list()) == before - set(garbage)

    assert farm_cli(farm, "--older-than", "1") == [
        f"jobs/{gone}/exports/renders.zip  10 B",
        "1 object, 10 B no longer needed (farm gc --delete deletes them)",
    ]


def test_gc_refuses_to_delete_everything_for_a_database_that_is_not_the_farms(farm):
    put(farm.storage, "jobs/0c75105d/renders/0000-v0.png", 10)
    settings = farm.settings
    env = {
        "FARM_DATA_DIR": str(settings.data_dir),
        "FARM_DATABASE_URL": settings.database_url,  # migrated, but no job or character
        "FARM_STORAGE_URL": settings.storage_url,
        "FARM_BROKER_URL": settings.broker_url,
    }
    result = CliRunner().invoke(main, ["gc", "--delete"], env=env)

    assert result.exit_code == 2
    assert result.stderr.startswith("error: the database holds no job and no character")
    assert farm.storage.exists("jobs/0c75105d/renders/0000-v0.png")
    assert farm_cli(farm)[-1].startswith("1 object")  # listing alone is harmless
