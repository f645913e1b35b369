"""How long the farm's control-plane commands take, from typing to answer, on an idle machine.

An operator runs `farm status`, `farm workers`, `farm queues`, `farm jobs`, `farm fetch` and
`farm cancel` many times a day; each should answer in well under a second. Each command runs
as a person runs it, in a fresh process, on the embedded farm (an SQLite file, the embedded
broker, a folder as storage) seeded with queued jobs. `--source NAME=DIR` (repeatable) times
the code of another checkout (e.g. `git archive <commit> farm farmcli dashboard workers`
unpacked in DIR) beside this one: the runs of the sources take turns, so that a machine whose
load drifts slows them alike. Each source runs as `python -S -c "farmcli.main"` with DIR and
the venv's site-packages on its path (the editable install would otherwise always import this
tree). A command a source lacks (as `farm jobs` before it existed) is reported, not timed.
Prints a line per source and command (median and slowest of `--repeats` runs) and writes them
to a JSON file.

    .venv/bin/python bench/cli_latency.py [--repeats 5] [--source before=DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.databases import planned_jobs  # noqa: E402
from farm.auth import ensure_project  # noqa: E402
from farm.context import Farm  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.settings import Settings  # noqa: E402

TARGET_S = 1.0
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@dataclass
class Timing:
    source: str
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
            ids = planned_jobs(session, settings, project, jobs)
        return ids
    finally:
        farm.close()


def farm_command(source: Path, args: list[str]) -> list[str]:
    """`farm ARGS` on the code in `source`, in a fresh interpreter."""
    code = "from farmcli.main import main; main()"
    return [sys.executable, "-S", "-c", code, *args]


def source_env(env: dict[str, str], source: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": f"{source}{os.pathsep}{SITE_PACKAGES}"}


def has_command(env: dict[str, str], source: Path, name: str) -> bool:
    result = subprocess.run(
        farm_command(source, [name, "--help"]),
        env=source_env(env, source),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def time_command(env: dict[str, str], source: Path, args: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        farm_command(source, args),
        env=source_env(env, source),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"farm {' '.join(args)} ({source}) failed: {result.stderr.strip()}")
    return took


def parse_source(value: str) -> tuple[str, Path]:
    name, _, folder = value.partition("=")
    if not name or not folder or not (Path(folder) / "farmcli" / "main.py").is_file():
        raise argparse.ArgumentTypeError(f"--source NAME=DIR with DIR/farmcli/main.py: {value!r}")
    return name, Path(folder).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", type=parse_source, action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_latency.json")
    options = parser.parse_args()
    options.out = options.out.resolve()

    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        data = Path(tmp)
        env = {**os.environ, "FARM_DATA_DIR": str(data), "FARM_PROJECT": "studio"}
        env = {k: v for k, v in env.items() if not k.startswith(("FARM_DATABASE", "FARM_BROKER"))}
        os.chdir(data)  # `python -c` puts the working folder first on the path
        sources = [*options.source, ("this tree", ROOT)]
        # A job per cancel of each source, and one that status and fetch read.
        jobs = seed(Settings.from_env(env), options.repeats * len(sources) + 1)
        status_job, cancel_jobs = jobs[0], iter(jobs[1:])
        commands = {
            "status": lambda _i: ["status", status_job],
            "workers": lambda _i: ["workers"],
            "queues": lambda _i: ["queues"],
            "jobs": lambda _i: ["jobs"],
            "fetch": lambda i: ["fetch", status_job, "--out", str(data / f"out{i}")],
            "cancel": lambda _i: ["cancel", next(cancel_jobs)],
        }
        timings = []
        for name, args in commands.items():
            present = [(label, src) for label, src in sources if has_command(env, src, name)]
            runs: dict[str, list[float]] = {label: [] for label, _ in present}
            for i in range(options.repeats):  # the sources take turns
                for label, src in present:
                    runs[label].append(time_command(env, src, args(i)))
            for label, _ in sources:
                if label not in runs:
                    timings.append(Timing(label, name, 0, None, None, missing=True))
                    print(f"{label:10} farm {name:8} not a command of this version")
                    continue
                took = runs[label]
                timing = Timing(label, name, len(took), statistics.median(took), max(took))
                timings.append(timing)
                print(
                    f"{label:10} farm {name:8} median {timing.median_s:.2f} s  "
                    f"max {timing.max_s:.2f} s"
                )

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "repeats": options.repeats,
        "target_s": TARGET_S,
        "sources": {label: str(src) for label, src in sources},
        "commands": [asdict(t) for t in timings],
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {options.out}")


if __name__ == "__main__":
    main()
