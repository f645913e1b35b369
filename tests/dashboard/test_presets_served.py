"""Defaults that run: the new-story form starts on a preset a live worker serves (with that
preset's size and steps), presets no worker serves are marked, and the form's preview, the
API's plan, the job page and the job's API detail say "no worker serves preset X: it will
wait" (a warning: the job is still accepted) and give an estimate where the farm has figures.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from farm.db.models import Worker
from farm.db.states import WorkerStatus
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body

WAITS = "no worker serves preset {}: it will wait"


@pytest.fixture
def artist(studio: Studio) -> tuple[FlaskClient, str]:
    client = studio.client()
    return client, studio.log_in(client, "a-artist")


def live_worker(studio: Studio, presets: list[str], name: str = "cpu-box:cpu0") -> None:
    with studio.farm.sessions.begin() as session:
        worker = Worker(id=name, hostname="cpu-box", device="cpu", presets=presets)
        session.add(worker)
        session.flush()
        worker.ready()  # loaded and beating: idle


def form_fields(page: str) -> dict[str, Any]:
    selected = re.search(r'<option value="([\w-]+)"[^>]*selected>([^<]*)</option>', page)
    assert selected is not None, page
    values = {
        name: re.search(rf'id="{name}" name="{name}"[^>]* value="([^"]*)"', page)[1]
        for name in ("width", "height", "steps")
    }
    labels = dict(re.findall(r'<option value="([\w-]+)"[^>]*>([^<]*)</option>', page))
    note = re.search(r"<span class=\"hint warn\" data-preset-note( hidden)?>([^<]*)</span>", page)
    return {
        "preset": selected[1],
        **values,
        "labels": labels,
        "note": None if note[1] else note[2],
    }


def test_the_form_starts_on_the_preset_the_only_worker_serves(studio: Studio, artist):
    client, _ = artist
    make_character(studio)
    live_worker(studio, ["tiny"])

    form = form_fields(client.get("/stories/new").text)

    assert (form["preset"], form["width"], form["height"], form["steps"]) == (
        "tiny",
        "64",
        "64",
        "4",
    )
    assert form["labels"]["tiny"] == "tiny"
    assert form["labels"]["photomaker-v2"] == "photomaker-v2 (no worker)"
    assert form["note"] is None


def test_with_no_worker_the_form_says_its_preset_will_wait(studio: Studio, artist):
    client, _ = artist
    make_character(studio)
    with studio.farm.sessions.begin() as session:  # a worker that stopped serves nothing
        session.add(
            Worker(
                id="gone:cuda0",
                hostname="gone",
                device="cuda:0",
                presets=["tiny"],
                status=WorkerStatus.STOPPED,
            )
        )

    form = form_fields(client.get("/stories/new").text)

    assert (form["preset"], form["width"], form["steps"]) == ("photomaker-v2", "1024", "50")
    assert form["note"] == WAITS.format("photomaker-v2")
    assert form["labels"]["tiny"] == "tiny (no worker)"


def test_the_plan_warns_without_a_worker_and_estimates_with_one(studio: Studio):
    character_id = make_character(studio)
    body = story_body(character_id, variants=3)  # five renders in three shards of two
    plan = studio.call("POST", "/api/v1/jobs/plan", json=body).json
    assert (plan["warnings"], plan["estimated_s"]) == ([WAITS.format("tiny")], None)

    live_worker(studio, ["tiny"])
    plan = studio.call("POST", "/api/v1/jobs/plan", json=body).json
    assert (plan["warnings"], plan["estimated_s"]) == ([], None)  # no figures for tiny yet

    done = studio.call("POST", "/api/v1/jobs", json=story_body(character_id)).json["id"]
    finish_renders(studio, done)  # 0.7 s of device time per render
    plan = studio.call("POST", "/api/v1/jobs/plan", json=body).json
    assert plan["estimated_s"] == pytest.approx(5 * 0.7, abs=0.05)  # in tenths of a second
    assert plan["estimated_device_s"] == pytest.approx(5 * 0.7, abs=0.05)
    live_worker(studio, ["tiny", "tiny-v1"], name="cpu-box:cpu1")
    plan = studio.call("POST", "/api/v1/jobs/plan", json=body).json
    assert plan["estimated_s"] == pytest.approx(5 * 0.7 / 2, abs=0.1)  # two workers share it


def test_a_waiting_job_says_why_on_its_page_and_in_the_api(studio: Studio, artist):
    client, _ = artist
    character_id = make_character(studio)
    job_id = studio.call("POST", "/api/v1/jobs", json=story_body(character_id)).json["id"]

    progress = studio.call("GET", f"/api/v1/jobs/{job_id}").json["progress"]
    assert (progress["waiting"], progress["eta_s"], progress["running"]) == (
        WAITS.format("tiny"),
        None,
        [],
    )
    page = client.get(f"/jobs/{job_id}").text
    assert f'<p class="waiting" data-field="waiting" >{WAITS.format("tiny")}</p>' in page

    live_worker(studio, ["tiny"])
    assert studio.call("GET", f"/api/v1/jobs/{job_id}").json["progress"]["waiting"] is None
