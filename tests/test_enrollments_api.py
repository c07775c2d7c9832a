"""The operator API over enrollments: listing, timelines, cancel, review queue, step report.

Rows are written straight into the tables the enrollment workflow maintains. The shared API
fixture points at a Temporal address where nothing listens, so these tests also show that every
operator action takes effect in the database when the workflow cannot be signalled; the last
tests run against a real Temporal dev server and check the signals and the live state arrive.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import insert
from temporalio import workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.app import create_app
from herald.core.config import Settings
from herald.flows.contract import EnrollmentState, enrollment_workflow_id
from models.delivery import Delivery
from models.flows import EnrollmentStep, FlowEnrollment, ReviewItem
from tests.conftest import serve
from tests.test_flows_api import create_flow, definition, email

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def make_profiles(api, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = api.post("/v1/profiles", json={"email": f"shopper{i}@example.com"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def enrol(
    db,
    flow_id: str,
    profile_id: str,
    key: str,
    status: str = "running",
    step: str | None = "thanks",
    started_at: datetime = T0,
    **extra,
) -> str:
    workflow_id = enrollment_workflow_id(flow_id, profile_id, key)
    row = {
        "workflow_id": workflow_id,
        "flow_id": flow_id,
        "version": 1,
        "profile_id": profile_id,
        "entry_key": key,
        "status": status,
        "current_step": step,
        "trigger": {"metric": "Placed Order", "value": 120.0},
        "started_at": started_at,
        "ended_at": None if status == "running" else started_at + timedelta(days=1),
        **extra,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(FlowEnrollment.__table__), [row])
    return workflow_id


def record(db, workflow_id: str, *lines: tuple) -> None:
    """Timeline lines (step_id, step_type, outcome, reason, minutes after T0)."""
    flow_id, profile_id = workflow_id.split("/")[1:3]
    rows = [
        {
            "workflow_id": workflow_id,
            "flow_id": flow_id,
            "profile_id": profile_id,
            "step_id": step_id,
            "step_type": step_type,
            "outcome": outcome,
            "reason": reason,
            "detail": {},
            "at": T0 + timedelta(minutes=minutes),
        }
        for step_id, step_type, outcome, reason, minutes in lines
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(EnrollmentStep.__table__), rows)


def queue_review(db, workflow_id: str, step_id: str = "review", status: str = "pending") -> str:
    flow_id, profile_id = workflow_id.split("/")[1:3]
    item_id = f"rev_{uuid.uuid4().hex[:12]}"
    row = {
        "id": item_id,
        "workflow_id": workflow_id,
        "flow_id": flow_id,
        "step_id": step_id,
        "profile_id": profile_id,
        "channel": "email",
        "status": status,
        "created_at": T0,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(ReviewItem.__table__), [row])
    return item_id


def deliver(db, workflow_id: str, step_id: str, status: str, reason: str | None = None) -> None:
    flow_id, profile_id = workflow_id.split("/")[1:3]
    row = {
        "id": f"dlv_{uuid.uuid4().hex[:12]}",
        "idempotency_key": f"flow:{workflow_id}:{step_id}",
        "run_kind": "flow",
        "run_id": flow_id,
        "step_id": step_id,
        "workflow_id": workflow_id,
        "profile_id": profile_id,
        "channel": "email",
        "status": status,
        "reason": reason,
        "created_at": T0,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(Delivery.__table__), [row])


def page(api, url: str, **params) -> list[dict]:
    response = api.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


# ---- listing and timelines ---------------------------------------------------------------------


def test_enrollments_of_a_flow_filter_by_status_step_and_profile(api, db):
    flow = create_flow(api)["id"]
    other_flow = create_flow(api, "Other")["id"]
    p1, p2, p3 = make_profiles(api, 3)
    a = enrol(db, flow, p1, "order-1", step="wait")
    b = enrol(db, flow, p2, "order-2", step="review", started_at=T0 + timedelta(hours=1))
    c = enrol(db, flow, p1, "order-3", status="exited", exit_reason="converted", step="wait")
    enrol(db, other_flow, p3, "order-4")
    url = f"/v1/flows/{flow}/enrollments"
    assert [e["workflow_id"] for e in page(api, url)] == [a, c, b]
    assert [e["workflow_id"] for e in page(api, url, status="running")] == [a, b]
    assert [e["workflow_id"] for e in page(api, url, step="wait")] == [a, c]
    assert [e["workflow_id"] for e in page(api, url, profile_id=p1, status="exited")] == [c]
    [row] = page(api, url, profile_id=p2)
    assert row == {
        "workflow_id": b,
        "flow_id": flow,
        "version": 1,
        "profile_id": p2,
        "entry_key": "order-2",
        "status": "running",
        "current_step": "review",
        "exit_reason": None,
        "trigger": {"metric": "Placed Order", "value": 120.0},
        "started_at": "2026-03-01T10:00:00Z",
        "ended_at": None,
    }
    assert api.get(url, params={"status": "sleeping"}).status_code == 422


def test_enrollments_page_in_start_order(api, db):
    flow = create_flow(api)["id"]
    [p1] = make_profiles(api, 1)
    # Five started in the same instant and two later: the cursor must not skip or repeat any.
    ids = [enrol(db, flow, p1, f"k{i}") for i in range(5)]
    ids += [enrol(db, flow, p1, f"late{i}", started_at=T0 + timedelta(seconds=i)) for i in (1, 2)]
    url = f"/v1/flows/{flow}/enrollments"
    seen, cursor = [], None
    while True:
        response = api.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        body = response.json()
        seen += [e["workflow_id"] for e in body["data"]]
        if not (cursor := body["next_cursor"]):
            break
    assert seen == sorted(ids[:5]) + ids[5:]
    assert api.get(url, params={"cursor": "bm9wZQ"}).status_code == 422


def test_an_enrollment_shows_its_timeline_and_no_live_state_while_temporal_is_down(api, db):
    flow = create_flow(api)["id"]
    [p1] = make_profiles(api, 1)
    workflow_id = enrol(db, flow, p1, "order:1001/a b", step="wait")
    record(
        db,
        workflow_id,
        ("wait", "time_delay", "entered", None, 1),
        ("thanks", "message", "processed", None, 0),
        ("thanks", "message", "entered", None, 0),
    )
    started = time.monotonic()
    response = api.get(f"/v1/enrollments/{workflow_id}")
    assert time.monotonic() - started < 5
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["workflow_id"], body["status"], body["current_step"]) == (
        workflow_id,
        "running",
        "wait",
    )
    assert body["live"] is None
    # Ordered by time, then by the order the lines were written.
    assert [(e["step_id"], e["outcome"]) for e in body["timeline"]] == [
        ("thanks", "processed"),
        ("thanks", "entered"),
        ("wait", "entered"),
    ]
    assert body["timeline"][2]["at"] == "2026-03-01T09:01:00Z"


def test_unknown_enrollment_is_404(api, db):
    for method, path in (("GET", ""), ("POST", "/cancel")):
        response = api.request(method, f"/v1/enrollments/flow/fl_x/prf_y/k{path}")
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not_found"


# ---- cancel ------------------------------------------------------------------------------------


def test_cancel_ends_the_enrollment_even_while_temporal_is_down(api, db):
    flow = create_flow(api)["id"]
    p1, p2 = make_profiles(api, 2)
    running = enrol(db, flow, p1, "order-1", step="review")
    done = enrol(db, flow, p2, "order-2", status="completed", step=None)
    pending = queue_review(db, running)

    response = api.post(f"/v1/enrollments/{running}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["exit_reason"]) == ("cancelled", "operator")
    assert body["ended_at"] is not None
    assert db.rows(
        "SELECT status, exit_reason FROM flow_enrollment WHERE workflow_id = :w", w=running
    ) == [("cancelled", "operator")]
    # Its queued message will never be sent.
    assert db.scalar("SELECT status FROM review_item WHERE id = :i", i=pending) == "expired"

    for ended in (running, done):
        response = api.post(f"/v1/enrollments/{ended}/cancel")
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "conflict"
    assert db.rows(
        "SELECT status, exit_reason FROM flow_enrollment WHERE workflow_id = :w", w=done
    ) == [("completed", None)]


def test_deleting_a_flow_cancels_its_running_enrollments(api, db):
    flow = create_flow(api, status="live")["id"]
    other = create_flow(api, "Other", status="live")["id"]
    p1, p2, p3 = make_profiles(api, 3)
    running = enrol(db, flow, p1, "order-1")
    converted = enrol(db, flow, p2, "order-2", status="exited", exit_reason="converted")
    elsewhere = enrol(db, other, p3, "order-3")
    waiting = queue_review(db, running)
    assert api.delete(f"/v1/flows/{flow}").status_code == 204
    status = dict(db.rows("SELECT workflow_id, status || '/' || exit_reason FROM flow_enrollment"))
    assert status[running] == "cancelled/flow_deleted"
    assert status[converted] == "exited/converted"
    assert db.scalar("SELECT status FROM flow_enrollment WHERE workflow_id = :w", w=elsewhere) == (
        "running"
    )
    assert db.scalar("SELECT status FROM review_item WHERE id = :i", i=waiting) == "expired"
    # The enrollment itself stays readable for the record.
    assert api.get(f"/v1/enrollments/{running}").json()["exit_reason"] == "flow_deleted"


# ---- review queue ------------------------------------------------------------------------------


def test_review_queue_lists_pending_items_by_default(api, db):
    flow = create_flow(api, status="manual")["id"]
    p1, p2, p3 = make_profiles(api, 3)
    first = queue_review(db, enrol(db, flow, p1, "o1"))
    second = queue_review(db, enrol(db, flow, p2, "o2"), step_id="thanks")
    approved = queue_review(db, enrol(db, flow, p3, "o3"), status="approved")
    url = f"/v1/flows/{flow}/review-queue"
    pending = page(api, url)
    assert [i["id"] for i in pending] == sorted([first, second])
    assert {i["id"]: i["step_id"] for i in pending} == {first: "review", second: "thanks"}
    assert [i["id"] for i in page(api, url, status="approved")] == [approved]
    assert [i["id"] for i in page(api, url, limit=1)] == [min(first, second)]
    assert api.get(url, params={"status": "maybe"}).status_code == 422


def test_approve_and_reject_record_the_decision_once(api, db):
    flow = create_flow(api, status="manual")["id"]
    p1, p2 = make_profiles(api, 2)
    to_approve = queue_review(db, enrol(db, flow, p1, "o1"))
    to_reject = queue_review(db, enrol(db, flow, p2, "o2"))

    response = api.post(f"/v1/review-queue/{to_approve}/approve")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    assert response.json()["decided_at"] is not None
    response = api.post(f"/v1/review-queue/{to_reject}/reject")
    assert response.json()["status"] == "rejected"

    for item, action in ((to_approve, "reject"), (to_reject, "approve"), (to_approve, "approve")):
        response = api.post(f"/v1/review-queue/{item}/{action}")
        assert response.status_code == 409, response.text
    assert dict(db.rows("SELECT id, status FROM review_item")) == {
        to_approve: "approved",
        to_reject: "rejected",
    }
    assert page(api, f"/v1/flows/{flow}/review-queue") == []
    assert api.post("/v1/review-queue/rev_nope/approve").status_code == 404


def test_a_decision_for_an_ended_enrollment_expires_the_item(api, db):
    flow = create_flow(api, status="manual")["id"]
    [p1] = make_profiles(api, 1)
    item = queue_review(db, enrol(db, flow, p1, "o1", status="exited", exit_reason="converted"))
    response = api.post(f"/v1/review-queue/{item}/approve")
    assert response.status_code == 409
    assert "has ended (exited)" in response.json()["message"]
    assert db.scalar("SELECT status FROM review_item WHERE id = :i", i=item) == "expired"


# ---- report ------------------------------------------------------------------------------------


def test_report_counts_outcomes_per_step_and_deliveries(api, db):
    flow = create_flow(api)["id"]
    other = create_flow(api, "Other")["id"]
    profiles = make_profiles(api, 4)
    e = [enrol(db, flow, p, f"o{i}") for i, p in enumerate(profiles)]
    for i in range(4):
        record(db, e[i], ("thanks", "message", "entered", None, 0))
    record(
        db,
        e[0],
        ("thanks", "message", "processed", None, 0),
        ("wait", "time_delay", "entered", None, 1),
    )
    record(
        db,
        e[1],
        ("thanks", "message", "processed", None, 0),
        ("wait", "time_delay", "entered", None, 1),
    )
    record(db, e[2], ("thanks", "message", "skipped", "smart_sending", 0))
    record(db, e[3], ("thanks", "message", "skipped", "no_consent", 0))
    record(db, e[0], ("wait", "time_delay", "exited", "converted", 60))
    record(
        db,
        e[1],
        ("wait", "time_delay", "processed", None, 60),
        ("review", "message", "queued", None, 61),
    )
    record(db, e[2], ("review", "message", "held", "quiet_hours", 62))
    record(db, e[3], ("legacy", "webhook", "exited", None, 63))  # a step only an older version had
    deliver(db, e[0], "thanks", "sent")
    deliver(db, e[1], "thanks", "sent")
    deliver(db, e[2], "thanks", "skipped", "smart_sending")
    record(db, enrol(db, other, profiles[0], "x"), ("thanks", "message", "entered", None, 0))

    response = api.get(f"/v1/flows/{flow}/report")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["flow_id"] == flow
    assert report["steps"] == [
        {
            "step_id": "thanks",
            "step_type": "message",
            "entered": 4,
            "processed": 2,
            "skipped": {"no_consent": 1, "smart_sending": 1},
            "exited": {},
            "queued": 0,
            "held": 0,
            "deliveries": {"sent": 2, "skipped": 1},
        },
        {
            "step_id": "wait",
            "step_type": "time_delay",
            "entered": 2,
            "processed": 1,
            "skipped": {},
            "exited": {"converted": 1},
            "queued": 0,
            "held": 0,
            "deliveries": {},
        },
        {
            "step_id": "review",
            "step_type": "message",
            "entered": 0,
            "processed": 0,
            "skipped": {},
            "exited": {},
            "queued": 1,
            "held": 1,
            "deliveries": {},
        },
        {
            "step_id": "legacy",
            "step_type": "webhook",
            "entered": 0,
            "processed": 0,
            "skipped": {},
            "exited": {"unspecified": 1},
            "queued": 0,
            "held": 0,
            "deliveries": {},
        },
    ]


def test_report_of_a_flow_without_enrollments_lists_its_steps(api, db):
    flow = create_flow(api, steps=[email("only")])["id"]
    [line] = api.get(f"/v1/flows/{flow}/report").json()["steps"]
    assert (line["step_id"], line["entered"], line["deliveries"]) == ("only", 0, {})


# ---- against a real Temporal server ------------------------------------------------------------


@workflow.defn(name="FlowEnrollment")
class RecordingEnrollment:
    """Stands in for the enrollment workflow: records the signals, answers the state query."""

    def __init__(self) -> None:
        self.signals: list[str] = []

    @workflow.run
    async def run(self, flow_id: str) -> list[str]:
        self.flow_id = flow_id
        await workflow.wait_condition(lambda: any(s.startswith("exit:") for s in self.signals))
        return self.signals

    @workflow.signal(name="exit")
    def exit(self, reason: str) -> None:
        self.signals.append(f"exit:{reason}")

    @workflow.signal(name="approve")
    def approve(self, step_id: str) -> None:
        self.signals.append(f"approve:{step_id}")

    @workflow.signal(name="reject")
    def reject(self, step_id: str) -> None:
        self.signals.append(f"reject:{step_id}")

    @workflow.query(name="state")
    def state(self) -> EnrollmentState:
        return EnrollmentState(
            flow_id=self.flow_id,
            version=1,
            profile_id="p",
            current_step="review",
            status="running",
            waiting_for="review",
            path=["thanks", "wait", "review"],
        )


async def test_operator_actions_signal_the_workflow_and_show_its_live_state(
    temporal_server, database, keys, db
):
    client = temporal_server.client
    settings = Settings(
        database_url=database.url,
        temporal_address=client.service_client.config.target_host,
        api_key_cache_seconds=0,
    )
    app = create_app(settings, engine=database.engine)
    task_queue = f"enrollments-{uuid.uuid4()}"
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[RecordingEnrollment],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    headers = {"Authorization": f"Bearer {keys.private}"}
    with serve(app) as base_url:
        async with worker, httpx.AsyncClient(base_url=base_url, headers=headers) as api:
            response = await api.post("/v1/flows", json={"name": "Manual", **definition()})
            flow = response.json()["id"]
            response = await api.post("/v1/profiles", json={"email": "ada@example.com"})
            profile = response.json()["id"]
            reviewed = enrol(db, flow, profile, "o1", step="review")
            other = enrol(db, flow, profile, "o2", step="review")
            handles = {
                wf: await client.start_workflow(
                    RecordingEnrollment.run, flow, id=wf, task_queue=task_queue
                )
                for wf in (reviewed, other)
            }
            item = queue_review(db, reviewed)

            detail = (await api.get(f"/v1/enrollments/{reviewed}")).json()
            assert detail["live"]["current_step"] == "review"
            assert detail["live"]["path"] == ["thanks", "wait", "review"]

            assert (await api.post(f"/v1/review-queue/{item}/approve")).status_code == 200
            assert (await api.post(f"/v1/enrollments/{reviewed}/cancel")).status_code == 200
            result = await asyncio.wait_for(handles[reviewed].result(), 20)
            assert result == ["approve:review", "exit:operator"]

            # Delete signals after responding; the workflow closes on it.
            assert (await api.delete(f"/v1/flows/{flow}")).status_code == 204
            assert await asyncio.wait_for(handles[other].result(), 20) == ["exit:flow_deleted"]
