"""The activities that send: one message (flows, test sends), one webhook or staff alert."""

from temporalio import activity

from models.delivery_dto import DeliveryRequest, DeliveryResult
from models.webhook_dto import InternalAlertCall, WebhookCall, WebhookResult

# Workflows call these by method reference (names and result types come from here); the
# implementing class in activities/ subclasses it and decorates its methods with the same names.


class DeliveryActivitiesContract:
    """activities/delivery.py"""

    @activity.defn(name="deliver")
    def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        raise NotImplementedError


class WebhookActivitiesContract:
    """activities/webhooks.py"""

    @activity.defn(name="call_webhook")
    async def call_webhook(self, call: WebhookCall) -> WebhookResult:
        raise NotImplementedError

    @activity.defn(name="send_internal_alert")
    async def send_internal_alert(self, alert: InternalAlertCall) -> WebhookResult:
        raise NotImplementedError
