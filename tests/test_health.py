"""Health, readiness and metrics as an operator's probes see them."""

import httpx

from api.app import create_app
from herald.core.config import Settings
from tests.conftest import serve


def test_healthz_is_open_and_readyz_reports_each_dependency(anonymous):
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    response = anonymous.get("/readyz")  # the test API points at a Temporal nobody runs
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {"database": True, "temporal": False},
        "providers": {},  # channels whose provider is misconfigured (none)
    }


async def test_readyz_is_200_when_database_and_temporal_are_up(database, temporal_server):
    target = temporal_server.client.service_client.config.target_host
    app = create_app(Settings(database_url=database.url, temporal_address=target), database.engine)
    with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": True, "temporal": True}


def test_metrics_need_a_private_key_and_count_requests(api, anonymous):
    assert anonymous.get("/metrics").status_code == 401
    api.get("/v1/lists")
    body = api.get("/metrics").text
    assert 'herald_http_requests_total{method="GET",route="/v1/lists",status="200"}' in body
    assert "herald_http_request_seconds_bucket" in body


def test_every_response_carries_a_request_id(anonymous):
    echoed = anonymous.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    assert len(anonymous.get("/healthz").headers["x-request-id"]) == 32
