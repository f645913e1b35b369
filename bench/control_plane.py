"""How many render completions per second one PostgreSQL and one Redis serve, and what each
render costs them: the farm's control plane, with the GPU taken out.

Simulated workers run the farm's own worker code (`workers.shard.run_shard`: claim, batches,
the finisher's uploads and rows, the shard's end, the job's end) against real PostgreSQL,
Redis and moto's S3, taking their tasks from the Redis queue as Celery's consumer does. Only
the renderer is replaced: `InstantPreset` returns a 64x64 image at once. It exists in this
file alone, hosted by the simulated workers under the preset's name; no story, setting or
worker command can reach it.

Each run submits its jobs first (the queue fills), then starts N simulated workers (1, 4, 16,
64) as threads across `--processes` processes (the threads of a process share one connection
pool, as a PgBouncer in front of a big farm would make them share), and times from the first
claim to the last job's end. Counted per render: SQL statements and round trips (statements,
BEGINs, COMMITs and ROLLBACKs, and the pool's pre-ping on each checkout) by SQLAlchemy's
events in every process, transactions by PostgreSQL's own pg_stat_database, Redis commands by
the benchmark's own redis-server (INFO commandstats: task messages, pub/sub events, the
consumer's bookkeeping), and the CPU seconds PostgreSQL's backends, Redis, moto and the
workers used (from /proc). Then: a 10,000-scene story's submit time and peak memory, and the
job page and the API at 10,000 renders.

    .venv/bin/python bench/control_plane.py [--workers 1,4,16,64] [--renders 800] [--out FILE]

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and `redis-server` on PATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from PIL import Image  # noqa: E402
from sqlalchemy import create_engine, event, select, text  # noqa: E402

from bench.databases import postgres_database  # noqa: E402
from bench.farm_overhead import TICKS_PER_S, Part, cpu_seconds, free_port, moto_server  # noqa: E402
from farm.context import Farm  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.db.models import Job  # noqa: E402
from farm.db.states import JobStatus  # noqa: E402
from farm.identity.faces import DlibFaceAnalyzer  # noqa: E402
from farm.identity.photos import Photo  # noqa: E402
from farm.jobs import submit_story, submit_with_photos  # noqa: E402
from farm.queue.app import render_queue  # noqa: E402
from farm.recipe import RenderSettings  # noqa: E402
from farm.render.pipeline import RenderResult, Scene  # noqa: E402
from farm.render.presets import get_preset  # noqa: E402
from farm.settings import Settings  # noqa: E402
from farm.story import Story  # noqa: E402
from workers.reaper import reap  # noqa: E402

PRESET = "tiny"
SHARD_SIZE = 4
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
PHOTO = ROOT / "examples" / "photos" / "newton_0.jpg"
BIG_STORY = 10_000
REAP_EVERY_S = 5.0


# --- The renderer that is not one -----------------------------------------------------------------


@dataclass
class _Stats:
    computed: int = 0


@dataclass
class _Cache:
    stats: _Stats = field(default_factory=_Stats)


@dataclass(frozen=True)
class _Tokens:
    encoder_fingerprint: str = "bench"
    photos_fingerprint: str = "bench"
    num_tokens: int = 2


class _Identity:
    """What the worker asks of an identity engine, answered at once; no face model, so the
    identity QC scores nothing (`IdentityCheck` with `faces` None)."""

    faces = None
    cache = _Cache()

    def tokens_for(self, photos: Sequence[Photo], crop: bool = False) -> _Tokens:
        return _Tokens()


class InstantPreset:
    """A loaded preset whose renders take no time: a flat 64x64 image per scene."""

    def __init__(self) -> None:
        self.preset = get_preset(PRESET)
        self.identity = _Identity()

    def check(self, *_: Any, **__: Any) -> None:
        return None

    def render(
        self, scenes: Sequence[Scene], settings: RenderSettings, *_: Any, **__: Any
    ) -> RenderResult:
        size = (settings.width, settings.height)
        images = [Image.new("RGB", size, (s.seed % 256, 64, 128)) for s in scenes]
        return RenderResult(images, {"denoise": 0.0, "decode": 0.0})


# --- Counting -------------------------------------------------------------------------------------


def count_sql(engine: Any, counts: Counter[str]) -> None:
    """Count what `engine` sends: statements by verb, and every other round trip."""

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        counts["statements"] += 1
        counts[f"sql {statement.split(None, 1)[0].upper()}"] += 1

    for name in ("begin", "commit", "rollback"):
        event.listen(engine, name, lambda *_, n=name: counts.update([n]))
    event.listen(engine.pool, "checkout", lambda *_: counts.update(["pings"]))


def round_trips(counts: Counter[str]) -> int:
    """Each statement, BEGIN, COMMIT or ROLLBACK, and the pre-ping of each checkout."""
    return sum(counts[k] for k in ("statements", "begin", "commit", "rollback", "pings"))


def redis_commands(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()})


def postgres_transactions(url: str, database: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        done = connection.execute(
            text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
            {"d": database},
        ).scalar_one()
    engine.dispose()
    return int(done)


def backend_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL backends serving `database` (their title names it)."""
    total = 0.0
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if f" {database} ".encode() not in (process / "cmdline").read_bytes():
                continue
            stat = (process / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    return total


# --- Simulated workers ----------------------------------------------------------------------------


def _farm(env: dict[str, str], connections: int) -> Farm:
    """The farm of one worker process: its threads share `connections` database connections."""
    settings = Settings.from_env(env)
    farm = Farm(settings)
    farm.__dict__["engine"] = create_engine(
        settings.database_url,
        pool_pre_ping=True,
        pool_size=connections,
        max_overflow=0,
        pool_timeout=300,
    )
    return farm


def _consume(runtime: Any, farm: Farm, stop: Any, done: list[int]) -> None:
    """One simulated worker: take a shard's task from Redis, run it as the Celery task does,
    acknowledge it, again until told to stop."""
    from workers.shard import run_shard

    queue = farm.celery.amqp.queues[render_queue(PRESET)]
    with farm.celery.connection_for_read() as connection, connection.SimpleQueue(queue) as tasks:
        while not stop.is_set():
            try:
                message = tasks.get(block=True, timeout=0.5)
            except tasks.Empty:
                continue
            args, _kwargs, _embed = message.decode()
            run_shard(runtime, int(args[0]), message.headers.get("id"))
            message.ack()
            done[0] += 1
    runtime.finisher.close()


def worker_process(
    env: dict[str, str], names: list[str], ready: Any, go: Any, stop: Any, results: Any
) -> None:
    from workers.runtime import WorkerRuntime

    farm = _farm(env, connections=min(2 * len(names), 16))
    counts: Counter[str] = Counter()
    preset = InstantPreset()
    runtimes = []
    for name in names:
        runtime = WorkerRuntime(farm, name, "cpu", [PRESET], {PRESET: preset})  # type: ignore[dict-item]
        runtime.register()
        runtime.beat()
        runtimes.append(runtime)
    count_sql(farm.engine, counts)  # from here: the work, not the registering
    ready.release()
    go.wait()
    done = [0]
    threads = [
        threading.Thread(target=_consume, args=(r, farm, stop, done), daemon=True) for r in runtimes
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(counts, shards=done[0]))
    farm.close()


# --- Services -------------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A redis-server of the benchmark's own: its command counts are this run's alone."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen([*command, "--dir", folder], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Bench:
    env: dict[str, str]
    database: str
    database_url: str
    redis_pid: int
    moto_pid: int
    processes: int
    farm: Farm = field(init=False)
    faces: DlibFaceAnalyzer = field(default_factory=DlibFaceAnalyzer)
    photo: Photo = field(default_factory=lambda: Photo(PHOTO.name, PHOTO.read_bytes()))
    character_id: int | None = None
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(1687))

    def __post_init__(self) -> None:
        self.farm = Farm(Settings.from_env(self.env))
        self.farm.storage.ensure_bucket()  # type: ignore[attr-defined]

    def story(self, scenes: int) -> Story:
        return Story.model_validate(
            {
                "character": {"name": "Newton", "class_word": "man", "photos": [PHOTO.name]},
                "preset": PRESET,
                "width": 64,
                "height": 64,
                "steps": 2,
                # A seed of its own: the farm reuses a render whose content it made before.
                "seed": next(self.seeds),
                "scenes": [{"prompt": f"a man img in scene {i}"} for i in range(scenes)],
            }
        )

    def submit(self, scenes: int) -> str:
        """A job of `scenes` renders, for the character the first one made from its photo."""
        if self.character_id is None:
            job_id = submit_with_photos(
                self.farm, self.story(scenes), [self.photo], self.faces
            ).job_id
            with self.farm.sessions() as session:
                self.character_id = session.get_one(Job, job_id).character_id
            return job_id
        return submit_story(self.farm, self.story(scenes), self.character_id).job_id

    def wait(self, job_ids: list[str], lost: list[int]) -> int:
        """Until every job ended; how many times it asked. The reaper's pass runs every
        `REAP_EVERY_S`, as its beat runs in a farm: a shard whose turn was lost (its task taken
        and none claimed for it) waits for it; `lost` gets those it sent again. A job that did
        not succeed stops the benchmark."""
        polls, reaped = 0, time.monotonic()
        while True:
            if time.monotonic() - reaped > REAP_EVERY_S:
                lost += reap(self.farm).resent
                reaped = time.monotonic()
            polls += 1
            with self.farm.sessions() as session:
                rows = session.execute(
                    select(Job.status, Job.error).where(Job.id.in_(job_ids))
                ).all()
            if len(rows) == len(job_ids) and all(status in ENDED for status, _ in rows):
                break
            time.sleep(0.05)
        failed = [(str(status), error) for status, error in rows if status != JobStatus.SUCCEEDED]
        if failed:
            raise RuntimeError(f"jobs did not succeed: {failed}")
        return polls

    def run(
        self, workers: int, renders: int, jobs: int, shard_size: int = SHARD_SIZE
    ) -> dict[str, Any]:
        """`jobs` jobs of `renders` renders in all, in shards of `shard_size`, through
        `workers` simulated workers."""
        self.farm.settings = dataclasses.replace(self.farm.settings, shard_size=shard_size)
        redis_before = redis_commands(redis.Redis.from_url(self.env["FARM_BROKER_URL"]))
        job_ids = [self.submit(renders // jobs) for _ in range(jobs)]  # their tasks count too
        processes = min(self.processes, workers)
        names = [f"bench-{workers}-{i}:cpu0" for i in range(workers)]
        ctx = multiprocessing.get_context("fork")
        ready, go, stop, results = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
        children = [
            ctx.Process(
                target=worker_process,
                args=(self.env, names[p::processes], ready, go, stop, results),
            )
            for p in range(processes)
        ]
        for child in children:
            child.start()
        for _ in children:
            ready.acquire()
        xacts_before = postgres_transactions(self.database_url, self.database)
        parts = [
            Part("redis", root=self.redis_pid),
            Part("moto", root=self.moto_pid),
            *(Part(f"worker{i}", root=c.pid) for i, c in enumerate(children)),
        ]
        cpu_before = cpu_seconds(parts) | {"postgres": backend_cpu(self.database)}
        started = time.perf_counter()
        go.set()
        lost: list[int] = []
        polls = self.wait(job_ids, lost)
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(parts) | {"postgres": backend_cpu(self.database)}
        # Less this process's polls: a transaction each.
        xacts = postgres_transactions(self.database_url, self.database) - xacts_before - polls
        redis_after = redis_commands(redis.Redis.from_url(self.env["FARM_BROKER_URL"]))
        stop.set()
        counts: Counter[str] = Counter()
        for _ in children:
            counts.update(results.get(timeout=120))
        for child in children:
            child.join(timeout=60)
        total = len(job_ids) * (renders // jobs)
        cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
        workers_cpu = sum(v for k, v in cpu.items() if k.startswith("worker"))
        commands = redis_after - redis_before
        return {
            "workers": workers,
            "processes": processes,
            "jobs": jobs,
            "renders": total,
            "shard_size": shard_size,
            "seconds": round(elapsed, 3),
            "turns_lost_resent_by_reaper": len(lost),
            "completions_per_s": round(total / elapsed, 1),
            "per_render": {
                "sql_statements": round(counts["statements"] / total, 2),
                "sql_round_trips": round(round_trips(counts) / total, 2),
                "sql_transactions": round(counts["commit"] / total, 2),
                "postgres_transactions": round(xacts / total, 2),
                "redis_commands": round(sum(commands.values()) / total, 2),
                "task_messages": round((commands["lpush"] + commands["rpush"]) / total, 3),
                "events_published": round(commands["publish"] / total, 2),
                "cpu_ms": {
                    "postgres": round(1000 * cpu["postgres"] / total, 3),
                    "redis": round(1000 * cpu["redis"] / total, 3),
                    "moto": round(1000 * cpu["moto"] / total, 3),
                    "workers": round(1000 * workers_cpu / total, 3),
                },
            },
            "statements_by_verb": {
                k.removeprefix("sql "): v for k, v in sorted(counts.items()) if k.startswith("sql ")
            },
            "redis_commands": dict(commands.most_common(12)),
        }

    def big_submit(self, scenes: int) -> dict[str, Any]:
        """A story of `scenes` scenes (and one of a tenth of it, for how it grows): submit
        time (planning, one transaction, the tasks sent), then peak Python memory of a second
        submit under tracemalloc, which slows what it watches and so is not timed."""
        figures: dict[str, Any] = {}
        for size in (scenes // 10, scenes):
            started = time.perf_counter()
            job_id = submit_story(self.farm, self.story(size), self.character_id).job_id
            figures[f"submit_{size}_s"] = round(time.perf_counter() - started, 2)
            tracemalloc.start()
            submit_story(self.farm, self.story(size), self.character_id)
            figures[f"peak_{size}_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        figures["job_id"] = job_id
        return figures

    def pages(self, job_id: str) -> dict[str, float]:
        """Median milliseconds of the job page and the API's lists, on a job of 10,000 renders
        (half of them done), through the Flask app as gunicorn runs it."""
        from sqlalchemy import update

        from dashboard.app import create_app
        from farm.auth import create_token, ensure_project
        from farm.db.models import DEFAULT_PROJECT, Render, Role

        with self.farm.sessions.begin() as session:
            session.execute(
                update(Render)
                .where(Render.job_id == job_id, Render.scene_index % 2 == 0)
                .values(status="done", storage_key="x", thumb_key="x", worker_id="w", device="cpu")
            )
            project = ensure_project(session, DEFAULT_PROJECT)
            _, token = create_token(session, project, Role.VIEWER, "bench")
        app = create_app({"TESTING": True, "SECRET_KEY": "b" * 40, "FARM": self.farm})
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        client.get("/login")
        with client.session_transaction() as flask_session:
            csrf = flask_session["csrf_token"]
        login = client.post("/login", data={"token": token, "csrf_token": csrf})
        assert login.status_code == 302, login.status_code
        paths = {
            "api_jobs_list": "/api/v1/jobs?limit=50",
            "api_job": f"/api/v1/jobs/{job_id}",
            "api_renders_page": f"/api/v1/jobs/{job_id}/renders?limit=100&offset=5000",
            "job_page": f"/jobs/{job_id}",
            "jobs_page": "/jobs",
        }
        timings = {}
        for name, path in paths.items():
            seconds = []
            for _ in range(7):
                started = time.perf_counter()
                response = client.get(path, headers=headers if path.startswith("/api") else {})
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code)
            timings[name] = round(1000 * sorted(seconds)[3], 1)
        return timings


def extrapolate(runs: list[dict[str, Any]], batched: dict[str, Any]) -> dict[str, Any]:
    """What one PostgreSQL would serve, from the CPU its backends spent per render in the
    batched run (the largest shards): on the 2-core machine the workers' Python and moto use
    most of the CPU, so the completions measured there are the machine's ceiling, not the
    database's. The hardware model: a 16-core PostgreSQL server, 70% of it usable."""
    best = max(runs, key=lambda r: r["completions_per_s"])
    pg_ms = batched["per_render"]["cpu_ms"]["postgres"]
    per_core = 1000 / pg_ms if pg_ms else None
    return {
        "measured_best_completions_per_s": best["completions_per_s"],
        "measured_at": {"workers": best["workers"], "shard_size": best["shard_size"]},
        "batched_shard_size": batched["shard_size"],
        "postgres_cpu_ms_per_render": pg_ms,
        "postgres_completions_per_core_s": round(per_core) if per_core else None,
        "postgres_completions_16_cores_s": round(16 * 0.7 * per_core) if per_core else None,
        "model": "16-core PostgreSQL, 70% usable, CPU-bound; commits group-fsynced",
    }


def report(run: dict[str, Any], by: str) -> dict[str, Any]:
    """Print one run's line as it ends (a long benchmark shows where it is)."""
    line = {by: run[by], "completions_per_s": run["completions_per_s"], **run["per_render"]}
    print(json.dumps(line), flush=True)
    return run


def _ints(values: str) -> list[int]:
    return [int(v) for v in values.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4,16,64")
    parser.add_argument("--renders", type=int, default=800)
    parser.add_argument("--sizes", default="40,400,4000", help="renders per job, at 16 workers")
    parser.add_argument("--shard-sizes", default="1,4,16", help="at 16 workers")
    parser.add_argument("--big", type=int, default=BIG_STORY, help="scenes of the big story")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/control_plane.json")
    args = parser.parse_args()

    with (
        postgres_database("bench_control_plane") as database_url,
        redis_server() as (redis_url, redis_pid),
        moto_server() as (s3_url, moto_pid),
        tempfile.TemporaryDirectory() as data,
    ):
        upgrade(database_url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FARM_")},
            "FARM_DATA_DIR": data,
            "FARM_DATABASE_URL": database_url,
            "FARM_BROKER_URL": redis_url,
            "FARM_STORAGE_URL": "s3://bench-control-plane/farm",
            "FARM_S3_ENDPOINT_URL": s3_url,
            "FARM_SHARD_SIZE": str(SHARD_SIZE),
            "FARM_REAP_INTERVAL": "1",  # a lost turn is resent after two passes' quiet
        }
        # boto3 reads these from the process, here and in the forked workers.
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
        database = database_url.rsplit("/", 1)[1]
        bench = Bench(env, database, database_url, redis_pid, moto_pid, args.processes)
        bench.run(4, 40, 1)  # warm: imports, the character's photo, connections
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}
        }

        def keep(name: str, value: Any) -> Any:
            results[name] = value
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            return value

        by_workers = keep(
            "by_workers",
            [report(bench.run(w, args.renders, 4), "workers") for w in _ints(args.workers)],
        )
        by_size = keep(
            "by_story_size", [report(bench.run(16, n, 1), "renders") for n in _ints(args.sizes)]
        )
        by_shard_size = keep(
            "by_shard_size",
            [
                report(bench.run(16, args.renders, 4, shard_size=n), "shard_size")
                for n in _ints(args.shard_sizes)
            ],
        )
        batched = max(by_shard_size, key=lambda r: r["shard_size"])
        extrapolation = keep(
            "extrapolation", extrapolate(by_workers + by_size + by_shard_size, batched)
        )
        print(json.dumps(extrapolation, indent=2), flush=True)
        big = keep("submit_big_story", bench.big_submit(args.big))
        print(json.dumps(big), flush=True)
        pages = keep("pages_at_big_story_ms", bench.pages(big.pop("job_id")))
        print(json.dumps(pages), flush=True)
        bench.farm.close()
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
