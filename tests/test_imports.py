"""The control-plane commands answer at once: none of them imports torch, diffusers or
transformers (seconds of start-up each). Each command runs, in one fresh interpreter, against
an embedded farm holding a queued job; after each, the interpreter reports which of those
modules it holds. bench/cli_latency.py measures what this buys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from farm.auth import ensure_project
from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.models import Character
from farm.jobs import plan_job
from farm.settings import Settings
from farm.story import parse_story

HEAVY = ("torch", "diffusers", "transformers")

RUN_COMMANDS = """
import json, sys
from click.testing import CliRunner
from farmcli.main import main

heavy = {}
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    heavy[args[0]] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(heavy))
""".replace("HEAVY", repr(HEAVY))


def queued_job(settings: Settings) -> str:
    upgrade(settings.database_url)
    farm = Farm(settings)
    try:
        with farm.sessions.begin() as session:
            project = ensure_project(session, "studio")
            character = Character(
                name="Newton", class_word="man", trigger="img", photos_fingerprint="0" * 64
            )
            session.add(character)
            session.flush()
            story = parse_story(
                {
                    "character": {"name": "Newton", "class_word": "man", "photos": ["p.jpg"]},
                    "preset": "tiny",
                    "scenes": [{"prompt": "a man img reading"}],
                },
                presets={"tiny"},
            )
            return plan_job(
                session,
                story,
                character.id,
                farm.settings,
                project_id=project.id,
            )[0].id
    finally:
        farm.close()


def test_control_plane_commands_import_no_model_library(tmp_path: Path) -> None:
    env = {"FARM_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    job = queued_job(Settings.from_env(env))
    commands = [
        ["status", job],
        ["status", job, "--json"],
        ["jobs"],
        ["workers"],
        ["queues"],
        ["fetch", job, "--out", str(tmp_path / "out")],
        ["cancel", job],
    ]
    result = subprocess.run(
        [sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout.splitlines()[-1])
    assert heavy == {
        name: [] for name in ("status", "jobs", "workers", "queues", "fetch", "cancel")
    }
