"""`quota shards show|change|adopt`: the deployment's shard count (quota/reshard.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from quota._exceptions import QuotaError
from quota.cli._common import WholeHelpGroup, console, json_option, print_json
from quota.settings import Settings

if TYPE_CHECKING:  # imported when run: the CLI starts fast
    from sqlalchemy import Engine

    from quota.store import Store
    from quota.topology import Client


def _backends(settings: Settings) -> tuple[Engine, Client, Store]:
    from quota.store import Store, make_engine
    from quota.topology import sync_client

    engine = make_engine(settings.database_url, settings.database_timeout)
    client = sync_client(settings.redis_url, decode_responses=True, socket_timeout=30)
    return engine, client, Store(engine, settings.key_prefix)


@click.group(cls=WholeHelpGroup)
def shards() -> None:
    """The deployment's shard count (hash tags and streams): show it, or change it."""


@shards.command()
@json_option
def show(as_json: bool) -> None:
    """The recorded shard count and QUOTA_SHARDS (they must agree)."""
    settings = Settings()
    engine, client, store = _backends(settings)
    try:
        recorded = store.recorded_shards(settings.shards)
    finally:
        client.close()
        engine.dispose()
    out = {"key_prefix": settings.key_prefix, "recorded": recorded, "configured": settings.shards}
    if as_json:
        print_json(out)
        return
    agree = "agree" if recorded == settings.shards else "DIFFER: set QUOTA_SHARDS to the recorded"
    console().print(
        f"deployment {settings.key_prefix}: {recorded} shards recorded, "
        f"QUOTA_SHARDS={settings.shards} ({agree})"
    )


@shards.command()
@click.argument("count", type=click.IntRange(1, 16384))
@click.option("--yes", is_flag=True, help="Do it (every gate and worker must be stopped).")
@json_option
def change(count: int, yes: bool, as_json: bool) -> None:
    """Change the shard count to COUNT, with every gate and worker stopped: drain every
    shard into the ledger, delete the old layout's keys, record COUNT. Ports are rebuilt
    from the ledger on first use; open reservations, rate-limit buckets and request-id
    markers are not kept. Then set QUOTA_SHARDS=COUNT everywhere."""
    from quota.reshard import reshard

    if not yes:
        raise click.UsageError(
            "this deletes the deployment's Redis keys once their usage is in the ledger: "
            "stop every gate and worker, then run it again with --yes"
        )
    settings = Settings()
    engine, client, _ = _backends(settings)
    try:
        done = reshard(settings, client, engine, count)
    except QuotaError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
        engine.dispose()
    if as_json:
        print_json(done)
        return
    console().print(
        f"deployment {settings.key_prefix}: {done.old} -> {done.new} shards; "
        f"{done.drained:,} events drained, {done.deleted:,} keys deleted in "
        f"{done.seconds:.1f} s. Set QUOTA_SHARDS={done.new} for every process."
    )


@shards.command()
@click.argument("count", type=click.IntRange(1, 16384))
@click.option("--yes", is_flag=True, help="Do it (COUNT must be what the deployment runs with).")
@json_option
def adopt(count: int, yes: bool, as_json: bool) -> None:
    """Record COUNT as the deployment's shard count, moving nothing: for a deployment
    that ran with QUOTA_SHARDS=COUNT before counts were recorded (the upgrade recorded
    the old default, 16). A wrong COUNT makes every port look empty: check first."""
    if not yes:
        raise click.UsageError(
            "a wrong count makes every port look unused: run it again with --yes if the "
            f"deployment has always run with QUOTA_SHARDS={count}"
        )
    settings = Settings()
    engine, client, store = _backends(settings)
    try:
        old = store.recorded_shards(count)
        store.set_shards(count)
    finally:
        client.close()
        engine.dispose()
    if as_json:
        print_json({"key_prefix": settings.key_prefix, "old": old, "new": count})
        return
    console().print(f"deployment {settings.key_prefix}: {old} -> {count} shards recorded")
