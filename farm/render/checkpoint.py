"""A batch stopped in the middle of denoising, written so that another process resumes it at
the same step and makes the same pixels as a run that was never stopped.

Resuming exactly needs more than the latents. A diffusers scheduler carries state between
steps: its step index and sigmas (Euler), and for multistep solvers (DPM-Solver++, UniPC) the
model outputs of the last steps and how many lower-order steps it took; samplers that add
noise at each step (LCM, TCD, Euler ancestral) also draw from each render's generator, whose
position must be restored too. So a checkpoint holds, besides the latents, every attribute of
the scheduler (its config aside, which the resuming pipeline rebuilds from its own) and each
render's generator state, and says which renders and settings it belongs to, so that it is
never applied to another batch.

It is written with `torch.save` and read back with `weights_only=True`: a checkpoint is
fetched from object storage, and loading one must never run code.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

FORMAT = 1  # bumped when the layout changes; an older checkpoint is then not resumed
_CONFIG = "_internal_dict"  # the scheduler's config: rebuilt from the pipeline's own


class CheckpointError(Exception):
    """A scheduler state that cannot be written, or a checkpoint that cannot be read."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a batch stood before step `step` (0-based) of `steps` ran."""

    step: int
    steps: int
    seeds: tuple[int, ...]  # the batch's renders, in order: a checkpoint fits only its batch
    latents: torch.Tensor
    scheduler: dict[str, Any]
    generators: tuple[torch.Tensor, ...]

    def fits(self, seeds: Sequence[int], steps: int) -> bool:
        return tuple(seeds) == self.seeds and steps == self.steps and 0 < self.step < steps

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "step": self.step,
                "steps": self.steps,
                "seeds": list(self.seeds),
                "latents": self.latents.detach().cpu(),
                "scheduler": self.scheduler,
                "generators": list(self.generators),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        try:
            saved = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as error:  # torch raises many kinds for a damaged file
            raise CheckpointError(f"not a readable checkpoint: {error}") from error
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"a checkpoint of another format ({saved.get('format')!r})")
        return cls(
            step=saved["step"],
            steps=saved["steps"],
            seeds=tuple(saved["seeds"]),
            latents=saved["latents"],
            scheduler=saved["scheduler"],
            generators=tuple(saved["generators"]),
        )


class RenderInterrupted(Exception):
    """The caller asked the batch to stop (its worker is stopping); `checkpoint` resumes it."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__(f"interrupted before step {checkpoint.step} of {checkpoint.steps}")
        self.checkpoint = checkpoint


def _portable(value: Any, name: str) -> Any:
    """`value` as `weights_only` loading reads it back: tensors on the CPU, plain values."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_portable(item, name) for item in value]
    raise CheckpointError(
        f"the scheduler's {name!r} is a {type(value).__name__}, which a checkpoint cannot hold"
    )


def scheduler_state(scheduler: SchedulerMixin) -> dict[str, Any]:
    """Every attribute of `scheduler` but its config, copied to the CPU."""
    return {k: _portable(v, k) for k, v in vars(scheduler).items() if k != _CONFIG}


def restore_scheduler(
    scheduler: SchedulerMixin, state: dict[str, Any], device: torch.device
) -> None:
    """Put `state` into `scheduler` (made from the same config, its timesteps set). A tensor
    goes where the scheduler keeps that attribute itself (Euler keeps its sigmas on the CPU on
    purpose), and otherwise to `device`, where the model outputs it saved were made."""

    def placed(value: Any, like: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(like.device if isinstance(like, torch.Tensor) else device)
        if isinstance(value, list):
            return [placed(item, None) for item in value]
        return value

    for name, value in state.items():
        setattr(scheduler, name, placed(value, getattr(scheduler, name, None)))


def generator_states(generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
    return tuple(g.get_state().clone() for g in generators)


def restore_generators(
    generators: Sequence[torch.Generator], states: Sequence[torch.Tensor]
) -> None:
    if len(generators) != len(states):
        raise CheckpointError(f"{len(states)} generator states for {len(generators)} renders")
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)
