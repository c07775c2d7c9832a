"""Dialect-aware SQL helpers for statements SQLAlchemy spells differently per backend."""

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session


def insert_ignoring_conflicts(session: Session, table):
    """INSERT ... ON CONFLICT DO NOTHING for the session's backend (SQLite or PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def upsert(session: Session, table):
    """INSERT ... ON CONFLICT for the session's backend; the caller adds on_conflict_do_update."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)
