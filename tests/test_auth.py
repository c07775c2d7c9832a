"""API keys: private keys manage, write keys only ingest, and keys are stored only as digests."""

import base64
import hashlib
import secrets
from types import SimpleNamespace

import httpx
import pytest

from herald.core import keys as herald_keys
from herald.core.db import session_scope
from herald.core.keys import create_key
from models.enums import ApiKeyKind

EVENT = {"metric": "Viewed Product", "profile": {"email": "ada@example.com"}}

MANAGEMENT = [
    ("GET", "/v1/profiles", None),
    ("POST", "/v1/profiles", {"email": "ada@example.com"}),
    ("POST", "/v1/profiles/upsert", {"email": "ada@example.com"}),
    ("GET", "/v1/profiles/prf_unknown", None),
    ("PATCH", "/v1/profiles/prf_unknown", {"first_name": "Ada"}),
    ("DELETE", "/v1/profiles/prf_unknown", None),
    ("PUT", "/v1/profiles/prf_unknown/consent/email", {"status": "subscribed"}),
    ("GET", "/v1/lists", None),
    ("POST", "/v1/lists", {"name": "VIP"}),
    ("POST", "/v1/lists/lst_unknown/members", {"profile_ids": ["prf_unknown"]}),
    ("GET", "/v1/account", None),
    ("PATCH", "/v1/account", {"name": "Hijacked"}),
    ("GET", "/v1/events", None),
    ("GET", "/metrics", None),
]

INGEST = [
    ("/v1/events", EVENT),
    ("/v1/events/batch", {"events": [EVENT]}),
    ("/v1/identify", {"userId": "u1", "traits": {"email": "ada@example.com"}}),
    ("/v1/track", {"userId": "u1", "event": "Viewed Product"}),
    ("/v1/batch", {"batch": [{"type": "track", "userId": "u1", "event": "Viewed Product"}]}),
]


def basic(username: str, password: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_nothing_stored(db) -> None:
    for table in ("profile", "profile_list", "event", "consent"):
        assert db.scalar(f"SELECT count(*) FROM {table}") == 0, table


def test_management_without_a_key_is_401_with_a_challenge(anonymous, db):
    for method, path, body in MANAGEMENT:
        response = anonymous.request(method, path, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"
        assert "missing API key" in response.json()["message"]
    assert_nothing_stored(db)


def test_write_key_cannot_manage(ingest, db):
    for method, path, body in MANAGEMENT:
        response = ingest.request(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden"
    assert_nothing_stored(db)


def test_write_key_cannot_manage_profiles_even_as_basic_auth(anonymous, keys, db):
    response = anonymous.post(
        "/v1/profiles", json={"email": "ada@example.com"}, headers=basic(keys.write)
    )
    assert response.status_code == 403
    assert_nothing_stored(db)


def test_unknown_key_is_401(anonymous, db):
    for authorization in (
        "Bearer hk_priv_thisisnotakeythatexists00000000",
        "Bearer hk_write_thisisnotakeythatexists0000000",
        "Bearer not-even-shaped-like-a-key",
        "Bearer",
        "Token hk_priv_whatever",
    ):
        response = anonymous.get("/v1/profiles", headers={"Authorization": authorization})
        assert response.status_code == 401, authorization
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"


def test_revoked_key_is_401(anonymous, keys, db):
    response = anonymous.get("/v1/profiles", headers=bearer(keys.revoked))
    assert response.status_code == 401
    assert "invalid or revoked" in response.json()["message"]
    response = anonymous.post("/v1/events", json=EVENT, headers=bearer(keys.revoked))
    assert response.status_code == 401
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_key_with_the_right_prefix_but_a_wrong_secret_is_401(anonymous, keys, db):
    last = keys.private[-1]
    forged = keys.private[:-1] + ("A" if last != "A" else "B")
    assert anonymous.get("/v1/profiles", headers=bearer(forged)).status_code == 401
    assert anonymous.get("/v1/profiles", headers=bearer(keys.private + "x")).status_code == 401


def test_private_key_manages(anonymous, keys, db):
    response = anonymous.get("/v1/profiles", headers=bearer(keys.private))
    assert response.status_code == 200
    assert response.json() == {"data": [], "next_cursor": None}
    # The scheme is case-insensitive (RFC 7235).
    lower = anonymous.get("/v1/profiles", headers={"Authorization": f"bearer {keys.private}"})
    assert lower.status_code == 200


@pytest.mark.parametrize(("path", "body"), INGEST)
def test_ingest_takes_write_or_private_keys_as_bearer_or_basic_username(
    anonymous, keys, db, path, body
):
    for key in (keys.write, keys.private):
        for headers in (bearer(key), basic(key), basic(key, "ignored-password")):
            response = anonymous.post(path, json=body, headers=headers)
            assert response.status_code in (200, 202), (headers, response.text)
    assert db.scalar("SELECT count(*) FROM profile") == 1


def test_ingest_without_a_valid_key_stores_nothing(anonymous, keys, db):
    for path, body in INGEST:
        for headers in ({}, bearer(keys.revoked), basic("hk_write_nope"), basic("", keys.write)):
            response = anonymous.post(path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
    assert_nothing_stored(db)


def test_basic_auth_that_is_not_base64_is_401(anonymous, db):
    response = anonymous.post(
        "/v1/events", json=EVENT, headers={"Authorization": "Basic %%%not-base64%%%"}
    )
    assert response.status_code == 401
    assert_nothing_stored(db)


def test_healthz_is_open(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_open_and_reports_each_dependency(anonymous):
    response = anonymous.get("/readyz")
    assert response.status_code == 503  # no Temporal server in these tests
    assert response.json() == {
        "status": "not_ready",
        "checks": {"database": True, "temporal": False},
        "providers": {},
    }


def test_metrics_need_a_private_key(api, anonymous):
    assert anonymous.get("/metrics").status_code == 401
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "herald_http_requests_total" in response.text


def test_keys_are_stored_only_as_sha256_digests(db, keys):
    rows = db.rows("SELECT kind, lookup, digest FROM api_key")
    digests = {row.digest for row in rows}
    for plaintext in (keys.private, keys.write, keys.revoked):
        assert hashlib.sha256(plaintext.encode()).hexdigest() in digests
    for row in rows:
        # The lookup is the kind prefix and 8 characters of the secret: never more of it.
        prefix = {"private": "hk_priv_", "write": "hk_write_"}[row.kind]
        assert row.lookup.startswith(prefix) and len(row.lookup) == len(prefix) + 8, row.lookup
        for plaintext in (keys.private, keys.write, keys.revoked):
            assert plaintext not in row.lookup and plaintext not in row.digest


def test_stored_lookup_never_holds_more_than_a_short_prefix_of_the_secret(
    db, running_api, monkeypatch
):
    """The secret may contain '_': the lookup must still be prefix + 8 chars, on every backend."""
    secret = secrets.token_hex(15) + "_z"  # an underscore near the end, as token_urlsafe can give
    monkeypatch.setattr(herald_keys, "secrets", SimpleNamespace(token_urlsafe=lambda _n: secret))
    with session_scope(db.engine) as session:
        row, plaintext = create_key(session, ApiKeyKind.write, "underscore in the secret")
    assert plaintext == f"hk_write_{secret}"
    lookup = db.scalar("SELECT lookup FROM api_key WHERE id = :id", id=row.id)
    assert lookup == f"hk_write_{secret[:8]}"
    # And the key works.
    with httpx.Client(base_url=running_api.base_url, timeout=30) as client:
        response = client.post("/v1/events", json=EVENT, headers=bearer(plaintext))
    assert response.status_code == 202, response.text
