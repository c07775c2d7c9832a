"""A message's content rendered for one profile: the one place flows, campaign pages, test sends
and previews turn Liquid into what a provider receives."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herald.delivery.providers.base import WhatsAppTemplate
from herald.delivery.templates import TemplateError, render
from herald.flows.graph import MessageContent

SUBJECT_MAX = 998  # RFC 5322 line limit, and the column's length


@dataclass(frozen=True)
class RenderedContent:
    subject: str | None
    body: str
    text: str | None
    template: WhatsAppTemplate | None


def render_content(content: MessageContent, variables: Mapping[str, Any]) -> RenderedContent:
    """Renders every template of `content`; raises TemplateError for the first that fails, its
    `field` naming the template (`content.subject`, `content.whatsapp_template.variables.1`)."""
    subject = _render("content.subject", content.subject, variables)
    if subject is not None:
        # A line break in a subject would start a new mail header.
        subject = " ".join(subject.split())[:SUBJECT_MAX]
    template = None
    if content.whatsapp_template is not None:
        template = WhatsAppTemplate(
            content_sid=content.whatsapp_template.content_sid,
            variables={
                key: _render(f"content.whatsapp_template.variables.{key}", value, variables) or ""
                for key, value in content.whatsapp_template.variables.items()
            },
        )
    return RenderedContent(
        subject=subject,
        body=_render("content.body", content.body, variables) or "",
        text=_render("content.text", content.text, variables),
        template=template,
    )


def _render(field: str, source: str | None, variables: Mapping[str, Any]) -> str | None:
    if not source:
        return None
    try:
        return render(source, variables)
    except TemplateError as exc:
        exc.field = field
        raise
