"""`farm gc` and story-mode consistency's stored tokens: kept while a job's row names them,
garbage once no job does (deleted with its job, or never recorded by a worker that died)."""

from __future__ import annotations

from sqlalchemy import delete

from farm.context import Farm
from farm.db.models import Job, JobConsistencyTokens
from farm.storage import LocalStorage
from tests.farm.conftest import make_story, submit
from tests.ops.test_gc import farm_cli, put


def test_gc_keeps_the_reference_tokens_a_job_reads(farm: Farm, faces):
    storage = farm.storage
    assert isinstance(storage, LocalStorage)
    kept = submit(farm, faces).job_id
    gone = submit(farm, faces, make_story(2, seed=7)).job_id
    shared, orphan, left = (f"consistency/{'c' * 32}/{digest * 40}" for digest in "abd")
    with farm.sessions.begin() as session:
        for job, prefix in ((kept, shared), (gone, shared), (gone, left)):
            row = JobConsistencyTokens(
                job_id=job, storage_prefix=prefix, references=2, stored_bytes=300
            )
            session.add(row)
    for prefix in (shared, orphan, left):
        put(storage, f"{prefix}/step-0001.safetensors", 100)
        put(storage, f"{prefix}/manifest.json", 50)
    with farm.sessions.begin() as session:  # its rows go with it; `shared` is still kept's
        session.execute(delete(Job).where(Job.id == gone))

    listed = farm_cli(farm)[:-1]  # the last line sums them up
    want = [
        f"{prefix}/{name}  {size} B"
        for prefix in (orphan, left)
        for name, size in (("manifest.json", 50), ("step-0001.safetensors", 100))
    ]
    assert [line for line in listed if line.startswith("consistency/")] == want
