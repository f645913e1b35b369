"""Identity QC: does a render show the character's face?

The score is the cosine similarity between the render's face embedding and the centroid of the
character's photo embeddings, from a real face-recognition model (insightface's ArcFace where
its pack is installed, dlib's ResNet otherwise). The centroid, rather than the best single
photo, keeps one odd reference photo from deciding. "No face found" is its own state (None),
never a score of 0: a back view is not a different person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from farm.identity.faces import FaceAnalyzer


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Reference:
    """The character as the QC model sees it: the unit centroid of its photos' embeddings."""

    analyzer: str
    centroid: np.ndarray

    @classmethod
    def of(cls, analyzer: FaceAnalyzer, embeddings: Sequence[np.ndarray]) -> Reference:
        if not embeddings:
            raise ValueError("a reference needs at least one face embedding")
        stacked = _unit(np.stack([np.asarray(e, dtype=np.float64) for e in embeddings]))
        return cls(analyzer.name, _unit(stacked.mean(axis=0)))


def face_similarity(
    analyzer: FaceAnalyzer, image: Image.Image, reference: Reference
) -> float | None:
    """Cosine similarity of the render's largest face to the reference; None if no face."""
    if analyzer.name != reference.analyzer:
        raise ValueError(
            f"reference made with {reference.analyzer}, scored with {analyzer.name}: "
            "embeddings of different models cannot be compared"
        )
    faces = analyzer.detect(image)
    if not faces or faces[0].embedding is None:
        return None
    embedding = _unit(np.asarray(faces[0].embedding, dtype=np.float64))
    return float(embedding @ reference.centroid)
