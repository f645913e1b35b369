"""The OpenAPI document describes every API route, and schemathesis, run against the live app
with a valid token, finds no server error and no answer that breaks the document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dashboard.api.openapi import document
from farm.story import Story
from tests.dashboard.routes import ROUTES
from tests.fixtures.dashboard import Studio, live_server, make_character

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "schemathesis"
# Beyond "no 5xx": every status, content type and body must be the documented one, and input
# the document forbids must be refused.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def test_every_api_route_is_in_the_document(studio: Studio):
    rules = {
        (method, rule.rule)
        for rule in studio.app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi_json"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert len(rules) == len(ROUTES) >= 20


def test_the_job_body_is_the_story_spec_with_a_character_id(studio: Studio):
    with studio.app.test_request_context():
        schemas = document()["components"]["schemas"]
    job = schemas["JobCreate"]
    story_fields = set(Story.model_fields) - {"character"}  # the cast names characters by id
    extra = {"character_id", "priority", "webhook_url", "outfits"}  # the character's outfits
    assert set(job["properties"]) == story_fields | extra
    assert "character_id" in job["required"] and "scenes" in job["required"]
    assert job["additionalProperties"] is False
    assert schemas["CharacterCreate"]["properties"]["photos"]["maxItems"] == 16


def test_the_document_is_served_without_a_login(studio: Studio):
    response = studio.client().get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.json["openapi"] == "3.1.0"


def test_schemathesis_finds_no_server_error(studio: Studio, tmp_path: Path):
    make_character(studio, "a-admin")  # so that some generated ids find a row
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with live_server(studio.app) as url:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"{url}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {studio.tokens['a-admin']}",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                "10",
                "--seed",
                "1687",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
                "--report",
                "junit",
                "--report-junit-path",
                str(ARTIFACTS / "junit.xml"),
            ],
            cwd=tmp_path,  # schemathesis keeps state in its working folder
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    (ARTIFACTS / "output.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert f"Tested: {len(ROUTES)}" in run.stdout, run.stdout[-2000:]
