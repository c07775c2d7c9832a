"""What the campaigns API takes and returns (the tables are in models/campaigns.py).

Drafts may be incomplete: a message can be saved without a body or subject, and the review
(herald/campaigns/review.py) says what is still missing before the campaign can be scheduled.
What can never be right (an unknown timezone, a custom conversion metric, 60 %/hour) is a 422
at once, naming the field.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from herald.flows.graph import WhatsAppTemplate
from herald.ingest.catalogue import is_builtin
from herald.profiles.normalize import normalize_timezone
from models.enums import CampaignStatus, Channel, MessageStatus
from models.types import reject_unstorable

PastTimePolicy = Literal["immediately", "next_day"]

MAX_PATHS = 10
MAX_MESSAGES = 30
MIN_STAGGER_PERCENT, MAX_STAGGER_PERCENT = 10, 50
SEND_AT_FORMAT = "%Y-%m-%dT%H:%M"

_Ids = list[Annotated[str, Field(min_length=1, max_length=40)]]
_Tag = Annotated[str, Field(min_length=1, max_length=50)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))


def _timezone(v: str | None) -> str | None:
    return None if v is None else normalize_timezone(v)


def _conversion_metric(v: str | None) -> str | None:
    if v is not None and not is_builtin(v):
        raise ValueError(
            f"{v!r} is not a built-in metric: only built-in metrics (e.g. 'Placed Order') "
            "can be a conversion metric, custom metrics cannot"
        )
    return v


def parse_send_at(v: str) -> datetime:
    """A naive wall-clock datetime from "YYYY-MM-DDTHH:MM"; ValueError when malformed."""
    try:
        parsed = datetime.strptime(v, SEND_AT_FORMAT)
    except ValueError:
        raise ValueError("use local wall time 'YYYY-MM-DDTHH:MM', e.g. 2026-06-01T09:00") from None
    if parsed.strftime(SEND_AT_FORMAT) != v:  # strptime accepts "2026-6-1T9:00"
        raise ValueError("use local wall time 'YYYY-MM-DDTHH:MM', e.g. 2026-06-01T09:00")
    return parsed


# ---- campaigns ----------------------------------------------------------------------------------


class _SendSettings(_In):
    """Checks the send settings a campaign is created or updated with."""

    @field_validator("timezone", check_fields=False)
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _timezone(v)

    @field_validator("exit_metric", check_fields=False)
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        return _conversion_metric(v)


class CampaignCreate(_SendSettings):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    tags: list[_Tag] = Field(default_factory=list, max_length=20)
    color: str | None = Field(default=None, max_length=20)
    # Default: the account's timezone.
    timezone: str | None = None
    local_time: bool = False
    past_time_policy: PastTimePolicy = "immediately"
    exit_metric: str | None = None


class CampaignUpdate(_SendSettings):
    """Only the fields sent change. `exit_metric` and `color` may be null (off / none)."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    tags: list[_Tag] | None = Field(default=None, max_length=20)
    color: str | None = Field(default=None, max_length=20)
    timezone: str | None = None
    local_time: bool | None = None
    past_time_policy: PastTimePolicy | None = None
    exit_metric: str | None = None


# Send settings and exit criteria: locked while anything is scheduled, for good once sent.
LOCKED_FIELDS = ("timezone", "local_time", "past_time_policy", "exit_metric")
NULLABLE_FIELDS = ("color", "exit_metric")


class CampaignSummary(BaseModel):
    id: str
    name: str
    description: str
    tags: list[str]
    color: str | None
    status: CampaignStatus
    cancel_reason: str | None
    timezone: str
    local_time: bool
    past_time_policy: PastTimePolicy
    exit_metric: str | None
    started_at: datetime | None
    scheduled_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime


# ---- paths --------------------------------------------------------------------------------------


class PathCreate(_In):
    """A path's audience: members of any included list, minus members of any excluded one."""

    name: str | None = Field(default=None, min_length=1, max_length=200)  # default "Path <n>"
    include_lists: _Ids = Field(default_factory=list, max_length=20)
    exclude_lists: _Ids = Field(default_factory=list, max_length=20)
    include_segments: _Ids = Field(default_factory=list, max_length=20)
    exclude_segments: _Ids = Field(default_factory=list, max_length=20)


class PathUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    include_lists: _Ids | None = Field(default=None, max_length=20)
    exclude_lists: _Ids | None = Field(default=None, max_length=20)
    include_segments: _Ids | None = Field(default=None, max_length=20)
    exclude_segments: _Ids | None = Field(default=None, max_length=20)


class PathReorder(_In):
    path_ids: list[str] = Field(max_length=MAX_PATHS)


# ---- messages -----------------------------------------------------------------------------------


class MessageContentIn(_In):
    """Liquid templates; a draft may leave any of them empty (the review reports it)."""

    subject: str | None = Field(default=None, max_length=998)
    body: str = Field(default="", max_length=100_000)
    sender: str | None = Field(default=None, max_length=320)
    text: str | None = Field(default=None, max_length=100_000)
    sender_name: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=320)
    whatsapp_template: WhatsAppTemplate | None = None


class MessageContentUpdate(_In):
    """Only the fields sent change; the others keep their value."""

    subject: str | None = Field(default=None, max_length=998)
    body: str | None = Field(default=None, max_length=100_000)
    sender: str | None = Field(default=None, max_length=320)
    text: str | None = Field(default=None, max_length=100_000)
    sender_name: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=320)
    whatsapp_template: WhatsAppTemplate | None = None


class MessageSchedule(_In):
    """`fixed`: everyone at the send time; `staggered`: that percent of the path per hour."""

    mode: Literal["fixed", "staggered"] = "fixed"
    percent_per_hour: int | None = Field(
        default=None, ge=MIN_STAGGER_PERCENT, le=MAX_STAGGER_PERCENT
    )

    @model_validator(mode="after")
    def _percent_with_staggered_only(self) -> "MessageSchedule":
        if self.mode == "staggered" and self.percent_per_hour is None:
            raise ValueError("percent_per_hour (10-50) is required for a staggered send")
        if self.mode == "fixed" and self.percent_per_hour is not None:
            raise ValueError("percent_per_hour is only for mode 'staggered'")
        return self

    @classmethod
    def of(cls, stagger_percent: int | None) -> "MessageSchedule":
        if stagger_percent is None:
            return cls()
        return cls(mode="staggered", percent_per_hour=stagger_percent)


class MessageCreate(_In):
    channel: Channel
    content: MessageContentIn = Field(default_factory=MessageContentIn)
    # Wall time "YYYY-MM-DDTHH:MM" in the campaign's timezone (each recipient's, with local time).
    send_at: str
    schedule: MessageSchedule = Field(default_factory=MessageSchedule)
    smart_sending: bool = True
    utm: bool = True

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, v: str) -> str:
        parse_send_at(v)
        return v


class MessageUpdate(_In):
    channel: Channel | None = None
    content: MessageContentUpdate | None = None
    send_at: str | None = None
    schedule: MessageSchedule | None = None
    smart_sending: bool | None = None
    utm: bool | None = None

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, v: str | None) -> str | None:
        if v is not None:
            parse_send_at(v)
        return v


class MessageClone(_In):
    """Where the copy goes: any path of the same campaign (default: the message's own)."""

    path_id: str | None = None


class MessageContentPublic(BaseModel):
    subject: str | None = None
    body: str = ""
    sender: str | None = None
    text: str | None = None
    sender_name: str | None = None
    reply_to: str | None = None
    whatsapp_template: WhatsAppTemplate | None = None


class MessagePublic(BaseModel):
    id: str
    path_id: str
    position: int
    channel: Channel
    content: MessageContentPublic
    send_at: str
    schedule: MessageSchedule
    smart_sending: bool
    utm: bool
    status: MessageStatus
    # Filled in when the message's audience is resolved at send time.
    audience_size: int | None
    created_at: datetime


class PathPublic(BaseModel):
    id: str
    position: int  # 0 = first: a profile in several audiences gets the first path only
    name: str
    include_lists: list[str]
    exclude_lists: list[str]
    include_segments: list[str]
    exclude_segments: list[str]
    messages: list[MessagePublic]  # in send time order
    created_at: datetime


class CampaignPublic(CampaignSummary):
    paths: list[PathPublic]  # in path order


# ---- review -------------------------------------------------------------------------------------


class ReviewProblem(BaseModel):
    code: str  # stable, e.g. "no_subject", "send_time_past", "no_unsubscribe_link"
    field: str | None = None  # e.g. "content.subject", "send_at"; None for the whole item
    message: str


class MessageReview(BaseModel):
    message_id: str
    path_id: str
    # SMS: segments the body costs without profile data (GSM-7 160/153, UCS-2 70/67).
    sms_segments: int | None = None
    errors: list[ReviewProblem] = Field(default_factory=list)
    warnings: list[ReviewProblem] = Field(default_factory=list)


class CampaignLevelReview(BaseModel):
    errors: list[ReviewProblem] = Field(default_factory=list)
    warnings: list[ReviewProblem] = Field(default_factory=list)


class CampaignReview(BaseModel):
    """Errors block scheduling; warnings do not."""

    ready: bool
    messages: list[MessageReview]
    campaign: CampaignLevelReview


# ---- reports ------------------------------------------------------------------------------------


class DeliveryCounts(BaseModel):
    sent: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)  # by reason
    failed: int = 0
    sending: int = 0  # handed to the provider, answer not yet recorded
    unknown: int = 0  # a worker died mid-send; see GET /v1/deliveries?status=unknown


class MessageReport(DeliveryCounts):
    message_id: str
    path_id: str
    channel: Channel
    send_at: str
    status: MessageStatus
    audience_size: int | None


class PathReport(DeliveryCounts):
    path_id: str
    name: str
    position: int
    # The largest audience any of its messages resolved to (null until one was resolved).
    audience_size: int | None
    messages: list[MessageReport]


class CampaignReport(DeliveryCounts):
    campaign_id: str
    status: CampaignStatus
    cancel_reason: str | None
    started_at: datetime | None
    exits: int  # profiles excluded after converting (GET .../exits lists them)
    paths: list[PathReport]


class ExitPublic(BaseModel):
    profile_id: str
    converted_at: datetime
    event_id: int | None
