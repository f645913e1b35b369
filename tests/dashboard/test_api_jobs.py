"""`/api/v1/jobs` and `/api/v1/renders`: a story body becomes a job through the same
`submit_story` as `farm submit`; bad bodies are 400s naming the field, with nothing written
and nothing sent."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from farm.db.models import Shard
from farm.db.states import ShardStatus
from farm.queue.app import RENDER_SHARD
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@pytest.fixture
def character_id(studio: Studio) -> int:
    return make_character(studio)


def submit(studio: Studio, body: dict[str, Any], who: str = "a-artist") -> Any:
    return studio.call("POST", "/api/v1/jobs", who, json=body)


def test_a_story_becomes_a_job_of_shards_sent_to_its_preset(studio: Studio, character_id: int):
    response = submit(studio, story_body(character_id, priority=7))

    assert response.status_code == 201, response.json
    created = response.json
    assert created["renders"] == 3 and created["shards"] == 2  # shard size 2
    assert created["url"].endswith(f"/jobs/{created['id']}")
    assert [(t.name, t.queue, t.priority) for t in studio.tasks.sent] == [
        (RENDER_SHARD, "render.tiny", 2),
        (RENDER_SHARD, "render.tiny", 2),
    ]
    job = studio.call("GET", f"/api/v1/jobs/{created['id']}", "a-viewer").json
    assert job["status"] == "queued" and job["priority"] == 7
    assert job["character_id"] == character_id
    assert job["progress"] == {
        "total": 3,
        "counts": {"queued": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 0},
        "fraction": 0.0,
        "percent": 0,
        "running": [],
        "eta_s": None,
        "waiting": "no worker serves preset tiny: it will wait",  # no worker in this test
    }
    assert [s["status"] for s in job["shards"]] == ["queued", "queued"]
    assert job["story"]["scenes"][0]["caption"] == "Chapter 1"
    assert job["comic_url"] is None
    # The character was found again, not made a second time.
    assert studio.call("GET", "/api/v1/characters").json["total"] == 1


def test_a_plan_counts_renders_and_shards_and_writes_nothing(studio: Studio, character_id: int):
    before = studio.rows()

    response = studio.call("POST", "/api/v1/jobs/plan", json=story_body(character_id, variants=3))

    # Three variants of the first scene, two of the second (its own), in shards of two.
    assert response.json == {
        "renders": 5,
        "shards": 3,
        "width": 64,
        "height": 64,
        "preset": "tiny",
        "warnings": ["no worker serves preset tiny: it will wait"],  # a warning, not a refusal
        "estimated_s": None,
        "estimated_device_s": None,  # the farm has measured no render of the preset yet
    }
    assert studio.rows() == before and not studio.tasks.sent


def test_progress_renders_and_images_once_a_worker_has_rendered(studio: Studio, character_id: int):
    job_id = submit(studio, story_body(character_id)).json["id"]
    finish_renders(studio, job_id)

    job = studio.call("GET", f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "succeeded" and job["progress"]["percent"] == 100
    assert job["timings"]["denoise_s"] == pytest.approx(0.5)
    assert {s["worker_id"] for s in job["shards"]} == {"test:cpu0"}
    renders = studio.call("GET", f"/api/v1/jobs/{job_id}/renders?limit=2").json
    assert renders["total"] == 3 and len(renders["items"]) == 2
    first = renders["items"][0]
    assert (first["scene_index"], first["variant"], first["caption"]) == (0, 0, "Chapter 1")
    one = studio.call("GET", f"/api/v1/renders/{first['id']}").json
    assert one == first
    # Folder storage: the URL is the dashboard's own, behind the login.
    image = studio.call("GET", one["image_url"].removeprefix("http://localhost"))
    assert image.status_code == 200 and image.data.startswith(b"\x89PNG")
    assert studio.client().get(one["image_url"]).status_code == 302  # no login: to /login


def test_a_big_job_lists_its_shards_worth_seeing_first_and_pages_through_all(
    studio: Studio, character_id: int
):
    """105 shards: the job and its page list 100, running and failed first, and count all of
    them by state; GET .../shards pages through every one, or those of a state."""
    scenes = [{"prompt": f"a man img in scene {i}"} for i in range(210)]
    job_id = submit(studio, story_body(character_id, scenes=scenes)).json["id"]
    with studio.farm.sessions.begin() as session:
        for index, status in ((104, ShardStatus.FAILED), (103, ShardStatus.RUNNING)):
            session.execute(
                update(Shard)
                .where(Shard.job_id == job_id, Shard.index == index)
                .values(status=status)
            )

    job = studio.call("GET", f"/api/v1/jobs/{job_id}").json
    assert len(job["shards"]) == 100
    assert [s["index"] for s in job["shards"][:3]] == [103, 104, 0]
    assert job["shard_counts"] == {
        "running": 1,
        "failed": 1,
        "paused": 0,
        "queued": 103,
        "cancelled": 0,
        "succeeded": 0,
    }
    page = studio.call("GET", f"/api/v1/jobs/{job_id}/shards?limit=50&offset=100").json
    assert (page["total"], [s["index"] for s in page["items"]]) == (105, [98, 99, 100, 101, 102])
    failed = studio.call("GET", f"/api/v1/jobs/{job_id}/shards?status=failed").json
    assert (failed["total"], [s["index"] for s in failed["items"]]) == (1, [104])
    bad = studio.call("GET", f"/api/v1/jobs/{job_id}/shards?status=lost")
    assert bad.status_code == 400

    client = studio.client()
    studio.log_in(client, "a-viewer")
    page_html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert page_html.count("<tr data-shard=") == 100
    assert "105 shard(s) · 1 running · 1 failed · 103 queued; listing 100" in page_html


def test_renders_on_s3_get_presigned_urls(studio: Studio, character_id: int, s3_storage):
    job_id = submit(studio, story_body(character_id)).json["id"]
    studio.farm.__dict__["storage"] = s3_storage
    finish_renders(studio, job_id)

    render = studio.call("GET", f"/api/v1/jobs/{job_id}/renders").json["items"][0]

    assert render["image_url"].startswith(f"{s3_storage.endpoint_url}/{s3_storage.bucket}/")
    assert "X-Amz-Signature=" in render["image_url"]
    served = studio.call("GET", f"/files/renders/{render['id']}")
    assert served.status_code == 302
    assert served.location.startswith(render["image_url"].split("?")[0])


def test_list_filters_and_pages(studio: Studio, character_id: int):
    ids = [submit(studio, story_body(character_id, seed=n)).json["id"] for n in range(3)]
    finish_renders(studio, ids[0])

    everything = studio.call("GET", "/api/v1/jobs", "a-viewer").json
    assert everything["total"] == 3 and [j["id"] for j in everything["items"]] == ids[::-1]
    done = studio.call("GET", "/api/v1/jobs?status=succeeded").json
    assert [j["id"] for j in done["items"]] == [ids[0]]
    assert done["items"][0]["progress"]["counts"]["done"] == 3
    page = studio.call("GET", "/api/v1/jobs?limit=1&offset=1").json
    assert [j["id"] for j in page["items"]] == [ids[1]] and page["total"] == 3
    other = studio.call("GET", "/api/v1/jobs?character_id=12345").json
    assert other["total"] == 0
    assert studio.call("GET", "/api/v1/jobs?status=lost").status_code == 400


def test_cancel_then_retry(studio: Studio, character_id: int):
    job_id = submit(studio, story_body(character_id)).json["id"]
    sent = len(studio.tasks.sent)

    cancelled = studio.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json["status"] == "cancelled"
    assert cancelled.json["progress"]["counts"]["cancelled"] == 3
    again = studio.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 400 and "is cancelled; only queued, running" in again.json["error"]

    retried = studio.call("POST", f"/api/v1/jobs/{job_id}/retry")
    assert retried.json == {"shards": 2}
    assert len(studio.tasks.sent) == sent + 2
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["status"] == "running"
    refused = studio.call("POST", f"/api/v1/jobs/{job_id}/retry")
    assert refused.status_code == 400 and "still running" in refused.json["error"]


BAD_BODIES: dict[str, tuple[Any, str]] = {
    "not-an-object": ([1, 2], "must be a JSON object"),
    "no-character": ({"preset": "tiny", "scenes": [{"prompt": "a man img"}]}, "character_id"),
    "character-as-text": (lambda c: {**story_body(c), "character_id": str(c)}, "character_id"),
    "character-section": (
        lambda c: {**story_body(c), "character": {"name": "x"}},
        "name the character by character_id",
    ),
    "unknown-field": (lambda c: story_body(c, colour="red"), "colour: unknown field"),
    "no-trigger": (lambda c: story_body(c, scenes=[{"prompt": "a man reading"}]), "trigger"),
    "no-scenes": (lambda c: story_body(c, scenes=[]), "scenes"),
    "steps-0": (lambda c: story_body(c, steps=0), "steps"),
    "odd-width": (lambda c: story_body(c, width=65), "width"),
    "aspect-and-width": (lambda c: story_body(c, aspect="3:2"), "aspect"),
    "unknown-preset": (lambda c: story_body(c, preset="sdxl-turbo"), "unknown preset"),
    "unknown-style": (lambda c: story_body(c, style="Vaporwave"), "style"),
    "priority-10": (lambda c: story_body(c, priority=10), "priority"),
    "priority-text": (lambda c: story_body(c, priority="high"), "priority"),
    "webhook-ftp": (lambda c: story_body(c, webhook_url="ftp://x.example/h"), "webhook_url"),
    "webhook-credentials": (
        lambda c: story_body(c, webhook_url="https://u:p@x.example/h"),
        "credentials",
    ),
    "nul": (lambda c: story_body(c, scenes=[{"prompt": "a man img\x00"}]), "NUL"),
    "too-many-renders": (
        lambda c: story_body(c, variants=16, scenes=[{"prompt": "a man img"}] * 700),
        "at most 10000 per story",
    ),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_bodies_are_400_naming_the_field(studio: Studio, character_id: int, case: str):
    body, message = BAD_BODIES[case]
    before = studio.rows()

    response = submit(studio, body(character_id) if callable(body) else body)

    assert response.status_code == 400, response.json
    assert message in response.json["error"]
    assert studio.rows() == before
    assert not studio.tasks.sent


def test_every_problem_of_a_story_is_reported_at_once(studio: Studio, character_id: int):
    body = story_body(character_id, steps=0, guidance=99, scenes=[{"prompt": "no trigger"}])

    error = submit(studio, body).json["error"]

    assert "steps" in error and "guidance" in error and "scenes[0].prompt" in error


def test_a_body_that_is_not_json_is_400(studio: Studio):
    response = studio.call("POST", "/api/v1/jobs", data="character_id=1", content_type="text/plain")
    assert response.status_code == 400 and "JSON object" in response.json["error"]


def test_the_webhook_is_kept_with_the_job(studio: Studio, character_id: int):
    hook = "https://studio.example/hooks/farm?job=1"
    job_id = submit(studio, story_body(character_id, webhook_url=hook)).json["id"]
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["webhook_url"] == hook


def test_a_deleted_character_takes_no_new_jobs(studio: Studio, character_id: int):
    studio.call("DELETE", f"/api/v1/characters/{character_id}")
    response = submit(studio, story_body(character_id))
    assert response.status_code == 404 and "no character" in response.json["error"]
