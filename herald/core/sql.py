"""Dialect-aware SQL helpers for statements SQLAlchemy spells differently per backend."""

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def insert_ignoring_conflicts(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT DO NOTHING for the session's backend (SQLite or PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


def upsert(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT for the session's backend; the caller adds on_conflict_do_update."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table)
