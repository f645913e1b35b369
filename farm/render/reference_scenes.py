"""Story-mode consistency on a farm: the reference scenes render first, as one batch, and every
other render of the story attends to the tokens they share, on whichever worker it runs.

StoryDiffusion renders its reference images and then the rest in one process, holding the shared
tokens in GPU memory. A farm spreads a story's scenes over shards and machines, so the tokens are
stored: one object per denoising step under `consistency/<character>/<digest>/`, the digest
covering everything that decides them (the reference renders' prompts, negatives and seeds, the
render settings, the people's identity tokens, the model and the consistency settings), and a
manifest written last, so that a reader sees all of them or none. The first worker that needs
them renders the reference batch under a lock that holds across machines (the identity tokens'
"compute once"); every other worker, and every later job with the same references, reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict

from farm.controls import attach, stored_maps
from farm.identity.cache import KeyLock
from farm.identity.tokens import IdentityTokens
from farm.recipe import RenderSettings
from farm.render.consistency import (
    ConsistentAttention,
    SharedTokens,
    load_tokens,
    recipe,
    store_tokens,
)
from farm.render.loading import LoadedPreset
from farm.render.pipeline import RenderResult
from farm.storage.base import Storage
from farm.story import PlannedRender, Story

log = logging.getLogger(__name__)

PREFIX = "consistency"


def reference_renders(story: Story, plan: Sequence[PlannedRender]) -> list[PlannedRender]:
    """The renders every other one attends to: the first variant of each reference scene, as
    `plan` (the story's whole plan, control maps attached) has them."""
    wanted = story.consistency.reference_indices(len(story.scenes))
    first = {p.scene_index: p for p in plan if p.variant == 0}
    return [first[index] for index in wanted]


def stored_references(story: Story, storage: Storage) -> list[PlannedRender]:
    """A worker's reference renders: planned from the job's story (whichever shard it holds),
    with the control maps their scenes name fetched from storage."""
    planned = reference_renders(story, story.plan())
    return attach(planned, story, stored_maps(storage, story, planned))


def tokens_prefix(
    story: Story,
    references: Sequence[PlannedRender],
    settings: RenderSettings,
    identities: Mapping[str, IdentityTokens],
    class_words: Mapping[str, str],
    loaded: LoadedPreset,
) -> str:
    """Where the shared tokens of these references live: the story's character, then a digest
    of everything that decides them, so a changed scene, seed, photo or setting never reads
    stale tokens, and an unchanged story (resubmitted, retried) never renders them again."""
    pipeline = loaded.pipeline
    people = sorted(
        [trigger, class_words.get(trigger), t.encoder_fingerprint, t.photos_fingerprint]
        for trigger, t in identities.items()
    )
    document = {
        "references": [[*recipe(r), repr(r.control)] for r in references],
        "settings": asdict(settings),
        "consistency": story.consistency.document(),
        "people": people,
        "model": [loaded.preset.name, str(pipeline.dtype), type(pipeline.scheduler).__name__],
        "pipeline": [pipeline.noise, pipeline.prompt_truncation],
    }
    dressing = [[part.recipe() for part in r.dressing] for r in references]
    if any(dressing):  # outfits' and locations' reference images, where the references use some
        document["dressing"] = dressing
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:40]
    character = identities[story.character.trigger].photos_fingerprint[:32]
    return f"{PREFIX}/{character}/{digest}"


def render_references(
    loaded: LoadedPreset,
    references: Sequence[PlannedRender],
    settings: RenderSettings,
    identities: Mapping[str, IdentityTokens],
    class_words: Mapping[str, str],
    story: Story,
) -> tuple[SharedTokens, RenderResult]:
    """The reference batch, rendered with the tokens it shares recorded: those tokens, and the
    references' images."""
    attention = ConsistentAttention(story.consistency, record=True)
    result = loaded.render(references, settings, identities, class_words, consistency=attention)
    assert attention.recorded is not None
    return attention.recorded, result


class ReferenceTokens:
    """A worker's way to the shared tokens of a story: its memory (the last story only: on SDXL
    they take gigabytes), then object storage, then rendering the reference batch once across
    the farm (under `lock`)."""

    def __init__(self, storage: Storage, lock: KeyLock, capacity: int = 1) -> None:
        self.storage = storage
        self.lock = lock
        self.capacity = capacity
        self.rendered = 0  # reference batches this process rendered (the rest were read)
        self._memory: OrderedDict[str, SharedTokens] = OrderedDict()
        self._guard = threading.Lock()

    def _remember(self, prefix: str, tokens: SharedTokens) -> SharedTokens:
        with self._guard:
            self._memory[prefix] = tokens
            self._memory.move_to_end(prefix)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)
        return tokens

    def get(
        self,
        loaded: LoadedPreset,
        story: Story,
        settings: RenderSettings,
        identities: Mapping[str, IdentityTokens],
        class_words: Mapping[str, str],
    ) -> SharedTokens:
        references = stored_references(story, self.storage)
        prefix = tokens_prefix(story, references, settings, identities, class_words, loaded)
        with self._guard:
            tokens = self._memory.get(prefix)
        if tokens is not None:
            return tokens
        with self.lock(prefix):
            # Whoever held the lock before us may have stored them meanwhile.
            tokens = load_tokens(self.storage, prefix)
            if tokens is None:
                tokens, _ = render_references(
                    loaded, references, settings, identities, class_words, story
                )
                store_tokens(self.storage, prefix, tokens)
                self.rendered += 1
                log.info(
                    "rendered %d reference scenes: %d bytes of shared tokens in %s",
                    len(references),
                    tokens.nbytes,
                    prefix,
                )
        return self._remember(prefix, tokens)


def consistent_attention(
    story: Story,
    loaded: LoadedPreset,
    settings: RenderSettings,
    identities: Mapping[str, IdentityTokens],
    class_words: Mapping[str, str],
    shared: ReferenceTokens | None,
) -> ConsistentAttention | None:
    """What a worker passes the pipeline for `story`'s renders: None when consistency is off,
    the batch form, or the stored references read (rendered first if no worker has)."""
    consistency = story.consistency
    if consistency.mode == "off":
        return None
    if consistency.mode == "batch":
        return ConsistentAttention(consistency)
    if shared is None:
        raise RuntimeError("story-mode consistency needs object storage for the shared tokens")
    tokens = shared.get(loaded, story, settings, identities, class_words)
    return ConsistentAttention(consistency, reading=tokens)


def render_batches(
    loaded: LoadedPreset,
    story: Story,
    plan: Sequence[PlannedRender],
    todo: Sequence[PlannedRender],
    settings: RenderSettings,
    identities: Mapping[str, IdentityTokens],
    class_words: Mapping[str, str],
    batch_size: int,
) -> Iterator[tuple[Sequence[PlannedRender], RenderResult]]:
    """`todo`, of the story's whole `plan`, rendered in one process (`farm render`) with the
    story's consistency, in the batches a farm renders it in: `todo` in order, `batch_size` at
    a time, as shards of a multiple of the batch size hold it.

    In story mode the reference batch renders first, for the tokens its scenes share, and then
    every batch reads them as a worker does, the reference scenes' own too: a CPU's (and a
    GPU's) kernels round differently by batch size and makeup, so a scene has the farm's pixels
    only in the farm's batch. A batch that is the reference batch itself (the same renders in
    the same order) is not rendered twice: reading its own tokens is the same computation, so
    its images are the reference batch's, to the bit."""
    attention: ConsistentAttention | None = None
    references: list[PlannedRender] = []
    referenced: RenderResult | None = None
    if story.consistency.mode == "batch":
        attention = ConsistentAttention(story.consistency)
    elif story.consistency.mode == "story":
        references = reference_renders(story, plan)
        tokens, referenced = render_references(
            loaded, references, settings, identities, class_words, story
        )
        attention = ConsistentAttention(story.consistency, reading=tokens)
    for start in range(0, len(todo), batch_size):
        batch = list(todo[start : start + batch_size])
        if referenced is not None and batch == references:
            yield batch, referenced
        else:
            result = loaded.render(batch, settings, identities, class_words, consistency=attention)
            yield batch, result
