"""Face detection and face-recognition embeddings behind one small interface.

PhotoMaker V2 needs insightface's ArcFace embedding; dlib is the light fallback that runs
anywhere (and in tests) without the insightface pack. Callers only see `FaceAnalyzer`.
"""

import functools
import hashlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from farm.errors import InputError, ModelNotFoundError

# The official PhotoMaker V2 retry: shrinking the detector input finds faces that fill the photo.
DET_SIZES = (*range(640, 256, -64), 256)

INSIGHTFACE_PACKS = ("buffalo_l", "antelopev2")
FACE_ANALYZER_KINDS = ("dlib", *INSIGHTFACE_PACKS)

# dlib's HOG detector cost grows with pixels; faces in reference photos are large anyway.
DLIB_MAX_SIDE = 800
# Below this long side, faces may be under HOG's ~80 px minimum, so detect on a 2x upsample.
DLIB_UPSAMPLE_BELOW = 400


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixels of the image it was found in."""

    box: tuple[float, float, float, float]
    score: float
    embedding: np.ndarray | None = field(compare=False, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceAnalyzer(ABC):
    """A detector plus recognition model; `name` goes into identity cache keys."""

    name: str
    embedding_dim: int

    @abstractmethod
    def detect(self, image: Image.Image) -> list[Face]:
        """All faces in an RGB image, largest first, each with its raw embedding."""


def primary_face(analyzer: FaceAnalyzer, image: Image.Image, photo_name: str) -> Face:
    """The face a reference photo is about; a photo without one cannot carry an identity."""
    faces = analyzer.detect(image)
    if not faces:
        raise InputError(
            f"photo {photo_name!r}: no face found; send a photo where the face is clearly "
            "visible, facing the camera and not too small"
        )
    return max(faces, key=lambda face: face.area)


def open_face_analyzer(kind: str, models_dir: Path) -> FaceAnalyzer:
    """The analyzer a preset names, with insightface packs looked up under `models_dir`."""
    if kind == "dlib":
        return DlibFaceAnalyzer()
    if kind in INSIGHTFACE_PACKS:
        canonical = models_dir / "insightface" / "models" / kind
        flat = models_dir / kind
        return InsightFaceAnalyzer(flat if flat.is_dir() and not canonical.is_dir() else canonical)
    raise ValueError(
        f"unknown face analyzer {kind!r}; valid kinds: {', '.join(FACE_ANALYZER_KINDS)}"
    )


def _clamped_box(box: Any, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.area, reverse=True)


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


class InsightFaceAnalyzer(FaceAnalyzer):
    """insightface's SCRFD + ArcFace from a local pack folder, as PhotoMaker V2 uses them."""

    def __init__(self, model_dir: Path, providers: list[str] | None = None) -> None:
        import onnxruntime
        from insightface.app import FaceAnalysis

        model_dir = Path(model_dir).expanduser().resolve()
        pack = model_dir.name
        fetch = (
            f"download {pack}.zip from the insightface model zoo "
            "(https://github.com/deepinsight/insightface/releases/tag/model-zoo) and unzip it "
            f"so that the *.onnx files sit directly in {model_dir}"
        )
        if not model_dir.is_dir() or not any(model_dir.glob("*.onnx")):
            raise ModelNotFoundError(f"insightface pack {pack!r} not found at {model_dir}; {fetch}")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        # An existing absolute directory as `name` is used as is, so insightface never
        # downloads (older releases join it onto root/models, which keeps it absolute too).
        try:
            app = FaceAnalysis(
                name=str(model_dir),
                root=str(model_dir.parent),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
        except (AssertionError, KeyError):  # insightface asserts a detector was found
            app = None
        for task, model in (("detection", "SCRFD detector"), ("recognition", "ArcFace model")):
            if app is None or task not in app.models:
                raise ModelNotFoundError(
                    f"insightface pack {pack!r} at {model_dir} has no {task} model "
                    f"({model}); {fetch}"
                )
        app.prepare(ctx_id=0, det_size=(DET_SIZES[0], DET_SIZES[0]))
        self._detector = app.models["detection"]
        self._recognizer = app.models["recognition"]
        self.embedding_dim = int(self._recognizer.output_shape[-1])
        files = [Path(self._detector.model_file), Path(self._recognizer.model_file)]
        self.name = f"insightface:{pack}:{_fingerprint(files)}"

    def detect(self, image: Image.Image) -> list[Face]:
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        for size in DET_SIZES:
            boxes, landmarks = self._detector.detect(bgr, input_size=(size, size))
            if len(boxes):
                break
        faces = []
        for index, row in enumerate(boxes):
            found = InsightFace(bbox=row[:4], kps=landmarks[index], det_score=row[4])
            embedding = self._recognizer.get(bgr, found)
            faces.append(
                Face(
                    box=_clamped_box(row[:4], image.width, image.height),
                    score=float(row[4]),
                    embedding=np.asarray(embedding, dtype=np.float32),
                )
            )
        return _largest_first(faces)


@dataclass(frozen=True)
class _DlibModels:
    detector: Any
    shape_predictor: Any
    recognizer: Any
    fingerprint: str


@functools.cache
def _dlib_models() -> _DlibModels:
    """Load dlib's models once per process; they take ~0.5 s and are read-only afterwards."""
    import dlib

    # Importing face_recognition_models pulls in pkg_resources; only its files are needed.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "dlib face models not found; install them with `pip install face-recognition-models`"
        )
    models = Path(spec.origin).parent / "models"
    landmarks = models / "shape_predictor_5_face_landmarks.dat"
    resnet = models / "dlib_face_recognition_resnet_model_v1.dat"
    return _DlibModels(
        detector=dlib.get_frontal_face_detector(),
        shape_predictor=dlib.shape_predictor(str(landmarks)),
        recognizer=dlib.face_recognition_model_v1(str(resnet)),
        fingerprint=_fingerprint([landmarks, resnet]),
    )


class DlibFaceAnalyzer(FaceAnalyzer):
    """dlib's HOG detector + 5-point alignment + ResNet (128-d), from face_recognition_models."""

    embedding_dim = 128

    def __init__(self) -> None:
        self._models = _dlib_models()
        self.name = f"dlib:resnet_v1:{self._models.fingerprint}"

    def detect(self, image: Image.Image) -> list[Face]:
        import dlib

        image = image.convert("RGB")
        pixels = np.asarray(image)
        scale = min(1.0, DLIB_MAX_SIDE / max(image.size))
        small = pixels
        if scale < 1.0:
            size = (round(image.width * scale), round(image.height * scale))
            small = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
        upsample = 1 if max(small.shape[:2]) < DLIB_UPSAMPLE_BELOW else 0
        rects, scores, _ = self._models.detector.run(small, upsample)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            # dlib's right/bottom are inclusive; map back to the full-size photo, where the
            # landmarks and the aligned 150 px chip for the embedding are taken.
            box = [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1]
            x0, y0, x1, y1 = (v / scale for v in box)
            full = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
            shape = self._models.shape_predictor(pixels, full)
            embedding = self._models.recognizer.compute_face_descriptor(pixels, shape)
            faces.append(
                Face(
                    box=_clamped_box((x0, y0, x1, y1), image.width, image.height),
                    score=float(score),
                    embedding=np.asarray(embedding, dtype=np.float32),
                )
            )
        return _largest_first(faces)
