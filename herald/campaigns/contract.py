"""What a scheduled campaign's workflows carry and exchange (pure DTOs).

Scheduling snapshots the campaign into CampaignWorkflow's input; each path workflow gets its
path. Recipients never travel through Temporal: activities resolve them page by page in SQL and
return counts and a cursor (the last profile id sent), so payloads stay small at any audience.
"""

from datetime import datetime

from pydantic import BaseModel, Field
from temporalio import activity

from herald.flows.graph import MessageContent
from models.enums import Channel

CAMPAIGN_WORKFLOW = "Campaign"
PATH_WORKFLOW = "CampaignPath"
SIGNAL_EXITS = "exits"  # arg: how many profiles just converted (the DB holds who)
QUERY_STATE = "state"


def campaign_workflow_id(campaign_id: str) -> str:
    return f"campaign/{campaign_id}"


def path_workflow_id(campaign_id: str, path_id: str) -> str:
    return f"campaign/{campaign_id}/path/{path_id}"


class MessageSnapshot(BaseModel):
    id: str
    channel: Channel
    content: MessageContent
    send_at_local: str  # "YYYY-MM-DDTHH:MM" wall time
    stagger_percent: int | None = None
    smart_sending: bool = True
    utm: bool = True


class PathSnapshot(BaseModel):
    id: str
    position: int
    name: str
    include_lists: list[str] = Field(default_factory=list)
    exclude_lists: list[str] = Field(default_factory=list)
    include_segments: list[str] = Field(default_factory=list)
    exclude_segments: list[str] = Field(default_factory=list)
    messages: list[MessageSnapshot] = Field(default_factory=list)


class CampaignSettings(BaseModel):
    campaign_id: str
    name: str
    timezone: str = "UTC"
    local_time: bool = False
    past_time_policy: str = "immediately"  # immediately | next_day
    exit_metric: str | None = None
    # Every path in order: a profile in several audiences gets only the first path.
    path_order: list[str] = Field(default_factory=list)


class CampaignSnapshot(BaseModel):
    settings: CampaignSettings
    paths: list[PathSnapshot]
    search_attributes: bool = True


class Wave(BaseModel):
    """One release of a message: at `at`, up to `limit` more recipients (None: all the rest),
    only those whose effective timezone is in `timezones` (None: any)."""

    at: datetime
    limit: int | None = None
    timezones: list[str] | None = None


class WavePlan(BaseModel):
    audience: int
    waves: list[Wave]


class PlanRequest(BaseModel):
    settings: CampaignSettings
    path: PathSnapshot
    # Every path of the campaign (for first-path-wins dedup of audiences).
    all_paths: list[PathSnapshot] = Field(default_factory=list)
    message_id: str
    now: datetime


class PageRequest(BaseModel):
    settings: CampaignSettings
    path: PathSnapshot
    all_paths: list[PathSnapshot] = Field(default_factory=list)
    message_id: str
    wave: Wave
    after_profile_id: str | None = None  # cursor within the wave
    page_size: int = 1000
    sent_in_wave: int = 0  # for the wave's limit
    now: datetime


class PageResult(BaseModel):
    recipients: int  # profiles looked at in this page
    sent: int
    skipped: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    # Claimed by an attempt that died before recording, left unknown (delivery guarantees).
    unknown: int = 0
    last_profile_id: str | None = None
    done: bool  # the wave has no more recipients


class MessageProgress(BaseModel):
    message_id: str
    state: str = "waiting"  # waiting | sending | sent | cancelled
    audience: int | None = None
    sent: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    unknown: int = 0
    next_wave_at: datetime | None = None


class PathRun(BaseModel):
    """A path workflow's whole state: its input, and what it carries over continue-as-new."""

    settings: CampaignSettings
    path: PathSnapshot
    all_paths: list[PathSnapshot] = Field(default_factory=list)
    search_attributes: bool = True
    message_index: int = 0
    plan: WavePlan | None = None
    wave_index: int = 0
    cursor: str | None = None
    sent_in_wave: int = 0
    progress: list[MessageProgress] = Field(default_factory=list)
    exits_seen: int = 0


class FinishRequest(BaseModel):
    """Ends a campaign (activity `finish_campaign`) or one message (`mark_message`)."""

    campaign_id: str
    status: str  # campaign: sent | cancelled; message: sending | sent | cancelled
    reason: str | None = None  # e.g. no_recipients
    message_id: str | None = None


# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.
class CampaignActivitiesContract:
    """activities/campaigns.py"""

    @activity.defn(name="count_campaign_audience")
    def count_campaign_audience(self, snapshot: CampaignSnapshot) -> int:
        raise NotImplementedError

    @activity.defn(name="plan_message")
    def plan_message(self, req: PlanRequest) -> WavePlan:
        raise NotImplementedError

    @activity.defn(name="send_page")
    def send_page(self, req: PageRequest) -> PageResult:
        raise NotImplementedError

    @activity.defn(name="finish_campaign")
    def finish_campaign(self, req: FinishRequest) -> None:
        raise NotImplementedError

    @activity.defn(name="mark_message")
    def mark_message(self, req: FinishRequest) -> None:
        raise NotImplementedError
