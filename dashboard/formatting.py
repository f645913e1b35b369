"""Jinja filters for times and durations, the same on every page (all times in UTC)."""

from __future__ import annotations

from datetime import datetime

from flask import Flask

from farm.db.types import utcnow


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = max(0, round((utcnow() - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def init_app(app: Flask) -> None:
    app.add_template_filter(when)
    app.add_template_filter(ago)
    app.add_template_filter(duration)
