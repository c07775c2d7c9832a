"""Local activities of the enrollment workflow: timeline, gates, splits and profile actions.

Each is one short transaction. Every call first writes the timeline lines the workflow batched
since its last activity (insert-or-ignore on workflow+step+outcome, so retries are harmless).
"""

import json

from sqlalchemy import select, update
from sqlmodel import Session
from temporalio import activity

from herald.core.clock import activity_now
from herald.core.db import session_scope
from herald.core.ids import new_id
from herald.core.sql import insert_ignoring_conflicts
from herald.delivery.templates import render
from herald.flows.conditions import profile_data, profile_matches
from herald.flows.graph import InternalAlert, ListAction, UpdateProfile, WebhookStep
from herald.flows.steps import (
    REASON_MAX,
    ActionRequest,
    CloseRequest,
    ConditionRequest,
    FlowActivitiesContract,
    GateRequest,
    Proceed,
    ReviewAnswer,
    StepOutcome,
    StepReason,
    StepRecord,
)
from herald.profiles.changes import announce_profile_changes
from herald.profiles.lists import add_members, remove_members
from models.enums import EnrollmentStatus, FlowStatus, ReviewStatus
from models.flows import EnrollmentStep, Flow, FlowEnrollment, ReviewItem
from models.lists import ProfileList
from models.profile import Profile
from models.types import utcnow
from models.webhook_dto import InternalAlertCall, WebhookCall


def write_records(session: Session, workflow_id: str, records) -> None:
    if not records:
        return
    row = session.get(FlowEnrollment, workflow_id)
    if row is None:
        return
    session.execute(
        insert_ignoring_conflicts(session, EnrollmentStep.__table__),
        [
            {
                "workflow_id": workflow_id,
                "flow_id": row.flow_id,
                "profile_id": row.profile_id,
                "step_id": r.step_id,
                "step_type": r.step_type,
                "outcome": r.outcome,
                **_reason_and_detail(r),
                "at": r.at,
            }
            for r in records
        ],
    )
    last = records[-1]
    if last.step_type != "entry":
        session.execute(
            update(FlowEnrollment)
            .where(FlowEnrollment.workflow_id == workflow_id)
            .values(current_step=last.step_id)
        )


def _reason_and_detail(record: StepRecord) -> dict:
    """Reasons are codes; one that is not (a history written before they were) keeps its
    words in the detail, so a long reason can never fail the insert."""
    reason = record.reason
    if reason is None or len(reason) <= REASON_MAX:
        return {"reason": reason, "detail": record.detail}
    return {"reason": reason[:REASON_MAX], "detail": {**record.detail, "reason": reason}}


class FlowActivities(FlowActivitiesContract):
    def __init__(self, engine) -> None:
        self.engine = engine

    @activity.defn(name="record_steps")
    def record_steps(self, request: CloseRequest) -> None:
        with session_scope(self.engine) as session:
            write_records(session, request.workflow_id, request.records)

    @activity.defn(name="close_enrollment")
    def close_enrollment(self, request: CloseRequest) -> None:
        with session_scope(self.engine) as session:
            records = list(request.records)
            if request.exit_reason and request.step_id:
                records.append(
                    StepRecord(
                        step_id=request.step_id,
                        step_type="exit",
                        outcome=StepOutcome.exited,
                        reason=request.exit_reason,
                        at=request.at,
                    )
                )
            write_records(session, request.workflow_id, records)
            row = session.get(FlowEnrollment, request.workflow_id)
            if row is None:
                return
            if row.status == EnrollmentStatus.running:
                row.status = request.status
            row.exit_reason = row.exit_reason or request.exit_reason
            row.current_step = request.step_id or row.current_step
            row.ended_at = row.ended_at or request.at
            session.add(row)
            # A message still waiting for review can no longer be sent.
            session.execute(
                update(ReviewItem)
                .where(
                    ReviewItem.workflow_id == request.workflow_id,
                    ReviewItem.status == ReviewStatus.pending,
                )
                .values(status=ReviewStatus.expired, decided_at=request.at)
            )

    @activity.defn(name="evaluate_conditions")
    def evaluate_conditions(self, request: ConditionRequest) -> bool:
        with session_scope(self.engine) as session:
            if request.workflow_id:
                write_records(session, request.workflow_id, request.records)
            return profile_matches(session, request.profile_id, request.conditions, activity_now())

    @activity.defn(name="prepare_message")
    def prepare_message(self, request: GateRequest) -> Proceed | StepReason:
        """send | queue (waits for review) | draft | flow_draft | flow_deleted."""
        with session_scope(self.engine) as session:
            write_records(session, request.workflow_id, request.records)
            flow = session.get(Flow, request.flow_id)
            if flow is None or flow.deleted_at is not None:
                return StepReason.flow_deleted
            status = request.message_status or flow.status
            if status == FlowStatus.draft:
                return StepReason.flow_draft if request.message_status is None else StepReason.draft
            if status == FlowStatus.live:
                return Proceed.send
            session.execute(
                insert_ignoring_conflicts(session, ReviewItem.__table__),
                [
                    {
                        "id": new_id("rv"),
                        "workflow_id": request.workflow_id,
                        "flow_id": request.flow_id,
                        "step_id": request.step_id,
                        "profile_id": request.profile_id,
                        "channel": request.channel.value,
                        "status": ReviewStatus.pending,
                        "created_at": request.at,
                    }
                ],
            )
            write_records(
                session,
                request.workflow_id,
                [_queued(request)],
            )
            return Proceed.queue

    @activity.defn(name="review_decision")
    def review_decision(self, request: GateRequest) -> ReviewAnswer:
        """approved | rejected | pending, or cancelled when the enrollment itself has ended."""
        with session_scope(self.engine) as session:
            row = session.get(FlowEnrollment, request.workflow_id)
            if row is None or row.status != EnrollmentStatus.running:
                return ReviewAnswer.cancelled
            item = session.execute(
                select(ReviewItem.status).where(
                    ReviewItem.workflow_id == request.workflow_id,
                    ReviewItem.step_id == request.step_id,
                )
            ).scalar()
            return ReviewAnswer(item) if item else ReviewAnswer.pending

    @activity.defn(name="apply_profile_action")
    def apply_profile_action(self, request: ActionRequest) -> Proceed | StepReason:
        """done, or a skip reason (profile_deleted, list_deleted)."""
        step = request.step
        with session_scope(self.engine) as session:
            write_records(session, request.workflow_id, request.records)
            profile = session.get(Profile, request.profile_id)
            if profile is None:
                return StepReason.profile_deleted
            if isinstance(step, UpdateProfile):
                profile.properties = {**(profile.properties or {}), **step.properties}
                profile.updated_at = utcnow()
                session.add(profile)
                announce_profile_changes(session, [profile.id])  # segments re-check it
                return Proceed.done
            if isinstance(step, ListAction):
                if session.get(ProfileList, step.list_id) is None:
                    return StepReason.list_deleted
                if step.type == "add_to_list":
                    add_members(session, step.list_id, [profile.id])
                else:
                    remove_members(session, step.list_id, [profile.id])
                return Proceed.done
        raise ValueError(f"not a profile action: {step.type}")

    @activity.defn(name="prepare_webhook")
    def prepare_webhook(self, request: ActionRequest) -> WebhookCall | InternalAlertCall:
        """Renders the body (default: a JSON summary of the enrollment) for the HTTP activity."""
        step = request.step
        assert isinstance(step, WebhookStep | InternalAlert)
        with session_scope(self.engine) as session:
            write_records(session, request.workflow_id, request.records)
            profile = session.get(Profile, request.profile_id)
            data = profile_data(profile) if profile else {"id": request.profile_id}
        variables = {
            "profile": data,
            "event": request.trigger.model_dump(mode="json"),
            "flow": {"id": request.flow_id, "name": request.flow_name},
        }
        summary = {
            "flow_id": request.flow_id,
            "step_id": step.id,
            "workflow_id": request.workflow_id,
            "profile": {k: data.get(k) for k in ("id", "email", "phone", "external_id")},
            "event": variables["event"],
        }
        key = f"flow:{request.workflow_id}:{step.id}"
        if isinstance(step, WebhookStep):
            return WebhookCall(
                url=step.url,
                headers=step.headers,
                body=render(step.body, variables) if step.body else json.dumps(summary),
                idempotency_key=key,
                workflow_id=request.workflow_id,
                step_id=step.id,
            )
        return InternalAlertCall(
            via=step.via,
            to=step.to,
            subject=render(step.subject, variables) if step.subject else None,
            body=render(step.body, variables),
            idempotency_key=key,
            workflow_id=request.workflow_id,
            step_id=step.id,
        )


def _queued(request: GateRequest) -> StepRecord:
    return StepRecord(
        step_id=request.step_id,
        step_type="message",
        outcome=StepOutcome.queued,
        reason=StepReason.manual_review,
        at=request.at,
    )
