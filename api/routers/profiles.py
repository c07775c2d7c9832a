"""Profiles: create, upsert by identity, get, patch, delete, list; consent per channel."""

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response, status
from sqlalchemy import exists, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, require_private_key
from api.errors import ApiError, invalid, not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from api.profile_pages import public
from api.temporal_link import TEMPORAL_HEADER, TemporalLink
from herald.core.db import session_scope
from herald.core.temporal import OPERATOR_CALL_TIMEOUT_SECONDS
from herald.profiles.changes import announce_profile_changes
from herald.profiles.consent import MissingAddress, set_consent
from herald.profiles.normalize import normalize_email, normalize_phone
from herald.profiles.resolution import (
    IDENTIFIERS,
    IdentityConflict,
    IdentityIndex,
    apply_attributes,
)
from herald.profiles.resolution import delete_profile as delete_profile_row
from models.enums import Channel
from models.events import Metric, ProfileMetricStat
from models.lists import ListMembership
from models.profile import (
    Consent,
    ConsentChange,
    ConsentPublic,
    ConsentUpdate,
    Profile,
    ProfileCreate,
    ProfilePublic,
    ProfileUpdate,
)
from models.types import utcnow

router = APIRouter(
    prefix="/v1/profiles", tags=["profiles"], dependencies=[Depends(require_private_key)]
)

T = TypeVar("T")


def load(session: Session, profile_id: str) -> Profile:
    profile = session.get(Profile, profile_id)
    if profile is None:
        raise not_found("profile", profile_id)
    return profile


def _conflict(exc: IdentityConflict) -> ApiError:
    return ApiError(409, "identity_conflict", str(exc), [{"field": exc.field, "reason": str(exc)}])


def _retrying(engine: Engine, write: Callable[[Session], T]) -> T:
    """Runs a write in its own transaction, retried when a concurrent request inserted the same
    identifier (or consent row) first: PostgreSQL reports a unique violation, and the retry sees
    the winner's row (so the caller gets a 200 or a 409, not a 500)."""
    for attempt in range(3):
        try:
            with session_scope(engine) as session:
                return write(session)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a profile")
def create_profile(body: ProfileCreate, engine: EngineDep) -> ProfilePublic:
    return _retrying(engine, lambda session: _create(session, body))


def _create(session: Session, body: ProfileCreate) -> ProfilePublic:
    index = IdentityIndex(session, [body])
    existing = index.find(body)
    if existing is not None:
        raise ApiError(
            409,
            "profile_exists",
            f"a profile with these identifiers already exists: {existing.id} "
            "(use POST /v1/profiles/upsert to update it)",
            [{"field": "identity", "reason": f"matches profile {existing.id}"}],
        )
    try:
        profile, _ = index.resolve(body, body, strict=True)
    except IdentityConflict as exc:
        raise _conflict(exc) from None
    session.flush()
    announce_profile_changes(session, [profile.id])
    return public(session, profile)


@router.post("/upsert", summary="Create or update the profile these identifiers resolve to")
def upsert_profile(body: ProfileCreate, engine: EngineDep, response: Response) -> ProfilePublic:
    return _retrying(engine, lambda session: _upsert(session, body, response))


def _upsert(session: Session, body: ProfileCreate, response: Response) -> ProfilePublic:
    try:
        profile, created = IdentityIndex(session, [body]).resolve(body, body, strict=True)
    except IdentityConflict as exc:
        raise _conflict(exc) from None
    session.flush()
    announce_profile_changes(session, [profile.id])
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return public(session, profile)


@router.get("/{profile_id}", summary="Get a profile with its consent and metric totals")
def get_profile(profile_id: str, engine: EngineDep) -> dict:
    with session_scope(engine) as session:
        profile = load(session, profile_id)
        stats = session.execute(
            select(Metric.name, ProfileMetricStat)
            .join(Metric, Metric.id == ProfileMetricStat.metric_id)
            .where(ProfileMetricStat.profile_id == profile_id)
        )
        metrics = {
            name: {
                "count": s.count,
                "total_value": s.total_value,
                "first_at": s.first_at,
                "last_at": s.last_at,
            }
            for name, s in stats
        }
        return {**public(session, profile).model_dump(), "metrics": metrics}


@router.patch("/{profile_id}", summary="Change some fields; a property set to null is removed")
def patch_profile(profile_id: str, body: ProfileUpdate, engine: EngineDep) -> ProfilePublic:
    return _retrying(engine, lambda session: _patch(session, profile_id, body))


def _patch(session: Session, profile_id: str, body: ProfileUpdate) -> ProfilePublic:
    profile = load(session, profile_id)
    index = IdentityIndex(session, [body])
    for name in IDENTIFIERS:
        if name not in body.model_fields_set:
            continue
        value = getattr(body, name)
        owner = index.owner(name, value) if value else None
        if owner is not None and owner.id != profile.id:
            raise _conflict(IdentityConflict(name, value, owner.id))
        setattr(profile, name, value)
    if not any(getattr(profile, n) for n in IDENTIFIERS):
        raise invalid("identity", "a profile must keep at least one identifier")
    apply_attributes(profile, body)
    for name in ("first_name", "last_name", "timezone", "push_tokens"):
        # apply_attributes skips None ("not sent"); here a field sent as null is cleared.
        if name in body.model_fields_set and getattr(body, name) is None:
            setattr(profile, name, [] if name == "push_tokens" else None)
    profile.updated_at = utcnow()
    session.add(profile)
    session.flush()
    announce_profile_changes(session, [profile.id])
    return public(session, profile)


def _delete(engine: Engine, profile_id: str) -> list[str]:
    with session_scope(engine) as session:
        cancelled = delete_profile_row(session, profile_id)
    if cancelled is None:
        raise not_found("profile", profile_id)
    return cancelled


@router.delete(
    "/{profile_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a profile and everything about it (events, consent, memberships)",
    description="Its running flow enrollments are cancelled (reason `profile_deleted`) and their "
    "workflows asked to stop; the history that reports count (enrollments, timelines, "
    "deliveries) is kept without personal data: addresses, subjects and event data are removed. "
    "Header `Herald-Temporal`: `cancel_requested`, or `pending_reconcile` when Temporal could "
    "not be reached (the worker's periodic reconcile then stops the workflows).",
)
async def delete_profile(profile_id: str, request: Request, engine: EngineDep) -> Response:
    cancelled = await run_in_threadpool(_delete, engine, profile_id)
    link: TemporalLink = request.app.state.temporal
    told = await link.stop_workflows(
        [(w, "profile_deleted") for w in cancelled], OPERATOR_CALL_TIMEOUT_SECONDS
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={TEMPORAL_HEADER: told})


@router.get("", summary="List profiles, oldest first, with filters")
def list_profiles(
    engine: EngineDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    email: Annotated[str | None, Query()] = None,
    phone: Annotated[str | None, Query()] = None,
    external_id: Annotated[str | None, Query()] = None,
    list_id: Annotated[str | None, Query(description="only members of this list")] = None,
    subscribed: Annotated[Channel | None, Query(description="only consented to this")] = None,
) -> Page[ProfilePublic]:
    after = decode_cursor(cursor)
    stmt = select(Profile)
    for name, value, normalize in (
        ("email", email, normalize_email),
        ("phone", phone, normalize_phone),
    ):
        if value is None:
            continue
        try:
            stmt = stmt.where(getattr(Profile, name) == normalize(value))
        except ValueError as exc:
            raise invalid(name, str(exc)) from None
    if external_id is not None:
        stmt = stmt.where(Profile.external_id == external_id)
    if list_id is not None:
        stmt = stmt.where(
            exists().where(
                ListMembership.list_id == list_id, ListMembership.profile_id == Profile.id
            )
        )
    if subscribed is not None:
        stmt = stmt.where(
            exists().where(
                Consent.profile_id == Profile.id,
                Consent.channel == subscribed.value,
                Consent.status == "subscribed",
            )
        )
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, stmt, Profile.id, limit, after)
        return Page[ProfilePublic](data=[public(session, p) for p in page], next_cursor=next_cursor)


@router.get("/{profile_id}/consent", summary="Consent per channel and its history")
def get_consent(profile_id: str, engine: EngineDep) -> dict:
    with session_scope(engine) as session:
        load(session, profile_id)
        current = {
            row.channel: row
            for row in session.scalars(select(Consent).where(Consent.profile_id == profile_id))
        }
        channels = [
            ConsentPublic(
                channel=c,
                status=current[c].status if c in current else "never_subscribed",
                source=current[c].source if c in current else None,
                updated_at=current[c].updated_at if c in current else None,
            )
            for c in Channel
        ]
        history = session.scalars(
            select(ConsentChange)
            .where(ConsentChange.profile_id == profile_id)
            .order_by(ConsentChange.id)
        )
        return {
            "channels": channels,
            "history": [
                {"channel": h.channel, "status": h.status, "source": h.source, "at": h.at}
                for h in history
            ],
        }


@router.put("/{profile_id}/consent/{channel}", summary="Subscribe or unsubscribe one channel")
def put_consent(
    profile_id: str, channel: Channel, body: ConsentUpdate, engine: EngineDep
) -> ConsentPublic:
    return _retrying(engine, lambda session: _put_consent(session, profile_id, channel, body))


def _put_consent(
    session: Session, profile_id: str, channel: Channel, body: ConsentUpdate
) -> ConsentPublic:
    profile = load(session, profile_id)
    try:
        row = set_consent(session, profile, channel, body.status, body.source)
    except MissingAddress as exc:
        raise invalid("status", str(exc)) from None
    return ConsentPublic(
        channel=channel, status=row.status, source=row.source, updated_at=row.updated_at
    )
