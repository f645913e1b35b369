"""The sampler a preset renders with: SDXL's Euler as the reference demo uses it, or the one a
fast preset's few-step LoRA was distilled for, built from the base model's own noise schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import EulerDiscreteScheduler, LCMScheduler, TCDScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from farm.render.presets import FastLora, SchedulerKind


def scheduler_for(base_config: Mapping[str, Any], fast: FastLora | None) -> SchedulerMixin:
    if fast is None:
        # The reference renders with Euler whatever scheduler the base model ships with.
        return EulerDiscreteScheduler.from_config(base_config)
    kind = SchedulerKind(fast.scheduler)
    if kind is SchedulerKind.LCM:
        return LCMScheduler.from_config(base_config)
    if kind is SchedulerKind.TCD:
        return TCDScheduler.from_config(base_config)
    # Few-step distillations start from the last timestep (999): "trailing" spacing.
    return EulerDiscreteScheduler.from_config(base_config, timestep_spacing="trailing")
