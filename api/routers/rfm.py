"""RFM analysis: run it now, list runs, and read the latest completed run's report.

`POST /v1/rfm/runs` always creates a run and answers 201, whether the run completed or was
ineligible: an ineligible run is a stored, listed result (its report names every unmet
requirement), not a failed request. The daily schedule (workflows/rfm.py) creates runs the same
way.
"""

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import EngineDep, require_private_key
from api.errors import ApiError
from api.pagination import CursorQuery, LimitQuery, Page, decode_cursor, keyset_page
from herald.analytics.rfm_run import COMPLETED, run_rfm
from herald.core.db import session_scope
from models.segments import RfmRun
from models.types import utcnow

router = APIRouter(prefix="/v1/rfm", tags=["rfm"], dependencies=[Depends(require_private_key)])


class RfmRunPublic(BaseModel):
    id: str
    status: str  # completed | ineligible
    as_of: datetime
    report: dict[str, Any]
    created_at: datetime


class RfmReport(BaseModel):
    run_id: str
    as_of: datetime
    # The completed run before this one (None: this is the first); movements are since then.
    previous_run_id: str | None
    previous_as_of: datetime | None
    customers: int
    groups: dict[str, int]
    # [{"from": group or None (first scored), "to": group, "count": customers}]
    movements: list[dict[str, Any]]
    thresholds: dict[str, dict[str, float]]


def _public(run: RfmRun) -> RfmRunPublic:
    return RfmRunPublic.model_validate(run.model_dump())


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    summary="Run the RFM analysis now (201 also when ineligible: see the report's `unmet`)",
)
def create_run(engine: EngineDep) -> RfmRunPublic:
    with session_scope(engine) as session:
        return _public(run_rfm(session, utcnow()).run)


@router.get("/runs", summary="RFM runs, latest first")
def list_runs(
    engine: EngineDep, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> Page[RfmRunPublic]:
    before = decode_cursor(cursor)
    with session_scope(engine) as session:
        page, next_cursor = keyset_page(
            session, select(RfmRun), RfmRun.id, limit, before, descending=True
        )
    return Page[RfmRunPublic](data=[_public(r) for r in page], next_cursor=next_cursor)


@router.get("/report", summary="Group sizes and movements of the latest completed RFM run")
def latest_report(engine: EngineDep) -> RfmReport:
    completed = select(RfmRun).where(RfmRun.status == COMPLETED).order_by(RfmRun.id.desc()).limit(2)
    with session_scope(engine) as session:
        runs = list(session.scalars(completed))
        if not runs:
            latest = session.scalars(select(RfmRun).order_by(RfmRun.id.desc()).limit(1)).first()
            raise ApiError(
                404,
                "not_found",
                "no completed RFM run yet"
                + (
                    f"; the latest run ({latest.id}) was {latest.status}: "
                    "see its report in GET /v1/rfm/runs"
                    if latest is not None
                    else ": run one with POST /v1/rfm/runs, or wait for the daily run"
                ),
            )
    run, previous = runs[0], (runs[1] if len(runs) > 1 else None)
    return RfmReport(
        run_id=run.id,
        as_of=run.as_of,
        previous_run_id=previous.id if previous else None,
        previous_as_of=previous.as_of if previous else None,
        customers=run.report.get("customers", 0),
        groups=run.report.get("groups", {}),
        movements=run.report.get("movements", []),
        thresholds=run.report.get("thresholds", {}),
    )
