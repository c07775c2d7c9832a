"""HTTP framing: bodies are capped while they stream, keys are checked before bodies are read,
and a 405 names every method the path supports.

Over real HTTP, with chunked bodies (no Content-Length) from a generator that counts what the
server let it send.
"""

import gzip
import json
import zlib

import pytest

from api.middleware import MAX_BODY_BYTES

CHUNK = b"x" * 65536


class CountingBody:
    """A chunked request body of `total` bytes that records how much was pulled from it."""

    def __init__(self, total: int, prefix: bytes = b""):
        self.total, self.prefix, self.sent = total, prefix, 0

    def __iter__(self):
        if self.prefix:
            self.sent += len(self.prefix)
            yield self.prefix
        while self.sent < self.total:
            self.sent += len(CHUNK)
            yield CHUNK


def event_prefix() -> bytes:
    # A JSON object whose one string never ends: it only grows.
    return (
        b'{"metric": "Placed Order", "profile": {"email": "big@example.com"}, "properties": {"n": "'
    )


def test_a_chunked_body_over_the_cap_is_a_413_without_reading_it_all(ingest, db):
    body = CountingBody(4 * MAX_BODY_BYTES, event_prefix())
    response = ingest.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["errors"][0]["field"] == "body"
    # Socket buffers let a few MB more through; the point is the rest is never sent.
    assert body.sent < 2 * MAX_BODY_BYTES
    assert db.scalar("SELECT count(*) FROM event") == 0


def test_a_chunked_body_under_the_cap_is_accepted(ingest, db):
    event = json.dumps({"metric": "Placed Order", "profile": {"email": "s@example.com"}}).encode()
    response = ingest.post(
        "/v1/events",
        content=iter([event[:10], event[10:]]),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text


def test_a_request_without_a_key_is_a_401_before_its_body_is_read(anonymous, db):
    body = CountingBody(4 * MAX_BODY_BYTES, event_prefix())
    response = anonymous.post(
        "/v1/events", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401, response.text[:500]
    assert response.json()["code"] == "unauthorized"
    assert body.sent < MAX_BODY_BYTES


def test_a_revoked_key_is_a_401_before_the_body_is_read(anonymous, keys, db):
    body = CountingBody(4 * MAX_BODY_BYTES, b'{"name": "')
    response = anonymous.post(
        "/v1/lists",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {keys.revoked}"},
    )
    assert response.status_code == 401, response.text[:500]
    assert body.sent < MAX_BODY_BYTES


def test_a_write_key_on_a_management_endpoint_is_a_403_before_the_body_is_read(ingest, db):
    body = CountingBody(4 * MAX_BODY_BYTES, b'{"name": "')
    response = ingest.post("/v1/lists", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 403, response.text[:500]
    assert body.sent < MAX_BODY_BYTES


def test_a_chunked_gzip_body_that_inflates_past_the_cap_is_a_413(ingest, db):
    squeezed = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    inflated = event_prefix() + b"x" * (2 * MAX_BODY_BYTES)
    compressed = squeezed.compress(inflated) + squeezed.flush()
    assert len(compressed) < MAX_BODY_BYTES // 100
    chunks = [compressed[i : i + 4096] for i in range(0, len(compressed), 4096)]
    response = ingest.post(
        "/v1/events",
        content=iter(chunks),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "payload_too_large"


def test_a_chunked_gzip_body_is_accepted(ingest, db):
    event = json.dumps({"metric": "Placed Order", "profile": {"email": "g@example.com"}}).encode()
    compressed = gzip.compress(event)
    response = ingest.post(
        "/v1/events",
        content=iter([compressed[:7], compressed[7:]]),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 202, response.text


def test_a_body_that_is_not_gzip_is_a_400(ingest, db):
    response = ingest.post(
        "/v1/events",
        content=b"plainly not gzip",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_gzip"


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("OPTIONS", "/v1/account", {"GET", "PATCH"}),
        ("DELETE", "/v1/account", {"GET", "PATCH"}),
        ("PUT", "/v1/lists/lst_x", {"GET", "PATCH", "DELETE"}),
        ("DELETE", "/v1/events", {"GET", "POST"}),
    ],
)
def test_a_405_allows_every_method_the_path_supports(api, db, method, url, allowed):
    response = api.request(method, url)
    assert response.status_code == 405, response.text
    assert response.json()["code"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed
