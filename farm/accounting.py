"""What the farm's devices spent, and for whom: device seconds summed from renders to jobs and
projects, and a project's usage report (what a story will cost is farm/estimates.py's, from
the same rows).

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


@functools.cache
def device_kind(device: str) -> str:
    """The make of a torch device, as a bill names it: the card's name on CUDA ("NVIDIA
    H200"), else the device type ("cpu"). Cached: asking CUDA is not free, and a worker's card
    does not change."""
    if device.startswith("cuda"):
        import torch  # the control plane reads reports without torch

        return torch.cuda.get_device_name(torch.device(device))
    return device.split(":", 1)[0]
