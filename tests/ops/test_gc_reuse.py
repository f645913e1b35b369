"""`farm gc` keeps an image that a render of another job reuses (farm/reuse.py), after the job
that rendered it is gone; the rest of that job's objects go."""

from __future__ import annotations

from sqlalchemy import delete, select

from farm.context import Farm
from farm.db.models import Job, Render, Shard
from tests.farm.conftest import job_rows, make_story, submit
from tests.ops.test_gc import farm_cli, put


def test_an_image_reused_by_another_job_outlives_the_job_that_made_it(farm: Farm, faces):
    first = submit(farm, faces, make_story(1)).job_id
    key = f"jobs/{first}/renders/0001-v0.png"
    with farm.sessions.begin() as session:  # what a worker does, without rendering
        session.scalars(select(Shard).where(Shard.job_id == first)).one().start("w", 60)
        render = session.scalars(select(Render).where(Render.job_id == first)).one()
        render.start("w", "cpu")
        render.finish(key)
    second = submit(farm, faces, make_story(1))
    assert second.shards == 0 and job_rows(farm, second.job_id)[2][0].storage_key == key
    with farm.sessions.begin() as session:
        session.execute(delete(Job).where(Job.id == first))
    put(farm.storage, key, 100)
    put(farm.storage, f"jobs/{first}/comic/page-001.png", 200)

    assert farm_cli(farm)[:-1] == [f"jobs/{first}/comic/page-001.png  200 B"]
