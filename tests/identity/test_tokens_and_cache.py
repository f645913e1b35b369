"""ID tokens: their file format, identity mixing, and the cache that makes the vision tower run
once per character."""

from __future__ import annotations

import threading

import pytest
import torch

from farm.errors import InputError
from farm.identity.cache import IdentityCache, identity_key
from farm.identity.engine import Photo
from farm.identity.tokens import IdentityTokens, concat, mix
from farm.render.presets import PRESETS
from farm.render.story_render import render_story
from farm.storage.local import LocalStorage
from farm.story import load_story
from tests.fixtures.tiny import EXAMPLES, photos_of


def tokens(n: int, value: float, fingerprint: str = "enc") -> IdentityTokens:
    return IdentityTokens(torch.full((n, 2, 4), value), fingerprint, f"photos-{n}-{value}")


def test_tokens_round_trip_through_safetensors_bytes():
    original = IdentityTokens(torch.randn(3, 2, 8), "enc-fp", "photos-fp")
    again = IdentityTokens.from_bytes(original.to_bytes())
    assert torch.equal(again.tokens, original.tokens)
    assert (again.encoder_fingerprint, again.photos_fingerprint) == ("enc-fp", "photos-fp")
    assert original.flat().shape == (6, 8) and original.num_tokens == 6


def test_concat_is_the_reference_mixing_each_photo_keeps_its_tokens():
    mixed = concat([tokens(2, 1.0), tokens(1, 3.0)])
    assert mixed.tokens.shape == (3, 2, 4)
    assert mixed.tokens[:2].eq(1.0).all() and mixed.tokens[2].eq(3.0).all()


def test_weighted_mix_blends_token_space_slot_by_slot():
    a, b = tokens(2, 1.0), tokens(1, 3.0)
    assert torch.equal(mix([a, b], [1, 0]).tokens, a.tokens)  # all of a
    halfway = mix([a, b], [1, 1])
    assert halfway.tokens.shape == (2, 2, 4)  # slots default to the largest photo count
    assert halfway.tokens.eq(2.0).all()
    assert mix([a, b], [3, 1], slots=4).tokens.eq(1.5).all()  # weights are normalised
    assert mix([a, b], [1, 1]).photos_fingerprint != mix([a, b], [1, 2]).photos_fingerprint


@pytest.mark.parametrize(
    ("identities", "weights", "message"),
    [
        ([tokens(1, 1.0)], [1, 2], "one weight per identity"),
        ([tokens(1, 1.0), tokens(1, 2.0)], [0, 0], "not all 0"),
        ([tokens(1, 1.0), tokens(1, 2.0)], [-1, 2], ">= 0"),
        ([tokens(1, 1.0, "a"), tokens(1, 2.0, "b")], [1, 1], "different encoders"),
    ],
)
def test_bad_mixes_are_input_errors(identities, weights, message):
    with pytest.raises(InputError, match=message):
        mix(identities, weights)


def test_cache_computes_once_then_serves_memory_then_storage(tmp_path):
    storage = LocalStorage(tmp_path)
    calls = []

    def compute() -> IdentityTokens:
        calls.append(1)
        return tokens(2, 5.0)

    first = IdentityCache(storage)
    assert first.get_or_compute("enc", "p", compute) is first.get_or_compute("enc", "p", compute)
    assert storage.exists(identity_key("enc", "p"))
    # A second worker (a new cache on the same storage) never computes them again.
    second = IdentityCache(storage)
    again = second.get_or_compute("enc", "p", compute)
    assert torch.equal(again.tokens, tokens(2, 5.0).tokens)
    assert calls == [1]
    assert (first.stats.computed, first.stats.memory_hits, second.stats.storage_hits) == (1, 1, 1)


def test_concurrent_requests_for_one_character_compute_once(tmp_path):
    cache = IdentityCache(LocalStorage(tmp_path))
    calls = []
    gate = threading.Event()

    def compute() -> IdentityTokens:
        calls.append(1)
        gate.wait(1)
        return tokens(1, 1.0)

    threads = [
        threading.Thread(target=cache.get_or_compute, args=("enc", "p", compute)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1]


def test_lru_forgets_the_least_recently_used():
    cache = IdentityCache(capacity=2)
    for name in ("a", "b", "a", "c"):
        cache.get_or_compute("enc", name, lambda n=name: tokens(1, float(len(n))))
    computed = cache.stats.computed
    cache.get_or_compute("enc", "a", lambda: tokens(1, 1.0))  # a was used recently: kept
    assert cache.stats.computed == computed
    cache.get_or_compute("enc", "b", lambda: tokens(1, 1.0))  # b was evicted
    assert cache.stats.computed == computed + 1


def test_vision_tower_runs_once_for_two_renders_of_one_character(tiny, tmp_path, monkeypatch):
    runs = []
    tower = tiny.identity.encoder.vision_model
    hook = tower.register_forward_hook(lambda *a: runs.append(1))
    monkeypatch.setattr(tiny.identity, "cache", IdentityCache(LocalStorage(tmp_path / "cache")))
    story = load_story(EXAMPLES / "story.yaml", presets=PRESETS)
    story = story.model_copy(update={"scenes": story.scenes[:1], "steps": 2})
    try:
        render_story(story, tmp_path / "one", tiny)
        render_story(story, tmp_path / "two", tiny)
    finally:
        hook.remove()
    assert runs == [1]  # one batched forward over the character's photos, then never again


def test_photo_order_and_preprocessing_are_part_of_the_key(tiny):
    photos = photos_of("newton_man", 2)
    engine = tiny.identity
    assert engine.fingerprint(photos, False) != engine.fingerprint(photos[::-1], False)
    assert engine.fingerprint(photos, False) != engine.fingerprint(photos, True)


def test_face_crop_changes_the_tokens(tiny):
    photos = photos_of("newton_man", 1)
    plain = tiny.identity.tokens_for(photos)
    cropped = tiny.identity.tokens_for(photos, crop=True)
    assert not torch.allclose(plain.tokens, cropped.tokens)


def test_photo_without_a_face_is_rejected_by_name(tiny):
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.linear_gradient("L").resize((256, 256)).convert("RGB").save(buffer, "PNG")
    photos = [*photos_of("newton_man", 1), Photo("sky.png", buffer.getvalue())]
    with pytest.raises(InputError, match=r"'sky\.png'"):
        tiny.identity.tokens_for(photos)
