"""Previews through the API: a campaign message or flow message step rendered for a profile (and
a sample trigger event), with its email parts, SMS segments, WhatsApp template variables and
review warnings; a broken template names the field, line and column; nothing is sent."""

import httpx

SHOP = "shop@example.com"
TEMPLATE_SID = "HX" + "0123456789abcdef" * 2


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def errors(response: httpx.Response) -> list[dict]:
    assert response.status_code == 422, response.text
    return response.json()["errors"]


def profile(api, **body) -> str:
    body = {"email": "ada@example.com", "first_name": "Ada", **body}
    return ok(api.post("/v1/profiles", json=body), 201)["id"]


def campaign_message(api, channel: str = "email", utm: bool = True, **content) -> tuple[str, str]:
    campaign = ok(api.post("/v1/campaigns", json={"name": "Sneaker drop"}), 201)["id"]
    path = ok(api.post(f"/v1/campaigns/{campaign}/paths", json={"name": "All"}), 201)["id"]
    body = {"channel": channel, "content": content, "send_at": "2099-01-01T09:00", "utm": utm}
    message = ok(api.post(f"/v1/campaigns/{campaign}/paths/{path}/messages", json=body), 201)
    return campaign, message["id"]


def preview(api, campaign: str, message: str, **body) -> httpx.Response:
    return api.post(f"/v1/campaigns/{campaign}/messages/{message}/preview", json=body)


def flow(api, *steps: dict) -> str:
    body = {
        "name": "Post-purchase",
        "trigger": {"type": "metric", "metric": "Placed Order"},
        "steps": list(steps),
    }
    return ok(api.post("/v1/flows", json=body), 201)["id"]


def step(step_id: str, channel: str, body: str, **fields) -> dict:
    content = {"body": body, **fields.pop("content", {})}
    return {"id": step_id, "type": "message", "channel": channel, "content": content, **fields}


def codes(previewed: dict) -> list[str]:
    return [w["code"] for w in previewed["warnings"]]


# ---- campaigns ----------------------------------------------------------------------------------


def test_an_email_preview_renders_for_the_profile_with_both_parts_and_its_warnings(api, db):
    ada = profile(api)
    campaign, message = campaign_message(
        api,
        utm=False,
        subject="Early access, {{ profile.first_name }}",
        body="<h1>Hi {{ profile.first_name }}</h1><p><a href='https://shop.test/drop'>Shop</a></p>",
        sender=SHOP,
    )
    shown = ok(preview(api, campaign, message, profile_id=ada))

    assert shown["channel"] == "email"
    assert shown["subject"] == "Early access, Ada"
    assert (
        shown["html"]
        == shown["body"]
        == ("<h1>Hi Ada</h1><p><a href='https://shop.test/drop'>Shop</a></p>")
    )
    assert shown["text"] == "Hi Ada\n\nShop (https://shop.test/drop)"  # derived from the HTML
    assert (shown["sms"], shown["whatsapp_template"]) == (None, None)
    # The content warning and the rest of the campaign review's warnings for this message.
    assert codes(shown) == ["no_unsubscribe_link", "utm_off"]
    # A preview sends and records nothing.
    assert db.scalar("SELECT count(*) FROM delivery") == 0
    assert db.scalar("SELECT count(*) FROM message_outbox") == 0


def test_an_email_with_its_own_text_part_and_no_profile_shows_the_defaults(api, db):
    campaign, message = campaign_message(
        api,
        subject="Hi {{ profile.first_name | default: 'there' }}",
        body="<p>Hi {{ profile.first_name | default: 'there' }}. Unsubscribe any time.</p>",
        text="Plain: hi {{ profile.first_name | default: 'there' }}",
        sender=SHOP,
    )
    shown = ok(api.post(f"/v1/campaigns/{campaign}/messages/{message}/preview"))  # no body
    assert (shown["subject"], shown["text"]) == ("Hi there", "Plain: hi there")
    assert shown["warnings"] == []


def test_an_sms_preview_counts_segments_and_warns_past_one(api, db):
    campaign, message = campaign_message(api, channel="sms", body="x" * 161)
    shown = ok(preview(api, campaign, message))
    assert shown["sms"] == {"encoding": "GSM-7", "characters": 161, "segments": 2}
    assert (shown["html"], shown["text"], shown["body"]) == (None, None, "x" * 161)
    [warning] = shown["warnings"]
    assert warning["code"] == "sms_multiple_segments" and warning["field"] == "content.body"
    assert "billed as 2 messages" in warning["message"]


def test_an_sms_preview_counts_the_profiles_own_data(api, db):
    short = profile(api, email="ada@example.com", first_name="Ada")
    long = profile(api, email="bartholomew@example.com", first_name="Bartholomew")
    campaign, message = campaign_message(
        api, channel="sms", body="y" * 150 + " {{ profile.first_name }}!"
    )
    for who, characters, segments in ((short, 155, 1), (long, 163, 2)):
        shown = ok(preview(api, campaign, message, profile_id=who))
        assert shown["sms"] == {"encoding": "GSM-7", "characters": characters, "segments": segments}
        assert ("sms_multiple_segments" in codes(shown)) is (segments > 1)
    emoji = profile(api, email="emoji@example.com", first_name="🎉")
    shown = ok(preview(api, campaign, message, profile_id=emoji))
    # One character outside GSM-7 sends all of it as UCS-2: 67 units a part, the emoji two.
    assert shown["sms"] == {"encoding": "UCS-2", "characters": 153, "segments": 3}


def test_a_broken_template_is_422_with_the_field_line_and_column(api, db):
    campaign, message = campaign_message(
        api, subject="Hi {{ profile.first_name ", body="<p>Fine</p>", sender=SHOP
    )
    [error] = errors(preview(api, campaign, message))
    assert (error["field"], error["line"], error["column"]) == ("content.subject", 1, 4)
    assert "expected '}}'" in error["reason"]

    campaign, message = campaign_message(
        api, subject="Hi", body="<p>\n{% if profile.vip %}\nVIP</p>", sender=SHOP
    )
    [error] = errors(preview(api, campaign, message))
    # A block left open is found where the template ends.
    assert (error["field"], error["line"], error["column"]) == ("content.body", 3, 8)
    assert "expected tag endif" in error["reason"]


def test_a_campaign_preview_names_what_is_missing(api, db):
    campaign, message = campaign_message(api, body="Hi")
    unknown = errors(preview(api, campaign, message, profile_id="pr_missing"))
    assert unknown == [{"field": "profile_id", "reason": "no profile 'pr_missing'"}]
    response = preview(api, campaign, "msg_missing")
    assert response.status_code == 404 and "message 'msg_missing'" in response.json()["message"]
    response = preview(api, "cmp_missing", message)
    assert response.status_code == 404 and "campaign 'cmp_missing'" in response.json()["message"]
    assert errors(preview(api, campaign, message, event={}))[0]["field"] == "event"

    empty, draft = campaign_message(api)  # saved without a body yet
    [error] = errors(preview(api, empty, draft))
    assert error["field"] == "content.body"


# ---- flows --------------------------------------------------------------------------------------


def test_a_flow_preview_renders_the_sample_event_and_warns_marketing_email(api, db):
    ada = profile(api)
    body = "Order {{ event.properties.order_id }} ({{ event.metric }}) from {{ flow.name }}"
    flow_id = flow(
        api,
        step(
            "promo",
            "email",
            body,
            content={"subject": "Thanks {{ profile.first_name }}"},
            next="receipt",
        ),
        step("receipt", "email", body, content={"subject": "Receipt"}, transactional=True),
    )
    event = {"properties": {"order_id": "A-1042"}}
    promo = ok(
        api.post(
            f"/v1/flows/{flow_id}/messages/promo/preview",
            json={"profile_id": ada, "event": event},
        )
    )
    assert promo["subject"] == "Thanks Ada"
    assert promo["body"] == "Order A-1042 (Placed Order) from Post-purchase"
    # A plain-text email is its own text part; there is no HTML part.
    assert (promo["html"], promo["text"]) == (None, promo["body"])
    assert codes(promo) == ["no_unsubscribe_link"]

    receipt = ok(api.post(f"/v1/flows/{flow_id}/messages/receipt/preview", json={"event": event}))
    assert receipt["warnings"] == []  # a transactional email needs no unsubscribe link


def test_a_whatsapp_preview_renders_the_template_variables(api, db):
    ada = profile(api, phone="+31612345678")
    template = {
        "content_sid": TEMPLATE_SID,
        "variables": {"1": "{{ profile.first_name }}", "2": "{{ event.properties.order_id }}"},
    }
    flow_id = flow(
        api, step("ship", "whatsapp", "Shipped", content={"whatsapp_template": template})
    )
    shown = ok(
        api.post(
            f"/v1/flows/{flow_id}/messages/ship/preview",
            json={"profile_id": ada, "event": {"properties": {"order_id": 7}}},
        )
    )
    assert shown["whatsapp_template"] == {
        "content_sid": TEMPLATE_SID,
        "variables": {"1": "Ada", "2": "7"},
    }
    assert shown["sms"] is None


def test_a_flow_template_failing_on_the_sample_event_names_where(api, db):
    body = "Hello\n  {{ 100 | divided_by: event.properties.items }} each"
    flow_id = flow(api, step("split", "sms", body))
    url = f"/v1/flows/{flow_id}/messages/split/preview"
    assert ok(api.post(url, json={"event": {"properties": {"items": 4}}}))["body"] == (
        "Hello\n  25 each"
    )
    [error] = errors(api.post(url, json={"event": {"properties": {"items": 0}}}))
    assert (error["field"], error["line"], error["column"]) == ("content.body", 2, 12)
    assert "divide by 0" in error["reason"]


def test_a_flow_preview_names_a_missing_flow_or_step_and_refuses_other_steps(api, db):
    wait = {"id": "wait", "type": "time_delay", "amount": 1, "unit": "days", "next": "hi"}
    flow_id = flow(api, wait, step("hi", "sms", "Hi"))
    response = api.post(f"/v1/flows/{flow_id}/messages/nope/preview", json={})
    assert response.status_code == 404 and "step 'nope'" in response.json()["message"]
    response = api.post("/v1/flows/flw_missing/messages/hi/preview", json={})
    assert response.status_code == 404 and "flow 'flw_missing'" in response.json()["message"]
    [error] = errors(api.post(f"/v1/flows/{flow_id}/messages/wait/preview", json={}))
    assert error["field"] == "step_id" and "time_delay step, not a message" in error["reason"]
    [error] = errors(
        api.post(f"/v1/flows/{flow_id}/messages/hi/preview", json={"profile_id": "pr_x"})
    )
    assert error["field"] == "profile_id"
