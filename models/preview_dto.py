"""What test sends and previews of campaign messages and flow message steps take and return.

Both render the message as the real send would, for a chosen profile (or an empty one). A test
send then delivers it now, marked `test` and counted nowhere (herald/delivery/test_sends.py); a
preview only shows it (herald/delivery/previews.py).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.campaign_dto import ReviewProblem
from models.enums import Channel
from models.types import reject_unstorable


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _storable = model_validator(mode="before")(classmethod(reject_unstorable))


class SampleEvent(_In):
    """A trigger event as a flow's templates would see it (`event.properties.*`, `event.value`);
    its type and metric are the flow trigger's."""

    properties: dict[str, Any] = Field(default_factory=dict)
    value: float | None = None


class TestSendIn(_In):
    """At least one of the two. Both: rendered for the profile, sent to `to`."""

    __test__ = False  # not a pytest test class, whatever its name

    profile_id: str | None = Field(
        default=None,
        max_length=40,
        description="Render for this profile; without `to`, send to its address for the channel",
    )
    to: str | None = Field(
        default=None,
        min_length=1,
        max_length=400,
        description="Send here instead (email address, E.164 number or push token)",
    )


class FlowTestSendIn(TestSendIn):
    event: SampleEvent | None = Field(default=None, description="A sample trigger event")


class PreviewIn(_In):
    profile_id: str | None = Field(
        default=None, max_length=40, description="Render for this profile (default: an empty one)"
    )


class FlowPreviewIn(PreviewIn):
    event: SampleEvent | None = Field(default=None, description="A sample trigger event")


class TestSendPublic(BaseModel):
    """The test send's delivery row (also listed by `GET /v1/deliveries`, with `test: true`)."""

    __test__ = False  # not a pytest test class, whatever its name

    id: str
    # sent: the provider (or the outbox) took it; failed: the provider refused it for good.
    status: Literal["sent", "failed"]
    reason: str | None  # why it failed: invalid_address, recipient_refused, ...
    to: str
    provider: str
    provider_message_id: str | None
    test: Literal[True] = True


class SmsCount(BaseModel):
    encoding: Literal["GSM-7", "UCS-2"]
    characters: int
    segments: int  # messages billed (GSM-7 160/153, UCS-2 67/70)


class WhatsAppPreview(BaseModel):
    content_sid: str
    variables: dict[str, str]  # placeholder -> rendered value


class MessagePreview(BaseModel):
    channel: Channel
    subject: str | None  # email subject, push title
    body: str  # the rendered body: email HTML or text, SMS / WhatsApp / push text
    html: str | None  # email: the HTML part (None for a plain-text email)
    text: str | None  # email: the text part, as given or derived from the HTML
    sms: SmsCount | None  # SMS: what the rendered body costs
    whatsapp_template: WhatsAppPreview | None
    # Review warnings for this message (campaigns: as the campaign review gives them); content
    # warnings are computed on this rendering.
    warnings: list[ReviewProblem]
