"""docker-compose.yml (production topology) agrees with Settings and the Herald CLI.

Docker is not available here, so the file is parsed and checked, not run.
"""

import re
from pathlib import Path

import pytest
import yaml

from herald.core.config import SEARCH_ATTRIBUTES, Settings
from worker import CANCELLED_ACTIVITY_WAIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
HERALD = ("herald-migrate", "herald-api", "herald-worker")


def test_production_topology_has_every_service():
    assert set(SERVICES) == {
        "postgres",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        *HERALD,
    }


def test_images_are_pinned():
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), name


@pytest.mark.parametrize("name", HERALD)
def test_herald_env_names_real_settings_and_builds_valid_settings(name, monkeypatch):
    env = SERVICES[name]["environment"]
    aliases = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"}
    for key in env:
        if key in aliases:
            continue
        assert key.startswith("HERALD_"), key
        assert key.removeprefix("HERALD_").lower() in Settings.model_fields, key
    for key, value in env.items():
        # ${VAR:-default} interpolation: take the default, as compose would with VAR unset.
        monkeypatch.setenv(key, re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", str(value)))
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in settings.database_url
    host, port = settings.temporal_address.split(":")
    assert host == "temporal" and f"{port}:{port}" in SERVICES["temporal"]["ports"]
    assert settings.api_host == "0.0.0.0"


def test_herald_commands_use_the_cli_and_wait_for_migrations():
    assert SERVICES["herald-migrate"]["command"] == ["herald", "migrate"]
    assert SERVICES["herald-api"]["command"][:2] == ["herald", "api"]
    assert SERVICES["herald-worker"]["command"] == ["herald", "worker"]
    for name in ("herald-api", "herald-worker"):
        depends = SERVICES[name]["depends_on"]
        assert depends["herald-migrate"]["condition"] == "service_completed_successfully"
        assert depends["temporal-setup"]["condition"] == "service_completed_successfully"


def test_api_port_and_health_check_match_settings():
    port = Settings.model_fields["api_port"].default
    assert f"{port}:{port}" in SERVICES["herald-api"]["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(SERVICES["herald-api"]["healthcheck"]["test"])


def worker_settings(monkeypatch) -> Settings:
    for key, value in SERVICES["herald-worker"]["environment"].items():
        monkeypatch.setenv(key, re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", str(value)))
    return Settings()


def test_worker_metrics_listen_on_loopback_and_are_never_published(monkeypatch):
    settings = worker_settings(monkeypatch)
    assert settings.worker_metrics_host == "127.0.0.1"
    port = str(settings.worker_metrics_port)
    for name, service in SERVICES.items():
        assert not any(port in str(mapping) for mapping in service.get("ports", [])), name
    # How to open it for a scrape is written next to the setting.
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "dns_sd_configs" in compose and "never publish" in compose


def test_docker_waits_for_the_worker_to_shut_down(monkeypatch):
    settings = worker_settings(monkeypatch)
    period = SERVICES["herald-worker"]["stop_grace_period"]
    seconds = int(re.fullmatch(r"(\d+)s", period).group(1))
    # The worker's own bound (grace, then cancelled activities), with room to spare.
    assert seconds >= settings.worker_shutdown_grace_seconds + CANCELLED_ACTIVITY_WAIT_SECONDS + 5


def test_setup_registers_exactly_herald_search_attributes():
    script = " ".join(SERVICES["temporal-setup"]["command"])
    names = re.search(r"for name in ([\w ]+); do", script).group(1).split()
    assert tuple(names) == SEARCH_ATTRIBUTES
    assert "--type Keyword" in script


def test_temporal_ui_points_at_the_server():
    assert SERVICES["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_dockerfile_runs_the_herald_cli():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^CMD \["herald", "api"\]$', dockerfile, re.M)
    assert "pip install ." in dockerfile
    assert re.search(r"^USER ", dockerfile, re.M)  # not root
