"""Closed vocabularies shared by tables, DTOs and workflows."""

from enum import StrEnum


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    whatsapp = "whatsapp"
    push = "push"


class ConsentStatus(StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"
    never_subscribed = "never_subscribed"


class ApiKeyKind(StrEnum):
    # Private keys manage everything; write keys may only send events and identify profiles.
    private = "private"
    write = "write"


class OutboxKind(StrEnum):
    event = "event"
    list_added = "list_added"
    # Profile fields, properties, consent or list removals changed: segments re-check the profile.
    profile_changed = "profile_changed"
    # Membership changes of a segment ("added to segment" triggers flows).
    segment_added = "segment_added"
    segment_removed = "segment_removed"


# ---- statuses: a row's `status` column holds one of these (tables keep plain strings) ---------


class FlowStatus(StrEnum):
    draft = "draft"
    manual = "manual"  # every message waits in the review queue
    live = "live"


class EnrollmentStatus(StrEnum):
    running = "running"
    completed = "completed"
    exited = "exited"
    cancelled = "cancelled"
    failed = "failed"


class ReviewStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"  # the enrollment ended before anyone decided


class CampaignStatus(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    sending = "sending"
    sent = "sent"
    cancelled = "cancelled"


# A campaign message moves through the campaign's statuses, one message at a time.
MessageStatus = CampaignStatus


class SegmentStatus(StrEnum):
    draft = "draft"
    live = "live"


class DeliveryStatus(StrEnum):
    sent = "sent"
    skipped = "skipped"
    failed = "failed"
    held = "held"  # inside quiet hours: nothing recorded, asked again at hold_until
    # Claimed (committed) and handed to the provider; the answer is recorded next.
    sending = "sending"
    # A later attempt found it still `sending`: the provider may or may not have it. Resolved
    # by the channel's delivery guarantee (herald/delivery/guarantees.py), never silently.
    unknown = "unknown"


class Guarantee(StrEnum):
    """What a retry does with a delivery whose fate is unknown (worker died mid-send)."""

    at_least_once = "at_least_once"  # send again (same Message-ID / idempotency key)
    at_most_once = "at_most_once"  # leave it `unknown`, listed for the operator
