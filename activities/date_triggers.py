"""Date property triggers: enrol profiles on the anniversary of a date property (e.g. birthday).

An hourly schedule (workflows/date_triggers.py) runs `enrol_date_triggers` with the hour it was
scheduled for. For every live or manual flow triggered by a date property, a profile is due when,
in its own timezone (else the account's, else UTC), today is an anniversary of the property's date
plus the flow's offset in days, and the hour is the flow's `at_time` hour. Feb 29 falls on Feb 28
in other years; an offset may cross a year boundary (Jan 2 with offset -3 is due on Dec 30 of the
year before). Anniversaries before the date itself do not count (a date in the future is not yet
an anniversary). When the `at_time` hour does not exist that day (a daylight-saving gap), the
profile is due in the first hour after the gap.

Profiles are read in pages of `page_size`, ordered by id, one transaction per page: due profiles
enrol through the flow routing handler (re-entry, flow filters, the enrollment row), the page's
workflow starts run before the commit, and a heartbeat records the last committed id so a retried
attempt resumes there. The entry key is `date-<local date>`, so running the same hour again (a
retry, a manual trigger, the repeated hour when clocks go back) never enrols a profile twice.
"""

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from activities.flow_routing import Effects, FlowRoutingHandler
from herald.core.db import session_scope
from herald.flows.contract import TriggerContext
from herald.flows.date_triggers import (
    DateTriggerActivitiesContract,
    DateTriggerCounts,
    is_due,
    parse_date_value,
    property_value,
    zone_named,
)
from herald.flows.graph import DatePropertyTrigger
from models.account import Account
from models.enums import FlowStatus
from models.flows import Flow
from models.profile import Profile

log = structlog.get_logger("herald.date_triggers")

PAGE_SIZE = 1000
TRIGGER_TYPE = "date_property"


# ---- the activity -------------------------------------------------------------------------------


@dataclass
class _DateFlow:
    flow: Flow
    trigger: DatePropertyTrigger


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


class DateTriggerActivities(DateTriggerActivitiesContract):
    def __init__(
        self, engine: Engine, handler: FlowRoutingHandler, page_size: int = PAGE_SIZE
    ) -> None:
        self.engine = engine
        self.handler = handler
        self.page_size = page_size

    @activity.defn(name="enrol_date_triggers")
    def enrol_date_triggers(self, now: datetime) -> DateTriggerCounts:
        """Enrols every profile due at `now` (the hour the schedule fired for) in date flows."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        counts, after = self._resume()
        with session_scope(self.engine) as session:
            flows = self._date_flows(session)
            account_zone = zone_named(
                session.execute(select(Account.timezone).where(Account.id == 1)).scalar()
            ) or ZoneInfo("UTC")
        counts.flows = len(flows)
        if not flows:
            return counts
        while True:
            with session_scope(self.engine) as session:
                rows = self._page(session, flows, after)
                if not rows:
                    break
                effects = Effects()
                page = self._check_page(session, flows, rows, now, account_zone, effects)
            # After the commit, like the router: the enrollment rows are there (unstarted), and
            # the router's recovery starts any that a crash here leaves behind.
            self.handler.start(self.engine, effects)
            after = rows[-1][0]
            counts.profiles_checked += page.profiles_checked
            counts.unparseable += page.unparseable
            counts.enrolled += len(effects.starts)
            _heartbeat({"after": after, "counts": asdict(counts)})
            if len(rows) < self.page_size:
                break
        log.info("date triggers checked", at=now.isoformat(), **asdict(counts))
        return counts

    # ---- steps ---------------------------------------------------------------------------------

    def _resume(self) -> tuple[DateTriggerCounts, str | None]:
        """Progress a previous attempt of this activity recorded, if any."""
        if not activity.in_activity():
            return DateTriggerCounts(), None
        details = activity.info().heartbeat_details
        if not details or not isinstance(details[0], dict):
            return DateTriggerCounts(), None
        saved = details[0]
        return DateTriggerCounts(**saved.get("counts", {})), saved.get("after")

    def _date_flows(self, session: Session) -> list[_DateFlow]:
        flows = session.execute(
            select(Flow)
            .where(
                Flow.trigger_type == TRIGGER_TYPE,
                Flow.status.in_((FlowStatus.live, FlowStatus.manual)),
                Flow.deleted_at.is_(None),
            )
            .order_by(Flow.id)
        ).scalars()
        found = []
        for flow in flows:
            trigger = self.handler.definition(session, flow.id, flow.latest_version).trigger
            if isinstance(trigger, DatePropertyTrigger):
                found.append(_DateFlow(flow, trigger))
            else:
                log.warning("flow trigger type disagrees with its definition", flow_id=flow.id)
        return found

    def _page(self, session: Session, flows: list[_DateFlow], after: str | None) -> list:
        stmt = select(Profile.id, Profile.timezone, Profile.properties)
        having = _has_any_key(session, {f.trigger.property for f in flows})
        if having is not None:
            stmt = stmt.where(having)
        if after is not None:
            stmt = stmt.where(Profile.id > after)
        return list(session.execute(stmt.order_by(Profile.id).limit(self.page_size)).all())

    def _check_page(
        self,
        session: Session,
        flows: list[_DateFlow],
        rows: list,
        now: datetime,
        account_zone: ZoneInfo,
        effects: Effects,
    ) -> DateTriggerCounts:
        page = DateTriggerCounts()
        for profile_id, timezone, properties in rows:
            local_now = now.astimezone(zone_named(timezone) or account_zone)
            parsed: dict[str, date | None] = {}
            checked = False
            for item in flows:
                name = item.trigger.property
                raw = property_value(properties or {}, name)
                if raw is None:
                    continue
                checked = True
                if name not in parsed:
                    parsed[name] = parse_date_value(raw)
                    page.unparseable += parsed[name] is None
                original = parsed[name]
                if original is None or not is_due(original, item.trigger, local_now):
                    continue
                trigger = TriggerContext(
                    type=TRIGGER_TYPE,
                    properties={"property": name, "value": raw},
                    time=now,
                )
                key = f"date-{local_now.date().isoformat()}"
                self.handler._enrol(session, item.flow, profile_id, key, trigger, effects)
            page.profiles_checked += checked
        return page


def _has_any_key(session: Session, names: set[str]):
    """SQL: the profile's properties have one of these top-level keys (None: cannot say)."""
    keys = set()
    for name in names:
        keys.add(name)
        keys.add(name.split(".", 1)[0])  # a dotted path starts at its first key
    column = Profile.__table__.c.properties
    if session.get_bind().dialect.name == "postgresql":
        return or_(*(type_coerce(column, JSONB).has_key(k) for k in sorted(keys)))
    if any('"' in k or "\\" in k for k in keys):
        return None  # not expressible as a SQLite JSON path: filter in Python only
    return or_(*(func.json_type(column, f'$."{k}"').is_not(None) for k in sorted(keys)))
