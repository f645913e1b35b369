"""Alembic migrations; a package so that they are installed with the farm."""
