"""`Farm`: the services one process talks to (database, object storage, broker, events), built
from `Settings` on first use and shared by the CLI, the workers and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from farm.settings import Settings

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from farm.events import Events
    from farm.storage import Storage


@dataclass
class Farm:
    settings: Settings = field(default_factory=Settings.from_env)

    @cached_property
    def engine(self) -> Engine:
        from farm.db.session import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from farm.db.session import session_factory

        return session_factory(self.engine)

    @cached_property
    def storage(self) -> Storage:
        from farm.storage import open_storage

        return open_storage(
            self.settings.storage_url, s3_endpoint_url=self.settings.s3_endpoint_url
        )

    @cached_property
    def celery(self) -> Celery:
        from farm.queue.app import make_celery

        return make_celery(self.settings)

    @cached_property
    def events(self) -> Events:
        from farm.events import Events

        return Events(self.settings.events_url)

    def close(self) -> None:
        """Release connections (tests and short-lived CLI commands)."""
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "celery" in self.__dict__:
            self.celery.close()
