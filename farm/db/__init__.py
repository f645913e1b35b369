"""The farm's SQL layer: models, migrations, engines and sessions, and the hot-path queries.

SQL is the source of truth for every job, shard and render. The same code and the same
migrations serve the embedded default (an SQLite file) and a cluster (PostgreSQL).
"""
