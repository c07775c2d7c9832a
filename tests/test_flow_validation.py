"""Flow definition validation: every problem at once, each naming the step and the reason."""

from hypothesis import given, settings
from hypothesis import strategies as st

from herald.flows.graph import MAX_DELAY_DAYS, FlowDefinition, RandomSplit
from herald.flows.validation import SEGMENTS_UNAVAILABLE, validate_definition

METRICS = {"Placed Order", "Started Checkout", "Opened Email"}
LISTS = {"lst_vip"}

EMAIL = {"channel": "email", "content": {"subject": "Hi {{ profile.first_name }}", "body": "x"}}


def message(step_id: str, next_id: str | None = None, **content) -> dict:
    body = {**EMAIL["content"], **content}
    return {"id": step_id, "type": "message", "channel": "email", "content": body, "next": next_id}


def flow(*steps: dict, **fields) -> FlowDefinition:
    return FlowDefinition.model_validate(
        {"trigger": {"type": "metric", "metric": "Placed Order"}, **fields, "steps": list(steps)}
    )


def problems(defn: FlowDefinition, segments: set[str] | None = None) -> dict[str, str]:
    found = validate_definition(defn, METRICS, LISTS, segments)
    as_dict = {p["field"]: p["reason"] for p in found}
    assert len(as_dict) == len(found), f"one problem per field expected: {found}"
    return as_dict


def post_purchase() -> FlowDefinition:
    """Seed 004: first-time vs returning buyer, VIP trigger split, thank-you, review, cross-sell."""
    return flow(
        {
            "id": "first_time",
            "type": "conditional_split",
            "conditions": [
                {"type": "metric_count", "metric": "Placed Order", "operator": "equals", "count": 1}
            ],
            "yes": "vip",
            "no": "thanks_again",
        },
        {
            "id": "vip",
            "type": "trigger_split",
            "conditions": [{"property": "$value", "operator": "gt", "value": 100}],
            "yes": "thanks_vip",
            "no": "thanks",
        },
        message("thanks_vip", "wait_review"),
        message("thanks", "wait_review"),
        message("thanks_again", "wait_review"),
        {"id": "wait_review", "type": "time_delay", "amount": 7, "unit": "days", "next": "review"},
        message("review", "wait_cross"),
        {"id": "wait_cross", "type": "time_delay", "amount": 7, "unit": "days", "next": "cross"},
        message("cross"),
        exit_metric="Started Checkout",
        filters=[{"type": "in_list", "list_id": "lst_vip", "member": False}],
        reentry={"mode": "cooldown", "cooldown_days": 30},
    )


def test_a_well_formed_post_purchase_flow_has_no_problems():
    assert problems(post_purchase()) == {}


def test_every_problem_is_reported_at_once():
    defn = flow(
        message("a", "b", subject=""),
        {"id": "b", "type": "time_delay", "amount": 400, "unit": "days", "next": "a"},
        {"id": "b", "type": "wait_for_event", "metric": "Nope", "timeout_amount": 1},
        {"id": "lonely", "type": "exit"},
        exit_metric="Never Seen",
    )
    assert problems(defn) == {
        "exit_metric": "unknown metric 'Never Seen' (a metric exists once an event names it)",
        "steps[0] (a).content.subject": "an email needs a subject",
        "steps[1] (b).amount": "400 days is longer than the maximum delay of 365 days",
        "steps[2] (b).id": "duplicate step id (also steps[1])",
        "steps[2] (b).metric": "unknown metric 'Nope' (a metric exists once an event names it)",
        "steps[3] (lonely)": "unreachable: no path from the entry step 'a' leads here",
        "steps[1] (b).next": "leads back to 'a', a cycle (a -> b -> a); steps must not loop",
    }


# ---- the graph ---------------------------------------------------------------------------------


def test_a_branch_to_a_missing_step_names_the_branch():
    defn = flow(
        {
            "id": "split",
            "type": "conditional_split",
            "conditions": [{"type": "property", "property": "plan", "operator": "is_set"}],
            "yes": "gold",
            "no": None,
        },
        {
            "id": "ab",
            "type": "random_split",
            "branches": [{"weight": 1, "next": "split"}, {"weight": 1, "next": "b_variant"}],
        },
        entry="ab",
    )
    assert problems(defn) == {
        "steps[0] (split).yes": "no step has id 'gold'",
        "steps[1] (ab).branches[1].next": "no step has id 'b_variant'",
    }


def test_an_unknown_entry_is_reported_without_calling_every_step_unreachable():
    assert problems(flow(message("a"), entry="start")) == {"entry": "no step has id 'start'"}


def test_steps_after_a_dead_end_are_unreachable():
    defn = flow(message("a"), message("b", "c"), message("c"))
    assert problems(defn) == {
        "steps[1] (b)": "unreachable: no path from the entry step 'a' leads here",
        "steps[2] (c)": "unreachable: no path from the entry step 'a' leads here",
    }


def test_an_explicit_entry_makes_earlier_steps_unreachable():
    defn = flow(message("a", "b"), message("b"), entry="b")
    assert problems(defn) == {
        "steps[0] (a)": "unreachable: no path from the entry step 'b' leads here",
    }


def test_a_step_pointing_at_itself_is_a_cycle():
    defn = flow({"id": "wait", "type": "time_delay", "amount": 1, "next": "wait"})
    assert problems(defn) == {
        "steps[0] (wait).next": "leads back to 'wait', a cycle (wait -> wait); steps must not loop"
    }


def test_a_cycle_through_a_wait_for_event_names_the_closing_edge():
    defn = flow(
        message("a", "wait"),
        {
            "id": "wait",
            "type": "wait_for_event",
            "metric": "Opened Email",
            "timeout_amount": 2,
            "on_event": None,
            "on_timeout": "a",
        },
    )
    assert problems(defn) == {
        "steps[1] (wait).on_timeout": (
            "leads back to 'a', a cycle (a -> wait -> a); steps must not loop"
        )
    }


def test_two_branches_joining_again_is_not_a_cycle():
    defn = flow(
        {
            "id": "split",
            "type": "trigger_split",
            "conditions": [{"property": "$value", "operator": "gt", "value": 100}],
            "yes": "vip",
            "no": "plain",
        },
        message("vip", "after"),
        message("plain", "after"),
        message("after"),
    )
    assert problems(defn) == {}


def _linear_graph(edges: list[int | None]) -> FlowDefinition:
    """Step i continues to step edges[i] (None: the end)."""
    steps = [
        {
            "id": f"s{i}",
            "type": "time_delay",
            "amount": 1,
            "next": None if target is None else f"s{target}",
        }
        for i, target in enumerate(edges)
    ]
    return flow(*steps)


def _expected(edges: list[int | None]) -> tuple[set[int], bool]:
    """Reference answers: the steps reachable from step 0, and whether any step lies on a cycle."""
    reached, at = [], 0
    while at is not None and at not in reached:
        reached.append(at)
        at = edges[at]
    has_cycle = False
    for start in range(len(edges)):
        seen, at = set(), start
        while at is not None and at not in seen:
            seen.add(at)
            at = edges[at]
        has_cycle |= at is not None
    return set(reached), has_cycle


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.lists(st.none() | st.integers(0, n - 1), min_size=n, max_size=n)
    )
)
def test_reachability_and_cycles_match_a_reference(edges):
    found = problems(_linear_graph(edges))
    reached, has_cycle = _expected(edges)
    unreachable = {f"steps[{i}] (s{i})" for i in range(len(edges)) if i not in reached}
    assert {f for f, r in found.items() if r.startswith("unreachable")} == unreachable
    cycles = [f for f, r in found.items() if "cycle" in r]
    assert bool(cycles) == has_cycle
    assert all(f.endswith(".next") for f in cycles)


# ---- references --------------------------------------------------------------------------------


def test_unknown_metrics_are_named_wherever_they_are_used():
    defn = FlowDefinition.model_validate(
        {
            "trigger": {"type": "metric", "metric": "Signed Up"},
            "filters": [{"type": "metric_count", "metric": "Churned", "count": 1}],
            "exit_metric": "Converted",
            "steps": [
                {
                    "id": "wait",
                    "type": "wait_for_event",
                    "metric": "Clicked Banner",
                    "timeout_amount": 3,
                    "on_event": "split",
                },
                {
                    "id": "split",
                    "type": "conditional_split",
                    "conditions": [
                        {"type": "property", "property": "plan", "operator": "is_set"},
                        {"type": "metric_count", "metric": "Viewed Pricing", "count": 2},
                    ],
                },
            ],
        }
    )
    unknown = "unknown metric {!r} (a metric exists once an event names it)"
    assert problems(defn) == {
        "trigger.metric": unknown.format("Signed Up"),
        "filters[0].metric": unknown.format("Churned"),
        "exit_metric": unknown.format("Converted"),
        "steps[0] (wait).metric": unknown.format("Clicked Banner"),
        "steps[1] (split).conditions[1].metric": unknown.format("Viewed Pricing"),
    }


def test_unknown_lists_are_named_wherever_they_are_used():
    defn = FlowDefinition.model_validate(
        {
            "trigger": {"type": "list", "list_id": "lst_gone"},
            "filters": [{"type": "in_list", "list_id": "lst_vip"}],
            "steps": [
                {"id": "add", "type": "add_to_list", "list_id": "lst_a", "next": "remove"},
                {"id": "remove", "type": "remove_from_list", "list_id": "lst_vip", "next": "if"},
                {
                    "id": "if",
                    "type": "conditional_split",
                    "conditions": [{"type": "in_list", "list_id": "lst_b", "member": False}],
                },
            ],
        }
    )
    assert problems(defn) == {
        "trigger.list_id": "no list has id 'lst_gone'",
        "steps[0] (add).list_id": "no list has id 'lst_a'",
        "steps[2] (if).conditions[0].list_id": "no list has id 'lst_b'",
    }


def _segment_flow() -> FlowDefinition:
    return FlowDefinition.model_validate(
        {
            "trigger": {"type": "segment", "segment_id": "seg_at_risk"},
            "filters": [{"type": "in_segment", "segment_id": "seg_vip", "member": False}],
            "steps": [message("win_back")],
        }
    )


def test_segments_are_refused_while_segments_do_not_exist():
    assert problems(_segment_flow()) == {
        "trigger.segment_id": SEGMENTS_UNAVAILABLE,
        "filters[0].segment_id": SEGMENTS_UNAVAILABLE,
    }
    assert "not available yet" in SEGMENTS_UNAVAILABLE


def test_segments_are_checked_against_known_ones_once_they_exist():
    assert problems(_segment_flow(), segments={"seg_at_risk"}) == {
        "filters[0].segment_id": "no segment has id 'seg_vip'"
    }
    assert problems(_segment_flow(), segments={"seg_at_risk", "seg_vip"}) == {}


# ---- steps -------------------------------------------------------------------------------------


def test_templates_that_do_not_parse_are_named_per_field():
    defn = flow(
        message("email", "hook", subject="Hi {{ profile.first_name", body="{% if %}"),
        {
            "id": "hook",
            "type": "webhook",
            "url": "https://example.com/h",
            "body": "{{ x | nope }}",
            "next": "alert",
        },
        {
            "id": "alert",
            "type": "internal_alert",
            "via": "email",
            "to": "team@example.com",
            "subject": "{% for %}",
            "body": "{% endif %}",
        },
    )
    found = problems(defn)
    assert sorted(found) == [
        "steps[0] (email).content.body",
        "steps[0] (email).content.subject",
        "steps[1] (hook).body",
        "steps[2] (alert).body",
        "steps[2] (alert).subject",
    ]
    assert all(reason.startswith("template does not parse: ") for reason in found.values())
    assert "nope" in found["steps[1] (hook).body"]


def test_valid_liquid_with_filters_and_tags_passes():
    body = "{% if profile.first_name %}Hi {{ profile.first_name | capitalize }}{% endif %}"
    assert problems(flow(message("a", body=body))) == {}


def test_only_email_messages_need_a_subject():
    defn = flow(
        message("blank", "sms", subject="   "),
        {"id": "sms", "type": "message", "channel": "sms", "content": {"body": "Hi"}},
    )
    assert problems(defn) == {"steps[0] (blank).content.subject": "an email needs a subject"}


def test_delays_out_of_range():
    days = "at_time and weekdays need unit 'days' (N days, then at a time of day)"
    defn = flow(
        {"id": "max", "type": "time_delay", "amount": MAX_DELAY_DAYS, "next": "hours"},
        {"id": "hours", "type": "time_delay", "amount": 24 * 366, "unit": "hours", "next": "at"},
        {
            "id": "at",
            "type": "time_delay",
            "amount": 90,
            "unit": "minutes",
            "at_time": "09:00",
            "next": "wd",
        },
        {
            "id": "wd",
            "type": "time_delay",
            "amount": 2,
            "unit": "hours",
            "weekdays": [0],
            "next": "wait",
        },
        {
            "id": "wait",
            "type": "wait_for_event",
            "metric": "Placed Order",
            "timeout_amount": MAX_DELAY_DAYS + 1,
        },
    )
    assert problems(defn) == {
        "steps[1] (hours).amount": "8784 hours is longer than the maximum delay of 365 days",
        "steps[2] (at).unit": days,
        "steps[3] (wd).unit": days,
        "steps[4] (wait).timeout_amount": "366 days is longer than the maximum wait of 365 days",
    }


def test_webhook_and_alert_urls_must_be_http_or_https():
    defn = flow(
        {"id": "ftp", "type": "webhook", "url": "ftp://example.com/x", "next": "nohost"},
        {"id": "nohost", "type": "webhook", "url": "https:///path", "next": "alert"},
        {
            "id": "alert",
            "type": "internal_alert",
            "via": "webhook",
            "to": "javascript:alert(1)",
            "body": "x",
            "next": "mail",
        },
        {
            "id": "mail",
            "type": "internal_alert",
            "via": "email",
            "to": "not-an-address",
            "body": "x",
            "next": "ok",
        },
        {"id": "ok", "type": "webhook", "url": "http://localhost:8080/hook"},
    )
    found = problems(defn)
    assert found["steps[0] (ftp).url"] == "must be an http:// or https:// URL"
    assert found["steps[1] (nohost).url"] == "the URL has no host"
    assert found["steps[2] (alert).to"] == "must be an http:// or https:// URL"
    assert found["steps[3] (mail).to"].startswith("not a valid email address")
    assert len(found) == 4


def test_a_trigger_split_needs_a_metric_trigger():
    split = {
        "id": "vip",
        "type": "trigger_split",
        "conditions": [{"property": "$value", "operator": "gt", "value": 100}],
    }
    defn = FlowDefinition.model_validate(
        {"trigger": {"type": "date_property", "property": "birthday"}, "steps": [split]}
    )
    assert problems(defn) == {
        "steps[0] (vip)": (
            "a trigger split tests the trigger event's properties, so it needs a metric trigger "
            "(this flow's trigger is 'date_property')"
        )
    }


def test_random_split_weights_and_branches():
    defn = flow(
        {
            "id": "ab",
            "type": "random_split",
            "branches": [{"weight": 1, "next": "a"}, {"weight": 3, "next": "a"}],
        },
        message("a"),
    )
    assert problems(defn) == {
        "steps[0] (ab).branches": "every branch leads to 'a', so the split has no effect"
    }
    # A definition built without validation (model_construct) can carry a zero weight.
    split = defn.steps[0]
    assert isinstance(split, RandomSplit)
    split.branches[0].weight = 0
    split.branches[1].next = None
    assert problems(defn) == {"steps[0] (ab).branches[0].weight": "must be a positive whole number"}


def test_reentry_cooldown_needs_days_and_days_need_cooldown():
    assert problems(flow(message("a"), reentry={"mode": "cooldown"})) == {
        "reentry.cooldown_days": "required when mode is 'cooldown'"
    }
    assert problems(flow(message("a"), reentry={"mode": "once", "cooldown_days": 3})) == {
        "reentry.cooldown_days": "only applies to mode 'cooldown', not 'once'"
    }
