"""Webhook and internal-alert steps: one outbound POST (or staff email) per activity attempt.

Outcomes, and what the calling workflow does with them:

- 2xx: `WebhookResult(status="delivered")`.
- 429, 5xx, a network error or a timeout: raises a retryable `ApplicationError` of type
  "WebhookTransient" (with `next_retry_delay` from a `Retry-After: <seconds>` header, capped
  at one hour), so Temporal retries with backoff. Call the activity with (workflows/policies.py)
  `retry_policy=WEBHOOK_RETRY` (10 s, doubling, at most 1 h apart, unlimited attempts),
  `schedule_to_close_timeout=WEBHOOK_SCHEDULE_TO_CLOSE` (24 h: the step gives up after a day)
  and `start_to_close_timeout=WEBHOOK_START_TO_CLOSE` (one attempt; without it an attempt
  lost with its worker would only be retried after 24 h). When the 24 h run out the workflow
  gets an `ActivityError` caused by a timeout, and records the step as skipped.
- 3xx (redirects are never followed) and any other 4xx: `status="skipped"`,
  `reason="http_<status>"`. Not retried: the receiver said no.
- a URL that fails `herald.delivery.url_safety.check_url`: `status="skipped"`,
  `reason="unsafe_url"`, and what was wrong in `detail`. Not retried.

The request connects to the address that passed the URL check (see herald/delivery/url_safety.py),
at most `webhook_max_response_bytes` of the response are read, and only its size and a short
snippet are logged. The receiver can deduplicate retries by the `Idempotency-Key` header, which
the workflow derives from its ID and the step ID.
"""

import asyncio
import json
import logging
import ssl
from datetime import timedelta

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from herald.core.config import Settings
from herald.delivery.contract import WebhookActivitiesContract
from herald.delivery.provider_settings import smtp_config
from herald.delivery.providers.base import (
    OutgoingMessage,
    ProviderMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
)
from herald.delivery.providers.http_replies import read_at_most, retry_after_seconds
from herald.delivery.providers.smtp import SmtpProvider
from herald.delivery.url_safety import UnsafeUrl, check_url
from herald.flows.steps import StepReason
from models.enums import Channel
from models.webhook_dto import InternalAlertCall, WebhookCall, WebhookResult

log = structlog.get_logger("herald.webhooks")

TRANSIENT_ERROR_TYPE = "WebhookTransient"
_MAX_RETRY_AFTER = timedelta(hours=1)
_SNIPPET_CHARS = 200
# The caller's headers may not override how the request is framed or where it goes.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "idempotency-key"}
)


class WebhookActivities(WebhookActivitiesContract):
    """`verify` is the TLS verification setting for httpx (tests pass a context with their CA)."""

    def __init__(self, settings: Settings, verify: ssl.SSLContext | bool = True):
        self.settings = settings
        self.verify = verify

    @activity.defn(name="call_webhook")
    async def call_webhook(self, call: WebhookCall) -> WebhookResult:
        return await self._post(call)

    @activity.defn(name="send_internal_alert")
    async def send_internal_alert(self, alert: InternalAlertCall) -> WebhookResult:
        """Notifies staff. via="webhook" POSTs a JSON summary with call_webhook's semantics.

        via="email" sends through SMTP when `email_provider` is "smtp". With the embedded
        default provider ("outbox") there is no mail server to send to: the alert is logged at
        WARNING level (fields to, subject) and the result is delivered with reason "logged".
        """
        if alert.via == "webhook":
            text = f"{alert.subject}\n\n{alert.body}" if alert.subject else alert.body
            payload = {
                "text": text,  # what Slack-style incoming webhooks display
                "subject": alert.subject,
                "body": alert.body,
                "workflow_id": alert.workflow_id,
                "step_id": alert.step_id,
            }
            return await self._post(
                WebhookCall(
                    url=alert.to,
                    body=json.dumps(payload),
                    idempotency_key=alert.idempotency_key,
                    workflow_id=alert.workflow_id,
                    step_id=alert.step_id,
                )
            )
        if self.settings.email_provider != "smtp":
            log.warning(
                "internal_alert",
                to=alert.to,
                subject=alert.subject,
                workflow_id=alert.workflow_id,
                step_id=alert.step_id,
            )
            return WebhookResult(status="delivered", reason="logged")
        return await self._send_alert_email(alert)

    async def _post(self, call: WebhookCall) -> WebhookResult:
        fields = {"workflow_id": call.workflow_id, "step_id": call.step_id}
        try:
            target = await asyncio.to_thread(check_url, call.url, self.settings.webhook_allow_hosts)
        except UnsafeUrl as exc:
            log.warning("webhook_refused", reason=exc.reason, **fields)
            return WebhookResult(status="skipped", reason=StepReason.unsafe_url, detail=exc.reason)
        fields["host"] = target.host

        headers = httpx.Headers(
            {
                "Content-Type": "application/json",
                "User-Agent": "Herald-Webhook/1",
                # Compressed bodies could expand far past the size limit while being decoded.
                "Accept-Encoding": "identity",
            }
        )
        for name, value in call.headers.items():
            if name.lower() not in _RESERVED_HEADERS:
                headers[name] = value  # case-insensitive: replaces a default
        headers["Idempotency-Key"] = call.idempotency_key
        headers["Host"] = target.host_header

        timeout = self.settings.webhook_timeout_seconds
        limit = self.settings.webhook_max_response_bytes
        try:
            async with (
                asyncio.timeout(timeout),
                httpx.AsyncClient(
                    timeout=timeout,
                    follow_redirects=False,
                    trust_env=False,  # a proxy would resolve the host again
                    verify=self.verify,
                ) as client,
                client.stream(
                    "POST",
                    target.connect_url,
                    content=call.body.encode(),
                    headers=headers,
                    extensions=target.extensions,
                ) as response,
            ):
                body, truncated = await read_at_most(response, limit)
        except (httpx.RequestError, TimeoutError) as exc:
            error = type(exc).__name__
            log.warning("webhook_failed", error=error, **fields)
            raise ApplicationError(
                f"webhook request failed: {error}", type=TRANSIENT_ERROR_TYPE
            ) from exc

        status = response.status_code
        log.log(
            logging.INFO if 200 <= status < 300 else logging.WARNING,
            "webhook_response",
            http_status=status,
            size=len(body),
            truncated=truncated,
            snippet=body[: _SNIPPET_CHARS * 4].decode("utf-8", "replace")[:_SNIPPET_CHARS],
            attempt=activity.info().attempt,
            **fields,
        )
        if 200 <= status < 300:
            return WebhookResult(status="delivered", http_status=status, response_bytes=len(body))
        if status == 429 or status >= 500:
            raise ApplicationError(
                f"webhook answered HTTP {status}",
                type=TRANSIENT_ERROR_TYPE,
                next_retry_delay=_retry_after(response.headers.get("retry-after")),
            )
        return WebhookResult(
            status="skipped",
            http_status=status,
            reason=f"http_{status}",
            response_bytes=len(body),
        )

    async def _send_alert_email(self, alert: InternalAlertCall) -> WebhookResult:
        # The SMTP server of the HERALD_SMTP_* settings, with message delivery's provider and
        # error classification (staff alerts do not follow the account's email provider).
        smtp = SmtpProvider(smtp_config(self.settings))
        message = OutgoingMessage(
            delivery_id=alert.idempotency_key,  # an alert has no delivery row
            idempotency_key=alert.idempotency_key,
            profile_id="",
            channel=Channel.email,
            to_address=alert.to,
            subject=alert.subject or "Herald alert",
            body=alert.body,
        )
        fields = {"workflow_id": alert.workflow_id, "step_id": alert.step_id}
        try:
            await smtp.send(message)
        except ProviderRejected as exc:
            log.warning("internal_alert_rejected", error=str(exc), **fields)
            return WebhookResult(status="skipped", reason=StepReason.smtp_rejected, detail=str(exc))
        except (ProviderUnavailable, ProviderMisconfigured) as exc:
            log.warning("internal_alert_failed", error=str(exc), **fields)
            raise ApplicationError(f"SMTP failed: {exc}", type=TRANSIENT_ERROR_TYPE) from exc
        finally:
            await smtp.aclose()
        log.info("internal_alert_sent", **fields)
        return WebhookResult(status="delivered")


def _retry_after(value: str | None) -> timedelta | None:
    """Honours `Retry-After` (seconds or an HTTP date), capped; none or 0: the retry policy."""
    seconds = retry_after_seconds(value)
    if not seconds:
        return None
    return min(timedelta(seconds=seconds), _MAX_RETRY_AFTER)
