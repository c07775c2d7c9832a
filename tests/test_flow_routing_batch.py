"""Flow routing reads a batch's running enrollments once, and still routes its events in order:
an event exits what its profile's earlier events started, never what later ones start, and a
wait is woken only while its enrollment has not converted."""

import itertools
from datetime import timedelta

from sqlalchemy import event as sql_events
from sqlalchemy import select

from activities.flow_routing import Effects, FlowRoutingHandler
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.flows.contract import SIGNAL_EVENT, SIGNAL_EXIT
from herald.flows.graph import FlowDefinition
from herald.routing.contract import RoutedItem
from models.enums import OutboxKind
from models.flows import Flow, FlowEnrollment, FlowVersion
from models.profile import Profile
from models.types import utcnow
from tests.test_flow_scenarios import chain, email

_ids = itertools.count(1)


class Bridge:
    def __init__(self) -> None:
        self.effects: list[Effects] = []

    def apply(self, effects: Effects) -> None:
        self.effects.append(effects)


def checkout_flow(db) -> str:
    """Started Checkout enrols; Placed Order converts; a wait for Viewed Product in between."""
    definition = FlowDefinition.model_validate(
        chain(
            {
                "trigger": {"type": "metric", "metric": "Started Checkout"},
                "exit_metric": "Placed Order",
                "reentry": {"mode": "every_time"},
                "steps": [
                    {
                        "id": "wait",
                        "type": "wait_for_event",
                        "metric": "Viewed Product",
                        "timeout_amount": 1,
                        "on_event": "nudge",
                        "on_timeout": "nudge",
                    },
                    email("nudge", "Still thinking?", smart_sending=False),
                ],
            }
        )
    )
    flow_id = new_id("fl")
    with session_scope(db.engine) as session:
        session.add(
            Flow(
                id=flow_id,
                name="Checkout",
                status="live",
                trigger_type="metric",
                trigger_key="Started Checkout",
                exit_metric="Placed Order",
            )
        )
        session.flush()
        session.add(
            FlowVersion(flow_id=flow_id, version=1, definition=definition.model_dump(mode="json"))
        )
    return flow_id


def shopper(db) -> str:
    with session_scope(db.engine) as session:
        profile = Profile(id=new_id("pr"), email=f"s{next(_ids)}@example.com", timezone="UTC")
        session.add(profile)
    return profile.id


def event(profile_id: str, metric: str) -> RoutedItem:
    n = next(_ids)
    return RoutedItem(
        outbox_id=n,
        kind=OutboxKind.event,
        profile_id=profile_id,
        backfill=False,
        event_id=n,
        metric=metric,
        time=utcnow(),
        unique_id=f"u-{n}",
        properties={},
    )


def route(db, *items: RoutedItem) -> Effects:
    bridge = Bridge()
    handler = FlowRoutingHandler(bridge, clock=lambda: utcnow() + timedelta(seconds=next(_ids)))
    with session_scope(db.engine) as session:
        handler.handle(session, list(items))
    handler.after_commit(db.engine)
    return bridge.effects[0]


def exits(db, profile_id: str) -> list[str | None]:
    with session_scope(db.engine) as session:
        return list(
            session.execute(
                select(FlowEnrollment.exit_reason)
                .where(FlowEnrollment.profile_id == profile_id)
                .order_by(FlowEnrollment.started_at)
            ).scalars()
        )


def test_an_order_after_the_checkout_in_one_batch_exits_the_enrollment_it_started(db):
    checkout_flow(db)
    buyer = shopper(db)
    effects = route(db, event(buyer, "Started Checkout"), event(buyer, "Placed Order"))
    assert len(effects.starts) == 1
    assert effects.signals == [(effects.starts[0][0], SIGNAL_EXIT, "converted")]
    assert exits(db, buyer) == ["converted"]


def test_an_order_before_the_checkout_in_one_batch_leaves_the_new_enrollment_running(db):
    checkout_flow(db)
    buyer = shopper(db)
    effects = route(db, event(buyer, "Placed Order"), event(buyer, "Started Checkout"))
    assert len(effects.starts) == 1 and effects.signals == []
    assert exits(db, buyer) == [None]


def test_a_wait_is_woken_until_its_enrollment_converts_and_other_profiles_are_untouched(db):
    checkout_flow(db)
    buyer, browser = shopper(db), shopper(db)
    route(db, event(buyer, "Started Checkout"), event(browser, "Started Checkout"))
    [buyer_run] = _running(db, buyer)
    [browser_run] = _running(db, browser)

    effects = route(
        db,
        event(buyer, "Viewed Product"),  # wakes the wait
        event(buyer, "Placed Order"),  # converts
        event(buyer, "Viewed Product"),  # too late: the enrollment has converted
        event(browser, "Viewed Product"),
    )
    assert sorted(effects.signals) == sorted(
        [
            (buyer_run, SIGNAL_EVENT, "Viewed Product"),
            (buyer_run, SIGNAL_EXIT, "converted"),
            (browser_run, SIGNAL_EVENT, "Viewed Product"),
        ]
    )
    assert exits(db, buyer) == ["converted"] and exits(db, browser) == [None]


def _running(db, profile_id: str) -> list[str]:
    with session_scope(db.engine) as session:
        return list(
            session.execute(
                select(FlowEnrollment.workflow_id).where(FlowEnrollment.profile_id == profile_id)
            ).scalars()
        )


def test_a_batch_reads_enrollments_once_however_many_events_it_holds(db):
    # Two statements per event made routing three times slower (bisected to the commit that
    # added flow routing); a batch's statements must not grow with its events.
    checkout_flow(db)
    profiles = [shopper(db) for _ in range(3)]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    items = [event(p, m) for p in profiles for m in ("Viewed Product", "Placed Order")] * 50
    sql_events.listen(db.engine, "before_cursor_execute", count)
    try:
        route(db, *items)
    finally:
        sql_events.remove(db.engine, "before_cursor_execute", count)
    on_enrollments = [s for s in statements if "flow_enrollment" in s]
    assert len(items) == 300
    assert len(on_enrollments) <= 3, on_enrollments
