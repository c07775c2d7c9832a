"""The embedded outbox: the provider every channel uses until the account configures another.

Unlike the external providers (herald/delivery/providers/), the outbox "sends" by writing a
`message_outbox` row inside the very transaction that records the delivery, so the demo and most
tests need no network partner and a message is there exactly when its delivery row is.
"""

from sqlmodel import Session

from herald.delivery.providers.base import OutgoingMessage
from models.delivery import OutboxMessage


class OutboxProvider:
    """The embedded provider: the message is a `message_outbox` row, listed by GET /v1/outbox."""

    name = "outbox"

    def send(self, session: Session, message: OutgoingMessage) -> str:
        row = OutboxMessage(
            delivery_id=message.delivery_id,
            profile_id=message.profile_id,
            channel=message.channel,
            to_address=message.to_address,
            subject=message.subject,
            body=message.body,
            tracking=message.tracking,
        )
        session.add(row)
        session.flush()
        return str(row.id)
