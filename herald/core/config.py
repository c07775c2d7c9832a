"""One Settings object for every Herald process, read from HERALD_* environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Custom search attributes every Herald workflow may carry (all Keyword-typed).
SEARCH_ATTRIBUTES = (
    "HeraldKind",
    "HeraldCampaignId",
    "HeraldFlowId",
    "HeraldProfileId",
    "HeraldStep",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    data_dir: Path = Path(".herald")
    # Empty means "the embedded SQLite file under data_dir".
    database_url: str = ""
    temporal_address: str = Field(
        default="127.0.0.1:7233",
        validation_alias=AliasChoices("HERALD_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("HERALD_TEMPORAL_NAMESPACE", "TEMPORAL_NAMESPACE"),
    )
    task_queue: str = "herald"
    # Tag workflows with Herald's custom search attributes (they must be registered on the
    # namespace); off for clusters, and the time-skipping test server, that have none.
    search_attributes: bool = True
    # `herald dev` only: where the embedded Temporal dev server and its Web UI listen.
    dev_temporal_port: int = 7233
    temporal_ui_port: int = 8233

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    worker_metrics_port: int = 9464
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description=(
            "Address the worker's Prometheus endpoint (Temporal SDK metrics, "
            "http://<host>:<worker_metrics_port>/metrics) listens on. It has no authentication, "
            "so the default is loopback only; set 0.0.0.0 for a Prometheus on a private network "
            "(docker-compose.yml shows how), and never publish the port."
        ),
    )
    worker_shutdown_grace_seconds: float = Field(
        default=15.0,
        ge=0,
        description=(
            "On SIGTERM/SIGINT the worker stops polling and gives running activities this long "
            "to finish, then cancels them; it exits at most a few seconds later even if one "
            "ignores the cancellation (Temporal retries it elsewhere). A second signal exits at "
            "once. Keep grace + 5 s under the orchestrator's kill timeout."
        ),
    )
    # Workflows kept in the worker's memory between tasks (each ~200 KB); more are replayed.
    worker_max_cached_workflows: int = 500
    # Activity threads: the router, sends and every local activity share them.
    worker_activity_threads: int = 16

    log_level: str = "INFO"
    log_format: Literal["console", "json", "auto"] = "auto"

    # Shopify signs webhooks with the app's client secret; unset means the webhook is refused.
    shopify_webhook_secret: str = ""

    # Routing: how many outbox rows one router activity claims, and how long it long-polls.
    router_batch_size: int = 2000
    router_poll_seconds: float = 5.0
    # Every statement the router runs is cancelled after this long (statement_timeout on
    # PostgreSQL, a progress handler on SQLite): one expensive segment or query then fails on its
    # own instead of holding the batch (and the batch well inside the activity's 2 min timeout).
    router_statement_timeout_seconds: float = 5.0
    # A segment whose re-check failed is retried after this long, doubling per failure up to 64x;
    # meanwhile its re-checks are deferred (recorded) and the rest of each batch goes on.
    router_segment_retry_seconds: float = 60.0
    # Segment definitions costing more than this (herald/segments/definition.py:definition_cost)
    # are refused with a 422: routing re-checks every live segment an event touches.
    segment_cost_budget: int = 500

    # Encrypts provider credentials at rest (Fernet, key derived from this string). Empty in
    # dev: a random key is kept in <data_dir>/secret.key. Rotation: set the new value here and
    # the old one in secret_key_previous; stored secrets decrypt with either and re-encrypt
    # with the new one when next saved. In prod it must be set.
    secret_key: str = ""
    secret_key_previous: list[str] = []

    # Validated API keys are cached this long, so revocation takes effect within it.
    api_key_cache_seconds: float = 30.0

    # Email delivery: the embedded outbox (listed by GET /v1/outbox) or an SMTP server.
    email_provider: Literal["outbox", "smtp"] = "outbox"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_sender: str = "herald@localhost"  # From, unless a message names its own sender
    smtp_username: str = ""
    smtp_password: str = ""
    # none: plain; starttls: upgrade after connecting (587); tls: implicit TLS (465).
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout_seconds: float = 30.0
    # SMTP connections each worker keeps open (and messages in flight); raise it only for a
    # relay that allows more.
    smtp_pool_size: int = 4

    # Webhook and internal-alert steps (herald/delivery/url_safety.py). Hosts, IPs or CIDRs listed
    # here may resolve to private/loopback addresses and may use plain http. Env: a JSON list.
    webhook_allow_hosts: list[str] = []
    webhook_timeout_seconds: float = 10
    webhook_max_response_bytes: int = 64 * 1024

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'herald.db').resolve()}"

    @property
    def json_logs(self) -> bool:
        if self.log_format == "auto":
            return self.env == "prod"
        return self.log_format == "json"


@lru_cache
def get_settings() -> Settings:
    return Settings()
