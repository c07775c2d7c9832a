"""Campaign review rules (pure): which problems block scheduling and which only warn."""

from dataclasses import replace
from datetime import UTC, datetime

from herald.campaigns.review import (
    MessageFacts,
    PathFacts,
    ReviewFacts,
    review_campaign,
    send_time_passed,
)
from herald.delivery.sms_segments import sms_segments

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALL_CHANNELS = frozenset({"email", "sms", "whatsapp", "push"})


def email(**overrides) -> MessageFacts:
    return replace(
        MessageFacts(
            id="m1",
            channel="email",
            subject="Early access",
            body="Hi {{ profile.first_name | default: 'there' }}! <a href='#'>Unsubscribe</a>",
            sender="shop@example.com",
            send_at_local="2026-06-02T09:00",
        ),
        **overrides,
    )


def sms(body: str, **overrides) -> MessageFacts:
    return MessageFacts(
        id="s1", channel="sms", body=body, send_at_local="2026-06-02T13:00", **overrides
    )


def facts(*paths: PathFacts, **overrides) -> ReviewFacts:
    base = ReviewFacts(
        timezone="Europe/Amsterdam",
        now=NOW,
        enabled_channels=ALL_CHANNELS,
        default_email_sender="herald@localhost",
        paths=paths,
    )
    return replace(base, **overrides)


def path(*messages: MessageFacts, **overrides) -> PathFacts:
    return replace(
        PathFacts(id="p1", name="Everyone", audience=100, messages=messages), **overrides
    )


def codes(problems) -> list[str]:
    return [p.code for p in problems]


def test_a_complete_campaign_is_ready_without_warnings():
    result = review_campaign(facts(path(email(), sms("Drop at 13:00. STOP to opt out"))))
    assert result.ready
    assert [(m.message_id, m.errors, m.warnings) for m in result.messages] == [
        ("m1", [], []),
        ("s1", [], []),
    ]
    assert (result.campaign.errors, result.campaign.warnings) == ([], [])


def test_no_paths_and_a_path_without_messages_block_scheduling():
    assert codes(review_campaign(facts()).campaign.errors) == ["no_paths"]
    result = review_campaign(facts(path(email()), path(id="p2", name="VIP")))
    assert not result.ready
    [problem] = result.campaign.errors
    assert (problem.code, problem.field) == ("path_without_messages", "paths[1]")
    assert "'VIP'" in problem.message


def test_every_message_error_is_reported_at_once():
    broken = email(
        subject="  ",
        body="Hi {{ profile.first_name",
        sender=None,
        send_at_local="2026-06-01T13:59",  # 11:59 UTC: a minute ago in Amsterdam
    )
    result = review_campaign(
        facts(
            path(broken, audience=0),
            enabled_channels=frozenset({"sms"}),
            default_email_sender="",
        )
    )
    assert not result.ready
    [review] = result.messages
    assert {p.code: p.field for p in review.errors} == {
        "channel_not_enabled": "channel",
        "no_subject": "content.subject",
        "no_sender": "content.sender",
        "send_time_past": "send_at",
        "empty_audience": "audience",
        "template_error": "content.body",
    }


def test_empty_body_is_an_error_and_a_sender_setting_covers_email_without_sender():
    result = review_campaign(facts(path(email(body="   ", sender=None))))
    assert codes(result.messages[0].errors) == ["no_body"]


def test_a_template_that_parses_but_fails_to_render_is_an_error():
    result = review_campaign(facts(path(email(body="{{ 10 | divided_by: 0 }} unsubscribe"))))
    [problem] = result.messages[0].errors
    assert (problem.code, problem.field) == ("template_error", "content.body")
    assert problem.message.startswith("does not render")


def test_unknown_filter_in_the_subject_is_an_error_on_the_subject():
    result = review_campaign(facts(path(email(subject="{{ 'x' | shout }}"))))
    [problem] = result.messages[0].errors
    assert (problem.field, problem.code) == ("content.subject", "template_error")
    assert "shout" in problem.message


def test_warnings_do_not_block():
    result = review_campaign(
        facts(
            path(
                email(body="Big drop tomorrow", utm=False),
                sms("x" * 161),
            )
        )
    )
    assert result.ready
    assert codes(result.messages[0].warnings) == ["no_unsubscribe_link", "utm_off"]
    assert codes(result.messages[1].warnings) == ["sms_multiple_segments"]
    assert "161 characters" in result.messages[1].warnings[0].message


def test_sms_length_counts_gsm_extension_characters_twice_and_unicode_at_70():
    def units(text: str) -> tuple[int, int]:
        counted = sms_segments(text)
        return counted.units, counted.segments

    assert units("a" * 160) == (160, 1)
    assert units("{" * 80) == (160, 1)
    assert units("€" + "a" * 159) == (161, 2)
    assert units("Sneakers 👟") == (11, 1)
    ok = review_campaign(facts(path(sms("{" * 80))))
    assert ok.messages[0].warnings == []
    assert ok.messages[0].sms_segments == 1
    unicode = review_campaign(facts(path(sms("Ł" * 71))))
    assert "70-character" in unicode.messages[0].warnings[0].message
    assert "billed as 2 messages" in unicode.messages[0].warnings[0].message
    assert unicode.messages[0].sms_segments == 2


def test_sms_length_is_measured_without_profile_data():
    long_name = "{{ profile.first_name }}" * 10  # renders to nothing
    result = review_campaign(facts(path(sms(long_name + "a" * 150))))
    assert result.messages[0].warnings == []


def test_overlapping_audiences_warn_on_the_later_path():
    result = review_campaign(
        facts(
            path(email(), id="vip", name="VIP", audience=10),
            path(email(id="m2"), id="all", name="Everyone", audience=100, in_earlier_paths=10),
            path(email(id="m3"), id="dup", name="VIP again", audience=10, in_earlier_paths=10),
        )
    )
    assert result.ready
    first, second = result.campaign.warnings
    assert (first.code, first.field) == ("audience_overlap", "paths[1]")
    assert "10 of the 100 profiles of path 'Everyone'" in first.message
    assert second.field == "paths[2]"
    assert "sends nothing" in second.message


def test_a_deleted_list_is_an_error_naming_the_path():
    result = review_campaign(facts(path(email(), missing_lists=["lst_gone"])))
    [problem] = result.campaign.errors
    assert (problem.code, problem.field) == ("unknown_list", "paths[0]")
    assert "'lst_gone'" in problem.message


def test_send_time_is_compared_in_the_campaign_timezone():
    # 12:00 UTC is 14:00 in Amsterdam and 08:00 in New York.
    assert send_time_passed("2026-06-01T13:00", "Europe/Amsterdam", NOW)
    assert not send_time_passed("2026-06-01T13:00", "America/New_York", NOW)
    assert not send_time_passed("2026-06-01T14:00", "Europe/Amsterdam", NOW)
