"""The `herald` command: run each process separately in production, or all of them with `dev`."""

import asyncio
import json
from enum import StrEnum

import typer

from herald.core.config import get_settings
from herald.core.logging import configure_logging

app = typer.Typer(help="Herald: marketing automation on Temporal.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _settings():
    settings = get_settings()
    configure_logging(settings.log_level, settings.json_logs)
    return settings


@app.command()
def migrate() -> None:
    """Apply database migrations (idempotent)."""
    from herald.cli.migrate import upgrade
    from herald.core.db import make_engine

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    engine.dispose()
    typer.echo("database is up to date")


@app.command()
def api(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """Serve the HTTP API."""
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


@app.command()
def worker() -> None:
    """Run the Temporal worker (workflows and activities) and start the router if needed."""
    from worker import run_worker

    asyncio.run(run_worker(_settings()))


@app.command()
def dev(demo: bool = typer.Option(False, help="run the demo once the stack is up")) -> None:
    """Everything on this machine: Temporal dev server + UI, migrations, worker, API."""
    from herald.cli.devstack import run_dev

    run_dev(_settings(), demo=demo)


@app.command(name="demo")
def demo_command(
    api_url: str = typer.Option("http://127.0.0.1:8000"),
) -> None:
    """Run the demo against a running stack (reads the local keys from the data dir)."""
    from herald.cli.demo import run_demo

    settings = _settings()
    keys = json.loads((settings.data_dir / "dev-keys.json").read_text())
    run_demo(api_url, keys["private_key"], keys["write_key"], settings.temporal_address)


class KeyKind(StrEnum):
    private = "private"
    write = "write"


@keys_app.command("create")
def keys_create(
    kind: KeyKind = typer.Option(..., help="private (everything) or write (ingest only)"),
    name: str = typer.Option(..., help="what the key is for"),
) -> None:
    """Create an API key; the key is printed once and stored only as a digest."""
    from herald.core.db import make_engine, session_scope
    from herald.core.keys import create_key
    from models.enums import ApiKeyKind

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    with session_scope(engine) as session:
        row, plaintext = create_key(session, ApiKeyKind(kind.value), name)
    engine.dispose()
    typer.echo(json.dumps({"id": row.id, "kind": kind.value, "name": name, "key": plaintext}))
