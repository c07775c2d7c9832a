"""Template limits hold against filter chains: every amplifier fails as a template error, early.

Each template here built tens of megabytes (the production one: 1 GB) before the output limit
saw it. Now the size of every value is checked before it is built and a render has a total work
budget, so each fails as a `TemplateError` (reported by review, a permanent send failure) while
memory stays small. The memory bound is a size (tracemalloc peak), not a time.
"""

import tracemalloc
from datetime import UTC, datetime

import pytest

from herald.campaigns.review import MessageFacts, PathFacts, ReviewFacts, review_campaign
from herald.core.activity_errors import permanent_reason
from herald.delivery.templates import TemplateError, render

PEAK_BYTES = 16 * 1024 * 1024  # a render over a limit stays far below what it would build

# `s` doubled by assign (each step passes the namespace limit): 16 * 2**n characters.
SEED = "{% assign s = 'xxxxxxxxxxxxxxxx' %}"


def doubled(times: int) -> str:
    return SEED + "{% assign s = s | append: s %}" * times


AMPLIFIERS = {
    # The production template: eleven doublings to 32 KB, then each "x" replaced by all of it.
    "replace": doubled(11) + "{{ s | replace: 'x', s }}",
    "replace_first": doubled(12) + "{{ s" + " | replace_first: 'x', s" * 300 + " }}",
    "append": doubled(12) + "{{ s" + " | append: s" * 300 + " }}",
    "prepend": doubled(12) + "{{ s" + " | prepend: s" * 300 + " }}",
    "join": doubled(9) + "{% assign chars = s | split: '' %}{{ chars | join: s }}",
    "join_over_a_range": "{{ (1..2000000) | join: ',' }}",
    "reverse_of_a_range": "{{ (1..2000000) | reverse | size }}",
    "split_into_many_items": doubled(12) + "{{ s | append: s | split: '' | size }}",
    # Each item is all of `s`: a few doublings make an array that prints as megabytes.
    "concat": doubled(10)
    + "{% assign a = s | append: ',' | append: s | split: ',' %}"
    + "{% assign a = a | concat: a %}" * 10
    + "{{ a }}",
    # Loops that repeat a filter or a capture: each step is small, the render's total is not.
    "times_loop_of_filters": doubled(11)
    + "{% for i in (1..10000) %}{% assign t = s | replace: 'x', 'yy' %}{% endfor %}",
    "times_loop_of_loops": "{% for i in (1..10000) %}{% endfor %}" * 20,
    "nested_capture": doubled(10)
    + "{% for i in (1..100) %}{% for j in (1..100) %}{% capture outer %}"
    + "{% capture inner %}{{ s }}{% endcapture %}{{ inner }}{{ inner }}"
    + "{% endcapture %}{% endfor %}{% endfor %}",
    "nested_capture_growth": doubled(8)
    + "{% capture a %}{% capture b %}{% capture c %}{{ s }}{{ s }}{{ s }}{{ s }}{% endcapture %}"
    + "{{ c }}{{ c }}{{ c }}{{ c }}{% endcapture %}{{ b }}{{ b }}{{ b }}{{ b }}{% endcapture %}"
    + "{{ a | append: a | append: a | append: a }}",
}


def render_measured(source: str) -> tuple[TemplateError, int]:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError) as raised:
            render(source, {})
        return raised.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_an_amplifying_template_is_a_template_error_within_bounded_memory(name):
    error, peak = render_measured(AMPLIFIERS[name])
    print(f"{name}: {error} (peak {peak / 1e6:.1f} MB)")
    assert "limit" in str(error)
    assert peak < PEAK_BYTES, f"{name} peaked at {peak / 1e6:.1f} MB"


def test_the_limit_error_names_the_filter_and_where_it_is():
    error, _ = render_measured(AMPLIFIERS["replace"])
    assert "replace" in str(error)
    assert "line 1" in str(error)


def test_a_number_grown_by_times_is_a_template_error():
    # 11 digits squared 12 times has ~45,000 digits: Python refused to print it (a ValueError
    # the worker retried for ever) before it was a template error.
    source = "{% assign n = 99999999999 %}" + "{% assign n = n | times: n %}" * 12 + "{{ n }}"
    error, peak = render_measured(source)
    assert "limit" in str(error) and peak < PEAK_BYTES


def test_values_below_the_limits_still_render():
    source = doubled(12) + "{{ s | append: s | replace: 'x', 'y' | size }}"
    assert render(source, {}) == str(16 * 2**13)
    assert render("{{ (1..5) | join: '-' }}|{{ 'a,b' | split: ',' | join: '+' }}", {}) == (
        "1-2-3-4-5|a+b"
    )
    loop = "{% for i in (1..100) %}{% for j in (1..100) %}{{ i | times: j | modulo: 2 }}"
    assert len(render(loop + "{% endfor %}{% endfor %}", {})) == 10_000


def test_a_limit_error_is_permanent_and_reported_by_campaign_review():
    error, _ = render_measured(AMPLIFIERS["replace"])
    assert permanent_reason(error).startswith("TemplateError: ")
    message = MessageFacts(
        id="m1",
        channel="email",
        subject="Hi",
        body=AMPLIFIERS["replace"] + " unsubscribe",
        sender="shop@example.com",
        send_at_local="2026-06-02T09:00",
    )
    review = review_campaign(
        ReviewFacts(
            timezone="UTC",
            now=datetime(2026, 6, 1, tzinfo=UTC),
            enabled_channels=frozenset({"email"}),
            default_email_sender="herald@localhost",
            paths=(PathFacts(id="p1", name="All", audience=1, messages=(message,)),),
        )
    )
    [problem] = review.messages[0].errors
    assert problem.code == "template_error" and "limit" in problem.message
