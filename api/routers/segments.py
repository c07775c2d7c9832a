"""Segments: CRUD, draft/live status, previews and member lists."""

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy import select
from sqlmodel import Session

from api.deps import EngineDep, require_private_key
from api.errors import invalid, not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from api.profile_pages import members_page
from herald.core.db import session_scope
from herald.segments.store import (
    create_segment,
    delete_segment,
    preview,
    set_status,
    update_segment,
)
from models.profile import Profile, ProfilePublic
from models.segment_dto import (
    SegmentCreate,
    SegmentPreview,
    SegmentPreviewIn,
    SegmentPublic,
    SegmentStatusChange,
    SegmentUpdate,
)
from models.segments import Segment, SegmentMembership
from models.types import utcnow

router = APIRouter(
    prefix="/v1/segments", tags=["segments"], dependencies=[Depends(require_private_key)]
)


def _load(session: Session, segment_id: str, for_update: bool = False) -> Segment:
    row = session.get(Segment, segment_id, with_for_update=for_update)
    if row is None:
        raise not_found("segment", segment_id)
    return row


def _public(row: Segment) -> SegmentPublic:
    return SegmentPublic.model_validate(row.model_dump())


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a draft segment")
def create(body: SegmentCreate, engine: EngineDep) -> SegmentPublic:
    with session_scope(engine) as session:
        row = create_segment(
            session,
            name=body.name,
            description=body.description,
            definition=body.definition,
            now=utcnow(),
        )
        return _public(row)


@router.post("/preview", summary="Count and sample a definition's members without saving")
def preview_segment(body: SegmentPreviewIn, engine: EngineDep) -> SegmentPreview:
    now = utcnow()
    with session_scope(engine) as session:
        count, sample = preview(session, body.definition, now, body.sample_size)
        return SegmentPreview(count=count, sample=sample, computed_at=now)


@router.get("", summary="List segments, oldest first")
def list_segments(
    engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[SegmentPublic]:
    after = decode_cursor(cursor)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, select(Segment), Segment.id, limit, after)
        return Page[SegmentPublic](data=[_public(r) for r in page], next_cursor=next_cursor)


@router.get("/{segment_id}", summary="Get a segment")
def get_segment(segment_id: str, engine: EngineDep) -> SegmentPublic:
    with session_scope(engine) as session:
        return _public(_load(session, segment_id))


@router.patch("/{segment_id}", summary="Rename a segment or change its definition")
def patch_segment(segment_id: str, body: SegmentUpdate, engine: EngineDep) -> SegmentPublic:
    for name in body.model_fields_set:
        if getattr(body, name) is None:
            raise invalid(name, "must not be null")
    with session_scope(engine) as session:
        row = _load(session, segment_id, for_update=True)
        update_segment(
            session,
            row,
            name=body.name,
            description=body.description,
            definition=body.definition,
            now=utcnow(),
        )
        return _public(row)


@router.post("/{segment_id}/status", summary="Set a segment live or back to draft")
def change_status(segment_id: str, body: SegmentStatusChange, engine: EngineDep) -> SegmentPublic:
    with session_scope(engine) as session:
        row = _load(session, segment_id, for_update=True)
        set_status(session, row, body.status, utcnow())
        return _public(row)


@router.delete("/{segment_id}", status_code=204, summary="Delete a segment that nothing uses")
def delete(segment_id: str, engine: EngineDep) -> Response:
    with session_scope(engine) as session:
        delete_segment(session, _load(session, segment_id, for_update=True))
    return Response(status_code=204)


@router.get("/{segment_id}/members", summary="The segment's members, by profile id")
def members(
    segment_id: str, engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[ProfilePublic]:
    members = (
        select(Profile)
        .join(SegmentMembership, SegmentMembership.profile_id == Profile.id)
        .where(SegmentMembership.segment_id == segment_id)
    )
    with session_scope(engine) as session:
        _load(session, segment_id)
        return members_page(session, members, limit, cursor)
