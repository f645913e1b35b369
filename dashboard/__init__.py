"""The farm's dashboard: server-rendered pages for people, a JSON API (`/api/v1`) for pipelines,
and live progress, all on the same service functions as the `farm` CLI.

`dashboard.app.create_app()` builds it; nothing here reads settings at import time.
"""
