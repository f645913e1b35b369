"""The identity score separates people on real photos, with a real face-recognition model."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from farm.identity.faces import DlibFaceAnalyzer, primary_face
from farm.identity.photos import load_photo
from farm.quality import Reference, face_similarity
from tests.fixtures.tiny import REFS

PEOPLE = ("newton_man", "scarletthead_woman")


@pytest.fixture(scope="module")
def analyzer() -> DlibFaceAnalyzer:
    return DlibFaceAnalyzer()


@pytest.fixture(scope="module")
def photos() -> dict[str, list[Image.Image]]:
    return {
        person: [load_photo(p.read_bytes(), p.name) for p in sorted((REFS / person).iterdir())]
        for person in PEOPLE
    }


def reference(analyzer, images) -> Reference:
    return Reference.of(analyzer, [primary_face(analyzer, im, "ref").embedding for im in images])


def test_same_person_scores_higher_than_anyone_else(analyzer, photos):
    """Leave-one-out: each photo against its own person's other photos and against the other
    person's photos. Every same-person score beats every different-person score."""
    same, different = [], []
    for person, other in itertools.permutations(PEOPLE):
        for i, held_out in enumerate(photos[person]):
            own = reference(analyzer, photos[person][:i] + photos[person][i + 1 :])
            theirs = reference(analyzer, photos[other])
            same.append(face_similarity(analyzer, held_out, own))
            different.append(face_similarity(analyzer, held_out, theirs))
    assert min(same) > max(different)
    assert min(same) > 0.9 and max(different) < 0.9  # dlib: same ~0.93-0.97, others ~0.77-0.82


def test_no_face_is_its_own_state(analyzer, photos):
    sky = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
    assert face_similarity(analyzer, sky, reference(analyzer, photos["newton_man"])) is None


def test_scores_from_another_model_are_refused(analyzer, photos):
    ref = Reference("insightface:buffalo_l:abc", reference(analyzer, photos["newton_man"]).centroid)
    with pytest.raises(ValueError, match="different models"):
        face_similarity(analyzer, photos["newton_man"][0], ref)
