"""Push through FCM HTTP v1: one `messages:send` per device token, as a service account.

FCM v1 addresses one registration token per call, so a profile with three devices costs three
calls. Their answers are folded into one outcome for the delivery: any device reached makes a
receipt (tokens FCM no longer knows ride along as `dead_tokens`, for the send path to drop);
no device reached raises the most actionable error of the lot.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderError,
    ProviderLimits,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from herald.delivery.providers.google_auth import ServiceAccount, ServiceAccountTokens
from herald.delivery.providers.http_replies import HttpProvider, request_failed, retry_after_seconds

FCM_API = "https://fcm.googleapis.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
# FCM asks for at least a minute before retrying QUOTA_EXCEEDED when it gives no Retry-After.
QUOTA_BACKOFF_SECONDS = 60.0


class FcmConfig(BaseModel):
    # hide_input_in_errors: a refused key file must not land in logs with its private key.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    service_account_json: SecretStr  # the Firebase project's service-account key file, as is
    project_id: str | None = None  # the key's project_id when None
    base_url: str = FCM_API
    timeout_seconds: float = Field(default=10.0, gt=0)
    # FCM publishes no cap on requests in flight; this bounds our own sockets.
    concurrency: int = Field(default=32, ge=1)
    # FCM's default quota: 600,000 messages a minute per project, counted per token (10,000/s).
    per_second: float | None = Field(default=10_000.0, gt=0)
    # The one scope messages:send needs; never broader (cloud-platform would also do).
    scope: ClassVar[str] = FCM_SCOPE

    @field_validator("service_account_json")
    @classmethod
    def _is_a_service_account_key(cls, value: SecretStr) -> SecretStr:
        ServiceAccount.from_json(value.get_secret_value())
        return value

    def service_account(self) -> ServiceAccount:
        return ServiceAccount.from_json(self.service_account_json.get_secret_value())


@dataclass(frozen=True)
class _Sent:
    name: str  # projects/{project}/messages/{id}


@dataclass(frozen=True)
class _Dead:
    token: str
    code: str  # UNREGISTERED or INVALID_ARGUMENT


_TokenOutcome = _Sent | _Dead | ProviderError


@dataclass(frozen=True)
class _GoogleError:
    """Google's error JSON: {"error": {"code", "message", "status", "details": [...]}}."""

    http_status: int
    status: str  # the google.rpc code name: NOT_FOUND, INVALID_ARGUMENT, ...
    message: str
    fcm_code: str | None  # errorCode of the FcmError detail
    bad_fields: tuple[str, ...]  # fieldViolations of the BadRequest detail

    @classmethod
    def of(cls, response: httpx.Response) -> "_GoogleError":
        try:
            error: Any = response.json()["error"]
            details = [d for d in error.get("details") or () if isinstance(d, dict)]
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(response.status_code, "", response.text[:200], None, ())
        fcm_codes = [d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_TYPE]
        bad_fields = [
            str(violation.get("field"))
            for d in details
            if d.get("@type") == BAD_REQUEST_TYPE
            for violation in d.get("fieldViolations") or ()
            if isinstance(violation, dict)
        ]
        return cls(
            http_status=response.status_code,
            status=str(error.get("status") or ""),
            message=str(error.get("message") or ""),
            fcm_code=str(fcm_codes[0]) if fcm_codes and fcm_codes[0] else None,
            bad_fields=tuple(bad_fields),
        )

    @property
    def code(self) -> str:
        return self.fcm_code or self.status or str(self.http_status)

    def blames_the_token(self) -> bool:
        """INVALID_ARGUMENT is the token's fault when FCM says so with an FcmError (a
        malformed or foreign token); a bad payload comes as a BadRequest naming its field."""
        if "message.token" in self.bad_fields:
            return True
        return self.fcm_code == "INVALID_ARGUMENT" and not self.bad_fields


class FcmProvider(HttpProvider):
    name = "fcm"

    def __init__(self, config: FcmConfig, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.limits = ProviderLimits(concurrency=config.concurrency, per_second=config.per_second)
        account = config.service_account()
        self.project_id = config.project_id or account.project_id
        self._tokens = ServiceAccountTokens(account, FcmConfig.scope, self._http, clock=clock)

    def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.config.timeout_seconds)

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        # Each device once, in the profile's order, however often the token was stored.
        tokens = tuple(dict.fromkeys(t for t in message.push_tokens or (message.to_address,) if t))
        if not tokens:
            raise ProviderRejected("invalid_address", "the profile has no push token")
        outcomes: list[_TokenOutcome] = []
        for token in tokens:
            try:
                outcomes.append(await self._send_to(token, message))
            except ProviderUnavailable as exc:  # this device only: others may still be reached
                outcomes.append(exc)
        return _fold(outcomes)

    async def check(self) -> None:
        """Obtains a fresh access token: Google accepted the key's signature and the account
        is live. That is all it proves. messages:send documents `validate_only`, but a dry run
        still needs a real device token, and a check has none to hand."""
        await self._tokens.renew()

    async def _send_to(self, token: str, message: OutgoingMessage) -> _TokenOutcome:
        body = _fcm_message(token, message)
        access = await self._tokens.get()
        response = await self._post(body, access)
        if _access_token_refused(response):  # expired or revoked early: one new grant, once
            access = await self._tokens.get(refused=access)
            response = await self._post(body, access)
            if _access_token_refused(response):
                error = _GoogleError.of(response)
                raise ProviderMisconfigured(
                    f"FCM refused a freshly granted access token: {error.message}"
                )
        return self._outcome(token, response)

    async def _post(self, body: dict[str, Any], access: str) -> httpx.Response:
        url = f"{self.config.base_url.rstrip('/')}/v1/projects/{self.project_id}/messages:send"
        try:
            return await self._http().post(
                url, json=body, headers={"Authorization": f"Bearer {access}"}
            )
        except httpx.TimeoutException as exc:
            raise request_failed("FCM timed out", exc) from None
        except httpx.TransportError as exc:
            raise request_failed("could not reach FCM", exc) from None

    def _outcome(self, token: str, response: httpx.Response) -> _TokenOutcome:
        """One token's answer; errors that condemn the whole channel are raised, not returned."""
        if response.status_code == 200:
            try:
                return _Sent(str(response.json().get("name") or ""))
            except (ValueError, AttributeError):
                return _Sent("")  # delivered all the same: retrying would notify twice
        error = _GoogleError.of(response)
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if error.fcm_code == "UNREGISTERED":
            return _Dead(token, "UNREGISTERED")
        if error.status == "INVALID_ARGUMENT" or error.fcm_code == "INVALID_ARGUMENT":
            if error.blames_the_token():
                return _Dead(token, "INVALID_ARGUMENT")
            return ProviderRejected(
                "invalid_message",
                f"FCM refused the message: {error.message}",
                provider_code=error.code,
            )
        if error.fcm_code == "SENDER_ID_MISMATCH":  # this token belongs to another project
            return ProviderMisconfigured(
                f"a push token belongs to another Firebase project than {self.project_id!r} "
                "(SENDER_ID_MISMATCH)"
            )
        if error.fcm_code == "THIRD_PARTY_AUTH_ERROR":  # this device's platform (APNs, web push)
            return ProviderMisconfigured(
                "the Firebase project's APNs certificate or web push key is invalid or missing "
                f"(THIRD_PARTY_AUTH_ERROR): {error.message}"
            )
        if error.http_status == 429 or error.fcm_code == "QUOTA_EXCEEDED":
            return ProviderUnavailable(
                f"FCM quota exceeded: {error.message}",
                retry_after=QUOTA_BACKOFF_SECONDS if retry_after is None else retry_after,
            )
        if error.http_status >= 500:
            return ProviderUnavailable(
                f"FCM answered {error.http_status} {error.code}: {error.message}",
                retry_after=retry_after,
            )
        if error.http_status in (401, 403):
            raise ProviderMisconfigured(
                f"the service account may not send for project {self.project_id!r} "
                f"({error.http_status} {error.code}: {error.message})"
            )
        if error.http_status == 404:  # not UNREGISTERED: the project itself is unknown
            raise ProviderMisconfigured(
                f"FCM knows no project {self.project_id!r} ({error.code}: {error.message})"
            )
        return ProviderRejected(
            "provider_rejected",
            f"FCM answered {error.http_status} {error.code}: {error.message}",
            provider_code=error.code,
        )


def _fcm_message(token: str, message: OutgoingMessage) -> dict[str, Any]:
    notification = {"body": message.body}
    if message.subject:
        notification = {"title": message.subject, **notification}
    # FCM data values must be strings; the delivery id comes last so no payload key hides it.
    data = {key: str(value) for key, value in message.data.items()}
    data["herald_delivery_id"] = message.delivery_id
    return {"message": {"token": token, "notification": notification, "data": data}}


def _access_token_refused(response: httpx.Response) -> bool:
    # THIRD_PARTY_AUTH_ERROR is a 401 about APNs / web push credentials, not about our token.
    return response.status_code == 401 and _GoogleError.of(response).fcm_code is None


def _fold(outcomes: Sequence[_TokenOutcome]) -> SendReceipt:
    sent = [o.name for o in outcomes if isinstance(o, _Sent)]
    dead = [o for o in outcomes if isinstance(o, _Dead)]
    dead_tokens = tuple(o.token for o in dead)
    if sent:
        # Reached at least one device: a retry would notify it twice, so failures on the
        # profile's other devices are not raised.
        return SendReceipt(" ".join(name for name in sent if name), dead_tokens=dead_tokens)
    failures = [o for o in outcomes if isinstance(o, ProviderError)]
    for failure in failures:
        if isinstance(failure, ProviderMisconfigured):
            raise failure
    unavailable = [o for o in failures if isinstance(o, ProviderUnavailable)]
    if unavailable:
        waits = [o.retry_after for o in unavailable if o.retry_after is not None]
        raise ProviderUnavailable(
            "; ".join(o.detail for o in unavailable),
            retry_after=max(waits) if waits else None,
            maybe_sent=any(o.maybe_sent for o in unavailable),
        )
    for failure in failures:
        if isinstance(failure, ProviderRejected):
            raise ProviderRejected(
                failure.reason,
                failure.detail,
                provider_code=failure.provider_code,
                dead_tokens=dead_tokens,
            )
    raise ProviderRejected(
        "token_unregistered",
        f"FCM no longer knows any of the profile's {len(dead)} push token(s)",
        provider_code=dead[0].code,
        dead_tokens=dead_tokens,
    )
