"""Consistent self-attention across scenes, on the tiny preset: `off` is today's render to the
byte, `batch` is a plain single-process implementation written here, and `story` renders are
the same whether the reference scenes were rendered in the same call or read from storage."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from farm.consistency import Consistency
from farm.errors import InputError
from farm.identity.tokens import IdentityTokens
from farm.recipe import RenderSettings, render_filename
from farm.render.consistency import (
    ConsistentAttention,
    load_tokens,
    self_attention_layers,
    store_tokens,
)
from farm.render.pipeline import SceneRender
from farm.render.presets import PRESETS
from farm.render.reference_scenes import ReferenceTokens, consistent_attention, reference_renders
from farm.render.story_render import character_photos, render_story
from farm.storage.local import LocalStorage
from farm.story import load_story, parse_story
from tests.fixtures.tiny import EXAMPLES, photos_of
from tests.render.test_control import pose_map

SIZE = dict(height=64, width=64)
PROMPTS = ["a man img reading in a library", "a man img walking in a garden", "a man img at a desk"]


@pytest.fixture(scope="module")
def newton(tiny) -> IdentityTokens:
    return tiny.identity.tokens_for(photos_of("newton_man", 2))


def scenes(seeds=(11, 22, 33)) -> list[SceneRender]:
    return [SceneRender(p, "lowres", s) for p, s in zip(PROMPTS, seeds, strict=False)]


def run(tiny, identity, renders, *, steps=3, guidance=5.0, **hooks):
    """Final latents and images of one pipeline call."""
    latents = []
    result = tiny.pipeline(
        renders,
        {"img": identity},
        steps=steps,
        guidance=guidance,
        callback=lambda state: latents.append(state.latents.clone()),
        **SIZE,
        **hooks,
    )
    return latents[-1], [np.asarray(image).astype(np.int16) for image in result.images]


class ReferenceConsistentAttention:
    """Consistent self-attention as the method says, one image and one head at a time: each
    image's queries see all of its own tokens and, for every other image of the batch, the
    tokens sampled by sha256(seed:step:tokens) at `rate` (sent through fp16, as shared tokens
    are), their logits raised by log(strength)."""

    def __init__(self, original, seeds, settings: Consistency, steps: int, step: list[int]):
        self.original, self.seeds, self.settings = original, seeds, settings
        self.steps, self.step = steps, step

    def sample(self, seed: int, tokens: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{seed}:{self.step[0]}:{tokens}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))
        count = max(1, round(self.settings.sample_rate * tokens))
        return torch.randperm(tokens, generator=generator)[:count].sort().values

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        if not self.settings.applies(self.step[0], self.steps):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)
        w_q, w_k, w_v = attn.to_qkv.weight.chunk(3)
        w_out, b_out = attn.to_out[0].weight, attn.to_out[0].bias
        images = len(self.seeds)
        branches = hidden_states.shape[0] // images
        tokens = hidden_states.shape[1]
        out = torch.empty_like(hidden_states)
        for branch in range(branches):
            rows = hidden_states[branch * images : (branch + 1) * images]
            for b in range(images):
                shared = [
                    rows[j][self.sample(self.seeds[j], tokens)].half().float()
                    for j in range(images)
                    if j != b
                ]
                context = torch.cat([rows[b], *shared])
                q, k, v = rows[b] @ w_q.T, context @ w_k.T, context @ w_v.T
                heads = []
                dim = q.shape[-1] // attn.heads
                for h in range(attn.heads):
                    part = slice(h * dim, (h + 1) * dim)
                    logits = q[:, part] @ k[:, part].T / math.sqrt(dim)
                    logits[:, tokens:] += math.log(self.settings.strength)
                    heads.append(logits.softmax(-1) @ v[:, part])
                out[branch * images + b] = torch.cat(heads, -1) @ w_out.T + b_out
        return out


def reference_run(tiny, identity, renders, settings: Consistency, *, steps=3, guidance=5.0):
    layers = self_attention_layers(tiny.pipeline.unet, settings.blocks)
    originals = {name: attn.processor for name, attn in layers.items()}
    step = [0]
    seeds = [r.seed for r in renders]
    for name, attn in layers.items():
        attn.set_processor(
            ReferenceConsistentAttention(originals[name], seeds, settings, steps, step)
        )

    def advance(state) -> None:
        step[0] = state.step + 1

    latents = []
    try:
        result = tiny.pipeline(
            renders,
            {"img": identity},
            steps=steps,
            guidance=guidance,
            callback=lambda s: (latents.append(s.latents.clone()), advance(s)),
            **SIZE,
        )
    finally:
        for name, attn in layers.items():
            attn.set_processor(originals[name])
    return latents[-1], [np.asarray(image).astype(np.int16) for image in result.images]


@pytest.mark.parametrize(
    ("options", "guidance"),
    [
        ({"strength": 2.5, "sample_rate": 0.3, "blocks": ["mid", "up"]}, 5.0),
        ({"window": (0.0, 0.6)}, 1.0),  # the paper's rate and blocks; no guidance: one branch
    ],
)
def test_batch_mode_is_the_method_written_plainly(tiny, newton, options, guidance):
    settings = Consistency(mode="batch", **options)
    renders = scenes()
    want_latents, want = reference_run(tiny, newton, renders, settings, guidance=guidance)
    latents, got = run(
        tiny, newton, renders, guidance=guidance, consistency=ConsistentAttention(settings)
    )
    torch.testing.assert_close(latents, want_latents, atol=1e-4, rtol=1e-4)
    assert max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)) <= 1
    # And it does something: each render moved away from the one rendered alone.
    _, alone = run(tiny, newton, renders, guidance=guidance)
    assert all(np.abs(g - a).max() > 0 for g, a in zip(got, alone, strict=True))


def test_off_leaves_the_unet_as_it_was(tiny, newton):
    renders = scenes()
    _, before = run(tiny, newton, renders)
    run(tiny, newton, renders, consistency=ConsistentAttention(Consistency(mode="batch")))
    _, after = run(tiny, newton, renders)
    assert all(np.array_equal(b, a) for b, a in zip(before, after, strict=True))


def test_a_lone_render_in_batch_mode_is_todays(tiny, newton):
    """Nothing to attend to: the UNet's own processor runs, so the pixels are exactly today's."""
    (render,) = scenes(seeds=(5,))
    _, alone = run(tiny, newton, [render])
    _, batch = run(
        tiny, newton, [render], consistency=ConsistentAttention(Consistency(mode="batch"))
    )
    assert np.array_equal(alone[0], batch[0])


def test_story_mode_reading_stored_tokens_equals_rendering_with_the_references(
    tiny, newton, tmp_path
):
    settings = Consistency(mode="story", strength=1.5)
    references = scenes(seeds=(11, 22))
    writing = ConsistentAttention(settings, record=True)
    _, written = run(tiny, newton, references, consistency=writing)
    tokens = writing.recorded
    # Stored compactly: sampled tokens at half precision, only for the steps in the window.
    assert tokens.steps == [1, 2]  # 3 steps; the window starts at 4%
    tensors = list(tokens.tokens.values())
    assert all(t.dtype == torch.float16 for t in tensors)
    layers = self_attention_layers(tiny.pipeline.unet, ["up"])
    assert {layer for _, layer in tokens.tokens} == set(layers)
    assert {tuple(t.shape[:3]) for t in tensors} == {(2, 2, 128)}  # 16 x 16 tokens, half
    store_tokens(LocalStorage(tmp_path), "consistency/x/y", tokens)
    read = load_tokens(LocalStorage(tmp_path), "consistency/x/y")
    assert read.references == tokens.references and read.nbytes == tokens.nbytes
    # A reference rendered again, alone or with others, reading the stored tokens: the same.
    reading = ConsistentAttention(settings, reading=read)
    _, again = run(tiny, newton, references[::-1], consistency=reading)
    assert max(np.abs(g - w).max() for g, w in zip(again[::-1], written, strict=True)) <= 1
    # Another scene reads them, in any batch: the same pixels; not those of consistency off.
    other = SceneRender(PROMPTS[2], "lowres", 33)
    _, alone = run(tiny, newton, [other], consistency=reading)
    _, batched = run(tiny, newton, [references[0], other], consistency=reading)
    assert np.abs(alone[0] - batched[1]).max() <= 1
    _, off = run(tiny, newton, [other])
    assert np.abs(alone[0] - off[0]).max() > 0


def test_reference_batch_must_render_whole(tiny, newton):
    writing = ConsistentAttention(Consistency(mode="story"), record=True)
    run(tiny, newton, scenes(seeds=(1, 2)), consistency=writing)
    with pytest.raises(RuntimeError, match="name fewer reference scenes"):
        run(tiny, newton, scenes(seeds=(1,)), consistency=writing)


def example(
    consistency: dict | None, preset: str = "tiny", *, scenes: int = 3, steps: int = 3
) -> dict:
    """The example story, cut to `scenes` scenes of 64x64 in `steps` steps, with
    `consistency`."""
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    data = story.model_dump(mode="json", exclude={"consistency"})
    data.update(preset=preset, steps=steps, width=64, height=64, variants=1)
    data["character"]["photos"] = [str(path.resolve()) for path in story.photo_paths()]
    data["scenes"] = data["scenes"][:scenes]
    if consistency is not None:
        data["consistency"] = consistency
    return data


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_off_renders_todays_files_byte_for_byte(tiny, tmp_path):
    today = parse_story(example(None), presets=PRESETS)
    off = parse_story(example({"mode": "off", "strength": 3, "sample_rate": 0.1}), presets=PRESETS)
    render_story(today, tmp_path / "today", tiny)
    render_story(off, tmp_path / "off", tiny)
    for png in sorted((tmp_path / "today").glob("*.png")):
        assert (tmp_path / "off" / png.name).read_bytes() == png.read_bytes()


def test_story_mode_in_one_process(tiny, tmp_path):
    story = parse_story(
        example({"mode": "story", "reference_scenes": [3], "window": [0, 1], "strength": 4}),
        presets=PRESETS,
    )
    assert [r.scene_index for r in reference_renders(story, story.plan())] == [2]
    render_story(story, tmp_path / "story", tiny)
    today = parse_story(example(None), presets=PRESETS)
    render_story(today, tmp_path / "today", tiny)
    for scene in range(3):
        name = render_filename(scene, 0)
        story_pixels = read_png(tmp_path / "story" / name).astype(np.int16)
        moved = np.abs(story_pixels - read_png(tmp_path / "today" / name)).max()
        # A lone reference has no other to attend to: it is today's render (another batch,
        # so within a level); the others moved towards it.
        assert moved <= 1 if scene == 2 else moved > 1, (scene, moved)


def test_story_mode_in_one_process_is_the_farms_to_the_byte(tiny, tmp_path):
    """`farm render` against a farm: one worker renders reference scenes 1 and 3 and stores
    their tokens, another reads them and renders the story in shards of the batch size. A CPU's
    convolutions round differently by batch, so the one process batches as the farm does
    (reference scenes included, reading the tokens), not the other renders on their own."""
    consistency = {"mode": "story", "reference_scenes": [1, 3], "window": [0, 1], "strength": 2}
    story = parse_story(example(consistency, scenes=5, steps=2), presets=PRESETS)
    assert len(story.plan()) == 6  # scene 2 has two variants
    render_story(story, tmp_path / "alone", tiny)

    settings = RenderSettings.of(story)
    character = story.character
    identities = {
        character.trigger: tiny.identity.tokens_for(
            character_photos(story), crop=character.face_crop
        )
    }
    class_words = {character.trigger: character.class_word}
    bucket = LocalStorage(tmp_path / "bucket")
    workers = [ReferenceTokens(bucket, lambda key: nullcontext()) for _ in range(2)]
    for worker in workers:  # the first renders and stores the tokens, the second reads them
        attention = consistent_attention(story, tiny, settings, identities, class_words, worker)
    assert [worker.rendered for worker in workers] == [1, 0]
    plan, size = story.plan(), tiny.preset.batch_size
    for start in range(0, len(plan), size):  # the shards, each one batch
        shard = plan[start : start + size]
        result = tiny.render(shard, settings, identities, class_words, consistency=attention)
        for planned, image in zip(shard, result.images, strict=True):
            name = render_filename(planned.scene_index, planned.variant)
            alone = read_png(tmp_path / "alone" / name)
            assert np.array_equal(np.asarray(image), alone), name


@pytest.mark.parametrize(
    ("consistency", "preset", "message"),
    [
        ({"mode": "story"}, "tiny-fast", "preset 'tiny-fast' does not support consistency"),
        ({"mode": "story", "reference_scenes": [1, 7]}, "tiny", "reference scene 7 does not"),
        ({"mode": "story", "reference_scenes": [0]}, "tiny", "consistency.reference_scenes"),
        ({"mode": "batch", "window": [0.5, 0.5]}, "tiny", "window is [from, to)"),
        ({"mode": "batch", "blocks": ["side"]}, "tiny", "consistency.blocks[0]: input should be"),
        ({"mode": "sometimes"}, "tiny", "consistency.mode"),
        ({"mode": "story", "reference_scenes": 5}, "tiny", "consistency.reference_scenes"),
    ],
)
def test_bad_consistency_is_refused_when_the_story_is_read(consistency, preset, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_story(example(consistency, preset), presets=PRESETS)


def test_a_posed_reference_scene_renders_with_its_map(tiny, tmp_path):
    """The reference batch carries the scenes' control maps: a lone posed reference is the
    posed render of consistency off, within a level."""
    shutil.copytree(EXAMPLES / "photos", tmp_path / "photos")
    pose_map().save(tmp_path / "pose.png")
    data = yaml.safe_load((EXAMPLES / "story.yaml").read_text())
    data.update(steps=2, width=64, height=64, variants=1)
    data.pop("aspect", None)
    control = {"image": "pose.png", "type": "openpose", "scale": 1.0}
    data["scenes"] = [{**data["scenes"][0], "control": control}, data["scenes"][1]]
    for mode in ("off", "story"):
        data["consistency"] = {"mode": mode, "reference_scenes": [1]}
        (tmp_path / "story.yaml").write_text(yaml.safe_dump(data))
        story = load_story(tmp_path / "story.yaml", presets=PRESETS)
        render_story(story, tmp_path / mode, tiny)
    posed = [
        read_png(tmp_path / mode / render_filename(0, 0)).astype(np.int16)
        for mode in ("off", "story")
    ]
    assert np.abs(posed[0] - posed[1]).max() <= 1


def test_a_compiled_unet_runs_eager_while_scenes_share_attention(tiny, newton):
    """The compiled forward (here a stand-in that counts its calls) is set aside for the call
    and back afterwards."""
    unet = tiny.pipeline.unet
    calls = []

    def compiled(*args, **kwargs):
        calls.append(1)
        return type(unet).forward(unet, *args, **kwargs)

    unet.forward = compiled
    try:
        run(
            tiny,
            newton,
            scenes(seeds=(3, 4)),
            consistency=ConsistentAttention(Consistency(mode="batch")),
        )
        assert calls == [] and vars(unet)["forward"] is compiled
        run(tiny, newton, scenes(seeds=(3,)))
        assert len(calls) == 3  # one call per step
    finally:
        vars(unet).pop("forward", None)
