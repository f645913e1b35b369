"""Every route, for tests that go through all of them: the API as the OpenAPI document lists
it, and every rule of the app's URL map (pages, files, streams, health) with who may call it.

The API list is read from the document, so that a new API route is tested for its token, role
and project checks without anyone remembering to add it. The URL map is walked as it is, and
`ACCESS` says who may call each rule: a new route with no line there fails the access test
until someone writes down who may call it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from dashboard.api.openapi import document
from dashboard.app import create_app
from farm.context import Farm
from farm.db.models import Role
from tests.fixtures.dashboard import SECRET_KEY, studio_settings


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {parameters}
    role: Role | None  # None: public

    def url(self, **ids: object) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def bare_app() -> Flask:
    """The app, only to be asked for its URL map and its document: no database is opened."""
    farm = Farm(studio_settings(Path("/nonexistent"), "sqlite://"))
    return create_app({"TESTING": True, "SECRET_KEY": SECRET_KEY, "FARM": farm})


def api_routes() -> list[Route]:
    app = bare_app()
    with app.test_request_context():
        paths = document()["paths"]
    return [
        Route(method.upper(), path, Role(op["x-role"]) if "x-role" in op else None)
        for path, operations in paths.items()
        for method, op in operations.items()
    ]


ROUTES = api_routes()
# Ids that exist in no project: the role check comes before any lookup.
NOWHERE = {
    "character_id": 999_999,
    "job_id": uuid.UUID(int=1),
    "render_id": 999_999,
    "token_id": 999_999,
    "account_id": 999_999,
    "worker_id": "nowhere:cpu0",
}


@dataclass(frozen=True)
class Access:
    """Who may call a route: `role` and above (None: anyone, logged in or not), and the path
    parameter, if any, that names a row of one project: other projects are answered 404."""

    role: Role | None
    owner: str | None = None


PUBLIC = Access(None)
VIEWER, ARTIST, ADMIN = Access(Role.VIEWER), Access(Role.ARTIST), Access(Role.ADMIN)

# "METHOD endpoint" -> who may call it. Every rule of the URL map needs a line here.
ACCESS: dict[str, Access] = {
    # Public: probes, metrics, the API's schema, logging in, the login page's CSS and JS.
    "GET health.healthz": PUBLIC,
    "GET health.readyz": PUBLIC,
    "GET metrics.scrape": PUBLIC,
    "GET api.openapi_json": PUBLIC,
    "GET auth.login": PUBLIC,
    "POST auth.login": PUBLIC,
    "GET static": PUBLIC,
    "POST auth.logout": VIEWER,
    # Pages.
    "GET jobs.home": VIEWER,
    "GET jobs.index": VIEWER,
    "GET jobs.detail": Access(Role.VIEWER, "job_id"),
    "POST jobs.cancel": Access(Role.ARTIST, "job_id"),
    "POST jobs.retry": Access(Role.ARTIST, "job_id"),
    "POST jobs.pause": Access(Role.ARTIST, "job_id"),
    "POST jobs.resume": Access(Role.ARTIST, "job_id"),
    "POST jobs.priority": Access(Role.ARTIST, "job_id"),
    "POST editorial.reroll_scenes": Access(Role.ARTIST, "job_id"),
    "POST editorial.pick": Access(Role.ARTIST, "job_id"),
    "POST editorial.rebuild_outputs": Access(Role.ARTIST, "job_id"),
    "GET editorial.story_editor": Access(Role.ARTIST, "job_id"),
    "POST editorial.revise": Access(Role.ARTIST, "job_id"),
    "GET editorial.revisions": Access(Role.VIEWER, "job_id"),
    "POST approvals.approve": Access(Role.ARTIST, "job_id"),
    "GET jobs.comic": Access(Role.VIEWER, "job_id"),
    "GET jobs.download": Access(Role.VIEWER, "job_id"),
    "GET gallery.job_gallery": Access(Role.VIEWER, "job_id"),
    "GET gallery.render": Access(Role.VIEWER, "render_id"),
    "GET live.job_events": Access(Role.VIEWER, "job_id"),
    "GET characters.index": VIEWER,
    "GET characters.detail": Access(Role.VIEWER, "character_id"),
    "GET characters.new": ARTIST,
    "POST characters.new": ARTIST,
    "POST characters.check": ARTIST,
    "POST characters.delete": Access(Role.ARTIST, "character_id"),
    "GET stories.new": ARTIST,
    "POST stories.create": ARTIST,
    "POST stories.preview": ARTIST,
    "GET farm_page.index": VIEWER,
    "GET admin.index": ADMIN,
    "POST admin.new_token": ADMIN,
    "POST admin.revoke_token": Access(Role.ADMIN, "token_id"),
    "POST admin.new_account": ADMIN,
    "POST admin.disable_account": Access(Role.ADMIN, "account_id"),
    # File downloads.
    "GET files.photo": Access(Role.VIEWER, "character_id"),
    "GET files.render_image": Access(Role.VIEWER, "render_id"),
    "GET files.render_download": Access(Role.VIEWER, "render_id"),
    "GET files.thumb": Access(Role.VIEWER, "render_id"),
    "GET files.comic_file": Access(Role.VIEWER, "job_id"),
    # The JSON API.
    "GET api.me": VIEWER,
    "GET api.list_characters": VIEWER,
    "POST api.create_character": ARTIST,
    "GET api.get_character": Access(Role.VIEWER, "character_id"),
    "DELETE api.delete_character": Access(Role.ARTIST, "character_id"),
    "GET api.list_jobs": VIEWER,
    "POST api.create_job": ARTIST,
    "POST api.plan_job": ARTIST,
    "GET api.get_job": Access(Role.VIEWER, "job_id"),
    "POST api.cancel": Access(Role.ARTIST, "job_id"),
    "POST api.retry": Access(Role.ARTIST, "job_id"),
    "POST api.pause": Access(Role.ARTIST, "job_id"),
    "POST api.resume": Access(Role.ARTIST, "job_id"),
    "POST api.priority": Access(Role.ARTIST, "job_id"),
    "GET api.usage": VIEWER,
    "POST api.approve_job": Access(Role.ARTIST, "job_id"),
    "POST api.reroll_scenes": Access(Role.ARTIST, "job_id"),
    "POST api.pick": Access(Role.ARTIST, "job_id"),
    "GET api.picks": Access(Role.VIEWER, "job_id"),
    "POST api.rebuild_outputs": Access(Role.ARTIST, "job_id"),
    "PATCH api.revise": Access(Role.ARTIST, "job_id"),
    "GET api.revisions": Access(Role.VIEWER, "job_id"),
    "GET api.outputs": Access(Role.VIEWER, "job_id"),
    "GET api.list_renders": Access(Role.VIEWER, "job_id"),
    "GET api.list_shards": Access(Role.VIEWER, "job_id"),
    "GET api.get_render": Access(Role.VIEWER, "render_id"),
    "GET api.list_workers": VIEWER,
    "DELETE api.forget_worker": ADMIN,  # workers belong to the farm, not to a project
    "GET api.list_queues": VIEWER,
    "GET api.list_tokens": ADMIN,
    "POST api.new_token": ADMIN,
    "DELETE api.revoke_token": Access(Role.ADMIN, "token_id"),
    "GET api.list_accounts": ADMIN,
    "POST api.new_account": ADMIN,
    "DELETE api.disable_account": Access(Role.ADMIN, "account_id"),
}


@dataclass(frozen=True)
class MappedRoute:
    """One method of one rule of the app's URL map."""

    method: str
    endpoint: str
    rule: str  # werkzeug's form: /jobs/<uuid:job_id>

    @property
    def key(self) -> str:
        return f"{self.method} {self.endpoint}"

    @property
    def parameters(self) -> list[str]:
        return re.findall(r"<(?:[^:<>]+:)?(\w+)>", self.rule)

    def url(self, values: dict[str, object]) -> str:
        return re.sub(r"<(?:[^:<>]+:)?(\w+)>", lambda m: str(values[m.group(1)]), self.rule)

    def __str__(self) -> str:
        return f"{self.method} {self.rule}"


def mapped_routes(app: Flask) -> list[MappedRoute]:
    """Every method of every rule, HEAD and OPTIONS aside (Flask answers those by itself)."""
    return sorted(
        (
            MappedRoute(method, rule.endpoint, rule.rule)
            for rule in app.url_map.iter_rules()
            for method in rule.methods or ()
            if method not in ("HEAD", "OPTIONS")
        ),
        key=lambda r: (r.rule, r.method),
    )
