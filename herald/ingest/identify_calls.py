"""Identify calls: upsert profiles by identity, never failing on an identifier clash."""

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from herald.core.db import session_scope
from herald.profiles.changes import announce_profile_changes
from herald.profiles.resolution import IdentityIndex
from models.profile import ProfileCreate


def identify(engine: Engine, profiles: list[ProfileCreate]) -> list[str]:
    """Returns the profile id each input resolved to (created when new)."""
    for attempt in range(3):
        try:
            with session_scope(engine) as session:
                index = IdentityIndex(session, profiles)
                ids = [index.resolve(p, p)[0].id for p in profiles]
                session.flush()
                announce_profile_changes(session, ids)
                return ids
        except IntegrityError:  # a concurrent request created one of these profiles first
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
