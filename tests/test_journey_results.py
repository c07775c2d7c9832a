"""Journey results: engagement attribution, counts per step, stopped and blocked by reason,
member lists that agree with the counts, and saving a result as a draft segment."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from activities.engagement_routing import EngagementHandler
from activities.routing import RouterActivities
from herald.analytics.engagement import engagement_kind, record_engagement
from herald.analytics.journey import journey_condition, members_query
from herald.analytics.journey_report import run_results
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.ingest.events import MetricDirectory, ingest
from herald.routing.contract import RoutedItem
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery
from models.enums import OutboxKind
from models.events import EventIn
from models.flows import EnrollmentStep, FlowEnrollment
from models.profile import Profile
from models.segments import DeliveryEngagement

HOUR = timedelta(hours=1)
PEOPLE = ("ada", "grace", "alan", "edsger", "barbara")


def email_step(step_id: str, next_id: str | None) -> dict:
    content = {"subject": "Thanks", "body": "Hi {{ profile.first_name | default: 'there' }}"}
    return {
        "id": step_id,
        "type": "message",
        "channel": "email",
        "content": content,
        "next": next_id,
    }


def create_flow(api) -> str:
    """Post-purchase: thank-you, a 3-day wait, a review request."""
    body = {
        "name": "Post-purchase",
        "trigger": {"type": "metric", "metric": "Placed Order"},
        "steps": [
            email_step("thanks", "wait"),
            {"id": "wait", "type": "time_delay", "amount": 3, "unit": "days", "next": "review"},
            email_step("review", None),
        ],
    }
    response = api.post("/v1/flows", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@dataclass
class World:
    """Five profiles (by first name) and the deliveries of one run."""

    db: object
    people: dict[str, str] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], str] = field(default_factory=dict)  # (name, step) -> id

    def __post_init__(self) -> None:
        with session_scope(self.db.engine) as session:
            for name in PEOPLE:
                pid = new_id("pr")
                session.add(Profile(id=pid, email=f"{name}@example.com", first_name=name))
                self.people[name] = pid

    def delivery(
        self,
        run_kind: str,
        run_id: str,
        step_id: str,
        name: str,
        status: str = "sent",
        reason: str | None = None,
        channel: str = "email",
    ) -> str:
        pid, now = self.people[name], datetime.now(UTC)
        workflow_id = f"flow/{run_id}/{pid}/e1" if run_kind == "flow" else None
        row = Delivery(
            id=new_id("dl"),
            idempotency_key=f"{run_kind}:{run_id}:{step_id}:{pid}",
            run_kind=run_kind,
            run_id=run_id,
            step_id=step_id,
            workflow_id=workflow_id,
            profile_id=pid,
            channel=channel,
            status=status,
            reason=reason,
            sent_at=now if status == "sent" else None,
        )
        with session_scope(self.db.engine) as session:
            session.add(row)
        self.deliveries[(name, step_id)] = row.id
        return row.id

    def enrollment(
        self,
        flow_id: str,
        name: str,
        at: str,
        exit_reason: str | None = None,
        processed: tuple[str, ...] = (),
    ) -> None:
        """An enrollment now at step `at`; `processed` are non-message steps it passed."""
        pid, workflow_id = self.people[name], f"flow/{flow_id}/{self.people[name]}/e1"
        status = {None: "completed", "operator": "cancelled"}.get(exit_reason, "exited")
        with session_scope(self.db.engine) as session:
            session.add(
                FlowEnrollment(
                    workflow_id=workflow_id,
                    flow_id=flow_id,
                    version=1,
                    profile_id=pid,
                    entry_key="e1",
                    status=status,
                    current_step=at,
                    exit_reason=exit_reason,
                )
            )
            for step_id in processed:
                session.add(
                    EnrollmentStep(
                        workflow_id=workflow_id,
                        flow_id=flow_id,
                        profile_id=pid,
                        step_id=step_id,
                        step_type="time_delay",
                        outcome="processed",
                        at=datetime.now(UTC),
                    )
                )


def post_purchase_run(api, db) -> tuple[str, World]:
    """ada got both emails; grace converted while waiting; alan has no consent; edsger left the
    flow filter before the review; an operator cancelled barbara while she waited."""
    flow_id, world = create_flow(api), World(db)
    world.enrollment(flow_id, "ada", "review", processed=("wait",))
    world.enrollment(flow_id, "grace", "wait", exit_reason="converted")
    world.enrollment(flow_id, "alan", "review", processed=("wait",))
    world.enrollment(flow_id, "edsger", "review", exit_reason="filter", processed=("wait",))
    world.enrollment(flow_id, "barbara", "wait", exit_reason="operator")
    for name in ("ada", "grace", "edsger", "barbara"):
        world.delivery("flow", flow_id, "thanks", name)
    world.delivery("flow", flow_id, "thanks", "alan", "skipped", "no_consent")
    world.delivery("flow", flow_id, "review", "ada")
    world.delivery("flow", flow_id, "review", "alan", "skipped", "no_consent")
    world.delivery("flow", flow_id, "review", "edsger", "skipped", "filter")
    return flow_id, world


def sneaker_drop(db) -> tuple[str, World]:
    """Day 1 email to ada, grace and alan (smart sending skips alan); grace converts; the SMS
    reaches ada, skips grace (exited) and alan (no consent)."""
    world = World(db)
    campaign_id, path_id = new_id("cp"), new_id("pa")
    with session_scope(db.engine) as session:
        session.add(Campaign(id=campaign_id, name="Sneaker drop", status="sending"))
        session.flush()
        session.add(CampaignPath(id=path_id, campaign_id=campaign_id, position=0, name="All"))
        session.flush()
        for position, (message_id, channel, at) in enumerate(
            (("email1", "email", "2026-05-04T09:00"), ("sms1", "sms", "2026-05-04T13:00"))
        ):
            session.add(
                CampaignMessage(
                    id=message_id,
                    campaign_id=campaign_id,
                    path_id=path_id,
                    position=position,
                    channel=channel,
                    send_at_local=at,
                    status="sent",
                )
            )
        session.add(
            CampaignExit(
                campaign_id=campaign_id,
                profile_id=world.people["grace"],
                converted_at=datetime.now(UTC),
            )
        )
    world.delivery("campaign", campaign_id, "email1", "ada")
    world.delivery("campaign", campaign_id, "email1", "grace")
    world.delivery("campaign", campaign_id, "email1", "alan", "skipped", "smart_sending")
    world.delivery("campaign", campaign_id, "sms1", "ada", channel="sms")
    world.delivery("campaign", campaign_id, "sms1", "grace", "skipped", "exited", "sms")
    world.delivery("campaign", campaign_id, "sms1", "alan", "skipped", "no_consent", "sms")
    return campaign_id, world


def engagement_event(
    world: World, name: str, metric: str, delivery_id: str, at: datetime, uid: str
) -> EventIn:
    return EventIn.model_validate(
        {
            "metric": metric,
            "profile": {"email": f"{name}@example.com"},
            "properties": {"$delivery_id": delivery_id},
            "time": at.isoformat(),
            "unique_id": uid,
        }
    )


def route(db, events: list[EventIn]) -> None:
    """Stores the events and routes them through the engagement handler, as the worker does."""
    ingest(db.engine, MetricDirectory(), events, "test")
    RouterActivities(db.engine, [EngagementHandler()]).route_once()


def step(results: dict, step_id: str) -> dict:
    return next(s for s in results["steps"] if s["step_id"] == step_id)


def members(api, run: str, **params) -> list[str]:
    """Every page of a result's members."""
    ids, cursor = [], None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        response = api.get(f"/v1/{run}/results/members", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def errors(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


# ---- engagement attribution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "kind"),
    [
        ("Opened Email", "opened"),
        ("Clicked Email", "clicked"),
        ("Bounced Email", "bounced"),
        ("Clicked SMS", "clicked"),
        ("Clicked WhatsApp", "clicked"),
        ("Opened Push", "opened"),
        ("Received Email", None),
        ("Opened Sesame", None),
        ("Placed Order", None),
        ("Opened", None),
    ],
)
def test_engagement_kind_is_the_verb_of_a_channel_metric(metric, kind):
    assert engagement_kind(metric) == kind


def test_the_first_open_of_a_delivery_counts_and_repeats_change_nothing(api, db):
    flow_id, world = post_purchase_run(api, db)
    thanks = world.deliveries[("ada", "thanks")]
    first = datetime.now(UTC).replace(microsecond=0) - 5 * HOUR
    route(
        db,
        [
            engagement_event(world, "ada", "Opened Email", thanks, first, "o1"),
            engagement_event(world, "ada", "Opened Email", thanks, first + HOUR, "o2"),
            engagement_event(world, "ada", "Clicked Email", thanks, first + 2 * HOUR, "c1"),
        ],
    )
    route(db, [engagement_event(world, "ada", "Opened Email", thanks, first + 3 * HOUR, "o3")])
    # The same event sent again is stored once and routed once.
    route(db, [engagement_event(world, "ada", "Opened Email", thanks, first, "o1")])

    rows = db.rows(
        "SELECT kind, run_kind, run_id, step_id, profile_id FROM delivery_engagement ORDER BY kind"
    )
    assert [tuple(r) for r in rows] == [
        ("clicked", "flow", flow_id, "thanks", world.people["ada"]),
        ("opened", "flow", flow_id, "thanks", world.people["ada"]),
    ]
    with session_scope(db.engine) as session:
        assert session.get(DeliveryEngagement, (thanks, "opened")).at == first


def test_an_earlier_open_routed_late_becomes_the_first(api, db):
    _, world = post_purchase_run(api, db)
    thanks, pid = world.deliveries[("ada", "thanks")], world.people["ada"]
    now = datetime.now(UTC).replace(microsecond=0)

    def open_at(at: datetime, event_id: int) -> RoutedItem:
        return RoutedItem(
            outbox_id=event_id,
            kind=OutboxKind.event,
            profile_id=pid,
            backfill=True,
            event_id=event_id,
            metric="Opened Email",
            time=at,
            properties={"$delivery_id": thanks},
        )

    with session_scope(db.engine) as session:
        assert record_engagement(session, [open_at(now - HOUR, 1)]) == {pid}
    with session_scope(db.engine) as session:
        assert record_engagement(session, [open_at(now - HOUR, 1)]) == set()
        assert record_engagement(session, [open_at(now - 3 * HOUR, 2)]) == {pid}
        assert record_engagement(session, [open_at(now - 2 * HOUR, 3)]) == set()
    assert db.rows("SELECT event_id FROM delivery_engagement") == [(2,)]


def test_engagement_naming_another_profiles_or_unknown_or_unsent_delivery_is_ignored(api, db):
    _, world = post_purchase_run(api, db)
    at = datetime.now(UTC) - HOUR
    route(
        db,
        [
            # edsger's client reports an open of grace's email: not edsger's delivery.
            engagement_event(
                world, "edsger", "Opened Email", world.deliveries[("grace", "thanks")], at, "x1"
            ),
            engagement_event(world, "barbara", "Opened Email", "dl_nosuchdelivery", at, "x2"),
            # alan's email was never sent.
            engagement_event(
                world, "alan", "Opened Email", world.deliveries[("alan", "thanks")], at, "x3"
            ),
            # Not an engagement metric, though it names a delivery.
            engagement_event(
                world, "ada", "Received Email", world.deliveries[("ada", "thanks")], at, "x4"
            ),
        ],
    )
    assert db.scalar("SELECT count(*) FROM delivery_engagement") == 0


# ---- results ------------------------------------------------------------------------------------


def test_flow_results_count_profiles_per_step_with_stops_and_blocks_by_reason(api, db):
    flow_id, world = post_purchase_run(api, db)
    at = datetime.now(UTC) - HOUR
    thanks = {name: world.deliveries[(name, "thanks")] for name in ("ada", "grace", "edsger")}
    route(
        db,
        [
            engagement_event(world, "ada", "Opened Email", thanks["ada"], at, "1"),
            engagement_event(world, "ada", "Clicked Email", thanks["ada"], at, "2"),
            engagement_event(world, "grace", "Opened Email", thanks["grace"], at, "3"),
            engagement_event(world, "edsger", "Bounced Email", thanks["edsger"], at, "4"),
        ],
    )

    response = api.get(f"/v1/flows/{flow_id}/results")
    assert response.status_code == 200, response.text
    results = response.json()
    assert [s["step_id"] for s in results["steps"]] == ["thanks", "wait", "review"]
    assert step(results, "thanks") == {
        "step_id": "thanks",
        "type": "message",
        "channel": "email",
        "processed": 4,
        "opened": 2,
        "clicked": 1,
        "bounced": 1,
        "stopped": {},
        "blocked": {"no_consent": 1},
    }
    wait = step(results, "wait")
    assert (wait["type"], wait["processed"]) == ("time_delay", 3)
    assert wait["stopped"] == {"converted": 1, "operator": 1}
    review = step(results, "review")
    assert (review["processed"], review["opened"]) == (1, 0)
    assert review["stopped"] == {"filter": 1}
    assert review["blocked"] == {"no_consent": 1, "filter": 1}
    assert results["stopped"] == {"converted": 1, "filter": 1, "operator": 1}
    # alan was blocked twice for lack of consent: one profile.
    assert results["blocked"] == {"no_consent": 1, "filter": 1}


def test_reaching_the_exit_step_is_not_a_stop(api, db):
    flow_id, world = post_purchase_run(api, db)
    db.execute(
        "UPDATE flow_enrollment SET exit_reason = 'exit_step', status = 'exited' "
        "WHERE profile_id = :p",
        p=world.people["ada"],
    )
    with session_scope(db.engine) as session:
        results = run_results(session, "flow", flow_id)
        assert "exit_step" not in results["stopped"]
        stopped = journey_condition("flow", flow_id, None, "stopped", None)
        ids = list(session.scalars(members_query(stopped)))
    assert world.people["ada"] not in ids and len(ids) == 3


def test_campaign_results_per_message_with_exits_at_the_message_they_skipped(api, db):
    campaign_id, world = sneaker_drop(db)
    sms = world.deliveries[("ada", "sms1")]
    route(db, [engagement_event(world, "ada", "Clicked SMS", sms, datetime.now(UTC), "c1")])

    response = api.get(f"/v1/campaigns/{campaign_id}/results")
    assert response.status_code == 200, response.text
    results = response.json()
    assert [(s["step_id"], s["channel"]) for s in results["steps"]] == [
        ("email1", "email"),
        ("sms1", "sms"),
    ]
    email1, sms1 = step(results, "email1"), step(results, "sms1")
    assert (email1["processed"], email1["blocked"], email1["stopped"]) == (
        2,
        {"smart_sending": 1},
        {},
    )
    assert (sms1["processed"], sms1["clicked"], sms1["stopped"]) == (1, 1, {"converted": 1})
    assert sms1["blocked"] == {"exited": 1, "no_consent": 1}
    assert results["stopped"] == {"converted": 1}
    assert results["blocked"] == {"smart_sending": 1, "exited": 1, "no_consent": 1}


# ---- members ------------------------------------------------------------------------------------


FLOW_RESULTS = [
    ({"step_id": "thanks", "result": "processed"}, ("ada", "grace", "edsger", "barbara")),
    ({"step_id": "wait", "result": "processed"}, ("ada", "alan", "edsger")),
    ({"step_id": "thanks", "result": "opened"}, ("ada", "grace")),
    ({"step_id": "thanks", "result": "clicked"}, ("ada",)),
    ({"step_id": "thanks", "result": "bounced"}, ("edsger",)),
    ({"step_id": "review", "result": "opened"}, ()),
    ({"result": "stopped"}, ("grace", "edsger", "barbara")),
    ({"result": "stopped", "reason": "converted"}, ("grace",)),
    ({"step_id": "wait", "result": "stopped"}, ("grace", "barbara")),
    ({"step_id": "wait", "result": "stopped", "reason": "operator"}, ("barbara",)),
    ({"result": "blocked"}, ("alan", "edsger")),
    ({"result": "blocked", "reason": "no_consent"}, ("alan",)),
    ({"step_id": "review", "result": "blocked", "reason": "filter"}, ("edsger",)),
]


def test_flow_members_are_the_profiles_behind_each_count(api, db):
    flow_id, world = post_purchase_run(api, db)
    at = datetime.now(UTC) - HOUR
    route(
        db,
        [
            engagement_event(world, n, m, world.deliveries[(n, "thanks")], at, f"{n}{m}")
            for n, m in (
                ("ada", "Opened Email"),
                ("ada", "Clicked Email"),
                ("grace", "Opened Email"),
                ("edsger", "Bounced Email"),
            )
        ],
    )
    results = api.get(f"/v1/flows/{flow_id}/results").json()
    for params, names in FLOW_RESULTS:
        found = members(api, f"flows/{flow_id}", **params)
        assert found == sorted(world.people[n] for n in names), params
        if "step_id" in params:
            count = step(results, params["step_id"])[params["result"]]
        else:
            count = results[params["result"]]
        if isinstance(count, dict):
            count = count.get(params["reason"]) if "reason" in params else None
        if count is not None:
            assert count == len(found), params


def test_campaign_members_match_stops_and_blocks(api, db):
    campaign_id, world = sneaker_drop(db)
    run = f"campaigns/{campaign_id}"
    ids = world.people
    assert members(api, run, step_id="email1", result="processed") == sorted(
        [ids["ada"], ids["grace"]]
    )
    assert members(api, run, result="stopped", reason="converted") == [ids["grace"]]
    assert members(api, run, step_id="sms1", result="stopped") == [ids["grace"]]
    assert members(api, run, step_id="email1", result="stopped") == []
    assert members(api, run, result="stopped", reason="operator") == []
    assert members(api, run, result="blocked") == sorted([ids["alan"], ids["grace"]])
    assert members(api, run, step_id="sms1", result="blocked", reason="exited") == [ids["grace"]]


# ---- save as segment ----------------------------------------------------------------------------


def test_save_as_segment_creates_a_draft_of_the_result(api, db):
    flow_id, world = post_purchase_run(api, db)
    thanks = world.deliveries[("ada", "thanks")]
    route(db, [engagement_event(world, "ada", "Clicked Email", thanks, datetime.now(UTC), "c")])

    response = api.post(
        f"/v1/flows/{flow_id}/results/save-as-segment",
        json={"name": "Clicked the thank-you", "step_id": "thanks", "result": "clicked"},
    )
    assert response.status_code == 201, response.text
    segment = response.json()
    assert segment["status"] == "draft"
    assert segment["definition"] == {
        "all_of": [
            {
                "any_of": [
                    {
                        "type": "journey",
                        "run_kind": "flow",
                        "run_id": flow_id,
                        "step_id": "thanks",
                        "result": "clicked",
                    }
                ]
            }
        ]
    }
    assert segment["origin"] == {
        "run_kind": "flow",
        "run_id": flow_id,
        "step_id": "thanks",
        "result": "clicked",
        "reason": None,
    }
    assert segment["member_count"] == 1
    assert db.rows("SELECT profile_id FROM segment_membership") == [(world.people["ada"],)]


def test_save_stopped_campaign_profiles_as_a_segment(api, db):
    campaign_id, world = sneaker_drop(db)
    response = api.post(
        f"/v1/campaigns/{campaign_id}/results/save-as-segment",
        json={"name": "Converted", "result": "stopped", "reason": "converted"},
    )
    assert response.status_code == 201, response.text
    segment = response.json()
    condition = segment["definition"]["all_of"][0]["any_of"][0]
    assert condition == {
        "type": "journey",
        "run_kind": "campaign",
        "run_id": campaign_id,
        "result": "stopped",
        "reason": "converted",
    }
    assert segment["origin"]["step_id"] is None
    assert db.rows("SELECT profile_id FROM segment_membership") == [(world.people["grace"],)]


# ---- errors -------------------------------------------------------------------------------------


def test_unknown_runs_are_404(api, db):
    for url in (
        "/v1/flows/fl_nope/results",
        "/v1/campaigns/cp_nope/results",
        "/v1/flows/fl_nope/results/members?result=stopped",
    ):
        response = api.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == "not_found"
    response = api.post(
        "/v1/campaigns/cp_nope/results/save-as-segment", json={"name": "x", "result": "blocked"}
    )
    assert response.status_code == 404


def test_bad_result_queries_are_422_naming_the_field(api, db):
    flow_id, _ = post_purchase_run(api, db)
    url = f"/v1/flows/{flow_id}/results/members"
    assert "result" in errors(api.get(url, params={"step_id": "thanks", "result": "liked"}))
    assert errors(api.get(url, params={"result": "opened"})) == {
        "step_id": "is required for result 'opened'"
    }
    assert "step_id" in errors(api.get(url, params={"step_id": "nope", "result": "processed"}))
    assert "reason" in errors(
        api.get(url, params={"step_id": "thanks", "result": "opened", "reason": "x"})
    )
    save = f"/v1/flows/{flow_id}/results/save-as-segment"
    assert "step_id" in errors(api.post(save, json={"name": "x", "result": "clicked"}))
    assert "step_id" in errors(
        api.post(save, json={"name": "x", "step_id": "sms1", "result": "clicked"})
    )
    assert db.scalar("SELECT count(*) FROM segment") == 0
