"""FlowEnrollmentWorkflow: one profile walking one version of a flow's step graph.

Delays are durable timers raced against the exit signal, so a conversion ends the enrollment at
once, not when the delay ends. The deliver activity checks the exit state in the database at send
time as well, which closes the window between a conversion and its signal. Pure in-workflow steps
(delays, trigger and random splits) are written to the timeline in batches, flushed by a local
activity before each durable wait and at the end, to keep history short.
"""

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from temporalio.exceptions import is_cancelled_exception

    from herald.core import search_attributes as sa
    from herald.core.activity_failures import error_message, is_permanent
    from herald.delivery.contract import DeliveryActivitiesContract, WebhookActivitiesContract
    from herald.delivery.policy import SkipReason
    from herald.flows.contract import (
        QUERY_STATE,
        SIGNAL_APPROVE,
        SIGNAL_EVENT,
        SIGNAL_EXIT,
        SIGNAL_REJECT,
        WORKFLOW_TYPE,
        EnrollmentInput,
        EnrollmentState,
    )
    from herald.flows.graph import (
        ConditionalSplit,
        ExitStep,
        InternalAlert,
        ListAction,
        Message,
        RandomSplit,
        TimeDelay,
        TriggerSplit,
        UpdateProfile,
        WaitForEvent,
        WebhookStep,
        delay_seconds,
    )
    from herald.flows.property_filters import event_matches
    from herald.flows.schedule import wake_time
    from herald.flows.steps import (
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
    from models.delivery_dto import DeliveryRequest
    from models.enums import DeliveryStatus, EnrollmentStatus
    from workflows.policies import (
        DELIVER_RETRY,
        WEBHOOK_RETRY,
        WEBHOOK_SCHEDULE_TO_CLOSE,
        WEBHOOK_START_TO_CLOSE,
    )

_LOCAL = {"start_to_close_timeout": timedelta(seconds=30)}
# Runs cancelled before this patch simply ended; since, a cancelled run closes its enrollment.
_PATCH_CANCEL_CLOSES = "cancel-closes-enrollment"
# A failed activity raises ActivityError (the failure is its cause); a failed local activity
# raises the ApplicationError itself.
_ACTIVITY_FAILURES = (ActivityError, ApplicationError)
_REVIEW_RECHECK = timedelta(hours=6)


@workflow.defn(name=WORKFLOW_TYPE)
class FlowEnrollmentWorkflow:
    @workflow.init
    def __init__(self, params: EnrollmentInput) -> None:
        # Taken here, not in run(): a query answered before the first step sees the input too.
        self.input = params
        self.exit_reason: str | None = None
        self.decisions: dict[str, str] = {}
        self.metrics_seen: set[str] = set()
        self.current_step: str | None = None
        self.path: list[str] = []
        self.next_wake_at: datetime | None = None
        self.waiting_for: str | None = None
        self.status = EnrollmentStatus.running
        self.records: list[StepRecord] = []

    # ---- signals and query ---------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_EXIT)
    def exit(self, reason: str) -> None:
        if self.exit_reason is None:
            self.exit_reason = reason

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve(self, step_id: str) -> None:
        self.decisions.setdefault(step_id, ReviewAnswer.approved)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject(self, step_id: str) -> None:
        self.decisions.setdefault(step_id, ReviewAnswer.rejected)

    @workflow.signal(name=SIGNAL_EVENT)
    def event(self, metric: str) -> None:
        self.metrics_seen.add(metric)

    @workflow.query(name=QUERY_STATE)
    def state(self) -> EnrollmentState:
        return EnrollmentState(
            flow_id=self.input.flow_id,
            version=self.input.version,
            profile_id=self.input.profile_id,
            current_step=self.current_step,
            status=self.status,
            next_wake_at=self.next_wake_at,
            waiting_for=self.waiting_for,
            path=list(self.path),
            exit_reason=self.exit_reason,
        )

    # ---- the walk ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, params: EnrollmentInput) -> EnrollmentState:
        try:
            return await self._walk(params)
        except BaseException as error:
            # A timer raises CancelledError; an activity, ActivityError caused by the cancellation.
            if not is_cancelled_exception(error) or not workflow.patched(_PATCH_CANCEL_CLOSES):
                raise
            await self._close_cancelled()
            raise  # the execution ends as Canceled: what happened, for Temporal's views too

    async def _walk(self, params: EnrollmentInput) -> EnrollmentState:
        definition = params.definition
        self._record(definition.entry_step, "entry", StepOutcome.entered)
        step_id: str | None = definition.entry_step
        while step_id is not None and self.exit_reason is None:
            step = definition.step(step_id)
            self.current_step = step_id
            self.path.append(step_id)
            if params.search_attributes:
                workflow.upsert_search_attributes([sa.STEP.value_set(step_id)])
            step_id = await self._run_step(step)
        self.status = _final_status(self.exit_reason)
        self.waiting_for = None
        self.next_wake_at = None
        await self._close()
        return self.state()

    async def _close_cancelled(self) -> None:
        """Closes the row and the timeline of a cancelled run (flow or profile deleted,
        enrollment cancelled). The API signals `exit` with the reason just before it cancels;
        a cancellation without one (e.g. from Temporal's UI) is recorded as `cancelled`.

        A cancelled workflow may still run activities once it has caught the cancellation; an
        activity or timer it was awaiting is cancelled, so a webhook retrying for a day stops."""
        self.exit_reason = self.exit_reason or "cancelled"
        self.status, self.waiting_for, self.next_wake_at = EnrollmentStatus.cancelled, None, None
        await self._close()

    async def _close(self) -> None:
        """Writes the row's end with the last timeline lines. When the database refuses those
        lines for good, the row is closed without them (a failed line says why), so a bad line
        cannot keep the enrollment running."""
        request = CloseRequest(
            workflow_id=workflow.info().workflow_id,
            status=self.status,
            exit_reason=self.exit_reason,
            step_id=self.current_step,
            at=workflow.now(),
            records=self._take_records(),
        )
        try:
            await workflow.execute_local_activity_method(
                FlowActivitiesContract.close_enrollment, request, **_LOCAL
            )
        except _ACTIVITY_FAILURES as error:
            if not request.records or not is_permanent(error) or is_cancelled_exception(error):
                raise
            self._failed(self.current_step or "entry", "timeline", error)
            request.records = self._take_records()
            await workflow.execute_local_activity_method(
                FlowActivitiesContract.close_enrollment, request, **_LOCAL
            )

    async def _run_step(self, step) -> str | None:
        """Runs one step; returns the next step's id, or None when the walk ends here."""
        match step:
            case TimeDelay():
                return await self._time_delay(step)
            case WaitForEvent():
                return await self._wait_for_event(step)
            case Message():
                await self._message(step)
                return step.next
            case ConditionalSplit():
                return await self._conditional_split(step)
            case TriggerSplit():
                return self._trigger_split(step)
            case RandomSplit():
                return self._random_split(step)
            case UpdateProfile() | ListAction():
                await self._action(step, FlowActivitiesContract.apply_profile_action)
                return step.next
            case WebhookStep() | InternalAlert():
                await self._webhook(step)
                return step.next
            case ExitStep():
                self._record(step.id, step.type, StepOutcome.processed)
                self.exit_reason = self.exit_reason or "exit_step"
                return None
        raise AssertionError(f"unknown step type {step!r}")

    async def _time_delay(self, step: TimeDelay) -> str | None:
        if await self._sleep_until(wake_time(workflow.now(), step, self.input.timezone), "timer"):
            return None
        self._record(step.id, step.type, StepOutcome.processed)
        return step.next

    async def _conditional_split(self, step: ConditionalSplit) -> str | None:
        holds = await self._local(
            step,
            FlowActivitiesContract.evaluate_conditions,
            ConditionRequest(
                profile_id=self.input.profile_id,
                conditions=step.conditions,
                records=self._take_records(),
            ),
        )
        if holds is _FAILED:  # no branch can be chosen: the enrollment ends, failed
            self.exit_reason = self.exit_reason or _FAILED_EXIT
            return None
        self._record(step.id, step.type, StepOutcome.processed, detail={"branch": _yes_no(holds)})
        return step.yes if holds else step.no

    def _trigger_split(self, step: TriggerSplit) -> str | None:
        trigger = self.input.trigger
        holds = event_matches(trigger.properties, trigger.value, step.conditions)
        self._record(step.id, step.type, StepOutcome.processed, detail={"branch": _yes_no(holds)})
        return step.yes if holds else step.no

    def _random_split(self, step: RandomSplit) -> str | None:
        # workflow.random() is replay-safe: the branch is fixed for this enrollment.
        pick = workflow.random().uniform(0, sum(b.weight for b in step.branches))
        for index, branch in enumerate(step.branches):
            pick -= branch.weight
            if pick < 0 or index == len(step.branches) - 1:
                self._record(step.id, step.type, StepOutcome.processed, detail={"branch": index})
                return branch.next
        raise AssertionError("a random split has at least one branch")

    async def _sleep_until(self, until: datetime, waiting_for: str) -> bool:
        """Sleeps until `until`; True when the enrollment exited meanwhile."""
        await self._flush()
        self.next_wake_at, self.waiting_for = until, waiting_for
        try:
            remaining = (until - workflow.now()).total_seconds()
            if remaining > 0:
                await workflow.wait_condition(
                    lambda: self.exit_reason is not None, timeout=timedelta(seconds=remaining)
                )
        except TimeoutError:
            pass  # the delay ran out without an exit: the usual way a delay ends
        finally:
            self.next_wake_at, self.waiting_for = None, None
        return self.exit_reason is not None

    async def _wait_for_event(self, step: WaitForEvent) -> str | None:
        await self._flush()
        timeout = timedelta(seconds=delay_seconds(step.timeout_amount, step.timeout_unit))
        self.next_wake_at, self.waiting_for = workflow.now() + timeout, "event"
        try:
            await workflow.wait_condition(
                lambda: self.exit_reason is not None or step.metric in self.metrics_seen,
                timeout=timeout,
            )
        except TimeoutError:
            pass  # neither the event nor an exit came: take the on_timeout branch
        finally:
            self.next_wake_at, self.waiting_for = None, None
        if self.exit_reason is not None:
            return None
        happened = step.metric in self.metrics_seen
        self._record(step.id, step.type, StepOutcome.processed, detail={"event": happened})
        return step.on_event if happened else step.on_timeout

    async def _message(self, step: Message) -> None:
        wid = workflow.info().workflow_id
        gate = await self._local(
            step,
            FlowActivitiesContract.prepare_message,
            GateRequest(
                workflow_id=wid,
                flow_id=self.input.flow_id,
                profile_id=self.input.profile_id,
                step_id=step.id,
                channel=step.channel,
                message_status=step.status,
                at=workflow.now(),
                records=self._take_records(),
            ),
        )
        if gate is _FAILED:
            return
        if gate != Proceed.send:
            if gate != Proceed.queue:  # draft message or flow: skipped, the walk goes on
                self._record(step.id, step.type, StepOutcome.skipped, reason=gate)
                return
            await self._await_review(step)
            if self.exit_reason is not None:
                return
            if self.decisions[step.id] == ReviewAnswer.rejected:
                self._record(step.id, step.type, StepOutcome.skipped, reason=StepReason.rejected)
                return
        request = DeliveryRequest(
            idempotency_key=f"flow:{wid}:{step.id}",
            run_kind="flow",
            run_id=self.input.flow_id,
            step_id=step.id,
            workflow_id=wid,
            profile_id=self.input.profile_id,
            channel=step.channel,
            content=step.content,
            smart_sending=step.smart_sending,
            transactional=step.transactional,
            context={
                "event": self.input.trigger.model_dump(mode="json"),
                "flow": {"id": self.input.flow_id, "name": self.input.flow_name},
            },
            filters=self.input.definition.filters,
            segment_id=getattr(self.input.definition.trigger, "segment_id", None),
        )
        while True:
            try:
                result = await workflow.execute_activity_method(
                    DeliveryActivitiesContract.deliver,
                    request,
                    # One message: seconds at most. Short, so one lost with its worker is
                    # retried soon.
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=DELIVER_RETRY,
                )
            except ActivityError as error:
                if not is_permanent(error):
                    raise
                self._failed(step.id, step.type, error)
                return
            if result.status != DeliveryStatus.held:
                break
            # Quiet hours: wait (exit-aware) until the window opens, then ask again.
            self._record(step.id, step.type, StepOutcome.held, reason="quiet_hours")
            if await self._sleep_until(result.hold_until, "quiet_hours"):
                return
        if result.status == DeliveryStatus.sent:
            self._record(step.id, step.type, StepOutcome.processed)
        else:
            self._record(step.id, step.type, StepOutcome(result.status), reason=result.reason)
            if result.reason == SkipReason.filter:
                self.exit_reason = self.exit_reason or "filter"
            elif result.reason == SkipReason.exited:
                self.exit_reason = self.exit_reason or "exited"
            elif result.reason == SkipReason.segment:  # left the segment that triggered the flow
                self.exit_reason = self.exit_reason or "segment"

    async def _await_review(self, step: Message) -> None:
        """Waits for the operator's decision. The API signals it, and also records it in the
        database first; re-reading that every few hours covers a signal that never arrived."""
        step_id = step.id
        self.waiting_for = "review"
        while self.exit_reason is None and step_id not in self.decisions:
            try:
                await workflow.wait_condition(
                    lambda: self.exit_reason is not None or step_id in self.decisions,
                    timeout=_REVIEW_RECHECK,
                )
            except TimeoutError:
                decision = await self._local(
                    step,
                    FlowActivitiesContract.review_decision,
                    GateRequest(
                        workflow_id=workflow.info().workflow_id,
                        flow_id=self.input.flow_id,
                        profile_id=self.input.profile_id,
                        step_id=step_id,
                        channel=step.channel,
                        message_status=step.status,
                        at=workflow.now(),
                    ),
                    record_failure=False,  # asked again in a few hours
                )
                if decision in (ReviewAnswer.approved, ReviewAnswer.rejected):
                    self.decisions.setdefault(step_id, decision)
                elif decision == ReviewAnswer.cancelled:
                    self.exit_reason = self.exit_reason or "operator"
        self.waiting_for = None

    def _action_request(self, step) -> ActionRequest:
        """What a profile action or webhook step's local activity needs; takes the records."""
        return ActionRequest(
            workflow_id=workflow.info().workflow_id,
            profile_id=self.input.profile_id,
            step=step,
            trigger=self.input.trigger,
            flow_id=self.input.flow_id,
            flow_name=self.input.flow_name,
            records=self._take_records(),
        )

    async def _action(self, step, activity) -> None:
        outcome = await self._local(step, activity, self._action_request(step))
        if outcome is _FAILED:
            return
        if outcome == Proceed.done:
            self._record(step.id, step.type, StepOutcome.processed)
        else:
            self._record(step.id, step.type, StepOutcome.skipped, reason=outcome)

    async def _webhook(self, step) -> None:
        is_webhook = isinstance(step, WebhookStep)
        call = await self._local(
            step, FlowActivitiesContract.prepare_webhook, self._action_request(step)
        )
        if call is _FAILED:
            return
        # Retries may take up to a day: show operators (and tests) what the run waits for.
        self.waiting_for = "webhook"
        try:
            send = (
                WebhookActivitiesContract.call_webhook
                if is_webhook
                else WebhookActivitiesContract.send_internal_alert
            )
            result = await workflow.execute_activity_method(
                send,
                call,
                schedule_to_close_timeout=WEBHOOK_SCHEDULE_TO_CLOSE,
                start_to_close_timeout=WEBHOOK_START_TO_CLOSE,
                retry_policy=WEBHOOK_RETRY,
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the run was cancelled: run() closes it
            if is_permanent(error):
                self._failed(step.id, step.type, error)
            else:  # the day of retries ran out: the receiver never took it
                self._record(
                    step.id,
                    step.type,
                    StepOutcome.skipped,
                    reason=StepReason.webhook_gave_up,
                    detail={"error": error_message(error)},
                )
            return
        finally:
            self.waiting_for = None
        if result.status == "delivered":
            self._record(
                step.id,
                step.type,
                StepOutcome.processed,
                detail={"http_status": result.http_status},
            )
        else:
            detail = {"error": result.detail} if result.detail else None
            self._record(
                step.id, step.type, StepOutcome.skipped, reason=result.reason, detail=detail
            )

    # ---- timeline ------------------------------------------------------------------------------

    def _record(
        self,
        step_id: str,
        step_type: str,
        outcome: StepOutcome,
        reason: str | None = None,
        detail: dict | None = None,
    ) -> None:
        self.records.append(
            StepRecord(
                step_id=step_id,
                step_type=step_type,
                outcome=outcome,
                reason=reason,
                detail=detail or {},
                at=workflow.now(),
            )
        )

    def _take_records(self) -> list[StepRecord]:
        records, self.records = self.records, []
        return records

    async def _flush(self) -> None:
        if not self.records:
            return
        try:
            await workflow.execute_local_activity_method(
                FlowActivitiesContract.record_steps,
                CloseRequest(
                    workflow_id=workflow.info().workflow_id,
                    status=EnrollmentStatus.running,
                    step_id=self.current_step,
                    at=workflow.now(),
                    records=self._take_records(),
                ),
                **_LOCAL,
            )
        except _ACTIVITY_FAILURES as error:
            if not is_permanent(error):
                raise
            # The lines that could not be written are gone; the failure itself is written next.
            self._failed(self.current_step or "entry", "timeline", error)

    async def _local(self, step, activity, arg, record_failure=True):
        """A local activity of `step`; `_FAILED` when it failed for good (recorded, unless
        told not to), so the walk can go on instead of retrying a permanent error for ever."""
        try:
            return await workflow.execute_local_activity_method(activity, arg, **_LOCAL)
        except _ACTIVITY_FAILURES as error:
            if not is_permanent(error):
                raise
            if record_failure:
                self._failed(step.id, step.type, error)
            return _FAILED

    def _failed(self, step_id: str, step_type: str, error: Exception) -> None:
        self._record(
            step_id,
            step_type,
            StepOutcome.failed,
            reason=StepReason.error,
            detail={"error": error_message(error)},
        )


# What a step's activity returned when it failed permanently (see _local).
_FAILED = object()
# The exit reason of an enrollment that cannot go on (status failed).
_FAILED_EXIT = "error"


def _yes_no(holds: bool) -> str:
    return "yes" if holds else "no"


def _final_status(exit_reason: str | None) -> EnrollmentStatus:
    if exit_reason is None:
        return EnrollmentStatus.completed
    if exit_reason == _FAILED_EXIT:
        return EnrollmentStatus.failed
    if exit_reason in ("operator", "flow_deleted", "profile_deleted", "cancelled"):
        return EnrollmentStatus.cancelled
    return EnrollmentStatus.exited
