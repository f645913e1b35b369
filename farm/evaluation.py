"""`farm eval`: how well a set of renders keeps the character and follows its prompts.

Studios compare presets and settings on their own characters; the figures are those of the
PhotoMaker paper where they can be computed here: face similarity (by a real face model), the
share of renders in which a face is found, and CLIP-T (100 x cosine of the CLIP text and image
embeddings) where a local CLIP model folder is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from farm.identity.faces import FaceAnalyzer
from farm.quality import Reference, face_similarity
from farm.recipe import prompt_in


@dataclass(frozen=True)
class Sample:
    """One render to score: its image and the prompt it was made from (None if unknown)."""

    name: str
    image: Image.Image
    prompt: str | None


@dataclass
class Evaluation:
    renders: int
    with_face: int
    face_similarity_mean: float | None
    face_similarity_min: float | None
    clip_t_mean: float | None
    per_render: list[dict] = field(default_factory=list)

    @property
    def face_share(self) -> float:
        return self.with_face / self.renders if self.renders else 0.0

    def table(self) -> str:
        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "-" if value is None else format(value, spec)

        rows = [
            ("renders", str(self.renders)),
            ("with a face", f"{self.with_face} ({self.face_share:.0%})"),
            ("face similarity (mean)", fmt(self.face_similarity_mean)),
            ("face similarity (min)", fmt(self.face_similarity_min)),
            ("CLIP-T (mean)", fmt(self.clip_t_mean, ".2f")),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "face_share": self.face_share}, indent=2)


class ClipScorer:
    """CLIP-T with a CLIP model from a local folder (never from the hub)."""

    def __init__(self, folder: Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model in {folder} (want a transformers folder)")
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def score(self, image: Image.Image, prompt: str) -> float:
        import torch

        inputs = self.processor(
            text=[prompt], images=[image], return_tensors="pt", padding=True, truncation=True
        )
        with torch.inference_mode():
            text = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
            pixels = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        text = torch.nn.functional.normalize(_features(text), dim=-1)
        pixels = torch.nn.functional.normalize(_features(pixels), dim=-1)
        return float(100 * (text @ pixels.T).clamp(min=0).item())


def _features(output: object) -> object:
    """transformers 5 returns a model output where 4.x returned the projected tensor."""
    return getattr(output, "pooler_output", output)


def evaluate(
    samples: Sequence[Sample],
    analyzer: FaceAnalyzer,
    reference: Reference,
    clip: ClipScorer | None = None,
) -> Evaluation:
    scores: list[float] = []
    clip_scores: list[float] = []
    per_render = []
    for sample in samples:
        similarity = face_similarity(analyzer, sample.image, reference)
        clip_t = clip.score(sample.image, sample.prompt) if clip and sample.prompt else None
        if similarity is not None:
            scores.append(similarity)
        if clip_t is not None:
            clip_scores.append(clip_t)
        per_render.append({"name": sample.name, "face_similarity": similarity, "clip_t": clip_t})
    return Evaluation(
        renders=len(samples),
        with_face=len(scores),
        face_similarity_mean=float(np.mean(scores)) if scores else None,
        face_similarity_min=float(np.min(scores)) if scores else None,
        clip_t_mean=float(np.mean(clip_scores)) if clip_scores else None,
        per_render=per_render,
    )


def samples_from_folder(folder: Path) -> list[Sample]:
    """PNGs of a folder, with the prompt each carries in its metadata (the farm's or A1111's)."""
    samples = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            prompt = prompt_in(image.text) if hasattr(image, "text") else None
            samples.append(Sample(path.name, image.convert("RGB"), prompt))
    return samples
