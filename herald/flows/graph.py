"""Flow definitions: triggers, filters, conditions and the typed step graph.

Pure: no database, no FastAPI. Workflows import it (the definition travels in the enrollment's
input). Shape errors are pydantic's; graph and reference checks (unreachable steps, cycles,
unknown metrics, templates) are in herald/flows/validation.py, which reports them all at once.
"""

from datetime import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.enums import Channel

# A delay longer than this is almost certainly a unit mistake (and would outlive most runs).
MAX_DELAY_DAYS = 365
MAX_STEPS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- conditions ---------------------------------------------------------------------------------

Operator = Literal[
    "equals", "not_equals", "gt", "gte", "lt", "lte", "contains", "is_set", "not_set", "in"
]


class PropertyFilter(_Strict):
    """A test on one property: of the trigger event (trigger filters and splits) or the profile.

    `property` may be a top-level profile field (email, first_name, timezone, ...) or a key of
    `properties`; for events, `$value` is the event's value.
    """

    property: str = Field(min_length=1, max_length=200)
    operator: Operator
    value: Any = None


class PropertyCondition(PropertyFilter):
    type: Literal["property"] = "property"


class MetricCountCondition(_Strict):
    """ "has done <metric> <operator> <count> times" over all time or the last `within_days`."""

    type: Literal["metric_count"] = "metric_count"
    metric: str = Field(min_length=1, max_length=200)
    operator: Literal["equals", "not_equals", "gt", "gte", "lt", "lte"] = "gte"
    count: int = Field(ge=0)
    within_days: int | None = Field(default=None, ge=1, le=3650)


class ListCondition(_Strict):
    type: Literal["in_list"] = "in_list"
    list_id: str
    member: bool = True


class SegmentCondition(_Strict):
    type: Literal["in_segment"] = "in_segment"
    segment_id: str
    member: bool = True


class ConsentCondition(_Strict):
    type: Literal["consent"] = "consent"
    channel: Channel
    status: Literal["subscribed", "unsubscribed", "never_subscribed"] = "subscribed"


class RfmCondition(_Strict):
    type: Literal["rfm_group"] = "rfm_group"
    groups: list[
        Literal["Champions", "Loyal", "Recent", "Needs Attention", "At Risk", "Inactive"]
    ] = Field(min_length=1)


ProfileCondition = Annotated[
    PropertyCondition
    | MetricCountCondition
    | ListCondition
    | SegmentCondition
    | ConsentCondition
    | RfmCondition,
    Field(discriminator="type"),
]


# ---- triggers -----------------------------------------------------------------------------------


class MetricTrigger(_Strict):
    type: Literal["metric"] = "metric"
    metric: str = Field(min_length=1, max_length=200)
    # Checked once, at entry, against the trigger event's properties (all must hold).
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


class ListTrigger(_Strict):
    type: Literal["list"] = "list"
    list_id: str


class SegmentTrigger(_Strict):
    type: Literal["segment"] = "segment"
    segment_id: str


class DatePropertyTrigger(_Strict):
    """Enrols profiles on the anniversary of a date property (e.g. birthday), offset in days."""

    type: Literal["date_property"] = "date_property"
    property: str = Field(min_length=1, max_length=200)
    offset_days: int = Field(default=0, ge=-365, le=365)
    at_time: time = time(9, 0)


Trigger = Annotated[
    MetricTrigger | ListTrigger | SegmentTrigger | DatePropertyTrigger,
    Field(discriminator="type"),
]


class Reentry(_Strict):
    mode: Literal["once", "every_time", "cooldown"] = "once"
    cooldown_days: int | None = Field(default=None, ge=1, le=3650)


# ---- steps --------------------------------------------------------------------------------------

StepId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Step(_Strict):
    id: StepId
    name: str | None = Field(default=None, max_length=200)


class _Linear(_Step):
    next: StepId | None = None  # None ends the enrollment (completed)


class TimeDelay(_Linear):
    """N minutes/hours/days; or N days and then the next `at_time` in the profile's timezone,
    optionally only on `weekdays` (0 = Monday)."""

    type: Literal["time_delay"] = "time_delay"
    amount: int = Field(ge=0)
    unit: Literal["minutes", "hours", "days"] = "days"
    at_time: time | None = None
    weekdays: list[int] | None = None

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(d < 0 or d > 6 for d in v)):
            raise ValueError("weekdays must be a non-empty list of 0 (Monday) .. 6 (Sunday)")
        return sorted(set(v)) if v else v


class WaitForEvent(_Step):
    type: Literal["wait_for_event"] = "wait_for_event"
    metric: str = Field(min_length=1, max_length=200)
    timeout_amount: int = Field(ge=1)
    timeout_unit: Literal["minutes", "hours", "days"] = "days"
    on_event: StepId | None = None
    on_timeout: StepId | None = None


class WhatsAppTemplate(_Strict):
    """An approved WhatsApp content template (Twilio Content API): business-initiated WhatsApp
    messages must use one; free text is only allowed inside the customer's 24-hour window."""

    content_sid: str = Field(pattern=r"^HX[0-9a-fA-F]{32}$")
    # Placeholder number -> Liquid template, e.g. {"1": "{{ profile.first_name }}"}.
    variables: dict[str, str] = Field(default_factory=dict, max_length=50)


class MessageContent(_Strict):
    subject: str | None = Field(default=None, max_length=998)  # email; push title
    body: str = Field(min_length=1, max_length=100_000)  # Liquid template
    sender: str | None = Field(default=None, max_length=320)
    utm: dict[str, str] | None = None
    # Email: the plain-text part (Liquid); derived from the HTML when absent.
    text: str | None = Field(default=None, max_length=100_000)
    sender_name: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=320)
    whatsapp_template: WhatsAppTemplate | None = None


class Message(_Linear):
    type: Literal["message"] = "message"
    channel: Channel
    content: MessageContent
    smart_sending: bool = True
    # Transactional messages are exempt from frequency caps.
    transactional: bool = False
    # None: follow the flow's status. draft: never sent; manual: queued for review.
    status: Literal["draft", "manual", "live"] | None = None


class ConditionalSplit(_Step):
    type: Literal["conditional_split"] = "conditional_split"
    conditions: list[ProfileCondition] = Field(min_length=1, max_length=20)  # all must hold
    yes: StepId | None = None
    no: StepId | None = None


class TriggerSplit(_Step):
    type: Literal["trigger_split"] = "trigger_split"
    conditions: list[PropertyFilter] = Field(min_length=1, max_length=20)
    yes: StepId | None = None
    no: StepId | None = None


class Branch(_Strict):
    weight: int = Field(ge=1, le=10_000)
    next: StepId | None = None


class RandomSplit(_Step):
    type: Literal["random_split"] = "random_split"
    branches: list[Branch] = Field(min_length=2, max_length=10)


class UpdateProfile(_Linear):
    type: Literal["update_profile"] = "update_profile"
    properties: dict[str, Any] = Field(min_length=1)


class ListAction(_Linear):
    type: Literal["add_to_list", "remove_from_list"]
    list_id: str


class WebhookStep(_Linear):
    type: Literal["webhook"] = "webhook"
    url: str = Field(min_length=1, max_length=2000)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(default=None, max_length=100_000)  # Liquid; default: a JSON summary


class InternalAlert(_Linear):
    type: Literal["internal_alert"] = "internal_alert"
    via: Literal["email", "webhook"]
    to: str = Field(min_length=1, max_length=2000)  # an email address or a URL
    subject: str | None = Field(default=None, max_length=998)
    body: str = Field(min_length=1, max_length=100_000)


class ExitStep(_Step):
    type: Literal["exit"] = "exit"


Step = Annotated[
    TimeDelay
    | WaitForEvent
    | Message
    | ConditionalSplit
    | TriggerSplit
    | RandomSplit
    | UpdateProfile
    | ListAction
    | WebhookStep
    | InternalAlert
    | ExitStep,
    Field(discriminator="type"),
]


class FlowDefinition(_Strict):
    """Everything versioned about a flow. `entry` defaults to the first step."""

    trigger: Trigger
    filters: list[ProfileCondition] = Field(default_factory=list, max_length=20)
    reentry: Reentry = Field(default_factory=Reentry)
    exit_metric: str | None = Field(default=None, min_length=1, max_length=200)
    entry: StepId | None = None
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def entry_step(self) -> str:
        return self.entry or self.steps[0].id


def successors(step: Step) -> list[tuple[str, str | None]]:
    """(field, target) for every outgoing edge of a step; a None target ends the enrollment."""
    if isinstance(step, ConditionalSplit | TriggerSplit):
        return [("yes", step.yes), ("no", step.no)]
    if isinstance(step, WaitForEvent):
        return [("on_event", step.on_event), ("on_timeout", step.on_timeout)]
    if isinstance(step, RandomSplit):
        return [(f"branches[{i}].next", b.next) for i, b in enumerate(step.branches)]
    if isinstance(step, ExitStep):
        return []
    return [("next", step.next)]


def delay_seconds(amount: int, unit: str) -> int:
    return amount * {"minutes": 60, "hours": 3600, "days": 86400}[unit]
