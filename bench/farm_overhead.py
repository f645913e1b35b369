"""What the farm costs over rendering in-process, and what a second worker buys.

The same story (64 renders, tiny preset, CPU) is rendered in-process (`render_story`, the
pipeline loaded once) and through the farm (Redis broker, PostgreSQL, moto's S3 over HTTP).
Workers are started and warm (pipeline loaded) before the clock starts, as in production; the
clock runs from `submit_with_photos` to the job's end in SQL.

A farm worker owns one device. On a CPU machine a device is a core: `farm worker --devices
cpu:N` pins each of its N workers to its own cores, as it pins a GPU worker to its card. So the
comparisons the targets are about are made device for device:
- per device: in-process on one core (one torch thread), the farm with one worker on one core,
  and the farm with two workers on a core each;
- whole machine: in-process and the farm's one worker each on every core, for the overhead
  when a single process has the machine to itself.
Each path is timed `--repeats` times (3) and its median run reported, since one run on a shared
machine moves by 10-20%; in-process and farm runs of a comparison take turns, so that the
machine's drift over minutes falls on both alike. Prints renders per second, the ratios, the
per-render overhead, the CPU time each part of the machine spent per render (this process, the
workers, moto, PostgreSQL, Redis: read from /proc over the timed runs), and the identity-token
cache figures, and writes them to a JSON file.

    .venv/bin/python bench/farm_overhead.py [--renders 64] [--repeats 3] [--out FILE]

Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth), as on CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench.databases import postgres_database  # noqa: E402
from farm.context import Farm  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.db.models import StoredIdentityTokens, Worker  # noqa: E402
from farm.db.states import JobStatus, WorkerStatus  # noqa: E402
from farm.events import ALL_JOBS  # noqa: E402
from farm.identity.faces import open_face_analyzer  # noqa: E402
from farm.jobs import progress, submit_with_photos  # noqa: E402
from farm.render.loading import LoadedPreset, load_preset  # noqa: E402
from farm.render.presets import PRESETS, get_preset  # noqa: E402
from farm.render.story_render import character_photos, render_story  # noqa: E402
from farm.settings import Settings  # noqa: E402
from farm.story import Story, load_story  # noqa: E402

REDIS_DB = 14
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Part:
    """Processes whose CPU time is reported together: a process and its descendants, or every
    process of a name."""

    name: str
    root: int | None = None
    comm: str | None = None


def cpu_seconds(parts: list[Part]) -> dict[str, float]:
    """CPU time (user + system, all threads) each part has used since its processes started;
    a process counts for the first part it matches."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()  # proc(5) fields 3 on: state, ppid, ...
        cpu = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
        stats[int(stat.parent.name)] = (comm, int(fields[1]), cpu)
    totals = dict.fromkeys((part.name for part in parts), 0.0)
    for pid, (comm, ppid, cpu) in stats.items():
        lineage = [pid]
        while ppid in stats and ppid not in lineage:  # the process, then its ancestors
            lineage.append(ppid)
            ppid = stats[ppid][1]
        for part in parts:
            if part.root in lineage or part.comm == comm:
                totals[part.name] += cpu
                break
    return totals


@contextmanager
def cpu_used(parts: list[Part]) -> Iterator[dict[str, float]]:
    """The CPU seconds each part uses inside the block, filled in when it ends."""
    used: dict[str, float] = {}
    before = cpu_seconds(parts)
    yield used
    after = cpu_seconds(parts)
    used.update({name: after[name] - before[name] for name in after})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


def story_of(renders: int, workdir: Path) -> Path:
    """The example character, `renders` scenes of one variant each, shard-sized batches."""
    example = (ROOT / "examples" / "story.yaml").read_text()
    head = example.split("scenes:")[0].replace("photos/", str(ROOT / "examples" / "photos") + "/")
    scenes = "".join(
        f'  - prompt: "a man img reading a book by the window, scene {i}"\n' for i in range(renders)
    )
    path = workdir / "story.yaml"
    path.write_text(f"{head}scenes:\n{scenes}")
    return path


@contextmanager
def on_cores(cores: list[int]):
    """Run this process's torch on `cores` alone, as `farm worker` pins a worker."""
    import torch

    every_core, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, every_core)
        torch.set_num_threads(threads)


def render_in_process(story: Story, loaded: LoadedPreset, cores: list[int], out: Path) -> float:
    with on_cores(cores):
        started = time.perf_counter()
        render_story(story, out, loaded)
        return time.perf_counter() - started


@contextmanager
def workers(count: int, threads: int, env: dict[str, str], logs: Path):
    command = [
        str(ROOT / ".venv" / "bin" / "farm"),
        "worker",
        "--devices",
        f"cpu:{count}",
        "--cpu-threads",
        str(threads),
        "--presets",
        "tiny",
    ]
    log = open(logs / f"workers-{count}x{threads}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def wait_ready(farm: Farm, count: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with farm.sessions() as session:
            ready = session.scalar(
                select(func.count()).select_from(Worker).where(Worker.status == WorkerStatus.IDLE)
            )
        if ready >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{count} workers did not become ready in {timeout_s} s")


def run_job(farm: Farm, story, photos, faces, logs: Path) -> float:
    """Seconds from submission to the job's end, told by its `job.finished` event (polling SQL
    would load the cores being measured). Returns once the job's comic and exports are built
    too, so that finishing one job never runs into the clock of the next."""
    import redis

    pubsub = redis.Redis.from_url(farm.settings.events_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ALL_JOBS)
    started = time.perf_counter()
    job = submit_with_photos(farm, story, photos, faces)
    seconds, outputs = None, False
    deadline = time.monotonic() + 600
    while (seconds is None or not outputs) and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        event = json.loads(message["data"]) if message else {}
        if event.get("job") == job.job_id and event["event"] == "job.finished":
            seconds = time.perf_counter() - started
            deadline = time.monotonic() + 60  # for the comic, which a bad one may never bring
        outputs = outputs or (event.get("job") == job.job_id and event["event"] == "job.outputs")
    pubsub.close()
    with farm.sessions() as session:
        state = progress(session, job.job_id)
    if seconds is None or state.status is not JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job.job_id} ended {state.status}; see {logs}")
    return seconds


@dataclass
class Measured:
    """One path's timed runs, and the CPU each part of the machine spent in them."""

    seconds: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def time(self, parts: list[Part], run: Callable[[], float]) -> None:
        with cpu_used(parts) as cpu:
            self.seconds.append(run())
        for part, seconds in cpu.items():
            self.cpu_s[part] = self.cpu_s.get(part, 0.0) + seconds


@dataclass(frozen=True)
class Bench:
    env: dict[str, str]
    workdir: Path
    repeats: int
    services: list[Part]


def compare(
    farm: Farm,
    story_path: Path,
    loaded: LoadedPreset,
    count: int,
    threads: int,
    in_process_cores: list[int],
    bench: Bench,
) -> tuple[Measured, Measured]:
    """The farm with `count` workers of `threads` threads, and in-process on
    `in_process_cores` (unless empty), run by turns: the machine's speed drifts by 10-20% over
    minutes, and taking turns lets the drift fall on both paths alike. The workers are started
    and warm first (a job of one shard each), as the in-process path renders once first: both
    then measure a farm in production, whose workers have rendered before; the in-process runs
    have the idle workers and the services beside them, as the farm's have."""
    story = load_story(story_path, presets=PRESETS)
    per_worker = farm.settings.shard_size
    warmup = story.model_copy(update={"scenes": story.scenes[: count * per_worker]})
    faces = open_face_analyzer("dlib", farm.settings.models_dir)
    photos = character_photos(story)
    inproc, through = Measured(), Measured()
    with workers(count, threads, bench.env, bench.workdir) as group:
        wait_ready(farm, count)
        run_job(farm, warmup, photos, faces, bench.workdir)
        # The first part that matches takes a process: moto and the workers are this
        # process's descendants too.
        parts = [*bench.services, Part("workers", root=group.pid), Part("bench", root=os.getpid())]
        # The jobs' comics and exports are built after the clock stops, and counted in the
        # CPU figures.
        turns = [(through, functools.partial(run_job, farm, story, photos, faces, bench.workdir))]
        if in_process_cores:
            out = bench.workdir / f"inproc-{len(in_process_cores)}"
            render = functools.partial(render_in_process, story, loaded, in_process_cores, out)
            render()  # its warm-up
            turns.insert(0, (inproc, render))
        for _ in range(bench.repeats):
            for measured, run in turns:
                measured.time(parts, run)
        with farm.sessions.begin() as session:
            session.execute(Worker.__table__.delete())  # the next run counts its own workers
    return inproc, through


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--renders", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each path; the median is reported"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "farm_overhead.json"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    models_dir = workdir / "models"
    story_path = story_of(args.renders, workdir)
    with moto_server() as (s3, moto_pid), postgres_database("farm_bench") as database_url:
        env = {
            **os.environ,
            "FARM_DATA_DIR": str(workdir / "data"),
            "FARM_MODELS_DIR": str(models_dir),
            "FARM_DATABASE_URL": database_url,
            "FARM_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "FARM_STORAGE_URL": "s3://bench/farm",
            "FARM_S3_ENDPOINT_URL": s3,
            "FARM_SHARD_SIZE": str(get_preset("tiny").batch_size),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HF_HUB_OFFLINE": "1",
        }
        os.environ.update(env)
        import redis

        redis.Redis(db=REDIS_DB).flushdb()
        upgrade(database_url)
        farm = Farm(Settings.from_env(env))
        farm.storage.ensure_bucket()

        cores = sorted(os.sched_getaffinity(0))
        services = [
            Part("moto", root=moto_pid),
            Part("postgres", comm="postgres"),
            Part("redis", comm="redis-server"),
        ]
        bench = Bench(env, workdir, args.repeats, services)
        loaded = load_preset(get_preset("tiny"), models_dir, device="cpu")
        runs: dict[str, Measured] = {}
        runs["in-process, 1 core"], runs["farm, 1 worker on 1 core"] = compare(
            farm, story_path, loaded, 1, 1, cores[:1], bench
        )
        _, runs["farm, 2 workers on a core each"] = compare(
            farm, story_path, loaded, 2, 1, [], bench
        )
        whole = len(cores)
        runs[f"in-process, {whole} cores"], runs[f"farm, 1 worker on {whole} cores"] = compare(
            farm, story_path, loaded, 1, whole, cores, bench
        )
        with farm.sessions() as session:
            computed = session.scalar(select(func.count()).select_from(StoredIdentityTokens))
        farm.close()
        redis.Redis(db=REDIS_DB).flushdb()

    n = args.renders
    inproc_s, one_s, two_s, inproc_all_s, one_all_s = (
        statistics.median(timed.seconds) for timed in runs.values()
    )
    rate = {path: n / statistics.median(timed.seconds) for path, timed in runs.items()}
    cpu_ms = {
        path: {part: 1000 * s / (n * len(timed.seconds)) for part, s in timed.cpu_s.items()}
        for path, timed in runs.items()
    }
    figures = {
        "machine": f"{platform.machine()}, {len(cores)} CPU cores, no GPU",
        "renders": n,
        "preset": "tiny (64x64, 4 steps)",
        "repeats": args.repeats,
        "renders_per_s": rate,  # the median run of each path
        "renders_per_s_each_run": {
            path: [n / one for one in timed.seconds] for path, timed in runs.items()
        },
        "cpu_ms_per_render": cpu_ms,  # over the timed runs, by part of the machine
        "per_device": {
            "ratio_farm1_over_in_process": inproc_s / one_s,
            "ratio_farm2_over_farm1": one_s / two_s,
            "overhead_ms_per_render": 1000 * (one_s - inproc_s) / n,
        },
        "whole_machine": {
            "ratio_farm1_over_in_process": inproc_all_s / one_all_s,
            "overhead_ms_per_render": 1000 * (one_all_s - inproc_all_s) / n,
        },
        "identity_tokens_computed": computed,
        "jobs": 3 * (1 + args.repeats),  # a warm-up and the timed jobs of each farm run
    }
    print(f"{'path':36} {'renders/s':>10}   each run")
    for path, value in rate.items():
        each = " ".join(f"{v:.2f}" for v in figures["renders_per_s_each_run"][path])
        print(f"{path:36} {value:10.2f}   {each}")
    names = ["bench", "workers", "moto", "postgres", "redis"]
    print(f"\nCPU ms per render {'':18} " + " ".join(f"{name:>8}" for name in names) + "    total")
    for path, parts in cpu_ms.items():
        each = " ".join(f"{parts.get(name, 0.0):8.1f}" for name in names)
        print(f"{path:36} {each} {sum(parts.values()):8.1f}")
    print()
    device, machine = figures["per_device"], figures["whole_machine"]
    print(
        f"per device: farm(1)/in-process = {device['ratio_farm1_over_in_process']:.2f}   "
        f"farm(2)/farm(1) = {device['ratio_farm2_over_farm1']:.2f}   "
        f"overhead = {device['overhead_ms_per_render']:.1f} ms/render"
    )
    print(
        f"whole machine: farm(1)/in-process = {machine['ratio_farm1_over_in_process']:.2f}   "
        f"overhead = {machine['overhead_ms_per_render']:.1f} ms/render"
    )
    print(f"identity tokens computed for {figures['jobs']} jobs: {computed}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
