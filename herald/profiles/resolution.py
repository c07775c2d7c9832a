"""Identity resolution: find the profile an identity names, or create it; delete a profile.

Precedence (SPEC): external_id, then email, then phone, then anonymous_id. Lookups for a whole
batch are done with one query, so ingesting 1,000 events costs one profile read, not 1,000.
"""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import Session, select

from herald.core.ids import new_id
from herald.flows.cancellation import cancel_enrollments
from models.delivery import Delivery, OutboxMessage
from models.flows import FlowEnrollment
from models.profile import Profile, ProfileAttributes, ProfileIdentity
from models.segments import Segment, SegmentMembership
from models.types import utcnow

IDENTIFIERS = ("external_id", "email", "phone", "anonymous_id")


class IdentityConflict(Exception):
    """An identifier in the request already belongs to another profile."""

    def __init__(self, field: str, value: str, owner_id: str, replacing: str | None = None):
        if replacing is None:
            message = f"{field} {value!r} already belongs to profile {owner_id}"
        else:
            message = f"profile {owner_id} already has {field} {replacing!r}, not {value!r}"
        super().__init__(message)
        self.field = field
        self.owner_id = owner_id


class IdentityIndex:
    """The profiles a batch of identities can resolve to, kept current as the batch creates more."""

    def __init__(self, session: Session, identities: Iterable[ProfileIdentity]):
        self.session = session
        self._by: dict[str, dict[str, Profile]] = {name: {} for name in IDENTIFIERS}
        wanted: dict[str, set[str]] = {name: set() for name in IDENTIFIERS}
        for identity in identities:
            for name in IDENTIFIERS:
                value = getattr(identity, name)
                if value:
                    wanted[name].add(value)
        clauses = [getattr(Profile, name).in_(values) for name, values in wanted.items() if values]
        if clauses:
            for profile in session.exec(select(Profile).where(or_(*clauses))):
                self._remember(profile)

    def _remember(self, profile: Profile) -> None:
        for name in IDENTIFIERS:
            value = getattr(profile, name)
            if value:
                self._by[name][value] = profile

    def owner(self, name: str, value: str) -> Profile | None:
        return self._by[name].get(value)

    def find(self, identity: ProfileIdentity) -> Profile | None:
        for name in IDENTIFIERS:
            value = getattr(identity, name)
            if value and (profile := self._by[name].get(value)):
                return profile
        return None

    def resolve(
        self,
        identity: ProfileIdentity,
        attributes: ProfileAttributes | None = None,
        *,
        strict: bool = False,
    ) -> tuple[Profile, bool]:
        """The profile for this identity (created if none), with missing identifiers filled in.

        strict=True (explicit profile writes) raises IdentityConflict when an identifier belongs
        to another profile, or when it would replace an identifier that outranks the one the
        profile was found by (found by email, but carrying another external_id: another person).
        Identifiers ranked below the match are updated (a person changes email). Otherwise
        conflicting identifiers are left where they are: event ingest must never fail because a
        shop and an SDK disagree about an address.
        """
        profile = self.find(identity)
        matched_rank = next(
            (
                rank
                for rank, name in enumerate(IDENTIFIERS)
                if profile is not None and getattr(identity, name) == getattr(profile, name)
            ),
            len(IDENTIFIERS),
        )
        created = profile is None
        if profile is None:
            profile = Profile(id=new_id("prf"))
            self.session.add(profile)
        for name in IDENTIFIERS:
            value = getattr(identity, name)
            if not value or getattr(profile, name) == value:
                continue
            owner = self._by[name].get(value)
            if owner is not None and owner is not profile:
                if strict:
                    raise IdentityConflict(name, value, owner.id)
                continue
            current = getattr(profile, name)
            if strict and current is not None and IDENTIFIERS.index(name) < matched_rank:
                raise IdentityConflict(name, value, profile.id, replacing=current)
            if current is None or strict:
                if current is not None:
                    self._by[name].pop(current, None)
                setattr(profile, name, value)
        if attributes is not None:
            apply_attributes(profile, attributes)
        if not created:
            profile.updated_at = utcnow()
        self._remember(profile)
        return profile, created


def apply_attributes(profile: Profile, attributes: ProfileAttributes) -> None:
    """Sent fields overwrite; properties merge, and a property sent as null is removed."""
    for name in ("first_name", "last_name", "timezone", "push_tokens"):
        value = getattr(attributes, name)
        if value is not None:
            setattr(profile, name, value)
    if attributes.properties:
        merged: dict[str, Any] = dict(profile.properties or {})
        for key, value in attributes.properties.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        profile.properties = merged


# What an anonymised enrollment keeps of its trigger: what kind of entry it was, no event data.
_TRIGGER_KEPT = ("type", "metric", "list_id", "segment_id")


def delete_profile(session: Session, profile_id: str) -> list[str] | None:
    """Deletes a profile and what describes the person; keeps the rows that reports count.

    Returns the workflow ids of the enrollments it cancelled (reason `profile_deleted`), whose
    workflows the caller stops (herald/flows/cancellation.py), or None when there is no such
    profile.

    - Deleted with the profile row (ON DELETE CASCADE): events and metric totals, consent and
      its history, list and segment membership (segment member counts are adjusted first),
      routing outbox rows, engagement and RFM rows. The embedded outbox's copies of the messages
      (address and body) are deleted too.
    - Kept, without personal data: enrollments (cancelled if still running; the trigger keeps
      its type and metric/list/segment, not the event's properties or value), their timelines,
      deliveries (address and subject cleared), review items and campaign exits. They hold only
      the profile's id, a random key that names no one once the profile row is gone, so the flow
      and campaign reports keep their counts. (The enrollment's reference to the profile is not
      a foreign key for this reason.)
    """
    if session.get(Profile, profile_id, with_for_update=True) is None:
        return None
    membership = SegmentMembership.__table__.c
    segments = Segment.__table__
    session.execute(
        update(segments)
        .where(
            segments.c.id.in_(
                select(membership.segment_id).where(membership.profile_id == profile_id)
            )
        )
        .values(member_count=segments.c.member_count - 1)
    )
    session.execute(delete(OutboxMessage).where(OutboxMessage.profile_id == profile_id))
    # The profile first: it waits for a routing batch that holds this profile's outbox rows, so
    # an enrollment that batch creates is committed, and cancelled below.
    session.execute(delete(Profile).where(Profile.id == profile_id))
    enrollments = FlowEnrollment.__table__.c
    cancelled = cancel_enrollments(session, "profile_deleted", enrollments.profile_id == profile_id)
    for workflow_id, trigger in session.execute(
        select(enrollments.workflow_id, enrollments.trigger).where(
            enrollments.profile_id == profile_id
        )
    ):
        kept = {k: v for k, v in (trigger or {}).items() if k in _TRIGGER_KEPT}
        if kept != trigger:
            session.execute(
                update(FlowEnrollment.__table__)
                .where(enrollments.workflow_id == workflow_id)
                .values(trigger=kept)
            )
    session.execute(
        update(Delivery)
        .where(Delivery.profile_id == profile_id)
        .values(to_address=None, subject=None)
    )
    return cancelled
