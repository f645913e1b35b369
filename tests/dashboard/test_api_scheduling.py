"""`/api/v1/jobs/<id>/pause`, `.../resume`, `.../priority` and `/api/v1/usage`: a producer's
hands on a waiting job and the project's device seconds, each scoped to the token's project;
bad input is a 400 naming the field, another project's job a 404, and neither writes a thing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


@pytest.fixture
def job_id(studio: Studio) -> str:
    body = story_body(make_character(studio))
    return studio.call("POST", "/api/v1/jobs", json=body).json["id"]


def job(studio: Studio, job_id: str) -> dict[str, Any]:
    return studio.call("GET", f"/api/v1/jobs/{job_id}", "a-viewer").json


def test_a_producer_pauses_reorders_and_resumes_a_job(studio: Studio, job_id: str):
    paused = studio.call("POST", f"/api/v1/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.json["status"] == "paused"
    assert {s["status"] for s in job(studio, job_id)["shards"]} == {"paused"}

    reordered = studio.call("POST", f"/api/v1/jobs/{job_id}/priority", json={"priority": 9})
    assert reordered.json["priority"] == 9 and reordered.json["status"] == "paused"

    studio.tasks.sent.clear()
    resumed = studio.call("POST", f"/api/v1/jobs/{job_id}/resume")
    assert resumed.json["status"] == "queued"
    assert {s["status"] for s in job(studio, job_id)["shards"]} == {"queued"}
    assert len(studio.tasks.sent) == 2  # the two shards' turns, sent again


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"priority": 10}, "body.priority: Input should be less than or equal to 9"),
        ({"priority": -1}, "body.priority: Input should be greater than or equal to 0"),
        ({"priority": "9"}, "body.priority: Input should be a valid integer"),
        ({}, "body.priority: Field required"),
    ],
)
def test_a_priority_out_of_range_is_a_400_and_changes_nothing(
    studio: Studio, job_id: str, body: dict[str, Any], message: str
):
    response = studio.call("POST", f"/api/v1/jobs/{job_id}/priority", json=body)

    assert response.status_code == 400 and message in response.json["error"]
    assert job(studio, job_id)["priority"] == 5


def test_another_projects_job_is_not_found_and_a_viewer_may_not_touch_it(
    studio: Studio, job_id: str
):
    for action, body in (("pause", None), ("resume", None), ("priority", {"priority": 9})):
        theirs = studio.call("POST", f"/api/v1/jobs/{job_id}/{action}", "b-admin", json=body)
        assert theirs.status_code == 404 and theirs.json["error"] == f"no job {job_id}"
        viewer = studio.call("POST", f"/api/v1/jobs/{job_id}/{action}", "a-viewer", json=body)
        assert viewer.status_code == 403
    unchanged = job(studio, job_id)
    assert (unchanged["status"], unchanged["priority"]) == ("queued", 5)


def test_only_a_waiting_job_pauses_and_only_a_paused_one_resumes(studio: Studio, job_id: str):
    not_paused = studio.call("POST", f"/api/v1/jobs/{job_id}/resume")
    assert not_paused.status_code == 400
    assert not_paused.json["error"] == f"job {job_id} is queued; only a paused job resumes"
    finish_renders(studio, job_id)

    ended = studio.call("POST", f"/api/v1/jobs/{job_id}/pause")
    assert ended.status_code == 400
    assert ended.json["error"] == (
        f"job {job_id} is succeeded; only a queued or running job pauses"
    )


def test_device_seconds_on_the_job_the_usage_report_and_the_next_plan(studio: Studio, job_id: str):
    finish_renders(studio, job_id)  # three renders of 0.7 device seconds each

    assert job(studio, job_id)["device_s"] == pytest.approx(2.1)
    usage = studio.call("GET", "/api/v1/usage?since=2026-01-01", "a-viewer").json
    assert usage["project"] == "team-a" and usage["share_weight"] == 1
    assert (usage["renders"], usage["device_s"]) == (3, pytest.approx(2.1))
    assert [(j["job_id"], j["device_kind"], j["renders"]) for j in usage["jobs"]] == [
        (job_id, "cpu", 3)
    ]
    theirs = studio.call("GET", "/api/v1/usage?since=2026-01-01", "b-viewer").json
    assert (theirs["project"], theirs["renders"], theirs["jobs"]) == ("team-b", 0, [])
    character_id = job(studio, job_id)["character_id"]
    plan = studio.call("POST", "/api/v1/jobs/plan", json=story_body(character_id)).json
    assert plan["estimated_device_s"] == pytest.approx(2.1)  # the same story, measured


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "query.since: Field required"),
        ("since=last+week", "query.since: Value error, a day like 2026-12-01"),
        ("since=1", "query.since: Value error, a day like 2026-12-01"),
        ("since=2026-12-02&until=2026-12-01", "must come after query.since"),
    ],
)
def test_a_bad_usage_period_is_a_400(studio: Studio, query: str, message: str):
    response = studio.call("GET", f"/api/v1/usage?{query}", "a-viewer")

    assert response.status_code == 400 and message in response.json["error"]
