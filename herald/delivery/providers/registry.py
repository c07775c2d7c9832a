"""Every provider Herald can send through: its name, the channels it serves, its config model."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr

from herald.core.config import Settings
from herald.delivery.providers.base import Provider
from herald.delivery.providers.fcm import FcmConfig, FcmProvider
from herald.delivery.providers.postmark import PostmarkConfig, PostmarkProvider
from herald.delivery.providers.smtp import SmtpConfig, SmtpProvider
from herald.delivery.providers.twilio import TwilioConfig, TwilioProvider
from herald.delivery.providers.webhook import WebhookProvider, WebhookProviderConfig
from models.enums import Channel

OUTBOX = "outbox"


@dataclass(frozen=True)
class ProviderKind:
    name: str
    channels: frozenset[Channel]
    config: type[BaseModel]
    build: Callable[[Any, Settings], Provider]

    def secret_fields(self) -> list[str]:
        """The config fields stored encrypted and never shown (SecretStr)."""
        return [
            name
            for name, info in self.config.model_fields.items()
            if SecretStr in _types_of(info.annotation)
        ]


def _types_of(annotation: Any) -> tuple[Any, ...]:
    return getattr(annotation, "__args__", None) or (annotation,)


_EMAIL = frozenset({Channel.email})
KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("smtp", _EMAIL, SmtpConfig, lambda c, s: SmtpProvider(c)),
        ProviderKind("postmark", _EMAIL, PostmarkConfig, lambda c, s: PostmarkProvider(c)),
        ProviderKind(
            "twilio",
            frozenset({Channel.sms, Channel.whatsapp}),
            TwilioConfig,
            lambda c, s: TwilioProvider(c),
        ),
        ProviderKind("fcm", frozenset({Channel.push}), FcmConfig, lambda c, s: FcmProvider(c)),
        # The operator's settings hold the webhook allow list: an account editor cannot open
        # the worker's private network by pointing a channel at it.
        ProviderKind(
            "webhook", frozenset(Channel), WebhookProviderConfig, WebhookProvider.from_settings
        ),
    )
}
NAMES = (OUTBOX, *KINDS)
