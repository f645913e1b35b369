"""Every API route as the OpenAPI document lists it, for tests that go through all of them.

Read from the document rather than written out here, so that a new route is tested for its
token, role and project checks without anyone remembering to add it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

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


def api_routes() -> list[Route]:
    # The app is only asked for its URL map: no database is opened.
    farm = Farm(studio_settings(Path("/nonexistent"), "sqlite://"))
    app = create_app({"TESTING": True, "SECRET_KEY": SECRET_KEY, "FARM": farm})
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
