"""Profiles as the API shows them, and pages of them (profiles, list and segment members)."""

from sqlalchemy import Select
from sqlmodel import Session

from api.pagination import Page, decode_cursor, keyset_page
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
    page, next_cursor = keyset_page(session, members, Profile.id, limit, decode_cursor(cursor))
    return Page[ProfilePublic](data=[public(session, p) for p in page], next_cursor=next_cursor)
