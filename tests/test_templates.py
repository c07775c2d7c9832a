"""Liquid templates: profile, property and context variables, defaults, conditions, problems."""

import pytest

from herald.delivery.templates import TemplateError, render, template_problem, template_variables

PROFILE = {
    "id": "pr_1",
    "email": "ada@example.com",
    "phone": "+31612345678",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "timezone": "Europe/Amsterdam",
    "properties": {"rfm_group": "At Risk", "points": 120, "email": "not-the-address"},
}


def variables(**context) -> dict:
    return template_variables(PROFILE, context)


def test_profile_fields_and_properties_render():
    source = "{{ profile.first_name }} {{ profile.last_name }} <{{ profile.email }}>"
    source += " {{ profile.id }}"
    assert render(source, variables()) == "Ada Lovelace <ada@example.com> pr_1"
    assert render("{{ profile.properties.points }}/{{ profile.points }}", variables()) == "120/120"


def test_a_property_never_shadows_a_profile_field_but_fills_an_empty_one():
    assert render("{{ profile.email }}", variables()) == "ada@example.com"
    assert render("{{ profile.properties.email }}", variables()) == "not-the-address"
    traits = template_variables({"id": "pr_2", "properties": {"first_name": "Vera"}}, {})
    assert render("{{ profile.first_name }}", traits) == "Vera"


def test_context_variables_such_as_the_trigger_event_render():
    event = {"metric": "Started Checkout", "properties": {"items": ["Runner X", "Sock"]}}
    source = "{{ event.metric }}: {{ event.properties.items | join: ', ' }} ({{ flow.name }})"
    rendered = render(source, variables(event=event, flow={"name": "Abandoned cart"}))
    assert rendered == "Started Checkout: Runner X, Sock (Abandoned cart)"


def test_undefined_variables_render_empty_and_default_fills_them():
    assert render("Hi {{ profile.nickname }}!", variables()) == "Hi !"
    assert render("Hi {{ nothing.at.all }}!", variables()) == "Hi !"
    no_name = template_variables({**PROFILE, "first_name": None}, {})
    assert render('Hi {{ profile.first_name | default: "there" }}', no_name) == "Hi there"
    assert render('Hi {{ profile.first_name | default: "there" }}', variables()) == "Hi Ada"


def test_conditional_block_shows_only_to_its_audience():
    source = '{% if profile.rfm_group == "At Risk" %}20% off, just for you. {% endif %}Bye'
    assert render(source, variables()) == "20% off, just for you. Bye"
    loyal = template_variables({**PROFILE, "properties": {"rfm_group": "Loyal"}}, {})
    assert render(source, loyal) == "Bye"


def test_a_render_time_error_is_a_template_error():
    with pytest.raises(TemplateError, match="divide by 0"):
        render("{{ 10 | divided_by: 0 }}", variables())


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("Hi {% if %}", "missing expression (line 1, column 7)"),
        ("{% unknown_tag %}", "unexpected tag 'unknown_tag'"),
        ("{{ profile.first_name | shout }}", "unknown filter 'shout'"),
        ("{% if profile.vip %}no end", "expected tag endif"),
        ("{{ profile.first_name", "expected"),
    ],
)
def test_template_problem_names_what_is_wrong(source, problem):
    found = template_problem(source)
    assert found is not None and problem in found, found


def test_template_problem_accepts_valid_templates():
    assert template_problem("Hi {{ profile.first_name | default: 'there' | upcase }}") is None
    assert template_problem("{% for i in event.items %}{{ i }}{% endfor %}") is None
    assert template_problem("plain text") is None


def test_a_runaway_template_fails_instead_of_hanging_the_worker():
    with pytest.raises(TemplateError):
        render("{% for i in (1..100000000) %}x{% endfor %}", {})
