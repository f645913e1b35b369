"""What requests reach for: the app's `Farm`, and one face analyzer shared by all of them."""

from __future__ import annotations

import threading
from pathlib import Path

from flask import current_app
from PIL import Image

from farm.context import Farm
from farm.identity.faces import Face, FaceAnalyzer


def farm() -> Farm:
    return current_app.extensions["farm"]


def faces() -> SharedFaces:
    return current_app.extensions["faces"]


class SharedFaces(FaceAnalyzer):
    """dlib's detector, as `farm submit` uses to check photos, opened on the first upload.

    Opening it costs a second and most requests never need it; requests run in threads and
    dlib's models are not documented as thread-safe, so detections take turns.
    """

    name = "dlib"
    embedding_dim = 128

    def __init__(self, models_dir: Path) -> None:
        self._models_dir = models_dir
        self._lock = threading.Lock()
        self._analyzer: FaceAnalyzer | None = None

    def detect(self, image: Image.Image) -> list[Face]:
        from farm.identity.faces import open_face_analyzer

        with self._lock:
            if self._analyzer is None:
                self._analyzer = open_face_analyzer("dlib", self._models_dir)
            return self._analyzer.detect(image)
