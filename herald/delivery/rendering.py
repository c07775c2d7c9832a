"""A message's content rendered for one profile: the one place flows, campaign pages, test sends
and previews turn Liquid into what a provider receives."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herald.delivery.providers.base import WhatsAppTemplate
from herald.delivery.templates import render
from herald.flows.graph import MessageContent

SUBJECT_MAX = 998  # RFC 5322 line limit, and the column's length


@dataclass(frozen=True)
class RenderedContent:
    subject: str | None
    body: str
    text: str | None
    template: WhatsAppTemplate | None


def render_content(content: MessageContent, variables: Mapping[str, Any]) -> RenderedContent:
    """Renders every template of `content`; raises TemplateError for the first that fails."""
    subject = render(content.subject, variables) if content.subject else None
    if subject is not None:
        # A line break in a subject would start a new mail header.
        subject = " ".join(subject.split())[:SUBJECT_MAX]
    template = None
    if content.whatsapp_template is not None:
        template = WhatsAppTemplate(
            content_sid=content.whatsapp_template.content_sid,
            variables={
                key: render(value, variables)
                for key, value in content.whatsapp_template.variables.items()
            },
        )
    return RenderedContent(
        subject=subject,
        body=render(content.body, variables),
        text=render(content.text, variables) if content.text else None,
        template=template,
    )
