"""Profiles as the API shows them, and pages of them (profiles, list and segment members)."""

from sqlalchemy import Select
from sqlmodel import Session

from api.pagination import Page, decode_cursor, encode_cursor
from herald.profiles.consent import consent_map
from models.profile import Profile, ProfilePublic


def public(session: Session, profile: Profile) -> ProfilePublic:
    return ProfilePublic.model_validate(
        {**profile.model_dump(), "consent": consent_map(session, profile.id)}
    )


def members_page(
    session: Session, members: Select, limit: int, cursor: str | None
) -> Page[ProfilePublic]:
    """A page of the profiles `members` selects (a select of Profile), in profile id order."""
    stmt = members.order_by(Profile.id).limit(limit + 1)
    if (after := decode_cursor(cursor)) is not None:
        stmt = stmt.where(Profile.id > after)
    rows = list(session.scalars(stmt))
    page = rows[:limit]
    return Page[ProfilePublic](
        data=[public(session, p) for p in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
    )
