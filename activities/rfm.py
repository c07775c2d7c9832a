"""The RFM analysis activity: one run of herald/analytics/rfm_run.py in one transaction.

The workflow passes the time the schedule fired for, so every attempt scores as of the same
moment. A retry after a commit whose result was lost finds the run already stored for that
`as_of` and reports it instead of scoring again (which would record a second run with no
movements).
"""

from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from herald.analytics.contract import INVALID_RFM_INPUT, RfmActivitiesContract
from herald.analytics.rfm_run import run_rfm
from herald.core.clock import activity_now
from herald.core.db import session_scope
from models.segments import RfmRun

log = structlog.get_logger("herald.rfm")


def parse_as_of(as_of_iso: str | None) -> datetime | None:
    """An ISO 8601 time (without an offset: UTC), or None; ValueError if it is not one."""
    if as_of_iso is None:
        return None
    value = datetime.fromisoformat(as_of_iso)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def summary(run: RfmRun) -> dict[str, Any]:
    """What the workflow returns: small, whatever the number of customers."""
    report = run.report
    return {
        "run_id": run.id,
        "status": run.status,
        "as_of": run.as_of.isoformat(),
        "customers": report.get("customers", 0),
        "groups": report.get("groups", {}),
        "unmet": [item["requirement"] for item in report.get("unmet", [])],
    }


class RfmActivities(RfmActivitiesContract):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name="run_rfm_analysis")
    def run_rfm_analysis(self, as_of_iso: str | None) -> dict[str, Any]:
        """Scores every customer as of `as_of_iso` (None: now) and returns the run's summary."""
        try:
            as_of = parse_as_of(as_of_iso) or activity_now()
        except ValueError as exc:
            raise ApplicationError(
                f"as_of {as_of_iso!r} is not an ISO 8601 time: {exc}",
                type=INVALID_RFM_INPUT,
                non_retryable=True,
            ) from exc
        with session_scope(self.engine) as session:
            done = session.execute(select(RfmRun).where(RfmRun.as_of == as_of)).scalars().first()
            run = done or run_rfm(session, as_of).run
        result = summary(run)
        log.info("rfm analysis", already_done=done is not None, **result)
        return result
