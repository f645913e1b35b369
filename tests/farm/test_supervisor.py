"""`farm worker`'s supervisor: which device each child gets, and how each child is started.

Pinning is the whole point of one process per GPU, so the environment each child is started
with is captured (no process is started) and checked."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from farm.errors import InputError
from workers import supervisor
from workers.cores import pin_render_thread, unpin_thread
from workers.supervisor import (
    DeviceSlot,
    SupervisedBeat,
    beat_command,
    cpu_shares,
    parse_devices,
    run_workers,
    worker_command,
)


@pytest.mark.parametrize(
    ("spec", "gpus", "slots"),
    [
        ("all", ["0", "1"], [DeviceSlot(0, "0"), DeviceSlot(1, "1")]),
        ("all", [], [DeviceSlot(0, None)]),  # no GPU: one CPU worker
        ("cpu", ["0"], [DeviceSlot(0, None)]),
        (" CPU:2 ", ["0"], [DeviceSlot(0, None), DeviceSlot(1, None)]),
        ("0,1", [], [DeviceSlot(0, "0"), DeviceSlot(1, "1")]),
        ("3, 1", [], [DeviceSlot(0, "3"), DeviceSlot(1, "1")]),
    ],
)
def test_parse_devices(monkeypatch, spec, gpus, slots):
    monkeypatch.setattr(supervisor, "visible_gpus", lambda: gpus)
    assert parse_devices(spec) == slots


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("cpu:0", "write cpu or cpu:N with N from 1 to 64"),
        ("cpu:65", "write cpu or cpu:N with N from 1 to 64"),
        ("cpu:two", "write cpu or cpu:N with N from 1 to 64"),
        ("0,0", "write all, cpu, cpu:N, or GPU indices like 0,1"),
        ("gpu0", "write all, cpu, cpu:N, or GPU indices like 0,1"),
        ("0,,1", "write all, cpu, cpu:N, or GPU indices like 0,1"),
        ("-1", "write all, cpu, cpu:N, or GPU indices like 0,1"),
        ("", "write all, cpu, cpu:N, or GPU indices like 0,1"),
    ],
)
def test_bad_devices_are_refused(spec, hint):
    with pytest.raises(InputError) as refused:
        parse_devices(spec)
    assert str(refused.value) == f"--devices {spec.strip().lower()!r}: {hint}"


def test_worker_command_pins_queues_concurrency_and_pool():
    command = worker_command(DeviceSlot(1, "3"), ["tiny", "photomaker-v2"], "INFO")
    assert command[:5] == [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    options = dict(zip(command[6::2], command[7::2], strict=False))
    assert options["--queues"] == "render.tiny,render.photomaker-v2,farm.control"
    assert (options["--concurrency"], options["--pool"]) == ("1", "prefork")
    assert options["--hostname"] == "cuda3@%h"
    assert "--beat" not in command  # the reaper's beat is a child of its own (SupervisedBeat)


def test_the_beat_runs_on_its_own_with_the_farms_schedule_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    command = beat_command("INFO")
    assert command[:6] == [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat"]
    assert command[command.index("--schedule") + 1] == str(tmp_path / "celerybeat-schedule")


def _next_process(beat: SupervisedBeat, after: subprocess.Popen | None) -> subprocess.Popen:
    deadline = time.monotonic() + 10
    while beat.process is after or beat.process is None or beat.process.poll() is not None:
        assert time.monotonic() < deadline, "the beat was not started again"
        time.sleep(0.05)
    return beat.process


def test_a_dead_beat_is_started_again_after_a_wait_that_doubles(caplog):
    """The reaper's beat, killed twice: started again each time, the wait logged and doubled;
    stopped, it is ended and started no more."""
    caplog.set_level(logging.INFO, logger="workers.supervisor")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    beat = SupervisedBeat(sleeper, dict(os.environ), backoff_s=(0.2, 0.4), steady_s=60)
    beat.start()
    try:
        first = _next_process(beat, None)
        first.kill()
        second = _next_process(beat, first)
        second.kill()
        third = _next_process(beat, second)
    finally:
        beat.stop()
    assert third.poll() is not None and beat.process is third and beat.restarts == 2
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"started the reaper's beat (pid {first.pid})",
        f"the reaper's beat (pid {first.pid}) exited with status -9; starting it again in 0.2 s",
        f"started the reaper's beat (pid {second.pid})",
        f"the reaper's beat (pid {second.pid}) exited with status -9; starting it again in 0.4 s",
        f"started the reaper's beat (pid {third.pid})",
    ]


class FakeChild:
    """A started worker process that exits with `code` when waited for."""

    def __init__(self, command: list[str], env: dict[str, str], code: int) -> None:
        self.command, self.env, self.code = command, env, code
        self.pid = 4242
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return None

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def wait(self) -> int:
        return self.code


@pytest.fixture
def started(monkeypatch) -> tuple[list[FakeChild], dict[int, Any]]:
    """Children `run_workers` starts (none for real) and the signal handlers it installs."""
    children: list[FakeChild] = []
    handlers: dict[int, Any] = {}

    def popen(command: list[str], env: dict[str, str], **_options: Any) -> FakeChild:
        children.append(FakeChild(command, env, code=-15 if children else 0))
        return children[-1]

    monkeypatch.setattr(supervisor.subprocess, "Popen", popen)
    monkeypatch.setattr(supervisor.signal, "signal", handlers.__setitem__)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the supervisor's own, overridden
    return children, handlers


def test_each_gpu_child_sees_only_its_gpu(started):
    children, handlers = started

    assert run_workers("2,3", ["tiny"]) == 15  # the worst exit status

    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["2", "3"]
    assert [c.env["FARM_WORKER_SLOT"] for c in children] == ["2", "3"]  # named after the GPU
    assert all(c.env["FARM_WORKER_PRESETS"] == "tiny" for c in children)
    assert all("FARM_DEVICE" not in c.env for c in children)
    # SIGTERM from Kubernetes reaches every child: Celery's warm shutdown in each.
    handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert [c.signals for c in children] == [[signal.SIGTERM], [signal.SIGTERM]]


def test_with_beat_one_supervised_beat_lives_as_long_as_the_workers(started, monkeypatch):
    children, handlers = started
    said: list[object] = []

    class Beat:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            said.append(("made", command[5], env["FARM_WORKER_PRESETS"]))

        def start(self) -> None:
            said.append("start")

        def halt(self, signum: int) -> None:
            said.append(("halt", signum))

        def stop(self) -> None:
            said.append("stop")

    monkeypatch.setattr(supervisor, "SupervisedBeat", Beat)
    run_workers("2,3", ["tiny"], beat=True)
    assert len(children) == 2 and not any("--beat" in c.command for c in children)
    assert said == [("made", "beat", "tiny"), "start", "stop"]  # one beat per farm
    handlers[signal.SIGINT](signal.SIGINT, None)
    assert said[-1] == ("halt", signal.SIGINT)  # a signal reaches the beat as well


def test_cpu_children_see_no_gpu(started):
    children, _ = started

    run_workers("cpu:2", ["tiny"])

    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["", ""]
    assert [c.env["FARM_DEVICE"] for c in children] == ["cpu", "cpu"]
    assert [c.env["FARM_WORKER_SLOT"] for c in children] == ["0", "1"]


def test_cpu_workers_split_the_cores_and_run_a_thread_per_core(started):
    children, _ = started
    cores = len(os.sched_getaffinity(0))

    run_workers("cpu:1", ["tiny"])
    run_workers("cpu:1", ["tiny"], cpu_threads=1)

    assert [c.env["OMP_NUM_THREADS"] for c in children] == [str(cores), "1"]
    assert children[1].env["FARM_WORKER_CORES"] == "0"


def test_unpinned_cpu_workers_are_told_no_cores(started):
    children, _ = started
    run_workers("cpu:2", ["tiny"], pin_cpus=False)
    assert all("FARM_WORKER_CORES" not in c.env for c in children)


def test_the_render_thread_is_pinned_and_bookkeeping_threads_are_not():
    every_core = os.sched_getaffinity(0)
    seen = {}

    def pinned_thread() -> None:
        assert pin_render_thread({"FARM_WORKER_CORES": "0"}) == {0}
        seen["render"] = os.sched_getaffinity(0)
        with ThreadPoolExecutor(max_workers=1, initializer=unpin_thread) as pool:
            seen["finisher"] = pool.submit(os.sched_getaffinity, 0).result()
        child = threading.Thread(target=lambda: seen.update(inherited=os.sched_getaffinity(0)))
        child.start()
        child.join()

    thread = threading.Thread(target=pinned_thread)  # the mask is the thread's own
    thread.start()
    thread.join()

    others = (every_core - {0}) or every_core  # the render core is left to rendering
    assert seen == {"render": {0}, "finisher": others, "inherited": {0}}
    assert os.sched_getaffinity(0) == every_core


@pytest.mark.parametrize(
    ("count", "threads", "cores", "shares"),
    [
        (1, None, [0, 1], [[0, 1]]),  # one worker: every core
        (2, None, [0, 1], [[0], [1]]),  # one device each, as GPUs are
        (2, None, [4, 5, 6, 7], [[4, 5], [6, 7]]),  # the cores this process may use
        (3, 1, [0, 1], [[0], [1], [0]]),  # more workers than cores: round again
        (1, 1, [0, 1, 2], [[0]]),
        (0, None, [0, 1], []),
    ],
)
def test_cpu_shares(count, threads, cores, shares):
    assert cpu_shares(count, threads, cores) == shares


def test_an_unknown_preset_starts_nothing(started):
    children, _ = started
    with pytest.raises(InputError, match="unknown preset 'nope'"):
        run_workers("cpu", ["nope"])
    assert children == []


def test_the_embedded_dashboard_key_is_made_once_and_kept_private(tmp_path, monkeypatch):
    from farm.settings import Settings
    from workers.supervisor import local_secret_key

    monkeypatch.delenv("FARM_SECRET_KEY", raising=False)
    settings = Settings.from_env({"FARM_DATA_DIR": str(tmp_path)})
    key = local_secret_key(settings)
    assert len(key) >= 32 and local_secret_key(settings) == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("FARM_SECRET_KEY", "x" * 40)
    assert local_secret_key(settings) == "x" * 40
