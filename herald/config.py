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
    # `herald dev` only: where the embedded Temporal dev server and its Web UI listen.
    dev_temporal_port: int = 7233
    temporal_ui_port: int = 8233

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    worker_metrics_port: int = 9464

    log_level: str = "INFO"
    log_format: Literal["console", "json", "auto"] = "auto"

    # Shopify signs webhooks with the app's client secret; unset means the webhook is refused.
    shopify_webhook_secret: str = ""

    # Routing: how many outbox rows one router activity claims, and how long it long-polls.
    router_batch_size: int = 2000
    router_poll_seconds: float = 5.0

    # Validated API keys are cached this long, so revocation takes effect within it.
    api_key_cache_seconds: float = 30.0

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
