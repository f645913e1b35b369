"""Test-wide fixtures live in plain modules under tests/fixtures and are registered here."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.tiny",
    "tests.fixtures.db",
    "tests.fixtures.dashboard",
    "tests.fixtures.farm_cluster",
]
