"""Migrations create exactly the schema the models describe, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import models  # noqa: F401
from herald.ingest.catalogue import BUILTIN_METRICS


def test_migrated_schema_matches_the_models(database):
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_first_migration_seeds_the_account_and_builtin_metrics(database):
    assert database.scalar("SELECT timezone FROM account WHERE id = 1") == "UTC"
    builtin = database.scalar("SELECT count(*) FROM metric WHERE builtin")
    assert builtin == len(BUILTIN_METRICS)
