"""Previews: a campaign message or flow message step rendered for a chosen profile (and, for
flows, a sample trigger event), as its real send would render it, with what it costs as SMS and
the review warnings that apply to it. Nothing is sent or recorded.

An email shows the parts every email provider builds (herald/delivery/html_text.py
`email_parts`): the HTML and its text part, as given or derived from the HTML. Content warnings
(an unsubscribe link, SMS segments) are computed on this rendering; a campaign message also gets
the rest of its campaign review's warnings.
"""

from datetime import datetime

from sqlmodel import Session

from herald.campaigns.review import CONTENT_WARNINGS, content_warnings
from herald.campaigns.review_facts import message_review
from herald.campaigns.store import load_campaign
from herald.core.config import Settings
from herald.delivery.html_text import email_parts
from herald.delivery.message_trials import MessageLoader, TrialMessage, chosen_profile, render_for
from herald.delivery.sms_segments import SEGMENTED_CHANNELS, sms_segments
from models.campaign_dto import ReviewProblem
from models.enums import Channel
from models.preview_dto import MessagePreview, PreviewIn, SmsCount, WhatsAppPreview


def preview(
    session: Session, settings: Settings, load: MessageLoader, request: PreviewIn, now: datetime
) -> MessagePreview:
    """Raises a DomainError: 404 for an unknown message, 422 for an unknown profile or a
    template that does not render (its field, line and column)."""
    trial = load(session)
    profile = chosen_profile(session, request.profile_id)
    rendered = render_for(trial, profile)
    html = text = None
    if trial.channel is Channel.email:
        parts = email_parts(rendered.body, rendered.text)
        html, text = parts.html, parts.text
    sms = None
    if trial.channel in SEGMENTED_CHANNELS:
        counted = sms_segments(rendered.body)
        sms = SmsCount(
            encoding=counted.encoding, characters=counted.characters, segments=counted.segments
        )
    template = None
    if rendered.template is not None:
        template = WhatsAppPreview(
            content_sid=rendered.template.content_sid, variables=rendered.template.variables
        )
    warnings = content_warnings(
        trial.channel,
        trial.content.body,
        rendered.body,
        marketing=not trial.transactional,
        with_profile=profile is not None,
    )
    return MessagePreview(
        channel=trial.channel,
        subject=rendered.subject,
        body=rendered.body,
        html=html,
        text=text,
        sms=sms,
        whatsapp_template=template,
        warnings=warnings + _other_review_warnings(session, settings, trial, now),
    )


def _other_review_warnings(
    session: Session, settings: Settings, trial: TrialMessage, now: datetime
) -> list[ReviewProblem]:
    """A campaign message's review warnings besides the content ones computed here."""
    if trial.run_kind != "campaign":
        return []
    campaign = load_campaign(session, trial.run_id)
    review = message_review(
        session, campaign, trial.step_id, default_email_sender=settings.smtp_sender, now=now
    )
    if review is None:
        return []
    return [w for w in review.warnings if w.code not in CONTENT_WARNINGS]
