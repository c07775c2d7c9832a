"""Channel providers: which one each channel sends through, its credentials (masked), limits and
state, and a check of the credentials against the provider itself."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, SettingsDep, require_private_key
from herald.core.db import session_scope
from herald.core.errors import Invalid
from herald.delivery.provider_settings import (
    ProviderSettingPublic,
    build,
    current,
    describe,
    describe_one,
    kind_for,
    parse_config,
    save,
)
from herald.delivery.providers.base import Provider, ProviderMisconfigured, ProviderUnavailable
from herald.delivery.send_path import mark_channel
from models.enums import Channel
from models.types import utcnow

router = APIRouter(
    prefix="/v1/providers", tags=["providers"], dependencies=[Depends(require_private_key)]
)

CHECK_TIMEOUT_SECONDS = 15.0


class ProviderChoice(BaseModel):
    model_config = {"extra": "forbid"}

    provider: str = Field(description="outbox, smtp, postmark, twilio, fcm or webhook")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The provider's settings; secrets left out keep their saved values",
    )
    check: bool = Field(
        default=True, description="Verify the credentials with the provider before saving"
    )


class CheckResult(BaseModel):
    ok: bool
    provider: str
    detail: str | None = None


async def _check(provider: Provider) -> tuple[str | None, bool]:
    """(None, False) when the provider accepted the credentials; otherwise what went wrong,
    and whether the provider refused them (rather than could not be asked)."""
    try:
        await asyncio.wait_for(provider.check(), CHECK_TIMEOUT_SECONDS)
        return None, False
    except ProviderMisconfigured as exc:
        return f"{provider.name} refused the credentials: {exc.detail}", True
    except ProviderUnavailable as exc:
        return f"could not reach {provider.name}: {exc.detail}", False
    except TimeoutError:
        return f"{provider.name} did not answer within {CHECK_TIMEOUT_SECONDS:.0f} s", False
    finally:
        await provider.aclose()


@router.get("", summary="Every channel's provider, its masked config, limits and state")
async def list_providers(engine: EngineDep, settings: SettingsDep) -> list[ProviderSettingPublic]:
    def read() -> list[ProviderSettingPublic]:
        with session_scope(engine) as session:
            return describe(session, settings)

    return await run_in_threadpool(read)


@router.get("/{channel}", summary="One channel's provider")
async def get_provider(
    channel: Channel, engine: EngineDep, settings: SettingsDep
) -> ProviderSettingPublic:
    def read() -> ProviderSettingPublic:
        with session_scope(engine) as session:
            return describe_one(session, channel, settings)

    return await run_in_threadpool(read)


@router.put(
    "/{channel}",
    summary="Choose the channel's provider; credentials are checked first, nothing is saved "
    "if they fail",
)
async def put_provider(
    channel: Channel, body: ProviderChoice, engine: EngineDep, settings: SettingsDep
) -> ProviderSettingPublic:
    kind = kind_for(channel, body.provider)

    def saved_config():
        with session_scope(engine) as session:
            name, config, _ = current(session, channel, settings)
        return config if name == body.provider else None

    config = None
    if kind is not None:
        config = parse_config(kind, body.config, keep=await run_in_threadpool(saved_config))
        if body.check:
            provider = build(body.provider, config, settings)
            assert isinstance(provider, Provider)
            problem, _ = await _check(provider)
            if problem is not None:
                raise Invalid("config", problem)
    elif body.config:
        raise Invalid("config", "the outbox takes no configuration")

    def write() -> ProviderSettingPublic:
        with session_scope(engine) as session:
            save(session, channel, body.provider, config, settings)
        with session_scope(engine) as session:
            return describe_one(session, channel, settings)

    return await run_in_threadpool(write)


@router.delete(
    "/{channel}", summary="Forget the saved provider: back to the environment's or the outbox"
)
async def delete_provider(
    channel: Channel, engine: EngineDep, settings: SettingsDep
) -> ProviderSettingPublic:
    def write() -> ProviderSettingPublic:
        with session_scope(engine) as session:
            save(session, channel, "outbox", None, settings)
        with session_scope(engine) as session:
            return describe_one(session, channel, settings)

    return await run_in_threadpool(write)


@router.post("/{channel}/check", summary="Verify the channel's saved credentials with the provider")
async def check_provider(channel: Channel, engine: EngineDep, settings: SettingsDep) -> CheckResult:
    def read():
        with session_scope(engine) as session:
            name, config, _ = current(session, channel, settings)
        return name, config

    name, config = await run_in_threadpool(read)
    provider = build(name, config, settings)
    if not isinstance(provider, Provider):
        return CheckResult(
            ok=True, provider=name, detail="the embedded outbox needs no credentials"
        )
    problem, refused = await _check(provider)

    def record() -> None:
        with session_scope(engine) as session:
            mark_channel(session, channel, problem if refused else None, utcnow())

    if problem is None or refused:  # an unreachable provider says nothing of the credentials
        await run_in_threadpool(record)
    return CheckResult(ok=problem is None, provider=name, detail=problem)
