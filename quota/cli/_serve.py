"""`quota serve`: the HTTP API and dashboard (quota/serve/) on uvicorn."""

from __future__ import annotations

import click

from quota._exceptions import InvalidInput
from quota.settings import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes (each with its own AsyncGate).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="uvicorn's log level (info logs every request).",
)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the JSON API (/v1, schema at /openapi.json) and the read-only dashboard.
    Needs QUOTA_API_TOKENS or QUOTA_API_TOKENS_FILE (bearer tokens and their scopes)."""
    try:
        import uvicorn

        from quota.serve.auth import Tokens
    except ImportError as exc:
        raise InvalidInput(
            f"quota serve needs the serve extra: pip install 'quota[serve]' ({exc.name} missing)"
        ) from None
    Tokens.from_settings(Settings())  # bad tokens: one line now, not a worker's traceback
    click.echo(f"quota serve: http://{host}:{port}/ (API /v1, schema /openapi.json)", err=True)
    uvicorn.run(
        "quota.serve.app:served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=log_level in ("debug", "info"),
    )
