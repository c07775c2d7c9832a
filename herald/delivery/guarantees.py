"""What a retry does with a delivery a dead worker left `sending` (herald/delivery/send_path.py).

Defaults: a transactional message (a receipt, a password reset) is sent again, since a missing
one costs more than a duplicate; a marketing message is not, since a duplicate promotion costs
trust, and is marked `unknown` for the operator instead. Accounts override per channel and kind
(`PATCH /v1/account` `delivery_guarantees`). A resend keeps the Message-ID (email) and the
idempotency key, so receivers and providers that dedupe drop the copy.
"""

from collections.abc import Mapping

from models.enums import Guarantee

KINDS = ("marketing", "transactional")
DEFAULT_GUARANTEES: Mapping[str, Guarantee] = {
    "marketing": Guarantee.at_most_once,
    "transactional": Guarantee.at_least_once,
}


def guarantee_for(
    overrides: Mapping[str, Mapping[str, str]], channel: str, transactional: bool
) -> Guarantee:
    kind = "transactional" if transactional else "marketing"
    chosen = overrides.get(channel, {}).get(kind)
    return Guarantee(chosen) if chosen else DEFAULT_GUARANTEES[kind]
