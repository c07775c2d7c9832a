"""Lists: CRUD and bulk membership changes (all-or-nothing per call)."""

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlmodel import Session

from api.deps import EngineDep, require_private_key
from api.errors import invalid, not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from api.profile_pages import members_page
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.profiles.lists import add_members, member_counts, remove_members
from models.lists import (
    ListCreate,
    ListMembership,
    ListPublic,
    ListUpdate,
    MembersChange,
    MembersChanged,
    ProfileList,
)
from models.profile import Profile, ProfilePublic
from models.types import utcnow

router = APIRouter(prefix="/v1/lists", tags=["lists"], dependencies=[Depends(require_private_key)])


def _load(session: Session, list_id: str) -> ProfileList:
    row = session.get(ProfileList, list_id)
    if row is None:
        raise not_found("list", list_id)
    return row


def _public(row: ProfileList, count: int) -> ListPublic:
    return ListPublic.model_validate({**row.model_dump(), "member_count": count})


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a list")
def create_list(body: ListCreate, engine: EngineDep) -> ListPublic:
    with session_scope(engine) as session:
        row = ProfileList(id=new_id("lst"), name=body.name, description=body.description)
        session.add(row)
        return _public(row, 0)


@router.get("", summary="List lists, oldest first")
def list_lists(
    engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[ListPublic]:
    after = decode_cursor(cursor)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(session, select(ProfileList), ProfileList.id, limit, after)
        counts = member_counts(session, [r.id for r in page])
        return Page[ListPublic](
            data=[_public(r, counts.get(r.id, 0)) for r in page], next_cursor=next_cursor
        )


@router.get("/{list_id}", summary="Get a list")
def get_list(list_id: str, engine: EngineDep) -> ListPublic:
    with session_scope(engine) as session:
        row = _load(session, list_id)
        return _public(row, member_counts(session, [list_id]).get(list_id, 0))


@router.patch("/{list_id}", summary="Rename or describe a list")
def patch_list(list_id: str, body: ListUpdate, engine: EngineDep) -> ListPublic:
    with session_scope(engine) as session:
        row = _load(session, list_id)
        for name in body.model_fields_set:
            value = getattr(body, name)
            if value is None:
                raise invalid(name, "must not be null")
            setattr(row, name, value)
        row.updated_at = utcnow()
        session.add(row)
        return _public(row, member_counts(session, [list_id]).get(list_id, 0))


@router.delete("/{list_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a list")
def delete_list(list_id: str, engine: EngineDep) -> Response:
    with session_scope(engine) as session:
        _load(session, list_id)
        session.execute(sql_delete(ProfileList).where(ProfileList.id == list_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{list_id}/members", summary="Add profiles (up to 1,000; unknown ids change nothing)")
def add_list_members(list_id: str, body: MembersChange, engine: EngineDep) -> MembersChanged:
    with session_scope(engine) as session:
        _load(session, list_id)
        added = add_members(session, list_id, body.profile_ids)
        return MembersChanged(changed=added, unchanged=len(set(body.profile_ids)) - added)


@router.post("/{list_id}/members/remove", summary="Remove profiles (up to 1,000)")
def remove_list_members(list_id: str, body: MembersChange, engine: EngineDep) -> MembersChanged:
    with session_scope(engine) as session:
        _load(session, list_id)
        removed = remove_members(session, list_id, body.profile_ids)
        return MembersChanged(changed=removed, unchanged=len(set(body.profile_ids)) - removed)


@router.get("/{list_id}/members", summary="Members of a list, in profile id order")
def list_members(
    list_id: str, engine: EngineDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Page[ProfilePublic]:
    members = (
        select(Profile)
        .join(ListMembership, ListMembership.profile_id == Profile.id)
        .where(ListMembership.list_id == list_id)
    )
    with session_scope(engine) as session:
        _load(session, list_id)
        return members_page(session, members, limit, cursor)
