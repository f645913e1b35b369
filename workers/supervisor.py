"""`farm worker`: one Celery worker process per device, each pinned to its GPU.

Pinning with `CUDA_VISIBLE_DEVICES` (rather than `cuda:N` inside one process) keeps a crash, a
leak or an out-of-memory on one card from touching the others, and lets every process believe
it owns `cuda:0`. Signals are passed on, so a SIGTERM from Kubernetes becomes Celery's warm
shutdown in every child: the current shard finishes, nothing new is taken.

With `--beat` (and in `farm up`) the reaper's schedule runs as one more child, Celery beat on
its own, which the supervisor starts again whenever it dies (`SupervisedBeat`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from farm.errors import InputError
from farm.queue.app import CONTROL_QUEUE, render_queue
from farm.render.presets import get_preset
from farm.settings import Settings
from workers.broker_wait import wait_for_broker
from workers.cores import WORKER_CORES, cores_spec

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# The reaper's beat: the wait before its first restart, doubled while it keeps dying soon after
# starting (a broker that refuses it must not become a busy loop), up to the second figure.
BEAT_BACKOFF_S = (1.0, 60.0)
BEAT_STEADY_S = 60.0  # a beat that ran this long died of something new: the wait starts over


@dataclass(frozen=True)
class DeviceSlot:
    """One worker process: `cuda_index` is None for a CPU worker."""

    slot: int
    cuda_index: str | None

    @property
    def label(self) -> str:
        return f"cuda{self.cuda_index}" if self.cuda_index is not None else f"cpu{self.slot}"


def visible_gpus() -> list[str]:
    """GPU indices on this machine, without initialising CUDA in the supervisor."""
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


def parse_devices(spec: str) -> list[DeviceSlot]:
    """`all` (every GPU, or one CPU worker without GPUs), `0,1` (GPU indices), `cpu` or `cpu:N`
    (N CPU workers, for tests and small farms)."""
    spec = spec.strip().lower()
    if spec == "all":
        gpus = visible_gpus()
        return [DeviceSlot(i, g) for i, g in enumerate(gpus)] or [DeviceSlot(0, None)]
    if spec == "cpu" or spec.startswith("cpu:"):
        count = spec.partition(":")[2] or "1"
        if not count.isdigit() or not 1 <= int(count) <= 64:
            raise InputError(f"--devices {spec!r}: write cpu or cpu:N with N from 1 to 64")
        return [DeviceSlot(i, None) for i in range(int(count))]
    indices = [part.strip() for part in spec.split(",")]
    if not all(i.isdigit() for i in indices) or len(set(indices)) != len(indices):
        raise InputError(f"--devices {spec!r}: write all, cpu, cpu:N, or GPU indices like 0,1")
    return [DeviceSlot(i, g) for i, g in enumerate(indices)]


def worker_command(slot: DeviceSlot, presets: Sequence[str], loglevel: str) -> list[str]:
    queues = [render_queue(p) for p in presets] + [CONTROL_QUEUE]
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        "1",
        "--pool",
        "prefork",  # a child that dies takes only its task with it
        "--hostname",
        f"{slot.label}@%h",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def beat_command(loglevel: str) -> list[str]:
    """Celery beat, which sends the reaper's task on its schedule (farm/queue/app.py) for a
    worker to run: one per farm."""
    schedule = Settings.from_env().data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        loglevel,
    ]


def cpu_shares(count: int, threads: int | None, cores: Sequence[int]) -> list[list[int]]:
    """The cores of each of `count` CPU workers: `threads` each (by default an even split of
    `cores`), disjoint while the cores last, then taken round again.

    A CPU worker renders on its cores as a GPU worker does on its card (workers/cores.py): two
    workers whose threads migrate over the same cores thrash each other's caches and run slower
    together than one alone.
    """
    if count == 0:
        return []
    per_worker = threads or max(1, len(cores) // count)
    return [
        [cores[(index * per_worker + k) % len(cores)] for k in range(per_worker)]
        for index in range(count)
    ]


def _die_with_parent() -> None:
    """Runs in each child before exec: if the supervisor is killed outright (SIGKILL, OOM),
    the kernel sends the worker SIGTERM, its warm shutdown, instead of leaving an orphan."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SupervisedBeat:
    """The reaper's beat as a child of the supervisor, started again whenever it dies.

    Embedded in a worker (`celery worker --beat`) it was a child that nobody watched: once it
    died no reap was sent again, and a dead worker's shards stayed running with nobody to
    requeue them. Here each death is logged with its exit status and the beat is restarted
    after a wait (`BEAT_BACKOFF_S`). A thread watches it, so the supervisor's main thread keeps
    waiting on the workers; the thread also starts it, and lives as long as it is supervised,
    because the kernel's parent-death signal follows the thread that forked.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        *,
        backoff_s: tuple[float, float] = BEAT_BACKOFF_S,
        steady_s: float = BEAT_STEADY_S,
    ) -> None:
        self.command, self.env = command, env
        self.backoff_s, self.steady_s = backoff_s, steady_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a stop never races a restart
        self._watcher = threading.Thread(target=self._watch, name="beat-supervisor", daemon=True)

    def start(self) -> None:
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            self.process = subprocess.Popen(self.command, env=self.env, preexec_fn=_die_with_parent)
        log.info("started the reaper's beat (pid %s)", self.process.pid)
        return self.process

    def _watch(self) -> None:
        wait_s = self.backoff_s[0]
        while (process := self._spawn()) is not None:
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.steady_s:
                wait_s = self.backoff_s[0]
            self.restarts += 1
            log.warning(
                "the reaper's beat (pid %s) exited with status %s; starting it again in %g s",
                process.pid,
                code,
                wait_s,
            )
            if self._stopping.wait(wait_s):
                return
            wait_s = min(wait_s * 2, self.backoff_s[1])

    def halt(self, signum: int = signal.SIGTERM) -> None:
        """Pass `signum` on to the beat and start it no more; returns at once (a signal
        handler calls it)."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Halt the beat and wait for it to end."""
        self.halt()
        if self._watcher.is_alive():
            self._watcher.join(timeout_s)


def run_workers(
    devices: str,
    presets: Sequence[str],
    *,
    beat: bool = False,
    loglevel: str = "INFO",
    cpu_threads: int | None = None,
    pin_cpus: bool = True,
) -> int:
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []
    beat_env = {**os.environ, "FARM_WORKER_PRESETS": ",".join(presets)}
    reaper = SupervisedBeat(beat_command(loglevel), beat_env) if beat else None

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        if reaper is not None:
            reaper.halt(signum)

    # Before anything slow: a SIGTERM during start-up must stop the children started so far.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    for name in presets:
        get_preset(name)
    slots = parse_devices(devices)
    if not wait_for_broker(Settings.from_env().broker_url, stopped=lambda: bool(stopping)):
        return 0  # stopped while waiting: nothing was started
    cpu_slots = [s for s in slots if s.cuda_index is None]
    shares = dict(
        zip(
            (s.slot for s in cpu_slots),
            cpu_shares(len(cpu_slots), cpu_threads, sorted(os.sched_getaffinity(0))),
            strict=True,
        )
    )
    for slot in slots:
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": slot.cuda_index if slot.cuda_index is not None else "",
            "FARM_WORKER_PRESETS": ",".join(presets),
            # The worker's SQL name ends in its label: the GPU's own index, not the position in
            # --devices, or `--devices 1` here and `--devices 0` beside it would both be cuda0.
            "FARM_WORKER_SLOT": slot.cuda_index if slot.cuda_index is not None else str(slot.slot),
        }
        cores = shares.get(slot.slot) if slot.cuda_index is None else None
        if cores is not None:
            env["FARM_DEVICE"] = "cpu"
            env["OMP_NUM_THREADS"] = str(len(cores))  # one torch thread per core it owns
            if pin_cpus:
                env[WORKER_CORES] = cores_spec(cores)
        if stopping:
            break
        command = worker_command(slot, presets, loglevel)
        children.append(subprocess.Popen(command, env=env, preexec_fn=_die_with_parent))
        log.info(
            "started worker %s (pid %s)%s",
            slot.label,
            children[-1].pid,
            f" rendering on cores {env[WORKER_CORES]}" if WORKER_CORES in env else "",
        )
    if reaper is not None and not stopping:
        reaper.start()
    codes = [child.wait() for child in children]
    if reaper is not None:
        reaper.stop()
    log.info("workers exited with %s", codes)
    return max((abs(c) for c in codes), default=0)


def local_secret_key(settings: Settings) -> str:
    """The embedded default's dashboard key: FARM_SECRET_KEY, or one made once and kept in the
    data folder (readable by its owner only), so sessions survive a restart of `farm up`."""
    if os.environ.get("FARM_SECRET_KEY"):
        return os.environ["FARM_SECRET_KEY"]
    path = settings.data_dir / "secret_key"
    if not path.is_file():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def start_dashboard(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """The dashboard for `farm up`, on loopback: gunicorn with the deployed configuration
    (dashboard/gunicorn_conf.py), one process, so that the farm on one machine is served as a
    studio's server is (live streams get their threads) and no development server warns."""
    env = {**os.environ, "FARM_SECRET_KEY": local_secret_key(settings)}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:dashboard.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--log-level",
        "warning",
        "dashboard.app:create_app()",
    ]
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
