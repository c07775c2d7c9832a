"""List membership changes; each new membership is announced to the router ("added to list")."""

from sqlalchemy import delete, func, select
from sqlmodel import Session

from herald.core.errors import Invalid
from herald.core.sql import insert_ignoring_conflicts
from herald.profiles.changes import announce_profile_changes
from models.enums import OutboxKind
from models.lists import ListMembership
from models.profile import Profile
from models.routing import RoutingOutbox
from models.types import utcnow


class UnknownProfiles(Invalid):
    def __init__(self, missing: list[str]):
        super().__init__("profile_ids", f"unknown profile ids: {', '.join(missing)}")
        self.missing = missing


def _require_profiles(session: Session, profile_ids: list[str]) -> list[str]:
    wanted = list(dict.fromkeys(profile_ids))
    found = set(session.execute(select(Profile.id).where(Profile.id.in_(wanted))).scalars())
    missing = [p for p in wanted if p not in found]
    if missing:
        raise UnknownProfiles(missing)
    return wanted


def add_members(session: Session, list_id: str, profile_ids: list[str]) -> int:
    """Adds profiles (all must exist, else nothing changes); returns how many were new."""
    wanted = _require_profiles(session, profile_ids)
    now = utcnow()
    stmt = insert_ignoring_conflicts(session, ListMembership.__table__).returning(
        ListMembership.__table__.c.profile_id
    )
    added = list(
        session.execute(
            stmt, [{"list_id": list_id, "profile_id": p, "added_at": now} for p in wanted]
        ).scalars()
    )
    if added:
        session.execute(
            RoutingOutbox.__table__.insert(),
            [
                {
                    "kind": OutboxKind.list_added.value,
                    "profile_id": p,
                    "event_id": None,
                    "list_id": list_id,
                    "backfill": False,
                    "created_at": now,
                    "routed_at": None,
                }
                for p in added
            ],
        )
    return len(added)


def remove_members(session: Session, list_id: str, profile_ids: list[str]) -> int:
    wanted = _require_profiles(session, profile_ids)
    removed = list(
        session.execute(
            delete(ListMembership)
            .where(ListMembership.list_id == list_id, ListMembership.profile_id.in_(wanted))
            .returning(ListMembership.profile_id)
        ).scalars()
    )
    announce_profile_changes(session, removed)  # segments on "not in list" may now match
    return len(removed)


def member_counts(session: Session, list_ids: list[str]) -> dict[str, int]:
    rows = session.execute(
        select(ListMembership.list_id, func.count())
        .where(ListMembership.list_id.in_(list_ids))
        .group_by(ListMembership.list_id)
    )
    return {list_id: count for list_id, count in rows}
