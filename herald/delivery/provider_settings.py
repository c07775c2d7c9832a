"""Which provider each channel sends through, and with what configuration.

A channel's provider is, in order: the one saved through `PUT /v1/providers/{channel}` (its
secrets stored as Fernet tokens, herald/core/secrets.py), the one the environment configures
(HERALD_EMAIL_PROVIDER=smtp with HERALD_SMTP_*, for email), or the embedded outbox. Secrets
are never shown: the API masks them to their last four characters.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError
from sqlmodel import Session

from herald.core.config import Settings
from herald.core.errors import Invalid, InvalidDefinition
from herald.core.secrets import decrypt, encrypt
from herald.delivery.channels import OutboxProvider
from herald.delivery.providers.base import Provider
from herald.delivery.providers.registry import KINDS, NAMES, OUTBOX, ProviderKind
from herald.delivery.providers.smtp import SmtpConfig
from models.enums import Channel
from models.providers import ChannelProviderSetting
from models.types import utcnow

_ENCRYPTED = "$encrypted"


class ProviderLimitsPublic(BaseModel):
    concurrency: int
    per_second: float | None


class ProviderSettingPublic(BaseModel):
    channel: Channel
    provider: str
    # account: saved through the API; environment: HERALD_* settings; default: the outbox.
    source: Literal["account", "environment", "default"]
    config: dict[str, Any]  # secrets masked
    limits: ProviderLimitsPublic | None
    state: Literal["ok", "misconfigured"]
    state_detail: str | None = None
    state_at: datetime | None = None
    updated_at: datetime | None = None


def kind_for(channel: Channel, provider: str) -> ProviderKind | None:
    """The provider's kind (None: the outbox); refuses a provider the channel cannot use."""
    if provider == OUTBOX:
        return None
    kind = KINDS.get(provider)
    if kind is None:
        raise Invalid("provider", f"unknown provider {provider!r}; one of {', '.join(NAMES)}")
    if channel not in kind.channels:
        served = ", ".join(sorted(c.value for c in kind.channels))
        raise Invalid("provider", f"{provider} does not send {channel.value} (it sends {served})")
    return kind


def parse_config(
    kind: ProviderKind, config: dict[str, Any], keep: BaseModel | None = None
) -> BaseModel:
    """Validates a config; secrets left out are kept from `keep` (the saved config of the same
    provider), so changing a limit does not mean pasting the token again."""
    merged = dict(config)
    if keep is not None and _same_endpoint(keep, merged):
        for name in kind.secret_fields():
            if name not in merged and getattr(keep, name) is not None:
                merged[name] = getattr(keep, name).get_secret_value()
    try:
        return kind.config.model_validate(merged)
    except ValidationError as exc:
        raise InvalidDefinition(
            f"{kind.name} configuration",
            [
                {
                    "field": ".".join(["config", *(str(p) for p in error["loc"])]),
                    "reason": error["msg"],
                }
                for error in exc.errors()
            ],
        ) from exc


# Where a provider's credentials are sent: changing any of these needs the secrets again, or a
# caller with an API key could point the saved credentials at a host of their own.
_ENDPOINT_FIELDS = ("host", "port", "base_url", "url", "account_sid", "service_account_json")


def _same_endpoint(saved: BaseModel, config: dict[str, Any]) -> bool:
    current = saved.model_dump(mode="json")
    return all(
        name not in config or config[name] == current.get(name)
        for name in _ENDPOINT_FIELDS
        if name in current
    )


def _stored(kind: ProviderKind, config: BaseModel, settings: Settings) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for name in kind.secret_fields():
        secret = getattr(config, name)
        data[name] = (
            None if secret is None else {_ENCRYPTED: encrypt(settings, secret.get_secret_value())}
        )
    return data


def _loaded(kind: ProviderKind, stored: dict[str, Any], settings: Settings) -> BaseModel:
    data = dict(stored)
    for name in kind.secret_fields():
        value = data.get(name)
        if isinstance(value, dict) and _ENCRYPTED in value:
            data[name] = decrypt(settings, value[_ENCRYPTED])
    return kind.config.model_validate(data)


def masked(config: BaseModel) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            data[name] = "****" + raw[-4:] if len(raw) >= 12 else "****"
    return data


def smtp_config(settings: Settings) -> SmtpConfig:
    """The SMTP server of the HERALD_SMTP_* settings (email, and staff alerts)."""
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        tls=settings.smtp_tls,
        sender=settings.smtp_sender,
        timeout_seconds=settings.smtp_timeout_seconds,
        pool_size=settings.smtp_pool_size,
    )


def environment_config(channel: Channel, settings: Settings) -> tuple[str, BaseModel] | None:
    """What HERALD_* settings configure for the channel (SMTP email), if anything."""
    if channel is Channel.email and settings.email_provider == "smtp":
        return "smtp", smtp_config(settings)
    return None


def current(
    session: Session, channel: Channel, settings: Settings
) -> tuple[str, BaseModel | None, ChannelProviderSetting | None]:
    """(provider name, its config or None for the outbox, the saved row if any)."""
    row = session.get(ChannelProviderSetting, channel.value)
    if row is not None:
        kind = KINDS[row.provider]
        return row.provider, _loaded(kind, row.config, settings), row
    env = environment_config(channel, settings)
    if env is not None:
        return env[0], env[1], None
    return OUTBOX, None, None


def build(provider: str, config: BaseModel | None, settings: Settings) -> Provider | OutboxProvider:
    if config is None:
        return OutboxProvider()
    return KINDS[provider].build(config, settings)


def resolve(
    session: Session, channel: Channel, settings: Settings
) -> tuple[Any, Callable[[], Provider | OutboxProvider]]:
    """For the provider hub: a stamp that changes when the setting does, and a factory that
    decrypts and validates the config only when the hub has no provider for that stamp."""
    row = session.get(ChannelProviderSetting, channel.value)
    if row is None:
        env = environment_config(channel, settings)
        return None, lambda: build(*(env or (OUTBOX, None)), settings)
    provider, stored = row.provider, dict(row.config)
    return (provider, row.updated_at), lambda: build(
        provider, _loaded(KINDS[provider], stored, settings), settings
    )


def describe(session: Session, settings: Settings) -> list[ProviderSettingPublic]:
    return [describe_one(session, channel, settings) for channel in Channel]


def describe_one(session: Session, channel: Channel, settings: Settings) -> ProviderSettingPublic:
    name, config, row = current(session, channel, settings)
    provider = build(name, config, settings)
    limits = None
    if isinstance(provider, Provider):
        limits = ProviderLimitsPublic(
            concurrency=provider.limits.concurrency, per_second=provider.limits.per_second
        )
    source = "account" if row is not None else ("environment" if config is not None else "default")
    return ProviderSettingPublic(
        channel=channel,
        provider=name,
        source=source,
        config={} if config is None else masked(config),
        limits=limits,
        state="ok" if row is None else row.state,  # type: ignore[arg-type]
        state_detail=None if row is None else row.state_detail,
        state_at=None if row is None else row.state_at,
        updated_at=None if row is None else row.updated_at,
    )


def save(
    session: Session, channel: Channel, provider: str, config: BaseModel | None, settings: Settings
) -> None:
    """Stores the channel's provider (the outbox: removes the saved row)."""
    row = session.get(ChannelProviderSetting, channel.value)
    if config is None:
        if row is not None:
            session.delete(row)
        return
    stored = _stored(KINDS[provider], config, settings)
    row = row or ChannelProviderSetting(channel=channel.value, provider=provider)
    row.provider, row.config, row.updated_at = provider, stored, utcnow()
    row.state, row.state_detail, row.state_at = "ok", None, None
    session.add(row)
