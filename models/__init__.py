"""SQLModel tables and the DTOs that cross API and workflow boundaries.

Importing this package registers every table on SQLModel.metadata (Alembic reads it).
"""

from models.account import Account
from models.api_key import ApiKey
from models.campaigns import Campaign, CampaignExit, CampaignMessage, CampaignPath
from models.delivery import Delivery, OutboxMessage
from models.events import Event, Metric, ProfileMetricStat
from models.flows import EnrollmentStep, Flow, FlowEnrollment, FlowVersion, ReviewItem
from models.lists import ListMembership, ProfileList
from models.profile import Consent, ConsentChange, Profile
from models.providers import ChannelProviderSetting, ProviderPace
from models.routing import RoutingOutbox
from models.segments import DeliveryEngagement, RfmRun, RfmScore, Segment, SegmentMembership

__all__ = [
    "Account",
    "ApiKey",
    "Campaign",
    "CampaignExit",
    "CampaignMessage",
    "CampaignPath",
    "ChannelProviderSetting",
    "Consent",
    "ConsentChange",
    "Delivery",
    "DeliveryEngagement",
    "EnrollmentStep",
    "Event",
    "Flow",
    "FlowEnrollment",
    "FlowVersion",
    "ListMembership",
    "Metric",
    "OutboxMessage",
    "Profile",
    "ProfileList",
    "ProfileMetricStat",
    "ProviderPace",
    "ReviewItem",
    "RfmRun",
    "RfmScore",
    "RoutingOutbox",
    "Segment",
    "SegmentMembership",
]
