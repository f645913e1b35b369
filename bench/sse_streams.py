"""How many live progress streams one dashboard process holds while its pages still answer.

The dashboard is started as deployed (gunicorn with `dashboard.gunicorn_conf`, one process
here, PostgreSQL and Redis events) on 127.0.0.1, once per stream cap in `--caps`: the process
then has a thread per stream it may serve and eight more for pages (dashboard/live.py). Each
run opens the cap's number of streams on one job, plus `--extra` more that must be refused
with a 429, then times page requests (the job list page, the job list API, /healthz) one after
another for `--hold-s` seconds while every stream stays open. A cap passes when all of its
streams opened, every extra one was refused, the slowest page answered within a second, and
once the streams were closed every slot came free again; the largest passing cap is the
figure. Caps stop at 90 (FARM_SSE_MAX_STREAMS's most): each stream also holds a Redis
connection, and redis-py's pool has 100 per process. Prints a line per cap and writes them to
a JSON file.

    .venv/bin/python bench/sse_streams.py [--caps 24,48,90] [--hold-s 5] [--out FILE]

Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth), as on CI. Every
request goes to 127.0.0.1; each run is bounded by `--hold-s` and time-outs (start-up 60 s,
slots freed 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.databases import planned_jobs, postgres_database  # noqa: E402
from farm.auth import create_token, ensure_project  # noqa: E402
from farm.context import Farm  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.db.models import Role  # noqa: E402
from farm.settings import Settings  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
PAGES = ("/jobs", "/api/v1/jobs", "/healthz")
PAGE_LIMIT_S = 1.0
START_TIMEOUT_S = 60.0
FREED_TIMEOUT_S = 30.0


@dataclass
class Run:
    cap: int
    threads: int
    streams_opened: int
    extra_refused_429: int
    open_s: float
    page_requests: int
    page_p50_ms: float
    page_p95_ms: float
    page_max_ms: float
    slots_freed_s: float | None
    passed: bool


def seed(settings: Settings) -> tuple[str, str]:
    """A project with a viewer token and one queued job (never sent to a broker): what the
    streams watch. Returns (token, job id)."""
    upgrade(settings.database_url)
    farm = Farm(settings)
    try:
        with farm.sessions.begin() as session:
            project = ensure_project(session, "bench")
            _, token = create_token(session, project, Role.VIEWER, "bench viewer")
            (job_id,) = planned_jobs(session, settings, project, 1)
            return token, job_id
    finally:
        farm.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def dashboard(env: dict[str, str], cap: int, workdir: Path) -> Iterator[str]:
    """gunicorn serving the dashboard as the Dockerfile does, one process; yields its URL."""
    port = free_port()
    env = {**env, "FARM_SSE_MAX_STREAMS": str(cap), "FARM_SSE_MAX_STREAMS_PER_USER": str(cap)}
    log = (workdir / f"gunicorn-{cap}.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:dashboard.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "dashboard.app:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = Path(log.name).read_text()[-3000:]
                    raise RuntimeError(f"gunicorn did not start:\n{tail}") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def open_stream(port: int, token: str, job_id: str) -> tuple[int, asyncio.StreamWriter]:
    """One EventSource-like stream; its status once the headers and first bytes are in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    if status == 200:
        await asyncio.wait_for(reader.readuntil(b"retry:"), 30)
    return status, writer


def time_pages(base: str, token: str, hold_s: float) -> list[float]:
    """Seconds per page request, one after another for `hold_s`."""
    latencies = []
    stop = time.monotonic() + hold_s
    while time.monotonic() < stop:
        for path in PAGES:
            request = urllib.request.Request(
                base + path, headers={"Authorization": f"Bearer {token}"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
    return latencies


async def measure(base: str, token: str, job_id: str, cap: int, extra: int, hold_s: float) -> Run:
    port = int(base.rsplit(":", 1)[1])
    started = time.perf_counter()
    opened = await asyncio.gather(*(open_stream(port, token, job_id) for _ in range(cap)))
    open_s = time.perf_counter() - started
    refused = await asyncio.gather(*(open_stream(port, token, job_id) for _ in range(extra)))
    latencies = await asyncio.to_thread(time_pages, base, token, hold_s)
    for _, writer in [*opened, *refused]:
        writer.close()
    freed_s = await slots_freed(port, token, job_id, cap)
    ms = sorted(1000 * s for s in latencies)
    streams = sum(status == 200 for status, _ in opened)
    refused_429 = sum(status == 429 for status, _ in refused)
    return Run(
        cap=cap,
        threads=cap + 8,
        streams_opened=streams,
        extra_refused_429=refused_429,
        open_s=round(open_s, 2),
        page_requests=len(ms),
        page_p50_ms=round(statistics.median(ms), 1),
        page_p95_ms=round(ms[int(0.95 * (len(ms) - 1))], 1),
        page_max_ms=round(ms[-1], 1),
        slots_freed_s=freed_s,
        passed=streams == cap
        and refused_429 == extra
        and ms[-1] < 1000 * PAGE_LIMIT_S
        and freed_s is not None,
    )


async def slots_freed(port: int, token: str, job_id: str, cap: int) -> float | None:
    """Seconds until, the streams closed, all `cap` slots can be held again (the server notices
    a closed stream at its next write: the heartbeat, every 15 s); None after 30 s."""
    started = time.perf_counter()
    held: list[asyncio.StreamWriter] = []
    try:
        while time.perf_counter() - started < FREED_TIMEOUT_S:
            tries = await asyncio.gather(
                *(open_stream(port, token, job_id) for _ in range(cap - len(held)))
            )
            for status, writer in tries:
                if status == 200:
                    held.append(writer)
                else:
                    writer.close()
            if len(held) == cap:
                return round(time.perf_counter() - started, 1)
            await asyncio.sleep(0.5)
        return None
    finally:
        for writer in held:
            writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--caps", default="24,48,90", help="stream caps to try, ascending")
    parser.add_argument("--extra", type=int, default=8, help="streams past the cap (want 429)")
    parser.add_argument("--hold-s", type=float, default=5.0, help="page timing per cap")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sse_streams.json")
    args = parser.parse_args()
    caps = [int(cap) for cap in args.caps.split(",")]

    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database("farm_bench_sse") as database_url:
        workdir = Path(tmp)
        env = {
            **os.environ,
            "FARM_DATA_DIR": str(workdir / "data"),
            "FARM_DATABASE_URL": database_url,
            "FARM_BROKER_URL": REDIS_URL,
            "FARM_STORAGE_URL": (workdir / "storage").as_uri(),
            "FARM_SECRET_KEY": "bench-" + "0" * 40,
        }
        settings = Settings.from_env(env)
        token, job_id = seed(settings)
        for cap in caps:
            with dashboard(env, cap, workdir) as base:
                run = asyncio.run(measure(base, token, job_id, cap, args.extra, args.hold_s))
            runs.append(run)
            print(
                f"cap {cap:4d} ({run.threads} threads): {run.streams_opened} streams open in "
                f"{run.open_s} s, {run.extra_refused_429}/{args.extra} extra refused 429; "
                f"pages p50 {run.page_p50_ms} ms, p95 {run.page_p95_ms} ms, max "
                f"{run.page_max_ms} ms over {run.page_requests} requests; slots free again "
                f"{run.slots_freed_s} s after the streams closed -> "
                f"{'pass' if run.passed else 'FAIL'}",
                flush=True,
            )
            if not run.passed:
                errors = [
                    line
                    for line in (workdir / f"gunicorn-{cap}.log").read_text().splitlines()
                    if line and not line[0].isspace() and "Error" in line
                ]
                print("  the dashboard's errors:", *sorted(set(errors))[:10], sep="\n  ")
                break
    passing = [run.cap for run in runs if run.passed]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": "gunicorn gthread, 1 process, PostgreSQL, Redis events, 127.0.0.1",
        "page_limit_s": PAGE_LIMIT_S,
        "hold_s": args.hold_s,
        "max_streams_with_pages_under_1s": max(passing, default=0),
        "runs": [asdict(run) for run in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    figure = result["max_streams_with_pages_under_1s"]
    print(f"max streams with pages under {PAGE_LIMIT_S} s: {figure}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
