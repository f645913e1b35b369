"""From reference photos to `IdentityTokens`: face checks, preprocessing, the vision tower.

This is the only place the ID encoder's expensive half runs, always behind the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from farm.errors import InputError
from farm.identity.cache import IdentityCache
from farm.identity.encoders import IDEncoder
from farm.identity.faces import Face, FaceAnalyzer, primary_face
from farm.identity.photos import Photo, clip_pixel_values, face_crop, load_photo
from farm.identity.tokens import IdentityTokens

__all__ = ["AnalysedPhoto", "IdentityEngine", "Photo"]  # Photo: where callers long found it


@dataclass(frozen=True)
class AnalysedPhoto:
    photo: Photo
    image: Image.Image
    face: Face | None


class IdentityEngine:
    def __init__(
        self, encoder: IDEncoder, faces: FaceAnalyzer | None, cache: IdentityCache
    ) -> None:
        config = encoder.config
        if config.version == 2:
            if faces is None:
                raise ValueError("PhotoMaker V2 needs a face analyzer for its face embeddings")
            if faces.embedding_dim != config.face_embed_dim:
                raise ValueError(
                    f"face model {faces.name} gives {faces.embedding_dim}-d embeddings but this "
                    f"encoder takes {config.face_embed_dim}-d ones"
                )
        self.encoder = encoder
        self.faces = faces
        self.cache = cache

    def analyse(self, photos: Sequence[Photo]) -> list[AnalysedPhoto]:
        """Decode every photo and find its face; a photo without one is an `InputError`."""
        if not photos:
            raise InputError("a character needs at least one reference photo")
        analysed = []
        for photo in photos:
            image = load_photo(photo.data, photo.name)
            face = primary_face(self.faces, image, photo.name) if self.faces else None
            analysed.append(AnalysedPhoto(photo, image, face))
        return analysed

    def fingerprint(self, photos: Sequence[Photo], crop: bool) -> str:
        """What the tokens depend on besides the weights: the photos, in order, and how they
        were preprocessed (crop, and which face model gave the face embeddings)."""
        recipe = {
            "photos": [p.sha256 for p in photos],
            "crop": crop,
            "faces": self.faces.name if self.faces else None,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def tokens_for(self, photos: Sequence[Photo], *, crop: bool = False) -> IdentityTokens:
        photos_fp = self.fingerprint(photos, crop)
        return self.cache.get_or_compute(
            self.encoder.fingerprint, photos_fp, lambda: self.compute(photos, crop, photos_fp)
        )

    @torch.inference_mode()
    def compute(self, photos: Sequence[Photo], crop: bool, photos_fp: str) -> IdentityTokens:
        analysed = self.analyse(photos)
        images = [
            face_crop(a.image, a.face.box) if crop and a.face is not None else a.image
            for a in analysed
        ]
        pixels = clip_pixel_values(images, size=self.encoder.config.image_size)
        face_embeds = None
        if self.encoder.config.version == 2:
            face_embeds = torch.from_numpy(
                np.stack([np.asarray(a.face.embedding, dtype=np.float32) for a in analysed])
            )
        tokens = self.encoder.encode_images(pixels, face_embeds)
        return IdentityTokens(tokens.float().cpu(), self.encoder.fingerprint, photos_fp)
