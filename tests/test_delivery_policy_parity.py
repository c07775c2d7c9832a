"""One delivery policy: the deliver activity and the campaign page sender decide alike.

Both call herald/delivery/policy.py `decide`, but each gathers the facts its own way (the deliver
activity with per-message queries, the page sender with set-based SQL for a page). Generated
facts are written to a real database; a campaign message is then sent to the profile both ways
and the two outcomes must agree. The one intended difference: inside quiet hours the deliver
activity holds a text until the window ends, a campaign wave skips it (`quiet_hours`).
"""

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.delivery import DeliveryActivities
from herald.core.config import Settings
from herald.core.db import session_scope
from models.campaigns import CampaignExit
from models.delivery_dto import DeliveryRequest
from tests.test_campaign_activities import (
    NOW,
    campaign,
    earlier_send,
    make_list,
    message,
    page_request,
    path,
    profiles,
)
from tests.test_campaign_activities import account as account  # noqa: F401 (fixture)
from tests.test_campaign_activities import acts as acts  # noqa: F401 (fixture)

# At NOW (05:00 UTC) with quiet hours 21:00-08:00: 14:00 in Tokyo (awake), 07:00 in Amsterdam
# (quiet, in summer time).
AWAKE, ASLEEP = "Asia/Tokyo", "Europe/Amsterdam"


def mostly(usual, *rare):
    """Usually `usual`: the rules behind the first ones must be reached too."""
    return st.sampled_from([usual] * 4 + list(rare))


facts = st.fixed_dictionaries(
    {
        "channel": st.sampled_from(["email", "sms"]),
        "channel_enabled": mostly(True, False),
        "has_address": mostly(True, False),
        "consent": mostly("subscribed", "unsubscribed", None),
        "exited": mostly(False, True),
        "smart_sending": st.booleans(),
        # Hours since the profile's last send on the channel (none, within or past windows).
        "last_sent_hours_ago": st.sampled_from([None, 1, 10, 20, 30, 200]),
        "per_day_cap": st.sampled_from([None, 1, 2]),
        "timezone": st.sampled_from([AWAKE, ASLEEP]),
    }
)


def _world(db, account, f: dict):
    """The profile, its history and a one-message campaign to it, as `f` describes."""
    channel = f["channel"]
    account(
        enabled_channels=[c for c in ("email", "sms") if c != channel or f["channel_enabled"]],
        smart_sending_hours={"email": 16, "sms": 24},
        frequency_caps={channel: {"per_day": f["per_day_cap"]}} if f["per_day_cap"] else {},
    )
    address = {}
    if not f["has_address"]:
        address = {"email": None} if channel == "email" else {}
    [pid] = profiles(
        db,
        1,
        prefix="pp",
        consent=(),
        phone=channel == "sms" and f["has_address"],
        timezone=f["timezone"],
        **address,
    )
    with session_scope(db.engine) as session:
        if f["consent"]:
            db_consent(session, pid, channel, f["consent"])
        if f["last_sent_hours_ago"] is not None:
            at = NOW - timedelta(hours=f["last_sent_hours_ago"])
            session.add(earlier_send(pid, channel, at))
    msg = message(channel, smart_sending=f["smart_sending"])
    p = path(make_list(db, pid), messages=[msg])
    cs = campaign(db, [p], status="sending")
    db.execute("UPDATE campaign SET started_at = :t WHERE id = :c", t=NOW, c=cs.campaign_id)
    if f["exited"]:
        with session_scope(db.engine) as session:
            session.add(CampaignExit(campaign_id=cs.campaign_id, profile_id=pid, converted_at=NOW))
    return pid, msg, p, cs


def db_consent(session, pid: str, channel: str, status: str) -> None:
    from models.profile import Consent

    session.add(Consent(profile_id=pid, channel=channel, status=status, source="test"))


def _outcome_of_page(db, acts, cs, p, pid) -> tuple[str, str | None]:
    acts.send_page(page_request(cs, p))
    [(status, reason)] = db.rows(
        "SELECT status, reason FROM delivery WHERE profile_id = :p AND run_id = :c",
        p=pid,
        c=cs.campaign_id,
    )
    return status, reason


def _outcome_of_deliver(db, cs, msg, pid) -> tuple[str, str | None]:
    request = DeliveryRequest(
        idempotency_key=f"parity:{cs.campaign_id}:{pid}",
        run_kind="campaign",
        run_id=cs.campaign_id,
        step_id=msg.id,
        profile_id=pid,
        channel=msg.channel,
        content=msg.content,
        smart_sending=msg.smart_sending,
    )
    result = DeliveryActivities(db.engine, Settings(), clock=lambda: NOW).deliver(request)
    return result.status, result.reason


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(f=facts)
def test_the_deliver_activity_and_the_page_sender_decide_alike(db, account, acts, f):  # noqa: F811
    pid, msg, p, cs = _world(db, account, f)
    page = _outcome_of_page(db, acts, cs, p, pid)
    # The page's own row and outbox copy are removed, so the second path sees the same history.
    db.execute("DELETE FROM message_outbox WHERE profile_id = :p", p=pid)
    db.execute(
        "DELETE FROM delivery WHERE profile_id = :p AND run_id = :c", p=pid, c=cs.campaign_id
    )
    single = _outcome_of_deliver(db, cs, msg, pid)

    if page == ("skipped", "quiet_hours"):
        assert single == ("held", None), f
    else:
        assert single == page, f
