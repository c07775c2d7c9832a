"""A campaign message or flow message step as an operator tries it out (test send, preview):
found, with the Liquid context its real send gives it, and rendered for a chosen profile.

What the real send renders with, and so what this renders with too: the profile (its fields
and properties) plus `campaign` {id, name} for campaigns, or `flow` {id, name} and `event` (the
trigger) for flows. A trial has no real trigger, so the operator may give a sample event; its
type and metric are the flow trigger's.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from herald.campaigns.store import load_campaign, message_of
from herald.core.errors import Invalid, InvalidDefinition, InvalidTemplate, NotFound
from herald.delivery.rendering import RenderedContent, render_content
from herald.delivery.templates import TemplateError, template_variables
from herald.flows.contract import TriggerContext
from herald.flows.graph import FlowDefinition, Message, MessageContent
from herald.flows.store import latest, load_flow
from models.enums import Channel
from models.preview_dto import SampleEvent
from models.profile import Profile


@dataclass(frozen=True)
class TrialMessage:
    run_kind: str  # flow | campaign, as on its delivery rows
    run_id: str  # flow id or campaign id
    step_id: str  # flow step id or campaign message id
    channel: Channel
    content: MessageContent
    transactional: bool
    context: dict[str, Any] = field(default_factory=dict)  # Liquid variables besides `profile`


# What a router hands the trial: how to find its message in a session.
MessageLoader = Callable[[Session], TrialMessage]


def campaign_message(session: Session, campaign_id: str, message_id: str) -> TrialMessage:
    """The campaign's message (404 for an unknown campaign or message)."""
    campaign = load_campaign(session, campaign_id)
    row = message_of(session, campaign, message_id)
    stored = {k: v for k, v in (row.content or {}).items() if v is not None}
    if not str(stored.get("body") or "").strip():
        raise Invalid("content.body", "the message has no content yet: give it a body first")
    return TrialMessage(
        run_kind="campaign",
        run_id=campaign.id,
        step_id=row.id,
        channel=Channel(row.channel),
        content=_content(stored),
        transactional=False,
        context={"campaign": {"id": campaign.id, "name": campaign.name}},
    )


def flow_message(
    session: Session, flow_id: str, step_id: str, event: SampleEvent | None, now: datetime
) -> TrialMessage:
    """A message step of the flow's current version (404 for an unknown flow or step, 422 for
    a step that is no message)."""
    flow = load_flow(session, flow_id)
    definition = FlowDefinition.model_validate(latest(session, flow).definition)
    step = next((s for s in definition.steps if s.id == step_id), None)
    if step is None:
        raise NotFound("step", step_id)
    if not isinstance(step, Message):
        raise Invalid("step_id", f"step {step_id!r} is a {step.type} step, not a message")
    trigger = definition.trigger
    sample = event or SampleEvent()
    triggered = TriggerContext(
        type=trigger.type,
        metric=getattr(trigger, "metric", None),
        list_id=getattr(trigger, "list_id", None),
        segment_id=getattr(trigger, "segment_id", None),
        value=sample.value,
        properties=sample.properties,
        time=now,
    )
    return TrialMessage(
        run_kind="flow",
        run_id=flow.id,
        step_id=step.id,
        channel=step.channel,
        content=step.content,
        transactional=step.transactional,
        context={
            "event": triggered.model_dump(mode="json"),
            "flow": {"id": flow.id, "name": flow.name},
        },
    )


def chosen_profile(session: Session, profile_id: str | None) -> Profile | None:
    if profile_id is None:
        return None
    profile = session.get(Profile, profile_id)
    if profile is None:
        raise Invalid("profile_id", f"no profile {profile_id!r}")
    return profile


def render_for(message: TrialMessage, profile: Profile | None) -> RenderedContent:
    """Renders as the real send would; a template error is a 422 naming the field and where."""
    variables = template_variables(profile.model_dump() if profile else {}, message.context)
    try:
        return render_content(message.content, variables)
    except TemplateError as exc:
        raise InvalidTemplate(
            exc.field or "content", f"does not render: {exc.reason}", exc.line, exc.column
        ) from exc


def _content(stored: dict[str, Any]) -> MessageContent:
    try:
        return MessageContent.model_validate(stored)
    except ValidationError as exc:  # a draft saved before a limit existed, say
        raise InvalidDefinition(
            "message content",
            [
                {"field": ".".join(["content", *map(str, e["loc"])]), "reason": e["msg"]}
                for e in exc.errors()
            ],
        ) from exc
