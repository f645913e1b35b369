"""Downloads carry the job's name: a render is saved as `newton-ch1-0002-v1.png` (scene 2,
numbered from 1), the renders zip as `newton-ch1.zip`, the comic as `newton-ch1-comic.pdf`."""

from __future__ import annotations

import io
import zipfile

from farm.comic.job import build_job_outputs
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body


def disposition(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.headers["Content-Disposition"]


def test_every_download_of_a_job_is_named_after_it(studio: Studio):
    body = story_body(make_character(studio), title="Newton ch1")
    job_id = studio.call("POST", "/api/v1/jobs", json=body).json["id"]
    finish_renders(studio, job_id)
    with studio.farm.sessions() as session:
        build_job_outputs(session, studio.farm.storage, job_id)
    client = studio.client()
    studio.log_in(client)

    renders = studio.call("GET", f"/api/v1/jobs/{job_id}/renders").json["items"]
    last = renders[-1]  # scene index 1, variant 1
    saved = disposition(client.get(f"/files/renders/{last['id']}/download"))
    assert saved == 'attachment; filename="newton-ch1-0002-v1.png"'

    bundle = client.get(f"/jobs/{job_id}/download.zip")
    assert disposition(bundle) == 'attachment; filename="newton-ch1.zip"'
    names = zipfile.ZipFile(io.BytesIO(bundle.get_data())).namelist()
    assert names == ["0001-v0.png", "0002-v0.png", "0002-v1.png", "manifest.json"]

    outputs = studio.call("GET", f"/api/v1/jobs/{job_id}/outputs").json["items"]
    by_kind = {item["kind"]: item for item in outputs}
    assert by_kind["pdf"]["name"] == "newton-ch1-comic.pdf"
    assert by_kind["cbz"]["name"] == "newton-ch1-comic.cbz"
    assert by_kind["zip"]["name"] == "newton-ch1-renders.zip"
    pdf = client.get(by_kind["pdf"]["url"].removeprefix("http://localhost"))
    assert disposition(pdf) == 'attachment; filename="newton-ch1-comic.pdf"'
