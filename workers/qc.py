"""Identity QC inside a shard: every render gets a face-similarity score; under the job's
`min_face_similarity` a scene is rendered again with new seeds and the best image is kept.

The scores come from the preset's own face model (the one that made the face embeddings for
PhotoMaker V2), and the character's reference is computed once per worker and character.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from farm.identity.engine import IdentityEngine, Photo
from farm.quality import Reference, face_similarity
from farm.story import PlannedRender, derive_seed

_RETRY_SCENE = -1  # derive_seed's scene slot for QC seeds: never a real scene index


def qc_seed(seed: int, retry: int) -> int:
    """The seed of retry `retry` (1, 2, ...) of a render: fixed, so a rerun makes the same."""
    return derive_seed(seed, _RETRY_SCENE, retry)


@dataclass(frozen=True)
class Checked:
    image: Image.Image
    similarity: float | None
    retries: int
    seed: int  # of the image kept


def _better(score: float | None, than: float | None) -> bool:
    return score is not None and (than is None or score > than)


class IdentityCheck:
    def __init__(
        self,
        engine: IdentityEngine,
        references: dict[str, Reference],
        photos: Sequence[Photo],
        minimum: float | None,
        max_retries: int,
    ) -> None:
        self.analyzer = engine.faces
        self.minimum = minimum
        self.max_retries = max_retries
        self.reference = None
        if self.analyzer is not None:
            key = f"{self.analyzer.name}:{engine.fingerprint(photos, crop=False)}"
            if key not in references:
                faces = [a.face.embedding for a in engine.analyse(photos)]
                references[key] = Reference.of(self.analyzer, faces)
            self.reference = references[key]

    def score(self, image: Image.Image) -> float | None:
        if self.analyzer is None or self.reference is None:
            return None
        return face_similarity(self.analyzer, image, self.reference)

    @property
    def may_render_again(self) -> bool:
        """Whether `check` may render a scene again: only then does it need the pipeline."""
        return self.minimum is not None and self.max_retries > 0

    def scored(self, image: Image.Image, planned: PlannedRender) -> Checked:
        """The render as it is, with its score: what `check` keeps when it may not retry."""
        return Checked(image, self.score(image), 0, planned.seed)

    def check(
        self,
        image: Image.Image,
        planned: PlannedRender,
        render_again: Callable[[int], Image.Image],
    ) -> Checked:
        """Score `image`; while under the bar and retries are left, try the next QC seed."""
        best = self.scored(image, planned)
        if not self.may_render_again:
            return best
        retries = 0
        while retries < self.max_retries and not _passes(best.similarity, self.minimum):
            retries += 1
            seed = qc_seed(planned.seed, retries)
            candidate = render_again(seed)
            similarity = self.score(candidate)
            if _better(similarity, best.similarity):
                best = Checked(candidate, similarity, retries, seed)
        return Checked(best.image, best.similarity, retries, best.seed)


def _passes(similarity: float | None, minimum: float) -> bool:
    return similarity is not None and similarity >= minimum
