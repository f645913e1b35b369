"""Face analysis: insightface against tiny generated ONNX packs, dlib against the real photos."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.errors import InputError, ModelNotFoundError
from farm.identity.faces import (
    DlibFaceAnalyzer,
    Face,
    FaceAnalyzer,
    InsightFaceAnalyzer,
    open_face_analyzer,
    primary_face,
)
from farm.identity.photos import load_photo
from tests.fixtures.insightface_pack import FACE_BOX, expected_embedding, write_fake_pack

REFS = Path(__file__).resolve().parents[1] / "data" / "refs"
PHOTOS = sorted(p for p in REFS.glob("*/*") if p.suffix in (".jpg", ".png"))

# insightface's own alignment code calls a scikit-image API that is being deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def noise_photo(seed: int, side: int = 480) -> Image.Image:
    """Smooth random blobs: content differs per seed, yet sub-pixel shifts barely matter."""
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)


def known_box(side: int) -> np.ndarray:
    return np.array(FACE_BOX) * side


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory: pytest.TempPathFactory) -> InsightFaceAnalyzer:
    return InsightFaceAnalyzer(write_fake_pack(tmp_path_factory.mktemp("packs") / "buffalo_l"))


def test_insightface_pack_loads_from_its_folder(buffalo: InsightFaceAnalyzer) -> None:
    assert buffalo.embedding_dim == 512
    pack, fingerprint = buffalo.name.split(":")[1:]
    assert buffalo.name.startswith("insightface:") and pack == "buffalo_l"
    assert len(fingerprint) == 12


def test_insightface_finds_the_known_face_with_its_raw_embedding(
    buffalo: InsightFaceAnalyzer,
) -> None:
    image = noise_photo(1)
    faces = buffalo.detect(image)
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.box, known_box(480), atol=2)
    assert face.score == pytest.approx(0.9)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1) > 0.5  # not normalised
    np.testing.assert_allclose(face.embedding, expected_embedding(image, known_box(480)), atol=1e-4)


def test_insightface_embeddings_differ_between_faces(buffalo: InsightFaceAnalyzer) -> None:
    first, second = (buffalo.detect(noise_photo(seed))[0].embedding for seed in (1, 2))
    assert np.linalg.norm(first - second) > 1.0


def test_insightface_fingerprint_is_stable_and_follows_the_files(tmp_path: Path) -> None:
    same = InsightFaceAnalyzer(write_fake_pack(tmp_path / "a" / "buffalo_l"))
    again = InsightFaceAnalyzer(write_fake_pack(tmp_path / "b" / "buffalo_l"))
    other = InsightFaceAnalyzer(write_fake_pack(tmp_path / "c" / "buffalo_l", answer_size=384))
    assert same.name == again.name != other.name


@pytest.mark.parametrize("answer_size", [640, 384, 256])
def test_insightface_retries_smaller_detection_sizes(tmp_path: Path, answer_size: int) -> None:
    analyzer = InsightFaceAnalyzer(write_fake_pack(tmp_path / "buffalo_l", answer_size=answer_size))
    faces = analyzer.detect(noise_photo(3, side=500))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, known_box(500), atol=3)


def test_insightface_photo_without_face_is_refused(tmp_path: Path) -> None:
    analyzer = InsightFaceAnalyzer(write_fake_pack(tmp_path / "buffalo_l", answer_size=200))
    with pytest.raises(InputError, match=r"'beach\.jpg': no face found"):
        primary_face(analyzer, noise_photo(4), "beach.jpg")


def test_missing_pack_folder_says_what_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        InsightFaceAnalyzer(tmp_path / "antelopev2")
    message = str(caught.value)
    assert "antelopev2.zip" in message and str(tmp_path / "antelopev2") in message


@pytest.mark.parametrize(
    ("present", "missing"),
    [({"detector": False}, "detection"), ({"recognizer": False}, "recognition")],
)
def test_pack_without_a_needed_model_is_refused(
    tmp_path: Path, present: dict, missing: str
) -> None:
    folder = write_fake_pack(tmp_path / "buffalo_l", **present)
    with pytest.raises(ModelNotFoundError, match=f"no {missing} model.*buffalo_l.zip"):
        InsightFaceAnalyzer(folder)


def test_open_face_analyzer_finds_packs_in_both_layouts(tmp_path: Path) -> None:
    write_fake_pack(tmp_path / "canonical" / "insightface" / "models" / "buffalo_l")
    write_fake_pack(tmp_path / "flat" / "antelopev2")
    assert open_face_analyzer("buffalo_l", tmp_path / "canonical").name.startswith(
        "insightface:buffalo_l:"
    )
    assert open_face_analyzer("antelopev2", tmp_path / "flat").name.startswith(
        "insightface:antelopev2:"
    )
    with pytest.raises(ModelNotFoundError, match="insightface/models/buffalo_l"):
        open_face_analyzer("buffalo_l", tmp_path / "flat")


def test_open_face_analyzer_names_the_valid_kinds(tmp_path: Path) -> None:
    assert isinstance(open_face_analyzer("dlib", tmp_path), DlibFaceAnalyzer)
    with pytest.raises(ValueError, match="dlib, buffalo_l, antelopev2"):
        open_face_analyzer("mtcnn", tmp_path)


# --- the interface itself --------------------------------------------------------------------


class _Fixed(FaceAnalyzer):
    name = "fixed"
    embedding_dim = 2

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, image: Image.Image) -> list[Face]:
        return self.faces


def test_primary_face_is_the_largest() -> None:
    tiny = Face(box=(0, 0, 10, 10), score=0.99, embedding=np.zeros(2, np.float32))
    big = Face(box=(20, 20, 120, 140), score=0.6, embedding=np.ones(2, np.float32))
    assert big.area == 12000
    assert primary_face(_Fixed([tiny, big]), noise_photo(0, 64), "a.jpg") is big


# --- dlib on the real reference photos -------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_faces() -> dict[str, list[Face]]:
    analyzer = DlibFaceAnalyzer()
    return {p.name: analyzer.detect(load_photo(p.read_bytes(), p.name)) for p in PHOTOS}


def test_dlib_analyzer_identity() -> None:
    analyzer = DlibFaceAnalyzer()
    assert analyzer.name.startswith("dlib:resnet_v1:")
    assert analyzer.embedding_dim == 128
    assert DlibFaceAnalyzer().name == analyzer.name


def test_dlib_finds_a_face_in_every_reference_photo(dlib_faces: dict[str, list[Face]]) -> None:
    assert len(dlib_faces) == 9
    for name, faces in dlib_faces.items():
        assert faces, name
        assert faces[0].embedding.shape == (128,) and faces[0].embedding.dtype == np.float32
        assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


def test_dlib_box_is_in_full_size_pixels(dlib_faces: dict[str, list[Face]]) -> None:
    # Detection runs on an 800 px copy of this 1024 px photo; the box must come back scaled.
    x0, y0, x1, y1 = dlib_faces["scarlett_0.jpg"][0].box
    rx0, ry0, rx1, ry1 = 233, 357, 788, 911  # the face as full-size dlib sees it
    overlap = max(0, min(x1, rx1) - max(x0, rx0)) * max(0, min(y1, ry1) - max(y0, ry0))
    union = (x1 - x0) * (y1 - y0) + (rx1 - rx0) * (ry1 - ry0) - overlap
    assert overlap / union > 0.75


def test_dlib_embeddings_separate_people(dlib_faces: dict[str, list[Face]]) -> None:
    person = {p.name: p.parent.name for p in PHOTOS}
    for a, b in itertools.combinations(sorted(dlib_faces), 2):
        distance = np.linalg.norm(dlib_faces[a][0].embedding - dlib_faces[b][0].embedding)
        if person[a] == person[b]:
            assert distance < 0.6, (a, b, distance)
        else:
            assert distance > 0.6, (a, b, distance)


def test_dlib_photo_without_face_is_refused() -> None:
    ramp = np.linspace(0, 255, 600, dtype=np.uint8)
    landscape = np.stack([np.tile(ramp, (400, 1))] * 3, axis=-1)
    landscape[250:] = (60, 140, 60)  # a green field under a gradient sky
    with pytest.raises(InputError, match=r"'field\.png': no face found"):
        primary_face(DlibFaceAnalyzer(), Image.fromarray(landscape), "field.png")
