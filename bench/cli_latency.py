"""How long the farm's control-plane commands take, from typing to answer, on an idle machine.

An operator runs `farm status`, `farm workers`, `farm queues`, `farm jobs`, `farm fetch` and
`farm cancel` many times a day; each should answer in well under a second. Each command runs
as a person runs it: the installed console script in a fresh process, on the embedded farm (an
SQLite file, the embedded broker, a folder as storage) seeded with queued jobs. A command the
installed `farm` lacks (as `farm jobs` before it existed) is reported as such, not timed.
Prints a line per command (median and slowest of `--repeats` runs) and writes them to a JSON
file, under a label (`--label before`/`after`) so that runs of two versions sit side by side.

    .venv/bin/python bench/cli_latency.py [--repeats 5] [--label after] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farm.auth import ensure_project  # noqa: E402
from farm.context import Farm  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.db.models import Character  # noqa: E402
from farm.jobs import plan_job  # noqa: E402
from farm.settings import Settings  # noqa: E402
from farm.story import parse_story  # noqa: E402

FARM = Path(sys.executable).with_name("farm")
TARGET_S = 1.0


@dataclass
class Timing:
    command: str
    runs: int
    median_s: float | None
    max_s: float | None
    missing: bool = False


def seed(settings: Settings, jobs: int) -> list[str]:
    """A migrated embedded farm with `jobs` queued jobs (never sent): what the commands read."""
    upgrade(settings.database_url)
    farm = Farm(settings)
    try:
        with farm.sessions.begin() as session:
            project = ensure_project(session, "studio")
            character = Character(
                name="Newton",
                class_word="man",
                trigger="img",
                photos_fingerprint="0" * 64,
                project_id=project.id,
            )
            session.add(character)
            session.flush()
            story = parse_story(
                {
                    "character": {"name": "Newton", "class_word": "man", "photos": ["p.jpg"]},
                    "preset": "tiny",
                    "scenes": [{"prompt": f"a man img reading, scene {i}"} for i in range(8)],
                },
                presets={"tiny"},
            )
            ids = [
                plan_job(
                    session,
                    story,
                    character.id,
                    shard_size=settings.shard_size,
                    max_attempts=settings.max_attempts,
                    project_id=project.id,
                ).id
                for _ in range(jobs)
            ]
        return ids
    finally:
        farm.close()


def has_command(env: dict[str, str], name: str) -> bool:
    result = subprocess.run(
        [str(FARM), name, "--help"], env=env, capture_output=True, text=True, check=False
    )
    return result.returncode == 0


def time_command(env: dict[str, str], args: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [str(FARM), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"farm {' '.join(args)} failed: {result.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="current")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_latency.json")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        data = Path(tmp)
        env = {**os.environ, "FARM_DATA_DIR": str(data), "FARM_PROJECT": "studio"}
        env = {k: v for k, v in env.items() if not k.startswith(("FARM_DATABASE", "FARM_BROKER"))}
        jobs = seed(Settings.from_env(env), options.repeats + 1)
        status_job, cancel_jobs = jobs[0], jobs[1:]
        commands = {
            "status": lambda _i: ["status", status_job],
            "workers": lambda _i: ["workers"],
            "queues": lambda _i: ["queues"],
            "jobs": lambda _i: ["jobs"],
            "fetch": lambda i: ["fetch", status_job, "--out", str(data / f"out{i}")],
            "cancel": lambda i: ["cancel", cancel_jobs[i]],
        }
        timings = []
        for name, args in commands.items():
            if not has_command(env, name):
                timings.append(Timing(name, 0, None, None, missing=True))
                print(f"farm {name:8} not a command of this version")
                continue
            runs = [time_command(env, args(i)) for i in range(options.repeats)]
            timing = Timing(name, len(runs), statistics.median(runs), max(runs))
            timings.append(timing)
            print(f"farm {name:8} median {timing.median_s:.2f} s  max {timing.max_s:.2f} s")

    results = json.loads(options.out.read_text()) if options.out.exists() else {}
    results[options.label] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "repeats": options.repeats,
        "target_s": TARGET_S,
        "commands": [asdict(t) for t in timings],
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {options.out}")


if __name__ == "__main__":
    main()
