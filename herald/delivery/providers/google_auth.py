"""A Google service account's OAuth2 access tokens, by the JWT bearer grant (RFC 7523).

Google APIs called from a server (FCM HTTP v1 here) take a short-lived Bearer token. The service
account gets one by posting a JWT, signed RS256 with the key file's private key, to the key
file's token_uri. A token lasts about an hour, so one grant serves every send until shortly
before it ends; concurrent sends wait for the one grant in flight instead of each asking.
"""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from herald.delivery.providers.base import ProviderMisconfigured, ProviderUnavailable
from herald.delivery.providers.http_replies import retry_after_seconds

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google refuses assertions that live longer than one hour
REFRESH_MARGIN = 60.0  # a cached token is replaced this many seconds before Google expires it
KEY_FIELDS = ("type", "client_email", "private_key", "private_key_id", "token_uri", "project_id")


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service-account key file (JSON) that a token grant needs."""

    client_email: str
    private_key_id: str
    token_uri: str
    project_id: str
    signing_key: RSAPrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, text: str) -> "ServiceAccount":
        """Parses a key file; the ValueError names what is missing and never quotes the key."""
        try:
            key = json.loads(text)
        except ValueError:
            raise ValueError("the service-account key is not valid JSON") from None
        if not isinstance(key, dict):
            raise ValueError("the service-account key is not a JSON object")
        missing = [name for name in KEY_FIELDS if not _text(key.get(name))]
        if missing:
            raise ValueError(f"the service-account key has no {', '.join(missing)}")
        if key["type"] != "service_account":
            raise ValueError(f'the key\'s type is {key["type"]!r}, not "service_account"')
        try:
            signing_key = load_pem_private_key(key["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("the key's private_key is not a PEM private key") from None
        if not isinstance(signing_key, RSAPrivateKey):
            raise ValueError("the key's private_key is not an RSA key (Google signs RS256)")
        return cls(
            client_email=key["client_email"],
            private_key_id=key["private_key_id"],
            token_uri=key["token_uri"],
            project_id=key["project_id"],
            signing_key=signing_key,
        )


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


class ServiceAccountTokens:
    """Access tokens for one account and scope: cached, refreshed one grant at a time."""

    def __init__(
        self,
        account: ServiceAccount,
        scope: str,
        http: Callable[[], httpx.AsyncClient],
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.account = account
        self.scope = scope
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    async def get(self, *, refused: str | None = None) -> str:
        """A token still valid; `refused` is one the API just answered 401 to, never handed
        out again (if another caller already replaced it, its replacement is returned)."""
        async with self._lock:
            token = self._token
            if token is not None and token != refused and self._clock() < self._renew_at:
                return token
            return await self._grant()

    async def renew(self) -> str:
        """A fresh grant whatever is cached: proves the key works now."""
        async with self._lock:
            return await self._grant()

    async def _grant(self) -> str:
        self._token = None
        now = self._clock()
        claims = {
            "iss": self.account.client_email,
            "scope": self.scope,
            "aud": self.account.token_uri,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        assertion = jwt.encode(
            claims,
            self.account.signing_key,
            algorithm="RS256",
            headers={"kid": self.account.private_key_id},
        )
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        try:
            response = await self._http().post(self.account.token_uri, data=form)
        except httpx.TimeoutException:
            raise ProviderUnavailable("Google's token endpoint timed out") from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"could not reach Google's token endpoint: {exc!r}") from None
        if response.status_code == 200:
            token, lifetime = _granted(response)
            self._token = token
            self._renew_at = now + max(0.0, lifetime - REFRESH_MARGIN)
            return token
        if response.status_code == 429 or response.status_code >= 500:
            raise ProviderUnavailable(
                f"Google's token endpoint answered {response.status_code}",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        raise ProviderMisconfigured(
            f"Google refused the token grant for {self.account.client_email} "
            f"({response.status_code} {_oauth_error(response)})"
        )


def _granted(response: httpx.Response) -> tuple[str, float]:
    try:
        body: Any = response.json()
        token, lifetime = body["access_token"], float(body["expires_in"])
    except (ValueError, KeyError, TypeError):
        raise ProviderUnavailable("Google's token endpoint answered 200 without a token") from None
    if not _text(token) or lifetime <= 0:
        raise ProviderUnavailable("Google's token endpoint answered 200 without a token")
    return str(token), lifetime


def _oauth_error(response: httpx.Response) -> str:
    """`error: error_description` of an OAuth2 error answer (RFC 6749 section 5.2)."""
    try:
        body: Any = response.json()
        error, description = body.get("error"), body.get("error_description")
    except (ValueError, AttributeError):
        return response.text[:200] or "no explanation"
    return ": ".join(str(part) for part in (error, description) if part) or "no explanation"
