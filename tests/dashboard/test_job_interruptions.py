"""The job page and the API say how often a job's shards were interrupted (and where an
interrupted batch resumes), and which workers are kept off the job after failing it."""

from __future__ import annotations

from sqlalchemy import select

from farm.blocklist import record_failure
from farm.db.models import Shard
from farm.lifecycle import interrupt_shard
from tests.fixtures.dashboard import Studio, make_character, story_body


def test_interruptions_and_blocked_workers_are_on_the_job_page_and_in_the_api(studio: Studio):
    job_id = studio.call("POST", "/api/v1/jobs", json=story_body(make_character(studio))).json["id"]
    farm = studio.farm
    with farm.sessions.begin() as session:
        first = session.scalars(select(Shard).where(Shard.job_id == job_id, Shard.index == 0)).one()
        first.start("spot:cuda0", 60)
        for _ in range(2):
            record_failure(session, job_id, "bad:cuda1", "RuntimeError: CUDA error: ECC")
        record_failure(session, job_id, "flaky:cuda2", "once")  # once is not enough
    key = f"jobs/{job_id}/checkpoints/shard-{first.id}.pt"
    assert interrupt_shard(farm, "spot:cuda0", first.id, job_id, "preempted", key, 17) == (
        "interrupted"
    )

    job = studio.call("GET", f"/api/v1/jobs/{job_id}", "a-viewer").json
    assert job["interruptions"] == 1
    shard = job["shards"][0]
    assert (shard["status"], shard["attempts"], shard["interruptions"]) == ("queued", 0, 1)
    assert shard["checkpoint_step"] == 17
    assert job["blocked_workers"] == [
        {"worker_id": "bad:cuda1", "failures": 2, "last_error": "RuntimeError: CUDA error: ECC"}
    ]

    client = studio.client()
    studio.log_in(client, "a-viewer")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'data-cell="interruptions">1 <abbr title="resumes its batch at denoising step 17">' in (
        page
    )
    assert "1 run(s) were interrupted" in page
    assert 'data-worker="bad:cuda1"' in page and "it failed 2 of its shards" in page
    assert "flaky:cuda2" not in page
