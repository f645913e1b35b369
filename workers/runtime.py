"""What one worker process keeps for its whole life: its name and device, the preset pipelines
loaded once at start, the identity cache, the finisher that stores renders beside the device,
and a heartbeat thread that keeps the leases of the shards it holds.

One process serves one GPU (`CUDA_VISIBLE_DEVICES` pinned by `farm worker`), so inside it the
device is always `cuda:0`, or the CPU where there is no GPU.

The row turns from starting to idle (what `workers.probe --startup` waits for) once the presets
are loaded *and* the Celery main process consumes the queues: a worker whose broker is out of
reach has loaded its models but takes no work, and must not pass for ready.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from farm.characters import PhotoCache
from farm.context import Farm
from farm.db.models import Job, Shard, Worker
from farm.db.states import ShardStatus, WorkerStatus
from farm.identity.cache import IdentityCache
from farm.locks import key_lock
from farm.logs import set_process_context
from farm.metrics import record_model_load, watch_worker
from farm.quality import Reference
from farm.render.loading import LoadedPreset, load_preset, pick_device, warm_up
from farm.render.presets import get_preset
from farm.render.reference_images import ReferenceImageTokens
from farm.render.reference_scenes import ReferenceTokens
from farm.story import Story
from workers.cores import pin_render_thread, unpin_thread
from workers.finisher import Finisher

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as ProcessEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
# The stories a worker keeps validated: the jobs it moves between, in a farm of many.
STORIES_KEPT = 16
# A job as a claim loads it: without its story, which `WorkerRuntime.story` reads when needed.
STORY_DEFERRED = (defer(Job.spec),)


def heartbeat_interval(lease_s: float) -> float:
    """Every `HEARTBEAT_S`, or three beats per lease when leases are short: one late beat (a
    busy CPU, a slow database) must not let the lease of a live worker lapse."""
    return min(HEARTBEAT_S, lease_s / 3)


def worker_name(device: str, hostname: str | None = None) -> str:
    """`host:cuda0` / `host:cpu0`: says where to look when a shard misbehaves."""
    return f"{hostname or socket.gethostname()}:{device.replace(':', '')}"


@dataclass
class WorkerRuntime:
    farm: Farm
    name: str
    device: str
    preset_names: list[str]
    presets: dict[str, LoadedPreset] = field(default_factory=dict)
    current_shard: int | None = None  # rendering now
    # Each character's identity-QC reference, computed once per worker (see workers/qc.py).
    references: dict[str, Reference] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    # Set by the Celery main process once its consumer takes tasks (workers.celery_app); None
    # where no consumer is waited for.
    consuming: ProcessEvent | None = None
    # Set by the Celery main process when it is told to stop (SIGTERM: a spot node reclaimed,
    # a scale-down): the running batch then checkpoints and its shard is handed on
    # (workers/shard.py). `farm drain` asks the same through the worker's row.
    stopping: ProcessEvent | None = None
    _drain_seen: threading.Event = field(default_factory=threading.Event)
    # Claimed and not yet ended: the one rendering, and those the finisher still stores.
    _held: set[int] = field(default_factory=set)
    _held_lock: threading.Lock = field(default_factory=threading.Lock)
    finisher: Finisher = field(init=False)
    # The stories of the jobs it renders, validated once per revision (see `story`).
    _stories: OrderedDict[tuple[str, int], Story] = field(default_factory=OrderedDict)
    _stories_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.finisher = Finisher(self.farm)  # its threads start with its first batch

    def story(self, session: Session, job: Job) -> Story:
        """The job's story, read and validated once per revision (a revision is the only way
        it changes): every shard of a 10,000-scene story claims with it, and reading and
        validating it again took each claim a tenth of a second. `job` is loaded without
        its story (`STORY_DEFERRED`), so a claim that finds it kept never fetches it."""
        key = (job.id, job.revision)
        with self._stories_lock:
            story = self._stories.get(key)
        if story is None:
            spec = session.scalar(select(Job.spec).where(Job.id == job.id))
            story = Story.model_validate(spec)
            with self._stories_lock:
                self._stories[key] = story
                while len(self._stories) > STORIES_KEPT:
                    self._stories.popitem(last=False)
        return story

    @cached_property
    def photos(self) -> PhotoCache:
        """The photos of the characters this worker renders, downloaded once each."""
        return PhotoCache(self.farm.storage)

    @cached_property
    def shared_tokens(self) -> ReferenceTokens:
        """Story-mode consistency's reference tokens: read, or rendered once across the farm,
        and kept for the next shards of the same story."""
        farm = self.farm
        return ReferenceTokens(farm.storage, key_lock(farm.engine, farm.settings.data_dir))

    @classmethod
    def start(
        cls,
        farm: Farm,
        preset_names: list[str],
        slot: str = "0",
        consuming: ProcessEvent | None = None,
        stopping: ProcessEvent | None = None,
    ) -> WorkerRuntime:
        """Register the worker, load every preset it hosts, then beat: ready at the first beat
        that finds the Celery consumer taking tasks."""
        pin_render_thread()  # before the first torch operation: torch's threads inherit it
        torch_device = pick_device(farm.settings.device)
        label = f"{torch_device.type}{slot}"
        runtime = cls(
            farm,
            worker_name(label),
            str(torch_device),
            preset_names,
            consuming=consuming,
            stopping=stopping,
        )
        set_process_context(worker=runtime.name)
        watch_worker(runtime.name, runtime.device, preset_names, lambda: runtime.current_shard)
        runtime.register()
        cache = IdentityCache(farm.storage, lock=key_lock(farm.engine, farm.settings.data_dir))
        for name in preset_names:
            runtime.presets[name] = load_preset(
                get_preset(name),
                farm.settings.models_dir,
                cache=cache,
                device=runtime.device,
                sdxl_base=farm.settings.sdxl_base,
                vram_mode=farm.settings.vram_mode,
                compile_unet=farm.settings.compile_unet,
                prompt_truncation=farm.settings.prompt_truncation,
                noise=farm.settings.noise,
            )
            # Outfits' and locations' reference-image tokens: read, or rendered once across the
            # farm and stored, like the identity tokens.
            runtime.presets[name].pipeline.reference_images = ReferenceImageTokens(
                name, farm.storage, key_lock(farm.engine, farm.settings.data_dir)
            )
            record_model_load(name, runtime.presets[name].load_seconds)
            seconds = warm_up(runtime.presets[name])
            log.info("preset %s warmed up in %.1f s", name, seconds)
        runtime.beat()
        runtime._start_heartbeat()
        return runtime

    def register(self) -> None:
        with self.farm.sessions.begin() as session:
            worker = session.get(Worker, self.name)
            if worker is not None:
                session.delete(worker)  # a restart: the old row describes a dead process
                session.flush()
            session.add(
                Worker(
                    id=self.name,
                    hostname=socket.gethostname(),
                    device=self.device,
                    presets=self.preset_names,
                )
            )
            # A shard still running under this name was left by this worker's previous process,
            # which died in it (a killed pool child, a restarted pod). End its lease now: the
            # redelivered task, or the reaper's next pass, then takes it over at once instead of
            # after a whole lease, which is minutes.
            abandoned = session.scalars(
                select(Shard)
                .where(Shard.status == ShardStatus.RUNNING, Shard.worker_id == self.name)
                .with_for_update()
            )
            for shard in abandoned:
                log.warning(
                    "shard %s was left running by a dead %s; its lease ends", shard.id, self.name
                )
                shard.renew(0)

    def hold(self, shard_id: int) -> None:
        """Keep renewing `shard_id`'s lease, until `let_go`."""
        with self._held_lock:
            self._held.add(shard_id)

    def let_go(self, shard_id: int) -> None:
        with self._held_lock:
            self._held.discard(shard_id)

    def stop_requested(self) -> bool:
        """Whether the worker was told to stop: asked before every denoising step, so cheap."""
        return self._drain_seen.is_set() or (self.stopping is not None and self.stopping.is_set())

    def _consumer_started(self) -> bool:
        return self.consuming is None or self.consuming.is_set()

    def _start_heartbeat(self) -> None:
        thread = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
        thread.start()

    def _beat_forever(self) -> None:
        unpin_thread()
        while not self._stop.wait(heartbeat_interval(self.farm.settings.lease_s)):
            try:
                self.beat()
            except Exception:  # a missed beat is retried; it must never kill the worker
                log.exception("heartbeat of %s failed", self.name)

    def beat(self) -> None:
        """Tell SQL the process lives, and keep the leases of the shards it holds."""
        with self.farm.sessions.begin() as session:
            worker = session.get(Worker, self.name)
            if worker is not None and worker.status not in (
                WorkerStatus.STOPPED,
                WorkerStatus.LOST,
            ):
                worker.beat()
                if worker.status is WorkerStatus.DRAINING:  # `farm drain`; `farm resume` undoes it
                    self._drain_seen.set()
                else:
                    self._drain_seen.clear()
                if worker.status is WorkerStatus.STARTING and self._consumer_started():
                    worker.ready()
                    log.info(
                        "worker %s ready on %s with %s", self.name, self.device, self.preset_names
                    )
            with self._held_lock:
                held = sorted(self._held)
            if held:
                shards = session.scalars(
                    select(Shard).where(
                        Shard.id.in_(held),
                        Shard.status == ShardStatus.RUNNING,
                        Shard.worker_id == self.name,
                    )
                )
                for shard in shards:
                    shard.renew(self.farm.settings.lease_s)

    def stop(self) -> None:
        """End the shards the finisher still stores, then stop beating and say so."""
        self.finisher.close()
        self._stop.set()
        with self.farm.sessions.begin() as session:
            worker = session.get(Worker, self.name)
            if worker is not None and worker.status not in (
                WorkerStatus.STOPPED,
                WorkerStatus.LOST,
            ):
                worker.stop()
        log.info("worker %s stopped", self.name)
