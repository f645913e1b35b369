"""Preview-first approval through the API: a job submitted with `approval: preview` shows its
contact sheet in `approval`, holds no full-quality shard until scenes are approved with
POST .../approve, and refuses approvals it cannot take with a 400 that changes nothing."""

from __future__ import annotations

from farm.db.states import JobStatus
from tests.fixtures.dashboard import finish_renders, make_character, story_body


def submit(studio, **overrides):
    body = story_body(make_character(studio), approval="preview", title="Newton ch1", **overrides)
    response = studio.call("POST", "/api/v1/jobs", json=body)
    assert response.status_code == 201, response.json
    return response.json["id"]


def job(studio, job_id):
    response = studio.call("GET", f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.json
    return response.json


def approve(studio, job_id, who="a-artist", **body):
    return studio.call("POST", f"/api/v1/jobs/{job_id}/approve", who, json=body)


def test_a_preview_job_is_approved_scene_by_scene(studio):
    job_id = submit(studio)
    shown = job(studio, job_id)
    assert (shown["name"], shown["status"], shown["shards"]) == (
        "Newton ch1",
        "awaiting_approval",
        [],
    )
    sheet = shown["approval"]
    assert [(s["scene"], s["state"]) for s in sheet["scenes"]] == [
        (1, "previewing"),
        (2, "previewing"),
    ]
    preview_id = sheet["preview_job_id"]
    assert job(studio, preview_id)["preset"] == "tiny-fast"
    assert {task.queue for task in studio.tasks.sent} == {"render.tiny-fast"}

    before = studio.rows()
    refused = approve(studio, job_id, scenes=[1])
    assert refused.status_code == 400
    assert "preview of scene(s) 1 " in refused.json["error"]
    assert studio.rows() == before

    finish_renders(studio, preview_id)
    sheet = job(studio, job_id)["approval"]
    assert [s["state"] for s in sheet["scenes"]] == ["ready", "ready"]
    assert all(s["thumb_url"] and s["seed"] is not None for s in sheet["scenes"])

    studio.tasks.sent.clear()
    approved = approve(studio, job_id, scenes=[2])
    assert approved.status_code == 200, approved.json
    assert approved.json == {"scenes": [2], "renders": 2, "shards": 1}
    assert {task.queue for task in studio.tasks.sent} == {"render.tiny"}
    renders = studio.call("GET", f"/api/v1/jobs/{job_id}/renders").json["items"]
    assert [(r["scene_index"], r["variant"]) for r in renders] == [(1, 0), (1, 1)]
    assert renders[0]["seed"] == sheet["scenes"][1]["seed"]

    finish_renders(studio, job_id)
    shown = job(studio, job_id)
    assert shown["status"] == JobStatus.AWAITING_APPROVAL  # scene 1 still waits
    assert [s["state"] for s in shown["approval"]["scenes"]] == ["ready", "approved"]

    assert approve(studio, job_id).json == {"scenes": [1], "renders": 1, "shards": 1}
    finish_renders(studio, job_id)
    assert job(studio, job_id)["status"] == "succeeded"


def test_approvals_a_job_cannot_take_are_refused_and_change_nothing(studio):
    job_id = submit(studio)
    plain = studio.call("POST", "/api/v1/jobs", json=story_body(make_character(studio))).json
    before = studio.rows()
    cases = [
        (plain["id"], {}, 400, "was not submitted for approval"),
        (job_id, {"scenes": [3]}, 400, "has scenes 1 to 2; there is no scene 3"),
        (job_id, {"scenes": [0]}, 400, "body.scenes.0"),
        (job_id, {"scenes": []}, 400, "name the scenes to approve"),
        (job_id, {"scene": [1]}, 400, "body.scene"),
    ]
    for target, body, status, message in cases:
        response = approve(studio, target, **body)
        assert (response.status_code, message in response.json["error"]) == (status, True), body
    assert approve(studio, job_id, who="a-viewer").status_code == 403
    assert approve(studio, job_id, who="b-artist").status_code == 404  # another team's job
    studio.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    after_cancel = studio.rows()
    ended = approve(studio, job_id)
    assert ended.status_code == 400 and "is cancelled; only a job awaiting" in ended.json["error"]
    assert studio.rows() == after_cancel
    assert {k: v for k, v in before.items() if k != "jobs"} == {
        k: v for k, v in after_cancel.items() if k != "jobs"
    }


def test_the_job_page_shows_the_contact_sheet_and_approves_ticked_scenes(studio):
    client = studio.client()
    csrf = studio.log_in(client)
    job_id = submit(studio)
    listed = client.get("/jobs").text  # by name, with the short id the CLI takes
    assert "Newton ch1</a>" in listed and f">{job_id[:8]}</span>" in listed
    page = client.get(f"/jobs/{job_id}").text
    assert "Newton ch1" in page and 'data-field="approval"' in page
    assert 'data-state="previewing"' in page and 'name="scenes"' not in page
    finish_renders(studio, job(studio, job_id)["approval"]["preview_job_id"])
    page = client.get(f"/jobs/{job_id}").text
    assert 'data-approve-scene="1"' in page and 'data-approve-scene="2"' in page

    before = studio.rows()
    nothing = client.post(f"/jobs/{job_id}/approve", data={"csrf_token": csrf})
    assert nothing.status_code == 400 and "name the scenes to approve" in nothing.text
    assert studio.rows() == before

    ticked = client.post(f"/jobs/{job_id}/approve", data={"csrf_token": csrf, "scenes": "2"})
    assert ticked.status_code == 302
    page = client.get(ticked.location).text
    assert "Approved scene(s) 2: 2 render(s) queued at full quality." in page
    assert 'data-scene="2" data-state="approved"' in page
    every = client.post(f"/jobs/{job_id}/approve", data={"csrf_token": csrf, "every": "1"})
    assert every.status_code == 302
    assert [s["state"] for s in job(studio, job_id)["approval"]["scenes"]] == ["approved"] * 2
