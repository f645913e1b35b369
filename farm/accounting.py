"""What the farm's devices spent, and for whom: device seconds summed from renders to jobs and
projects, a project's usage report, and a story's estimate from the farm's own measurements.

Each render records the seconds it held its device (`Render.device_s`: its share of its batch
and of its shard's identity encoding, plus its QC re-renders; never a model load) and the make
of that device. Everything else is a sum over those rows, made in SQL when asked, so a job's
figure, its project's and the report cannot disagree, and a re-run render counts once (its row
is overwritten, as its image is).
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.recipe import RenderSettings
from farm.story import Story

# The jobs of a preset whose renders an estimate is read from: the most recent, so that a
# farm's new cards (or a driver upgrade) show within a few jobs.
ESTIMATE_JOBS = 20


@dataclass(frozen=True)
class Usage:
    device_s: float
    renders: int  # renders that recorded their device seconds


def job_usage(session: Session, job_ids: Sequence[str]) -> dict[str, Usage]:
    """Each job's device seconds and measured renders, in one GROUP BY (a page of jobs)."""
    usage = dict.fromkeys(job_ids, Usage(0.0, 0))
    if not job_ids:
        return usage
    rows = session.execute(
        select(Render.job_id, func.sum(Render.device_s), func.count(Render.device_s))
        .where(Render.job_id.in_(job_ids), Render.device_s.is_not(None))
        .group_by(Render.job_id)
    )
    for job_id, seconds, renders in rows:
        usage[job_id] = Usage(float(seconds or 0.0), int(renders))
    return usage


@dataclass(frozen=True)
class UsageLine:
    """One job's renders on one kind of device within a report's period."""

    job_id: str
    job_name: str
    preset: str
    device_kind: str
    renders: int
    device_s: float


@dataclass(frozen=True)
class UsageReport:
    project: str
    since: datetime
    until: datetime | None
    lines: list[UsageLine]

    @property
    def device_s(self) -> float:
        return sum(line.device_s for line in self.lines)

    @property
    def renders(self) -> int:
        return sum(line.renders for line in self.lines)

    def as_json(self) -> str:
        return json.dumps(
            {
                "project": self.project,
                "since": self.since.isoformat(),
                "until": self.until.isoformat() if self.until else None,
                "renders": self.renders,
                "device_seconds": round(self.device_s, 3),
                "jobs": [
                    {**asdict(line), "device_s": round(line.device_s, 3)} for line in self.lines
                ],
            },
            indent=2,
        )

    def as_csv(self) -> str:
        """One row per job and device kind; no total row, so a spreadsheet's sum is right."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["job", "name", "preset", "device_kind", "renders", "device_seconds"])
        for line in self.lines:
            writer.writerow(
                [
                    line.job_id,
                    line.job_name,
                    line.preset,
                    line.device_kind,
                    line.renders,
                    f"{line.device_s:.3f}",
                ]
            )
        return out.getvalue()


def project_usage(
    session: Session,
    project_id: int,
    project_name: str,
    since: datetime,
    until: datetime | None = None,
) -> UsageReport:
    """The device seconds of the project's renders finished from `since` (until `until`), per
    job and kind of device. A render counts in the period it finished in."""
    where = [
        Job.project_id == project_id,
        Render.device_s.is_not(None),
        Render.finished >= since,
    ]
    if until is not None:
        where.append(Render.finished < until)
    rows = session.execute(
        select(
            Job.id,
            Job.name,
            Job.preset,
            Render.device_kind,
            func.count(),
            func.sum(Render.device_s),
        )
        .join(Job, Job.id == Render.job_id)
        .where(*where)
        .group_by(Job.id, Job.name, Job.preset, Render.device_kind)
        .order_by(func.min(Render.finished), Job.id, Render.device_kind)
    )
    lines = [
        UsageLine(job_id, name, preset, kind or "unknown", int(n), float(seconds))
        for job_id, name, preset, kind, n, seconds in rows
    ]
    return UsageReport(project_name, since, until, lines)


@dataclass(frozen=True)
class Estimate:
    """A story's device seconds before it is submitted, from what the farm measured."""

    device_s: float
    per_render_s: float
    measured_renders: int  # the renders the figure was read from


def estimate(session: Session, story: Story) -> Estimate | None:
    """Device seconds for `story`, from the preset's renders on this farm (its last
    `ESTIMATE_JOBS` measured jobs), scaled by steps x pixels from the size and steps those were
    made at; None when the farm has measured none of the preset yet. QC re-renders are in the
    measured figures, at the rate they happened."""
    recent = (
        select(Render.job_id)
        .join(Job, Job.id == Render.job_id)
        .where(Job.preset == story.preset, Render.device_s.is_not(None))
        .group_by(Render.job_id)
        .order_by(func.max(Render.finished).desc())
        .limit(ESTIMATE_JOBS)
    )
    measured = session.execute(
        select(Render.job_id, func.sum(Render.device_s), func.count())
        .where(Render.job_id.in_(recent), Render.device_s.is_not(None))
        .group_by(Render.job_id)
    ).all()
    if not measured:
        return None
    specs = {
        job_id: spec
        for job_id, spec in session.execute(
            select(Job.id, Job.spec).where(Job.id.in_([m[0] for m in measured]))
        )
    }
    seconds = sum(float(s) for _, s, _ in measured)
    units = sum(n * _work(Story.model_validate(specs[job_id])) for job_id, _, n in measured)
    renders = sum(int(n) for _, _, n in measured)
    per_render = seconds / units * _work(story)
    return Estimate(per_render * len(story.plan()), per_render, renders)


def _work(story: Story) -> int:
    """A render's work in denoising steps x pixels: what its device time grows with."""
    settings = RenderSettings.of(story)
    return settings.steps * settings.width * settings.height


@functools.cache
def device_kind(device: str) -> str:
    """The make of a torch device, as a bill names it: the card's name on CUDA ("NVIDIA
    H200"), else the device type ("cpu"). Cached: asking CUDA is not free, and a worker's card
    does not change."""
    if device.startswith("cuda"):
        import torch  # the control plane reads reports without torch

        return torch.cuda.get_device_name(torch.device(device))
    return device.split(":", 1)[0]
