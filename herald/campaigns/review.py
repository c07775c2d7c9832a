"""Campaign review: what blocks scheduling (errors) and what only deserves a look (warnings).

Pure: no database, no FastAPI. The API gathers the facts (audience counts, the account's
channels, the default sender, the clock) and every rule lives here, so `GET .../review` and the
check that refuses to schedule are one and the same.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from herald.delivery.sms_segments import GSM7_SINGLE, UCS2_SINGLE, sms_segments
from herald.delivery.templates import TemplateError, render, template_problem
from models.campaign_dto import (
    CampaignLevelReview,
    CampaignReview,
    MessageReview,
    ReviewProblem,
    parse_send_at,
)


@dataclass(frozen=True)
class MessageFacts:
    id: str
    channel: str
    body: str
    subject: str | None = None
    sender: str | None = None
    send_at_local: str = ""  # "YYYY-MM-DDTHH:MM" in the campaign timezone
    utm: bool = True
    whatsapp_template: bool = False  # an approved content template is set


@dataclass(frozen=True)
class PathFacts:
    id: str
    name: str
    # Members of the included lists minus members of the excluded ones (before cross-path dedup).
    audience: int
    # How many of those an earlier path's audience also holds (they get that path only).
    in_earlier_paths: int = 0
    # Referenced lists that no longer exist.
    missing_lists: Sequence[str] = ()
    messages: Sequence[MessageFacts] = ()


@dataclass(frozen=True)
class ReviewFacts:
    timezone: str
    now: datetime  # aware
    enabled_channels: frozenset[str]
    # Used for email without content.sender; None or "" when there is none.
    default_email_sender: str | None
    paths: Sequence[PathFacts] = field(default_factory=tuple)  # in path order


def send_time_passed(send_at_local: str, timezone: str, now: datetime) -> bool:
    """Is the wall time `send_at_local` in `timezone` already before `now`?"""
    return parse_send_at(send_at_local).replace(tzinfo=ZoneInfo(timezone)) < now


def review_campaign(facts: ReviewFacts) -> CampaignReview:
    campaign = CampaignLevelReview()
    messages: list[MessageReview] = []
    if not facts.paths:
        campaign.errors.append(
            _problem("no_paths", "paths", "the campaign has no paths: add one with an audience")
        )
    for index, path in enumerate(facts.paths):
        _review_path(index, path, campaign)
        for message in path.messages:
            messages.append(_review_message(facts, path, message))
    ready = not campaign.errors and not any(m.errors for m in messages)
    return CampaignReview(ready=ready, messages=messages, campaign=campaign)


def _problem(code: str, field: str | None, message: str) -> ReviewProblem:
    return ReviewProblem(code=code, field=field, message=message)


def _review_path(index: int, path: PathFacts, out: CampaignLevelReview) -> None:
    where = f"paths[{index}]"
    if not path.messages:
        out.errors.append(
            _problem("path_without_messages", where, f"path {path.name!r} has no messages")
        )
    for list_id in path.missing_lists:
        out.errors.append(
            _problem(
                "unknown_list",
                where,
                f"path {path.name!r} uses list {list_id!r}, which no longer exists",
            )
        )
    if path.audience and path.in_earlier_paths:
        if path.in_earlier_paths >= path.audience:
            text = (
                f"all {path.audience} profiles of path {path.name!r} are also in an earlier "
                "path's audience: each gets only the first path, so this path sends nothing"
            )
        else:
            text = (
                f"{path.in_earlier_paths} of the {path.audience} profiles of path "
                f"{path.name!r} are also in an earlier path's audience: each gets only the "
                "first path's messages"
            )
        out.warnings.append(_problem("audience_overlap", where, text))


def _review_message(facts: ReviewFacts, path: PathFacts, message: MessageFacts) -> MessageReview:
    out = MessageReview(message_id=message.id, path_id=path.id)
    errors, warnings = out.errors, out.warnings
    channel = message.channel
    email = channel == "email"

    if channel not in facts.enabled_channels:
        errors.append(
            _problem(
                "channel_not_enabled",
                "channel",
                f"the {channel} channel is not enabled on this account",
            )
        )
    if not message.body.strip():
        errors.append(_problem("no_body", "content.body", "the message has no content"))
    if channel == "whatsapp" and not message.whatsapp_template:
        errors.append(
            _problem(
                "whatsapp_template_required",
                "content.whatsapp_template",
                "a business-initiated WhatsApp message must use an approved content template "
                "(content_sid HX...)",
            )
        )
    if email and not (message.subject or "").strip():
        errors.append(_problem("no_subject", "content.subject", "an email needs a subject"))
    if email and not message.sender and not facts.default_email_sender:
        errors.append(
            _problem(
                "no_sender",
                "content.sender",
                "an email needs a sender: set content.sender (no default sender is configured)",
            )
        )
    if message.send_at_local and send_time_passed(message.send_at_local, facts.timezone, facts.now):
        errors.append(
            _problem(
                "send_time_past",
                "send_at",
                f"the send time {message.send_at_local} ({facts.timezone}) has already passed",
            )
        )
    if path.audience == 0:
        errors.append(
            _problem(
                "empty_audience",
                "audience",
                f"path {path.name!r} has no recipients: its included lists are empty, "
                "or every member is excluded",
            )
        )
    templates = [("content.body", message.body)]
    if email and message.subject:
        templates.append(("content.subject", message.subject))
    rendered_body: str | None = None
    for where, source in templates:
        if not source.strip():
            continue
        text, problem = _try_render(source)
        if problem:
            errors.append(_problem("template_error", where, f"does not render: {problem}"))
        elif where == "content.body":
            rendered_body = text

    if channel == "sms" and message.body.strip():
        counted = sms_segments(rendered_body if rendered_body is not None else message.body)
        out.sms_segments = counted.segments
    warnings.extend(content_warnings(channel, message.body, rendered_body))
    if not message.utm:
        warnings.append(
            _problem(
                "utm_off",
                "utm",
                "UTM tracking is off: clicks will not be attributed to the campaign",
            )
        )
    return out


# The warnings content_warnings gives: previews compute them again for the profile they render.
CONTENT_WARNINGS = frozenset({"no_unsubscribe_link", "sms_multiple_segments"})


def content_warnings(
    channel: str,
    body: str,
    rendered_body: str | None,
    *,
    marketing: bool = True,
    with_profile: bool = False,
) -> list[ReviewProblem]:
    """What a message's content deserves a look for, in campaign review and in previews: a
    marketing email without an unsubscribe link, an SMS over one segment (counted on
    `rendered_body`, the body rendered without profile data unless `with_profile`)."""
    out: list[ReviewProblem] = []
    if channel == "email" and marketing and body.strip() and "unsubscribe" not in body.lower():
        out.append(
            _problem("no_unsubscribe_link", "content.body", "the email has no unsubscribe link")
        )
    if channel == "sms" and body.strip():
        counted = sms_segments(rendered_body if rendered_body is not None else body)
        if counted.segments > 1:
            limit = GSM7_SINGLE if counted.encoding == "GSM-7" else UCS2_SINGLE
            data = "with the profile's data" if with_profile else "without profile data"
            out.append(
                _problem(
                    "sms_multiple_segments",
                    "content.body",
                    f"the SMS is {counted.units} characters {data}, more than one "
                    f"{limit}-character segment: it is billed as {counted.segments} messages",
                )
            )
    return out


def _try_render(source: str) -> tuple[str | None, str | None]:
    """(rendered text with no variables, None) or (None, why it does not render)."""
    if problem := template_problem(source):
        return None, problem
    try:
        return render(source, {}), None
    except TemplateError as exc:
        return None, str(exc)
