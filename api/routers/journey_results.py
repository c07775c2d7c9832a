"""Journey results of flows and campaigns: counts per step, who is behind each count, and
"save as segment" (a draft segment that keeps growing as more profiles get the result).

The rules and the SQL live in herald/analytics/journey.py and journey_report.py; member lists
run the same clause as the segment, so a list, its count and a segment saved from it always
agree.
"""

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import EngineDep, require_private_key
from api.errors import not_found
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from herald.analytics.journey import members_query, result_condition, run_steps
from herald.analytics.journey_report import run_results
from herald.core.db import session_scope
from herald.segments.store import create_segment
from models.segment_dto import SegmentPublic
from models.types import reject_nul, utcnow

router = APIRouter(tags=["journey results"], dependencies=[Depends(require_private_key)])


class StepResults(BaseModel):
    step_id: str
    type: str  # the flow step's type; "message" for a campaign message
    channel: str | None
    processed: int
    opened: int
    clicked: int
    bounced: int
    stopped: dict[str, int]  # profiles whose run ended at this step, by reason
    blocked: dict[str, int]  # profiles whose message here was not sent, by reason


class RunResults(BaseModel):
    """Every number counts distinct profiles (see herald/analytics/journey_report.py)."""

    run_kind: str
    run_id: str
    steps: list[StepResults]
    stopped: dict[str, int]
    blocked: dict[str, int]


class SaveAsSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _no_nul = model_validator(mode="before")(classmethod(reject_nul))

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    step_id: str | None = Field(default=None, min_length=1, max_length=100)
    result: str
    reason: str | None = Field(default=None, min_length=1, max_length=60)


# ---- flows --------------------------------------------------------------------------------------


@router.get("/v1/flows/{flow_id}/results", summary="A flow's journey results, step by step")
def flow_results(flow_id: str, engine: EngineDep) -> RunResults:
    return _results(engine, "flow", flow_id)


@router.get(
    "/v1/flows/{flow_id}/results/members",
    summary="The profiles with one result of a flow (by profile id)",
)
def flow_result_members(
    flow_id: str,
    engine: EngineDep,
    result: str,
    step_id: str | None = None,
    reason: str | None = None,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> Page[str]:
    return _members(engine, "flow", flow_id, step_id, result, reason, limit, cursor)


@router.post(
    "/v1/flows/{flow_id}/results/save-as-segment",
    status_code=status.HTTP_201_CREATED,
    summary="Save a flow result as a new draft segment",
)
def save_flow_result(flow_id: str, body: SaveAsSegment, engine: EngineDep) -> SegmentPublic:
    return _save(engine, "flow", flow_id, body)


# ---- campaigns ----------------------------------------------------------------------------------


@router.get(
    "/v1/campaigns/{campaign_id}/results",
    summary="A campaign's journey results, message by message",
)
def campaign_results(campaign_id: str, engine: EngineDep) -> RunResults:
    return _results(engine, "campaign", campaign_id)


@router.get(
    "/v1/campaigns/{campaign_id}/results/members",
    summary="The profiles with one result of a campaign (by profile id)",
)
def campaign_result_members(
    campaign_id: str,
    engine: EngineDep,
    result: str,
    step_id: str | None = None,
    reason: str | None = None,
    limit: LimitQuery = 100,
    cursor: CursorQuery = None,
) -> Page[str]:
    return _members(engine, "campaign", campaign_id, step_id, result, reason, limit, cursor)


@router.post(
    "/v1/campaigns/{campaign_id}/results/save-as-segment",
    status_code=status.HTTP_201_CREATED,
    summary="Save a campaign result as a new draft segment",
)
def save_campaign_result(campaign_id: str, body: SaveAsSegment, engine: EngineDep) -> SegmentPublic:
    return _save(engine, "campaign", campaign_id, body)


# ---- shared -------------------------------------------------------------------------------------


def _results(engine, run_kind: str, run_id: str) -> RunResults:
    with session_scope(engine) as session:
        if run_steps(session, run_kind, run_id) is None:
            raise not_found(run_kind, run_id)
        return RunResults.model_validate(run_results(session, run_kind, run_id))


def _members(
    engine,
    run_kind: str,
    run_id: str,
    step_id: str | None,
    result: str,
    reason: str | None,
    limit: int,
    cursor: str | None,
) -> Page[str]:
    after = decode_cursor(cursor)
    with session_scope(engine) as session:
        condition = result_condition(session, run_kind, run_id, step_id, result, reason)
        query = members_query(condition)
        ids, next_cursor = keyset_page(
            session, query, query.selected_columns[0], limit, after, last_key=lambda pid: pid
        )
    return Page[str](data=ids, next_cursor=next_cursor)


def _save(engine, run_kind: str, run_id: str, body: SaveAsSegment) -> SegmentPublic:
    with session_scope(engine) as session:
        condition = result_condition(
            session, run_kind, run_id, body.step_id, body.result, body.reason
        )
        definition = {
            "all_of": [{"any_of": [condition.model_dump(mode="json", exclude_none=True)]}]
        }
        origin = {
            "run_kind": run_kind,
            "run_id": run_id,
            "step_id": body.step_id,
            "result": body.result,
            "reason": body.reason,
        }
        segment = create_segment(
            session,
            name=body.name,
            description=body.description,
            definition=definition,
            origin=origin,
            now=utcnow(),
        )
        return SegmentPublic.model_validate(segment.model_dump())
