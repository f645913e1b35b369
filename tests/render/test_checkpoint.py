"""A denoising loop stopped at step k, written to bytes and resumed in a fresh scheduler, ends
exactly where the loop that never stopped ends, for every kind of sampler state diffusers keeps:
Euler's step index and sigmas, a multistep solver's model-output history, and the per-step
noise that LCM, TCD and Euler ancestral draw from each render's generator."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from farm.render.checkpoint import (
    Checkpoint,
    CheckpointError,
    generator_states,
    restore_generators,
    restore_scheduler,
    scheduler_state,
)

SCHEDULERS = {
    "euler": lambda: EulerDiscreteScheduler(),
    "euler-trailing": lambda: EulerDiscreteScheduler(timestep_spacing="trailing"),
    "euler-ancestral": lambda: EulerAncestralDiscreteScheduler(),
    "lcm": lambda: LCMScheduler(),
    "tcd": lambda: TCDScheduler(),
    "dpm++2m": lambda: DPMSolverMultistepScheduler(solver_order=2),
    "unipc": lambda: UniPCMultistepScheduler(),
}
SEEDS = (11, 12)
STEPS = 8


def _model(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in for the UNet: deterministic, and depending on both inputs."""
    return 0.3 * torch.sin(latents) + float(t) / 1000.0


def _start(make) -> tuple:
    scheduler = make()
    scheduler.set_timesteps(STEPS)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    latents = torch.cat([torch.randn(1, 4, 8, 8, generator=g) for g in generators])
    return scheduler, generators, latents * scheduler.init_noise_sigma


def _steps(scheduler, generators, latents, first: int, last: int) -> torch.Tensor:
    # UniPC draws no noise, and takes no generator.
    noisy = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": generators} if noisy else {}
    for t in scheduler.timesteps[first:last]:
        model_in = scheduler.scale_model_input(latents, t)
        noise = _model(model_in, t)
        latents = scheduler.step(noise, t, latents, return_dict=False, **extra)[0]
    return latents


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
@pytest.mark.parametrize("stop_at", [1, 3, STEPS - 1])
def test_a_resumed_loop_ends_exactly_where_an_unbroken_one_does(kind, stop_at):
    make = SCHEDULERS[kind]
    scheduler, generators, latents = _start(make)
    unbroken = _steps(scheduler, generators, latents, 0, STEPS)

    scheduler, generators, latents = _start(make)
    latents = _steps(scheduler, generators, latents, 0, stop_at)
    saved = Checkpoint(
        stop_at,
        STEPS,
        SEEDS,
        latents,
        scheduler_state(scheduler),
        generator_states(generators),
    ).to_bytes()
    del scheduler, generators, latents  # nothing of the first process survives

    checkpoint = Checkpoint.from_bytes(saved)
    assert checkpoint.fits(SEEDS, STEPS) and not checkpoint.fits((12, 11), STEPS)
    scheduler, generators, _ = _start(make)  # as the resuming pipeline starts
    restore_scheduler(scheduler, checkpoint.scheduler, torch.device("cpu"))
    restore_generators(generators, checkpoint.generators)
    resumed = _steps(scheduler, generators, checkpoint.latents, checkpoint.step, STEPS)

    assert torch.equal(resumed, unbroken)


def test_a_damaged_or_foreign_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Checkpoint.from_bytes(b"not a checkpoint")
    saved = Checkpoint(1, 2, (1,), torch.zeros(1), {}, ()).to_bytes()
    assert Checkpoint.from_bytes(saved).step == 1


def test_a_scheduler_state_a_checkpoint_cannot_hold_is_named():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(2)
    scheduler.odd = object()
    with pytest.raises(CheckpointError, match="scheduler's 'odd' is a object"):
        scheduler_state(scheduler)
