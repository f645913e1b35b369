"""The editorial loop through `/api/v1`: re-roll, pick, revise, revisions, picks and a comic
rebuild, on the service functions the CLI uses; bad input is a 4xx and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from farm.queue.app import FINALIZE_JOB, RENDER_SHARD
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@pytest.fixture
def job_id(studio: Studio) -> str:
    """A finished job of two scenes (the second with two variants)."""
    body = story_body(make_character(studio))
    job = studio.call("POST", "/api/v1/jobs", json=body).json["id"]
    finish_renders(studio, job)
    return job


def renders(studio: Studio, job: str) -> list[tuple[int, int, str]]:
    items = studio.call("GET", f"/api/v1/jobs/{job}/renders").json["items"]
    return [(r["scene_index"], r["variant"], r["status"]) for r in items]


def test_reroll_queues_new_variants_and_keeps_the_old(studio: Studio, job_id: str):
    before = renders(studio, job_id)
    sent = len(studio.tasks.sent)

    response = studio.call(
        "POST", f"/api/v1/jobs/{job_id}/reroll", json={"scenes": [1], "variants": 2}
    )

    assert response.status_code == 202, response.json
    assert len(response.json["renders"]) == 2 and response.json["shards"] == 1
    assert renders(studio, job_id) == [*before[:1], (0, 1, "queued"), (0, 2, "queued"), *before[1:]]
    assert [t.name for t in studio.tasks.sent[sent:]] == [RENDER_SHARD]
    job = studio.call("GET", f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "running" and job["renders_total"] == 5


def test_pick_and_picks(studio: Studio, job_id: str):
    picks = studio.call("GET", f"/api/v1/jobs/{job_id}/picks").json
    assert [(p["scene"], p["variant"], p["reason"]) for p in picks["items"]] == [
        (1, 0, "first"),
        (2, 0, "first"),
    ]

    response = studio.call("POST", f"/api/v1/jobs/{job_id}/pick", json={"scene": 2, "variant": 1})

    assert response.status_code == 200, response.json
    assert (response.json["scene"], response.json["variant"]) == (2, 1)
    rebuild = studio.tasks.sent[-1]
    assert (rebuild.name, rebuild.args, rebuild.kwargs) == (
        FINALIZE_JOB,
        [job_id],
        {"webhook": False},
    )
    picks = studio.call("GET", f"/api/v1/jobs/{job_id}/picks", "a-viewer").json
    assert [(p["scene"], p["variant"], p["reason"]) for p in picks["items"]][1] == (2, 1, "picked")
    assert picks["comic"] is None and picks["comic_current"] is False
    rebuilt = studio.call("POST", f"/api/v1/jobs/{job_id}/outputs")
    assert rebuilt.status_code == 202 and rebuilt.json == {"queued": True}


def test_revise_a_story_and_read_its_revisions(studio: Studio, job_id: str):
    changes = {
        "scenes": {
            "change": {"1": {"prompt": "a man img at sea"}},
            "add": [{"prompt": "a man img on the moon"}],
        }
    }

    response = studio.call("PATCH", f"/api/v1/jobs/{job_id}/story", json=changes)

    assert response.status_code == 200, response.json
    revised = response.json
    assert (revised["revision"], revised["kept"], revised["rendered"], revised["retired"]) == (
        2,
        2,
        2,
        1,
    )
    assert revised["summary"] == "scene 1: prompt changed; scene 3 added"
    job = studio.call("GET", f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "running" and job["story"]["scenes"][0]["prompt"] == "a man img at sea"
    history = studio.call("GET", f"/api/v1/jobs/{job_id}/revisions", "a-viewer").json
    assert history["current"] == 2
    assert [(r["number"], r["summary"]) for r in history["items"]] == [
        (2, "scene 1: prompt changed; scene 3 added"),
        (1, "submitted"),
    ]
    assert history["items"][1]["story"]["scenes"][0]["prompt"] != "a man img at sea"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "reroll", {"scenes": [3]}, 400, "has scenes 1 to 2; there is no scene 3"),
        ("POST", "reroll", {"scenes": []}, 400, "name at least one scene"),
        ("POST", "pick", {"scene": 1}, 400, "scene (from 1) and variant (v0 is 0) are both"),
        ("POST", "reroll", {"scenes": [1], "variants": 99}, 400, "body.variants"),
        ("POST", "pick", {"scene": 1, "variant": 4}, 400, "has variants v0; there is no v4"),
        ("POST", "pick", {"scene": 5, "variant": 0}, 400, "there is no scene 5"),
        ("PATCH", "story", {"scenes": {"remove": [9]}}, 400, "there is no scene 9"),
        ("PATCH", "story", {"steps": 0}, 400, "steps"),
        ("PATCH", "story", {"character": {"name": "Ada"}}, 400, "keeps the job's characters"),
    ],
)
def test_bad_input_is_a_400_and_changes_nothing(
    studio: Studio,
    job_id: str,
    method: str,
    path: str,
    body: dict[str, Any],
    status: int,
    message: str,
):
    before, sent = studio.rows(), len(studio.tasks.sent)

    response = studio.call(method, f"/api/v1/jobs/{job_id}/{path}", json=body)

    assert response.status_code == status and message in response.json["error"], response.json
    assert studio.rows() == before and len(studio.tasks.sent) == sent


def test_another_projects_job_is_not_found_and_unchanged(studio: Studio, job_id: str):
    before = studio.rows()
    for method, path, body in [
        ("POST", "pick", {"scene": 1, "variant": 0}),
        ("POST", "reroll", {"scenes": [1]}),
        ("PATCH", "story", {"steps": 3}),
        ("GET", "revisions", None),
    ]:
        response = studio.call(method, f"/api/v1/jobs/{job_id}/{path}", "b-artist", json=body)
        assert response.status_code == 404, (path, response.json)
    assert studio.rows() == before


def test_a_running_job_is_revised_once_it_has_ended(studio: Studio):
    body = story_body(make_character(studio))
    job = studio.call("POST", "/api/v1/jobs", json=body).json["id"]
    before = studio.rows()
    response = studio.call("PATCH", f"/api/v1/jobs/{job}/story", json={"steps": 3})
    assert response.status_code == 400 and "revise it once it has ended" in response.json["error"]
    rebuild = studio.call("POST", f"/api/v1/jobs/{job}/outputs")
    assert rebuild.status_code == 409
    assert studio.rows() == before
